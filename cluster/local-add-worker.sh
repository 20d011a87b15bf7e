#!/usr/bin/env bash
# Add worker node INDEX (>= 1, not yet used) to the running local cluster.
#   cluster/local-add-worker.sh INDEX [CPUS=1]
set -euo pipefail
source "$(dirname "$0")/local-env.sh"
start_worker "$1" "${2:-1}"
echo "worker node $1 joined"
