#!/usr/bin/env bash
# deploy.sh: build one storefront build and roll it out on Nomad as a canary.
#
#   nomad/deploy.sh --app DIR [options]        (nomad/deploy.sh --help)
#
# Steps, each printed before it runs:
#   1. docker build  the storefront image with Bun (nomad/storefront.Dockerfile),
#                    tagged <image-repo>:<build-id>, and docker push it;
#   2. route table   .next manifests copied out of that image, turned into
#                    cedra-spoa's route table by spoa/cedra-routes.mjs (Bun or Node);
#   3. publish       consul kv put cedra/routes/<build-id>: every edge renders
#                    it into $NOMAD_ALLOC_DIR/routes/<build-id>.table
#                    (nomad/cedra-edge.nomad) before the build's first instance
#                    registers in Consul;
#   4. nomad job run -var build_id=... -var image=... nomad/cedra-storefront.nomad;
#   5. follow        the deployment (bounded by --timeout): the canary healthy ->
#                    the promote command (or, with --auto-promote, promote and
#                    follow to the end); failed -> what auto_revert did.
#
# Exit status: 0 canary healthy (waiting for promotion) or deployment
# successful; 1 deployment failed (rolled back) or cancelled, or a step failed;
# 2 usage or preflight error; 3 --timeout reached (the deployment goes on).
#
# Environment: NOMAD_ADDR, NOMAD_TOKEN, NOMAD_NAMESPACE, CONSUL_HTTP_ADDR,
# CONSUL_HTTP_TOKEN as the nomad and consul commands read them;
# CEDRA_STOREFRONT_APP, CEDRA_IMAGE_REPO (defaults of --app, --image-repo);
# CEDRA_JS (the JavaScript runtime for cedra-routes.mjs: default bun, else node).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
prog=deploy.sh

app=${CEDRA_STOREFRONT_APP:-}
build_id=""
image_repo=${CEDRA_IMAGE_REPO:-registry.example.internal/cedra/storefront}
push=1
job_file="$here/cedra-storefront.nomad"
job_name=cedra-storefront
routes_prefix=cedra/routes
auto_promote=0
timeout=900
interval=10
dry_run=0
extra_vars=()

usage() {
  cat <<EOF
usage: $prog --app DIR [options]

Builds the storefront in DIR into an image with Bun, publishes its route table
for the edge, runs it on Nomad as a canary and follows the deployment.

  --app DIR           storefront source: package.json, lockfile, next.config.*
                      [\$CEDRA_STOREFRONT_APP]
  --build-id ID       Next.js build id, image tag and cache key prefix part,
                      [A-Za-z0-9_-]{1,63} [<UTC yyyymmddHHMMSS>-<git short sha of DIR>]
  --image-repo REPO   image repository [\$CEDRA_IMAGE_REPO or
                      registry.example.internal/cedra/storefront]
  --no-push           do not push the image (clients share the local image store)
  --job FILE          storefront job [nomad/cedra-storefront.nomad]
  --job-name NAME     its job id [cedra-storefront]
  --var NAME=VALUE    extra variable for nomad job run (repeatable), e.g. instances=4
  --routes-prefix P   Consul KV prefix of the route tables [cedra/routes]
  --auto-promote      promote the canary as soon as it is healthy and follow
                      the deployment to its end
  --timeout SECONDS   how long to follow the deployment [900]
  --interval SECONDS  between two status polls [10]
  --dry-run           print every command; run none (nothing is built,
                      published or deployed)
  -h, --help          this help

Exit status: 0 canary healthy (promote it) or deployment successful; 1 failed
(auto_revert rolled back) or a step failed; 2 usage; 3 timeout.
EOF
}

# ---- output -------------------------------------------------------------------
say() { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
warn() { printf '%s: warning: %s\n' "$prog" "$*" >&2; }
die() { # die STATUS MESSAGE
  local st=$1
  shift
  printf '%s: error: %s\n' "$prog" "$*" >&2
  exit "$st"
}

# quote WORD: WORD as a shell would read it back (single quotes when needed).
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# show CMD...: prints the command line.
show() {
  local out="" a
  for a in "$@"; do out+="$(quote "$a") "; done
  printf '+ %s\n' "${out% }"
}

# run CMD...: prints it and runs it (not with --dry-run); a failure ends the deploy.
run() {
  show "$@"
  if ((dry_run)); then return 0; fi
  "$@" || die 1 "'$1 ${2:-}' failed (status $?), stopping"
}

# capture VAR CMD...: as run, and stores the command's stdout in VAR (stderr
# passes through); with --dry-run VAR gets a placeholder (its name in capitals).
capture() {
  local __var=$1 __out
  shift
  show "$@"
  if ((dry_run)); then
    printf -v "$__var" '%s' "${__var^^}"
    return 0
  fi
  __out=$("$@") || die 1 "'$1 ${2:-}' failed (status $?), stopping"
  printf -v "$__var" '%s' "$__out"
}

# query CMD...: a read-only poll (not echoed each time: the loop prints what changed).
query() {
  "$@"
}

# ---- arguments -------------------------------------------------------------------
need_arg() {
  if [ $# -lt 2 ] || [ -z "$2" ]; then die 2 "$1 needs a value (--help)"; fi
}
positive() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die 2 "$1 must be a positive integer, not '$2'"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --app) need_arg "$@"; app=$2; shift 2 ;;
    --build-id) need_arg "$@"; build_id=$2; shift 2 ;;
    --image-repo) need_arg "$@"; image_repo=$2; shift 2 ;;
    --no-push) push=0; shift ;;
    --job) need_arg "$@"; job_file=$2; shift 2 ;;
    --job-name) need_arg "$@"; job_name=$2; shift 2 ;;
    --var)
      need_arg "$@"
      [[ "$2" =~ ^[A-Za-z_][A-Za-z0-9_]*=.*$ ]] || die 2 "--var wants NAME=VALUE, not '$2'"
      case "${2%%=*}" in build_id | image) die 2 "--var ${2%%=*} is set by $prog itself" ;; esac
      extra_vars+=(-var "$2")
      shift 2
      ;;
    --routes-prefix) need_arg "$@"; routes_prefix=${2%/}; shift 2 ;;
    --auto-promote) auto_promote=1; shift ;;
    --timeout) need_arg "$@"; positive "$1" "$2"; timeout=$2; shift 2 ;;
    --interval) need_arg "$@"; positive "$1" "$2"; interval=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die 2 "unknown argument '$1'" ;;
  esac
done

# ---- preflight ---------------------------------------------------------------------
[ -n "$app" ] || die 2 "--app DIR is required (the storefront source; --help)"
[ -d "$app" ] || die 2 "--app $app: no such directory"
app=$(cd "$app" && pwd)
[ -f "$app/package.json" ] || die 2 "$app has no package.json: not a storefront source"
[ -f "$job_file" ] || die 2 "job file $job_file not found"
dockerfile="$here/storefront.Dockerfile"
routes_tool="$repo/spoa/cedra-routes.mjs"
[ -f "$dockerfile" ] || die 2 "$dockerfile not found"
[ -f "$routes_tool" ] || die 2 "$routes_tool not found"

if [ -z "$build_id" ]; then
  build_id=$(date -u +%Y%m%d%H%M%S)
  if sha=$(git -C "$app" rev-parse --short=10 HEAD 2>/dev/null); then
    build_id="$build_id-$sha"
  fi
fi
[[ "$build_id" =~ ^[A-Za-z0-9_-]{1,63}$ ]] ||
  die 2 "build id '$build_id': 1-63 characters of A-Z a-z 0-9 - _ (it travels in the cedra_pool cookie)"
[[ "$image_repo" =~ ^[a-z0-9]([a-z0-9._/:-]*[a-z0-9])?$ ]] || die 2 "--image-repo '$image_repo' is not an image repository name"

js=${CEDRA_JS:-}
if [ -z "$js" ]; then
  if command -v bun >/dev/null 2>&1; then js=bun; else js=node; fi
fi

missing=()
for t in docker "$js" consul nomad; do
  command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
if ((${#missing[@]})); then
  if ((dry_run)); then
    warn "not installed: ${missing[*]} (ignored with --dry-run)"
  else
    die 2 "not installed: ${missing[*]}"
  fi
fi

image="$image_repo:$build_id"
routes_key="$routes_prefix/$build_id"
work=$(mktemp -d "${TMPDIR:-/tmp}/cedra-deploy.XXXXXX")
cid=""
cleanup() {
  if [ -n "$cid" ] && ((!dry_run)); then docker rm -f "$cid" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

if ((dry_run)); then
  say "dry run: the commands below are printed, none is run"
fi
say "storefront build $build_id from $app"
info "image $image"
info "job   $job_name ($job_file)"

# ---- 1. image ---------------------------------------------------------------------
say "building the image with Bun (nomad/storefront.Dockerfile)"
run docker build --pull -f "$dockerfile" --build-arg "BUILD_ID=$build_id" \
  --label "org.opencontainers.image.version=$build_id" -t "$image" "$app"
if ((push)); then
  say "pushing $image"
  run docker push "$image"
else
  info "not pushed (--no-push): every Nomad client must have $image locally"
fi

# ---- 2. route table ------------------------------------------------------------------
say "making the route table from the image's .next manifests"
capture cid docker create "$image"
mkdir -p "$work/app/.next" "$work/app/node_modules/next"
for f in .next/BUILD_ID .next/app-path-routes-manifest.json .next/routes-manifest.json \
  node_modules/next/package.json; do
  run docker cp "$cid:/app/$f" "$work/app/$f"
done
run docker rm "$cid"
cid=""
run "$js" "$routes_tool" -o "$work/routes.table" "$work/app/.next"
if ((!dry_run)); then
  grep -qx "build $build_id" "$work/routes.table" ||
    die 1 "the route table names another build than $build_id: is next.config's generateBuildId reading BUILD_ID?"
  info "$(grep -m1 '^scheme ' "$work/routes.table"), $(grep -c '^route ' "$work/routes.table" || true) routes"
fi

# ---- 3. publish ----------------------------------------------------------------------
say "publishing the route table for the edge: Consul KV $routes_key"
run consul kv put "$routes_key" "@$work/routes.table"

# One line per poll:
#   STATUS|DESCRIPTION|JOB_VERSION|GROUP DESIRED_CANARIES PLACED_CANARIES HEALTHY UNHEALTHY PROMOTED DESIRED_TOTAL|...
# shellcheck disable=SC2016 # a Go template for nomad -t, not a shell expansion
dep_tmpl='{{.Status}}|{{.StatusDescription}}|{{.JobVersion}}{{range $g, $s := .TaskGroups}}|{{$g}} {{$s.DesiredCanaries}} {{len $s.PlacedCanaries}} {{$s.HealthyAllocs}} {{$s.UnhealthyAllocs}} {{$s.Promoted}} {{$s.DesiredTotal}}{{end}}'

# ---- 4. nomad job run --------------------------------------------------------------
say "submitting $job_name with build_id=$build_id"
run_out=""
capture run_out nomad job run -detach -var "build_id=$build_id" -var "image=$image" \
  ${extra_vars[@]+"${extra_vars[@]}"} "$job_file"

if ((dry_run)); then
  say "then the deployment would be followed (every ${interval}s, at most ${timeout}s):"
  show nomad eval status -t '{{.Status}} {{.DeploymentID}}' EVAL_ID
  show nomad deployment status -t "$dep_tmpl" DEPLOYMENT_ID
  if ((auto_promote)); then
    info "and once the canary is healthy (--auto-promote):"
    show nomad deployment promote DEPLOYMENT_ID
  else
    info "and once the canary is healthy, print: nomad deployment promote DEPLOYMENT_ID"
  fi
  say "dry run done: nothing was built, published or deployed"
  exit 0
fi

printf '%s\n' "$run_out" | sed 's/^/    /'
eval_id=$(printf '%s\n' "$run_out" | sed -n 's/^[[:space:]]*Evaluation ID:[[:space:]]*\([0-9a-f-]*\).*/\1/p' | head -n 1)
[ -n "$eval_id" ] || die 1 "no 'Evaluation ID' in the output of nomad job run"

# ---- 5. follow -----------------------------------------------------------------------
deadline=$((SECONDS + timeout))
poll_sleep() {
  if ((SECONDS + interval > deadline)); then
    sleep $((deadline > SECONDS ? deadline - SECONDS : 0))
  else
    sleep "$interval"
  fi
}
timed_out() { # timed_out WHAT
  say "timeout: $1 after ${timeout}s; Nomad goes on (the job's progress_deadline applies)"
  info "follow it:   nomad deployment status -monitor ${dep_id:-<deployment>}"
  exit 3
}

say "waiting for evaluation $eval_id"
dep_id=""
while :; do
  ev=$(query nomad eval status -t '{{.Status}} {{.DeploymentID}}' "$eval_id") ||
    die 1 "nomad eval status $eval_id failed"
  read -r ev_status ev_dep <<<"$ev" || true
  case "${ev_status:-}" in
    complete)
      dep_id=${ev_dep:-}
      break
      ;;
    failed | canceled | cancelled)
      die 1 "evaluation $eval_id $ev_status: nomad eval status $eval_id"
      ;;
  esac
  ((SECONDS < deadline)) || timed_out "evaluation $eval_id still ${ev_status:-unknown}"
  poll_sleep
done
if [ -z "$dep_id" ]; then
  say "no deployment was created: the job is unchanged (build $build_id already runs?)"
  info "nomad job status $job_name"
  exit 0
fi

say "following deployment $dep_id (every ${interval}s, at most ${timeout}s)"
last=""
promoted_by_us=0
while :; do
  line=$(query nomad deployment status -t "$dep_tmpl" "$dep_id") ||
    die 1 "nomad deployment status $dep_id failed"
  IFS='|' read -r -a f <<<"$line"
  st=${f[0]:-unknown}
  desc=${f[1]:-}
  version=${f[2]:-?}
  canary_wanted=0 canary_healthy=1 progress=""
  for g in "${f[@]:3}"; do
    read -r g_name g_dc g_pc g_h g_u g_prom g_total <<<"$g" || true
    progress+=" $g_name: $g_h/${g_total:-?} healthy, $g_u unhealthy"
    if ((${g_dc:-0} > 0)); then
      progress+=", canary ${g_pc:-0}/$g_dc placed"
      [ "$g_prom" = "true" ] && progress+=", promoted"
      if [ "$g_prom" != "true" ]; then
        canary_wanted=1
        # Healthy canaries: all placed and at least as many healthy allocations.
        ((${g_pc:-0} >= g_dc && ${g_h:-0} >= g_dc)) || canary_healthy=0
      fi
    fi
  done
  now="$st|$desc|$progress"
  if [ "$now" != "$last" ]; then
    info "[$(date -u +%H:%M:%S)] $st (job version $version):${progress:- no task groups yet} ${desc:+- $desc}"
    last=$now
  fi

  case "$st" in
    successful)
      say "deployment $dep_id successful: build $build_id is live on every instance"
      exit 0
      ;;
    failed)
      say "deployment $dep_id FAILED: $desc"
      if [[ "$desc" =~ rolling\ back\ to\ job\ version\ ([0-9]+) ]]; then
        rb=${BASH_REMATCH[1]}
        info "auto_revert: Nomad registered job version $rb again (the previous build);"
        info "the canary of build $build_id is stopped and cedra-agent drains its edge slot."
        if rbl=$(query nomad job deployments -latest -t '{{.ID}} {{.JobVersion}} {{.Status}}' "$job_name" 2>/dev/null); then
          read -r rb_id rb_v rb_st <<<"$rbl" || true
          [ "${rb_id:-}" != "$dep_id" ] && info "rollback deployment ${rb_id:-?} (job version ${rb_v:-?}): ${rb_st:-?}"
        fi
      else
        info "no automatic rollback was reported: check nomad job status $job_name"
      fi
      info "why:     nomad deployment status -verbose $dep_id ; nomad alloc logs <alloc> next"
      info "history: nomad job history -p $job_name"
      exit 1
      ;;
    cancelled | canceled)
      say "deployment $dep_id cancelled: $desc"
      exit 1
      ;;
  esac

  if ((canary_wanted && canary_healthy)) && [[ "$st" == running || "$st" == paused ]]; then
    if ((auto_promote)); then
      if ((!promoted_by_us)); then
        say "canary healthy: promoting (--auto-promote)"
        run nomad deployment promote "$dep_id"
        promoted_by_us=1
      fi
    else
      say "canary of build $build_id is healthy (its /api/health passed for min_healthy_time)"
      info "watch it on the edge:  show canary (cedra-agent), show pools (cedra-spoa)"
      info "promote:               nomad deployment promote $dep_id"
      info "or roll back:          nomad deployment fail $dep_id"
      exit 0
    fi
  fi

  ((SECONDS < deadline)) || timed_out "deployment $dep_id still $st"
  poll_sleep
done
