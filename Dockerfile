# syntax=docker/dockerfile:1
# The gateway as a container image: built in one stage, run from a slim one as a non-root user.
#   docker build -t ratelimit-gateway .
#   docker run --init -p 8080:8080 ratelimit-gateway       # embedded PostgreSQL, no Redis (demo)
#   docker run --init -p 8080:8080 -e DATABASE_URL=... -e REDIS_URL=... -e UPSTREAM_URL=... ratelimit-gateway
# docs/deploy.md has the details; docker-compose.yml runs the whole stack.

# A maintained Node LTS (the package supports Node >= 20.18.1: package.json engines).
ARG NODE_IMAGE=node:24-bookworm-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
COPY scripts ./scripts
RUN npm run build && npm prune --omit=dev --no-audit --no-fund

FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build --chown=root:root /app/node_modules ./node_modules
COPY --from=build --chown=root:root /app/dist ./dist
COPY package.json ./
COPY config ./config
COPY migrations ./migrations
# The code is root-owned and read-only to the gateway; only data/ (the embedded PostgreSQL of
# a first run, unused when DATABASE_URL is set) is writable by the `node` user (uid 1000).
RUN mkdir -p /app/data && chown node:node /app/data
USER node
EXPOSE 8080 9090
# Runs inside the container, so the control port's default 127.0.0.1 binding is enough here.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "dist/src/cli/healthcheck.js"]
# Exec form: node is the process that gets SIGTERM and drains in-flight requests (no npm or
# shell in between). `docker run --init` / compose `init: true` adds a reaper as PID 1.
STOPSIGNAL SIGTERM
# The heap flags are npm start's (docs/performance.md, "Memory"); a test keeps them equal.
CMD ["node", "--max-semi-space-size=8", "--heap-growing-percent=50", "dist/src/main.js"]
