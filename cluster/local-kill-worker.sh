#!/usr/bin/env bash
# Take worker node INDEX away at once, as a machine failure would (SIGKILL to its raylet;
# its worker processes follow it).
#   cluster/local-kill-worker.sh INDEX
set -euo pipefail
source "$(dirname "$0")/local-env.sh"
pkill -9 -f -- "--object_manager_port=$((PORT_BASE + 100 * $1 + 1)) " || true
echo "worker node $1 killed"
