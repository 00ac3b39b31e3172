#!/usr/bin/env bash
# Installs what cedra-edge needs to build, test and run its demo on Debian 12.
# Idempotent: apt is only called when a package is missing.
set -euo pipefail

PACKAGES=(
  build-essential autoconf automake libtool pkg-config
  libev-dev libhiredis-dev libjansson-dev libcurl4-openssl-dev libcmocka-dev libmicrohttpd-dev zlib1g-dev
  clang libclang-rt-14-dev valgrind cppcheck clang-format
  haproxy redis-server wrk socat curl python3 ca-certificates procps prometheus shellcheck lua-cjson
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

# Next.js 16 needs Node.js >= 20.9; Debian 12's nodejs is 18, so a newer Node
# already on the machine is kept and Debian's is only a fallback.
if ! command -v node >/dev/null 2>&1; then
  missing+=(nodejs npm)
fi

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
