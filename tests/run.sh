#!/usr/bin/env bash
# The whole test suite: installs dependencies, builds (plain, ASan+UBSan,
# ThreadSanitizer, libFuzzer), static analysis (cppcheck, clang-tidy), unit
# tests twice, fuzzers, the integration tests against real HAProxy once under
# ASan+UBSan and once under TSan, valgrind over both daemons, and make
# distcheck. tests/README.md describes the analysers.
# Ends with one line: "N passed, N failed[, N skipped]"; exits 1 on any failure.
#
# Environment: CEDRA_FUZZ_SECONDS (default 15) per fuzz target (two run at a time);
# CEDRA_SKIP="distcheck valgrind fuzz tsan tidy" skips stages (quick local runs).
set -uo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top" || exit 1
results=$(mktemp)
trap 'rm -f "$results"' EXIT
fuzz_seconds=${CEDRA_FUZZ_SECONDS:-15}
skip=" ${CEDRA_SKIP:-} "

record() { # record STATUS NAME
  echo "$1 $2" >>"$results"
  echo "$1 $2"
}
skipped() { [[ "$skip" == *" $1 "* ]]; }
# Each stage's wall time, printed before the closing line: the suite must
# stay well under CI's 30 minutes on 2 cores.
stage_times=() stage_name="" stage_t0=$SECONDS
stage_end() {
  [ -n "$stage_name" ] && stage_times+=("$(printf '%5ds  %s' $((SECONDS - stage_t0)) "$stage_name")")
  stage_name="" stage_t0=$SECONDS
}
stage() { stage_end; stage_name=$*; echo; echo "=== $*"; }

stage "dependencies"
if ! "$top/scripts/deps.sh"; then
  record FAIL deps
  echo "0 passed, 1 failed"
  exit 1
fi

# Runs every cmocka binary of a build and records one result per test case.
# A binary that dies (sanitizer report, crash) fails as a whole as well.
run_unit() { # run_unit LABEL BUILDDIR
  local label=$1 dir=$2 t out rc
  for t in "$dir"/tests/unit/test_*; do
    [ -x "$t" ] || continue
    out=$(mktemp)
    "$t" >"$out" 2>&1
    rc=$?
    sed -n 's/^\[       OK \] \(.*\)$/PASS '"$label"'\/'"$(basename "$t")"'\/\1/p; s/^\[  FAILED  \] \([a-z_0-9]*\)$/FAIL '"$label"'\/'"$(basename "$t")"'\/\1/p' "$out" | sort -u | tee -a "$results"
    if [ $rc -ne 0 ]; then
      record FAIL "$label/$(basename "$t")(exit=$rc)"
      tail -40 "$out"
    fi
    rm -f "$out"
  done
}

stage "build (-Werror)"
if "$top/scripts/build.sh" "$top/build" --enable-werror &&
   make -C "$top/build" -j"$(nproc)" check TESTS= >/dev/null 2>&1; then
  record PASS build/werror
else
  record FAIL build/werror
fi

stage "static checks: cppcheck, clang-tidy and clang-format"
csrc=$(git -C "$top" ls-files 'lib/*.[ch]' 'spoa/*.[ch]' 'agent/*.[ch]' 'tests/unit/*.c' 'tests/fuzz/*.c' 'bench/*.c' 2>/dev/null ||
       find lib spoa agent tests/unit tests/fuzz bench -name '*.[ch]')
out=$(mktemp)
# shellcheck disable=SC2046,SC2086 # $csrc: one word per file, on purpose
if (cd "$top" && cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability --std=c11 \
      -D_GNU_SOURCE -I lib -I spoa -I agent --suppress=missingIncludeSystem --inline-suppr \
      $(echo "$csrc" | grep -E '^(lib|spoa|agent)/') >"$out" 2>&1); then
  record PASS static/cppcheck
else
  record FAIL static/cppcheck
  head -40 "$out"
fi
# clang-tidy with the checks of .clang-tidy over lib/, spoa/ and agent/; the
# compilation database comes from a clang build in build-tidy (bear --append:
# only the files make recompiles are recorded again).
if skipped tidy; then
  record SKIP static/clang-tidy
elif CC=clang "$top/scripts/build.sh" "$top/build-tidy" >/dev/null &&
     { [ -s "$top/build-tidy/compile_commands.json" ] || make -C "$top/build-tidy" clean >/dev/null; } &&
     (cd "$top/build-tidy" && bear --append --output compile_commands.json -- make -j"$(nproc)" >/dev/null 2>&1); then
  t0=$SECONDS
  if run-clang-tidy-14 -p "$top/build-tidy" -j"$(nproc)" -quiet "$top/(lib|spoa|agent)/" >"$out" 2>&1 &&
     ! grep -qE '(warning|error): ' "$out"; then
    record PASS static/clang-tidy
  else
    record FAIL static/clang-tidy
    sed 's/\x1b\[[0-9;]*m//g' "$out" | grep -E -A3 '(warning|error): ' | head -60
  fi
  echo "clang-tidy: $((SECONDS - t0))s"
else
  record FAIL static/clang-tidy
fi
# shellcheck disable=SC2086 # $csrc: one word per file, on purpose
if (cd "$top" && clang-format --dry-run -Werror $csrc >"$out" 2>&1); then
  record PASS static/clang-format
else
  record FAIL static/clang-format
  head -20 "$out"
fi
rm -f "$out"

stage "unit tests"
run_unit unit "$top/build"

stage "unit tests under ASan+UBSan"
if "$top/scripts/build.sh" "$top/build-asan" --enable-werror --enable-sanitizers &&
   make -C "$top/build-asan" -j"$(nproc)" check TESTS= >/dev/null 2>&1; then
  record PASS build/asan
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    run_unit asan "$top/build-asan"
else
  record FAIL build/asan
fi

if skipped fuzz; then
  record SKIP fuzz
else
  stage "fuzzing (${fuzz_seconds}s per target, two at a time)"
  # One target: a private copy of its seeds (libFuzzer adds to the corpus
  # directory), crash artifacts kept in $top/build-fuzz/artifacts. Prints
  # "PASS|FAIL fuzz/NAME" and the last stats, or the log tail on failure.
  fuzz_one() { # fuzz_one BINARY
    local f=$1 name corpus art
    name=$(basename "$f")
    corpus=$(mktemp -d)
    art="$top/build-fuzz/artifacts/$name-"
    mkdir -p "$top/build-fuzz/artifacts"
    cp -r "$top/tests/fuzz/corpus/${name#fuzz_}/." "$corpus/" 2>/dev/null || true
    if (cd "$corpus" && "$f" -max_total_time="$fuzz_seconds" -timeout=5 -rss_limit_mb=2048 \
          -print_final_stats=1 -artifact_prefix="$art" "$corpus" >"$corpus.log" 2>&1); then
      echo "PASS fuzz/$name"
      grep -E 'stat::number_of_executed_units|DONE' "$corpus.log" | tail -2
    else
      echo "FAIL fuzz/$name"
      grep -vE '^(ts=|#[0-9]+ )' "$corpus.log" | tail -60
    fi
    rm -rf "$corpus" "$corpus.log"
  }
  if CC=clang "$top/scripts/build.sh" "$top/build-fuzz" --enable-fuzzers; then
    # 2 cores: two targets at a time keeps the stage near (targets / 2) x fuzz_seconds.
    fuzz_out=$(mktemp -d)
    i=0
    for f in "$top"/build-fuzz/tests/fuzz/fuzz_*; do
      if [ ! -x "$f" ] || [ ! -f "$f" ]; then continue; fi
      fuzz_one "$f" >"$fuzz_out/$(basename "$f")" &
      i=$((i + 1))
      if [ $((i % 2)) -eq 0 ]; then wait; fi
    done
    wait
    for r in "$fuzz_out"/*; do
      [ -f "$r" ] || continue
      cat "$r"
      head -1 "$r" >>"$results"
    done
    rm -rf "$fuzz_out"
  else
    record FAIL build/fuzz
  fi
fi

# Sanitizer runtime options for the daemons under test: stop at the first
# report with a non-zero status (LeakSanitizer: 23 at exit, after SIGTERM);
# the harness fails the test on that status and on any "SUMMARY: *Sanitizer"
# line in a process's stderr.
export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$top/tests/tsan.supp"

# The one integration run uses the ASan+UBSan daemons of build-asan (the
# release binaries only when that build failed). ASan doubles the CPU cost:
# deadlines (and valkey-timeout in the Next.js tests) stretch by 2.
itbuild="$top/build-asan" itslow=${CEDRA_ASAN_SLOW_FACTOR:-2}
[ -x "$itbuild/spoa/cedra-spoa" ] && [ -x "$itbuild/agent/cedra-agent" ] || itbuild="$top/build" itslow=1
stage "integration tests under ASan+UBSan ($itbuild; HAProxy $(haproxy -v 2>/dev/null | awk 'NR==1{print $3}'))"
out=$(mktemp)
t0=$SECONDS
CEDRA_SLOW_FACTOR=$itslow CEDRA_SPOA="$itbuild/spoa/cedra-spoa" CEDRA_AGENT="$itbuild/agent/cedra-agent" \
  python3 "$top/tests/integration/run.py" --timeout 1800 2>&1 | tee "$out"
grep -E '^(PASS|FAIL|SKIP) ' "$out" | sed 's/^\(PASS\|FAIL\|SKIP\) /\1 integration\//' >>"$results"
grep -qE '^integration: [0-9]+ passed' "$out" || record FAIL "integration/runner"
echo "integration stage: $((SECONDS - t0))s"
rm -f "$out"

if skipped tsan; then
  record SKIP tsan
else
  # cedra-spoa runs worker threads: the whole suite again with ThreadSanitizer
  # daemons. Deadlines stretch by CEDRA_SLOW_FACTOR (TSan costs 5-15x CPU).
  # The Next.js end-to-end classes run for one Next variant (v16) here: the
  # v15 and v16.3.7 classes differ in what Next.js writes and answers, not in
  # the daemons' threads, and the ASan+UBSan stage runs all three. test_nomad
  # runs no daemon of build-tsan at all (HCL, templates, deploy.sh, and a build
  # of its own for the image tree): once is enough. That keeps the whole
  # command under 30 minutes on 2 cores.
  stage "integration tests under ThreadSanitizer"
  if "$top/scripts/build.sh" "$top/build-tsan" --enable-werror --enable-sanitizers=thread; then
    record PASS build/tsan
    out=$(mktemp)
    t0=$SECONDS
    CEDRA_SLOW_FACTOR=${CEDRA_TSAN_SLOW_FACTOR:-10} \
    CEDRA_SPOA="$top/build-tsan/spoa/cedra-spoa" CEDRA_AGENT="$top/build-tsan/agent/cedra-agent" \
      python3 "$top/tests/integration/run.py" -q --timeout 2400 \
        --skip NextjsV15Test --skip NextjsV1637Test --skip RscV15Test --skip RscV1637Test \
        --skip test_nomad. >"$out" 2>&1
    grep -E '^(PASS|FAIL|SKIP) ' "$out" | sed 's/^\(PASS\|FAIL\|SKIP\) /\1 tsan\//' >>"$results"
    grep -E '^integration: ' "$out" || { record FAIL "tsan/runner"; tail -60 "$out"; }
    grep -qE '^integration: [0-9]+ passed, 0 failed' "$out" || sed -n '/^=\{20,\}$/,$p' "$out" | head -200
    echo "tsan stage: $((SECONDS - t0))s"
    rm -f "$out"
  else
    record FAIL build/tsan
  fi
fi

stage "fault suite under load (tests/faults, short profile)"
out=$(mktemp)
CEDRA_SPOA="$top/build/spoa/cedra-spoa" CEDRA_AGENT="$top/build/agent/cedra-agent" \
  timeout 600 python3 "$top/tests/faults/run.py" --profile short 2>&1 | tee "$out"
grep -E '^(PASS|FAIL|SKIP) faults/' "$out" | sed 's/:.*$//' >>"$results"
grep -qE '^faults: [0-9]+ passed' "$out" || record FAIL "faults/runner"
rm -f "$out"

if skipped valgrind; then
  record SKIP valgrind
else
  # The harness fails a test when the daemon exits non-zero (99: valgrind
  # found errors) or prints a non-zero ERROR SUMMARY.
  vg="valgrind --leak-check=full --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect --error-exitcode=99 --track-fds=no"
  valgrind_run() { # valgrind_run NAME WRAPPER_VAR TESTS...
    local name=$1 var=$2 out t0=$SECONDS
    shift 2
    local only=()
    for t in "$@"; do only+=(--only "$t"); done
    out=$(mktemp)
    env "$var=$vg" CEDRA_SPOA="$top/build/spoa/cedra-spoa" CEDRA_AGENT="$top/build/agent/cedra-agent" \
      python3 "$top/tests/integration/run.py" "${only[@]}" >"$out" 2>&1
    if grep -qE '^integration: [1-9][0-9]* passed, 0 failed' "$out"; then
      record PASS "valgrind/$name"
      grep -E '^integration:' "$out"
    else
      record FAIL "valgrind/$name"
      tail -80 "$out"
    fi
    echo "valgrind $name: $((SECONDS - t0))s"
    rm -f "$out"
  }
  stage "valgrind: cedra-spoa through HAProxy and the black-box client"
  # shellcheck disable=SC2086 # a list of test ids, one word each
  valgrind_run cedra-spoa CEDRA_SPOA_WRAPPER ${CEDRA_VALGRIND_TESTS:-test_haproxy.HaproxyTest.test_locale_through_haproxy test_haproxy.HaproxyTest.test_big_cookie_fragmented_notify test_spop_blackbox}
  stage "valgrind: cedra-agent against Consul, HAProxy and cedra-spoa"
  # shellcheck disable=SC2086 # a list of test ids, one word each
  valgrind_run cedra-agent CEDRA_AGENT_WRAPPER ${CEDRA_VALGRIND_AGENT_TESTS:-test_agent.AgentTest test_edge_canary}
fi

# README command 1 (scripts/demo.sh) runs once in the integration stage:
# tests/integration/test_demo.py checks every walkthrough step and Ctrl-C.

if skipped distcheck; then
  record SKIP distcheck
else
  stage "make distcheck"
  if make -C "$top/build" distcheck DISTCHECK_CONFIGURE_FLAGS=--enable-werror >"$top/build/distcheck.out" 2>&1; then
    record PASS build/distcheck
  else
    record FAIL build/distcheck
    tail -40 "$top/build/distcheck.out"
  fi
fi

stage_end
echo
echo "time per stage (total ${SECONDS}s):"
printf '  %s\n' "${stage_times[@]}"

passed=$(grep -c '^PASS ' "$results")
failed=$(grep -c '^FAIL ' "$results")
skippedn=$(grep -c '^SKIP ' "$results")
echo
grep '^FAIL ' "$results" | sed 's/^/  /'
echo "$passed passed, $failed failed, $skippedn skipped"
[ "$failed" -eq 0 ]
