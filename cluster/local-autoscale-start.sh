#!/usr/bin/env bash
# Start a local cluster whose worker nodes Ray's own autoscaler adds and removes: a head
# (driver + learner) and up to MAX_WORKERS worker nodes of CPUS_PER_WORKER CPUs, launched
# on this machine by Ray's fake multi-node provider when the fleet asks for them. This is
# the autoscaling of the cloud files, minus the cloud: try `actors.num_actors=auto
# actors.max_actors=3` against it, then watch `ray status`.
#
#   cluster/local-autoscale-start.sh [MAX_WORKERS=3] [CPUS_PER_WORKER=1]
#   eval "$(cluster/local-autoscale-start.sh 3 1 | grep ^export)"
#   cluster/local-stop.sh
#
# Ray's wheel lacks the provider's example config that `ray.cluster_utils.AutoscalingCluster`
# reads, so it is written here, and the head starts the way that class starts it.
set -euo pipefail
source "$(dirname "$0")/local-env.sh"
MAX_WORKERS="${1:-3}"
CPUS="${2:-1}"
CONFIG="$DIR/autoscaler.yaml"

mkdir -p "$DIR"
cat >"$CONFIG" <<YAML
cluster_name: qfleet-local
max_workers: $MAX_WORKERS
upscaling_speed: 1.0
idle_timeout_minutes: 1
provider:
  type: fake_multinode
  gcs_address: 127.0.0.1:$GCS_PORT
  use_node_id_as_ip: true
  disable_node_updaters: true
  disable_launch_config_check: true
auth: {}
available_node_types:
  ray.head.default:
    resources: {CPU: ${QFLEET_HEAD_CPUS:-1}, qfleet_learner: 1}
    node_config: {}
    max_workers: 0
  actor_cpu:
    resources: {CPU: $CPUS, qfleet_actor: $CPUS, object_store_memory: 500000000}
    node_config: {}
    min_workers: 0
    max_workers: $MAX_WORKERS
head_node_type: ray.head.default
file_mounts: {}
cluster_synced_files: []
file_mounts_sync_continuously: false
initialization_commands: []
setup_commands: []
head_setup_commands: []
worker_setup_commands: []
head_start_ray_commands: []
worker_start_ray_commands: []
YAML

# The fake provider starts worker nodes inside the autoscaler's process (which inherits
# this environment: token auth included); AUTOSCALER_UPDATE_INTERVAL_S=1 as in Ray's tests.
RAY_FAKE_CLUSTER=1 AUTOSCALER_UPDATE_INTERVAL_S=1 start_head --autoscaling-config="$CONFIG"

echo "started a head; the autoscaler adds up to $MAX_WORKERS node(s) of $CPUS CPU(s)"
print_client_settings
