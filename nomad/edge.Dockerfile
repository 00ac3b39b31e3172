# syntax=docker/dockerfile:1.7
# The edge image: HAProxy 2.6 (Debian 12's package), cedra-spoa and
# cedra-agent built from this repository, the haproxy/ configuration, and
# cedra-routes-sync. Used by every task of nomad/cedra-edge.nomad.
#
#   docker build -f nomad/edge.Dockerfile -t <repo>/cedra/edge:<version> .
#
# Context: the repository root (edge.Dockerfile.dockerignore next to this
# file keeps build trees, .git and the storefront fixture's installs out).
# The build stage runs nomad/edge-build.sh: autoreconf, ./configure,
# make, make check, make install DESTDIR=/stage; the same script runs in
# tests/integration/test_nomad.py, where no Docker engine is available.
#
# Base images are pinned to an exact Debian point release; pin the digest too
# (FROM debian:12.8-slim@sha256:...) in the registry you build from.

# ---- build -------------------------------------------------------------------------
FROM debian:12.8-slim AS build
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential autoconf automake libtool pkg-config \
      libev-dev libhiredis-dev libjansson-dev libcurl4-openssl-dev \
      libmicrohttpd-dev zlib1g-dev libcmocka-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN CEDRA_EDGE_BUILD_DIR=/tmp/build nomad/edge-build.sh /stage

# ---- runtime -----------------------------------------------------------------------
FROM debian:12.8-slim AS runtime
ARG DEBIAN_FRONTEND=noninteractive
# Runtime libraries of the two daemons (their NEEDED entries, checked by
# tests/integration/test_nomad.py), HAProxy, and socat for the operator
# sockets (nomad alloc exec ... socat - UNIX-CONNECT:/alloc/run/spoa-admin.sock).
# HAProxy binds the HTTP port (80) as a non-root user: file capability
# cap_net_bind_service (Docker's default capability set allows it).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      haproxy libev4 libhiredis0.14 libjansson4 libcurl4 libmicrohttpd12 zlib1g \
      ca-certificates socat libcap2-bin \
 && setcap cap_net_bind_service=+ep /usr/sbin/haproxy \
 && apt-get purge -y --auto-remove libcap2-bin \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 cedra \
 && useradd --system --uid 10001 --gid cedra --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin cedra
COPY --from=build /stage/ /
# The binaries run and the shipped HAProxy configuration parses with this HAProxy.
RUN cedra-spoa -v && cedra-agent -v \
 && haproxy -c -f /usr/local/etc/cedra/haproxy/haproxy.cfg
# All three daemons run as this user so that their mode-0600 sockets in the
# shared allocation directory reach each other.
USER cedra:cedra
EXPOSE 80
CMD ["haproxy", "-db", "-f", "/usr/local/etc/cedra/haproxy/haproxy.cfg"]
