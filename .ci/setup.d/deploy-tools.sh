#!/usr/bin/env bash
# Tools the deployment tests need (issue 7), from Debian's packages:
#   docker-compose  a real Compose parser, to validate docker-compose.yml (no Docker engine runs here)
#   pgbouncer       a real PgBouncer in transaction mode in front of the test PostgreSQL
#   prometheus      for promtool (checks the compose stack's Prometheus config)
# redis-server and redis-cli (Redis Cluster and Sentinel tests) come with the machine's Redis.
set -euo pipefail
missing=()
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  echo "ci: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v redis-cli >/dev/null 2>&1 || { echo "ci: redis-cli missing (needed for the Redis Cluster test)" >&2; exit 1; }
