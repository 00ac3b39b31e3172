#!/usr/bin/env bash
# Runs the libspoe codec microbenchmark from a build directory and prints its
# output (the last line is machine-readable: bench_spoe frames_per_s=...).
# Usage: bench/run.sh [BUILD_DIR] [SECONDS_PER_RUN]   (default: build/, 1)
set -euo pipefail

build_dir=${1:-build}
bin="$build_dir/bench/bench_spoe"

if [[ ! -x "$bin" ]]; then
    echo "run.sh: $bin not found; build it first (make -C $build_dir bench/bench_spoe)" >&2
    exit 1
fi

"$bin" ${2:+"$2"}
