#!/usr/bin/env bash
# Stop the local cluster (every Ray node started on this machine).
set -euo pipefail
source "$(dirname "$0")/local-env.sh"
ray stop --force >/dev/null 2>&1 || true
echo "stopped"
