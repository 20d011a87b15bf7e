#!/usr/bin/env bash
# Start a multi-node Ray cluster on this one machine: a head and N worker nodes, each a
# separate raylet with its own ports, everything bound to 127.0.0.1, token auth on.
#
#   cluster/local-start.sh [WORKERS=2] [CPUS_PER_WORKER=1]
#   eval "$(cluster/local-start.sh 2 1 | grep ^export)"   # the client settings, this shell
#
# QFLEET_LEARNER_NODES=N puts the `qfleet_learner` label on worker nodes 1..N instead of the
# head: a learner that can lose its node and come back on another (local-kill-worker.sh
# learner). Ray notices a lost node after ~15 s (5 missed health checks 3 s apart); set
# RAY_health_check_period_ms and RAY_health_check_failure_threshold here to change that.
#
# Run it from the repository root: `ray job submit` runs entrypoints there, so
# `qfleet train configs/...` finds its config. State and the token live in
# $QFLEET_CLUSTER_DIR (default /tmp/qfleet-cluster, mode 700, token file mode 600).
set -euo pipefail
source "$(dirname "$0")/local-env.sh"
WORKERS="${1:-2}"
CPUS="${2:-1}"

# shellcheck disable=SC2119  # no extra arguments for ray start here
start_head
for i in $(seq 1 "$WORKERS"); do
  start_worker "$i" "$CPUS"
done

echo "started a head and $WORKERS worker node(s); job server http://127.0.0.1:$DASH_PORT"
print_client_settings
