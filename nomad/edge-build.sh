#!/usr/bin/env bash
# edge-build.sh: builds cedra-spoa and cedra-agent with the project's own
# ./configure && make && make install DESTDIR=..., and stages everything the
# edge image holds under DESTDIR. nomad/edge.Dockerfile runs exactly this in
# its build stage; tests/integration/test_nomad.py runs it too (no Docker
# engine needed), so the image's build steps are exercised on every test run.
#
#   nomad/edge-build.sh DESTDIR
#
# Run it from a copy of the repository (the Docker build context is one): it
# runs autoreconf in the source tree.
# Environment: CEDRA_EDGE_BUILD_DIR (default <src>/build-edge),
# CEDRA_EDGE_CHECK=0 skips make check (the unit tests, default on),
# CEDRA_EDGE_JOBS (default nproc).
set -euo pipefail

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: $0 DESTDIR" >&2
  exit 2
fi
dest=$(mkdir -p "$1" && cd "$1" && pwd)
prefix=/usr/local
sysconfdir=$prefix/etc
build=${CEDRA_EDGE_BUILD_DIR:-$src/build-edge}
jobs=${CEDRA_EDGE_JOBS:-$(nproc)}

step() { printf '==> edge-build: %s\n' "$*"; }

step "autoreconf"
(cd "$src" && autoreconf -fi)

step "configure (prefix $prefix, sysconfdir $sysconfdir)"
mkdir -p "$build"
cd "$build"
"$src/configure" --prefix="$prefix" --sysconfdir="$sysconfdir" --enable-werror

step "make"
make -j"$jobs"
if [ "${CEDRA_EDGE_CHECK:-1}" != 0 ]; then
  step "make check (unit tests)"
  make -j"$jobs" check
fi

step "make install DESTDIR=$dest"
make install DESTDIR="$dest"

# What make install does not cover: the HAProxy side (haproxy/, used as-is
# with environment variables), the route-table splitter, an example config.
step "stage haproxy/ configuration, cedra-routes-sync"
install -d -m 0755 "$dest$sysconfdir/cedra/haproxy"
install -m 0644 "$src"/haproxy/*.cfg "$src"/haproxy/*.conf "$src"/haproxy/*.map "$src"/haproxy/*.acl \
    "$dest$sysconfdir/cedra/haproxy/"
install -m 0644 "$src/docs/cedra-spoa.conf" "$dest$sysconfdir/cedra/cedra-spoa.conf.example"
install -D -m 0755 "$src/nomad/cedra-routes-sync.sh" "$dest$prefix/bin/cedra-routes-sync"
# The route-table tool runs where the storefront is built (deploy.sh), not on
# the edge, which has no JavaScript runtime.
rm -f "$dest$prefix/bin/cedra-routes.mjs"

step "smoke test"
"$dest$prefix/sbin/cedra-spoa" -v
"$dest$prefix/sbin/cedra-agent" -v
step "staged in $dest"
