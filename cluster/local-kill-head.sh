#!/usr/bin/env bash
# Take the head node away at once, as a machine failure would: SIGKILL to its GCS and its
# raylet (its worker processes follow). A driver that ran on it (`qfleet train`, a job's)
# died with the machine: kill it yourself. The worker nodes lose their cluster; a new one
# starts with cluster/local-stop.sh and cluster/local-start.sh, as `ray up` would.
#   cluster/local-kill-head.sh
set -euo pipefail
source "$(dirname "$0")/local-env.sh"
pkill -9 -f -- "--gcs_server_port=$GCS_PORT( |$)" || true
pkill -9 -f -- "--object_manager_port=$((PORT_BASE + 1)) " || true
echo "head node killed"
