#!/bin/sh
# cedra-routes-sync: splits the route-table bundle that Nomad renders from
# Consul KV (cedra/routes/<build_id>, written by nomad/deploy.sh) into one
# file per build, <dir>/<build_id>.table, the files cedra-agent names in
# "set pool ... routes <dir>/%{build}.table" and cedra-spoa loads.
#
#   cedra-routes-sync BUNDLE [DIR]        DIR default: $NOMAD_ALLOC_DIR/routes
#
# Installed in the edge image as /usr/local/bin/cedra-routes-sync. The
# cedra-agent task of nomad/cedra-edge.nomad runs it before the agent starts
# and as the change_script of the bundle's template on every change.
#
# Bundle format (the template in nomad/cedra-edge.nomad):
#   @@ cedra-routes build <build_id>
#   <the table, as cedra-routes.mjs wrote it>
#   ...
#   @@ cedra-routes end
# The end marker proves the render is complete. A table is written only when
# its content changed, atomically (temporary file + rename in DIR), so that
# cedra-spoa never reads half a file. Tables are never deleted here: a build's
# table stays valid while an allocation of that build may run, and DIR lives
# only as long as the edge allocation.
# Exit status: 0 when every table was valid and written (or unchanged),
# 1 otherwise (the files already there are kept).
set -eu

prog=cedra-routes-sync
log() { # log LEVEL EVENT [key=value...]
  lvl=$1 ev=$2
  shift 2
  echo "ts=$(date -u +%Y-%m-%dT%H:%M:%SZ) level=$lvl prog=$prog event=$ev $*" >&2
}

if [ $# -lt 1 ] || [ $# -gt 2 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  echo "usage: $prog BUNDLE [DIR]   (DIR default: \$NOMAD_ALLOC_DIR/routes)" >&2
  exit 2
fi
bundle=$1
if [ $# -eq 2 ]; then
  dir=$2
elif [ -n "${NOMAD_ALLOC_DIR:-}" ]; then
  dir=$NOMAD_ALLOC_DIR/routes
else
  log error no_dir "reason=\"no DIR and NOMAD_ALLOC_DIR unset\""
  exit 2
fi

if [ ! -r "$bundle" ]; then
  log error bundle_missing "bundle=$bundle"
  exit 1
fi
if ! grep -qx '@@ cedra-routes end' "$bundle"; then
  log error bundle_incomplete "bundle=$bundle reason=\"no end marker\""
  exit 1
fi

mkdir -p "$dir"
work=$(mktemp -d "$dir/.sync.XXXXXX")
trap 'rm -rf "$work"' EXIT HUP INT TERM

# Split. A build id is what cedra-spoa accepts in a cookie: [A-Za-z0-9_-].
if ! awk -v out="$work" '
  function fail(msg) { print msg > "/dev/stderr"; bad = 1 }
  /^@@ cedra-routes end$/ { if (file != "") close(file); key = file = ""; ended = 1; next }
  /^@@ cedra-routes build / {
    if (file != "") close(file)
    key = file = ""
    if (NF != 4 || $4 !~ /^[A-Za-z0-9_-]+$/ || length($4) > 63) { fail("bad build id line: " $0); next }
    if ($4 in seen) { fail("build listed twice: " $4); next }
    seen[$4] = 1; key = $4
    file = out "/" key ".table"
    printf "" > file
    next
  }
  /^@@/ { fail("unknown marker: " $0); next }
  key != "" { print > file }
  END { if (!ended) fail("no end marker"); exit bad ? 1 : 0 }
' "$bundle"; then
  log error bundle_invalid "bundle=$bundle"
  exit 1
fi

status=0 written=0 unchanged=0
for f in "$work"/*.table; do
  [ -e "$f" ] || continue
  b=$(basename "$f" .table)
  # The table must name a key scheme and, when it names a build, this one.
  if ! grep -Eq '^scheme (pathname|route-cache)$' "$f"; then
    log error table_invalid "build=$b reason=\"no scheme line\""
    status=1
    continue
  fi
  tb=$(sed -n 's/^build //p' "$f" | head -n 1)
  if [ -n "$tb" ] && [ "$tb" != "$b" ]; then
    log error table_invalid "build=$b reason=\"table is for build $tb\""
    status=1
    continue
  fi
  if [ -f "$dir/$b.table" ] && cmp -s "$f" "$dir/$b.table"; then
    unchanged=$((unchanged + 1))
    continue
  fi
  chmod 0644 "$f"
  mv -f "$f" "$dir/$b.table"
  written=$((written + 1))
  log info table_written "build=$b file=$dir/$b.table routes=$(grep -c '^route ' "$dir/$b.table" || true)"
done
log info synced "dir=$dir written=$written unchanged=$unchanged"
exit $status
