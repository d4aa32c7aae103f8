#!/usr/bin/env bash
# Installs Debian's `prometheus` package (prometheus + promtool) when either binary is missing.
# The observability tests need both; .ci/run calls this before `npm test`.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-prometheus: prometheus/promtool missing and apt-get unavailable; install Prometheus 2.x+ yourself" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "ensure-prometheus: installing Debian's prometheus package"
$SUDO apt-get update -qq
# --no-install-recommends: only the server and promtool, no node exporter or web assets.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus
# The package's service must not hold :9090 (the gateway's control port); tests start their own.
if command -v service >/dev/null 2>&1; then $SUDO service prometheus stop >/dev/null 2>&1 || true; fi
command -v prometheus >/dev/null && command -v promtool >/dev/null
