#!/usr/bin/env bash
# Builds cedra-edge out of tree: build.sh [DIR [configure args...]]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$top/build}
shift || true
if [ ! -x "$top/configure" ] || [ "$top/configure.ac" -nt "$top/configure" ] ||
   [ "$top/Makefile.am" -nt "$top/Makefile.in" ]; then
  (cd "$top" && autoreconf -fi >/dev/null 2>&1) || (cd "$top" && autoreconf -fi)
fi
mkdir -p "$dir"
cd "$dir"
# Reconfigure when the arguments changed since the last time.
args="$*"
if [ ! -f Makefile ] || [ "$(cat .cedra-configure-args 2>/dev/null)" != "$args" ]; then
  "$top/configure" "$@" >configure.out 2>&1 || { cat configure.out; exit 1; }
  printf '%s' "$args" > .cedra-configure-args
fi
make -j"$(nproc)" >make.out 2>&1 || { grep -E 'error|warning' -A3 make.out | head -60; tail -20 make.out; exit 1; }
