#!/usr/bin/env bash
# The observability tests run promtool and a real Prometheus (Debian's prometheus package).
exec "$(dirname "$0")/../../scripts/ensure-prometheus.sh"
