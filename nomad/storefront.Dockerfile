# syntax=docker/dockerfile:1.7
# The storefront image: dependencies installed and Next.js built with Bun,
# served by Node.js (next start). Built by nomad/deploy.sh:
#
#   docker build -f nomad/storefront.Dockerfile --build-arg BUILD_ID=<id> \
#                -t <repo>:<id> <storefront source dir>
#
# The build context is the storefront's own directory (package.json, bun.lock
# or package-lock.json, next.config.*); storefront.Dockerfile.dockerignore
# next to this file keeps node_modules/ and .next/ of a local build out of it.
# next.config must take the build id from BUILD_ID (generateBuildId), as the
# fixture storefront does: the same id is the image tag, the Consul Meta
# build_id and part of CACHE_KEY_PREFIX (nomad/cedra-storefront.nomad).
#
# Base images are pinned to exact versions; pin their digests too
# (FROM image:tag@sha256:...) in the registry you deploy from.

# ---- dependencies (all, for the build) -------------------------------------------
FROM oven/bun:1.4.5 AS deps
WORKDIR /app
# Commit bun.lock (run bun install once: it migrates a package-lock.json to
# bun.lock with the same resolved versions). --frozen-lockfile fails when the
# lockfile does not match package.json instead of resolving anew.
COPY package.json bun.lock* package-lock.json* ./
RUN bun install --frozen-lockfile

# ---- next build, with Bun -------------------------------------------------------------
FROM deps AS build
ARG BUILD_ID
ENV NEXT_TELEMETRY_DISABLED=1
COPY . .
# --bun runs next build on Bun's runtime (no Node.js in this stage). The check
# after it makes sure the build id really is ours (next.config generateBuildId).
RUN test -n "${BUILD_ID}" || { echo "BUILD_ID build argument is required" >&2; exit 1; } \
 && BUILD_ID="${BUILD_ID}" NODE_ENV=production bun --bun run build \
 && test "$(cat .next/BUILD_ID)" = "${BUILD_ID}" \
 && rm -rf node_modules .next/cache

# ---- production dependencies only ---------------------------------------------------
FROM oven/bun:1.4.5 AS prod-deps
WORKDIR /app
COPY package.json bun.lock* package-lock.json* ./
RUN bun install --frozen-lockfile --production

# ---- runtime: Node.js 22 LTS (the cache handler declares engines.node >= 22) -----------
FROM node:22.23.3-bookworm-slim AS runtime
ARG BUILD_ID
ENV NODE_ENV=production \
    NEXT_TELEMETRY_DISABLED=1 \
    PORT=3000 \
    HOSTNAME=0.0.0.0 \
    BUILD_ID=${BUILD_ID}
WORKDIR /app
COPY --from=build --chown=node:node /app ./
COPY --from=prod-deps --chown=node:node /app/node_modules ./node_modules
LABEL org.opencontainers.image.title="cedra storefront" \
      org.opencontainers.image.version="${BUILD_ID}"
USER node
EXPOSE 3000
# Nomad checks /api/health itself (nomad/cedra-storefront.nomad).
HEALTHCHECK NONE
# SIGTERM stops next start; Nomad sends it after shutdown_delay (draining).
CMD ["node", "node_modules/next/dist/bin/next", "start", "-p", "3000", "-H", "0.0.0.0"]
