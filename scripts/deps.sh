#!/usr/bin/env bash
# Installs what cedra-edge needs to build, test and run its demo on Debian 12.
# Idempotent: apt is only called when a package is missing.
set -euo pipefail

PACKAGES=(
  build-essential autoconf automake libtool pkg-config
  libev-dev libhiredis-dev libjansson-dev libcurl4-openssl-dev libcmocka-dev
  clang libclang-rt-14-dev valgrind cppcheck clang-format
  haproxy redis-server wrk socat curl python3 ca-certificates procps
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps: missing packages (${missing[*]}); run as root or install them" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Debian starts packaged daemons on install; the project runs its own copies
  # on loopback, so keep the packaged services from starting.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi
