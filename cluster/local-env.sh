# shellcheck shell=bash
# Shared settings of the local multi-node scripts (sourced, not run).
# Every node and every client must use the same auth mode and token: token auth stays on.
DIR="${QFLEET_CLUSTER_DIR:-/tmp/qfleet-cluster}"
PORT_BASE="${QFLEET_PORT_BASE:-20000}"
GCS_PORT="${QFLEET_GCS_PORT:-6390}"
DASH_PORT="${QFLEET_DASHBOARD_PORT:-8275}"
TOKEN_FILE="$DIR/auth_token"
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$TOKEN_FILE"

# Ports of node i: PORT_BASE + 100*i + 0..5, and 200 worker ports from PORT_BASE + 10000 + 200*i
# (clusters 1,000 apart in PORT_BASE keep apart for up to 5 nodes).
node_ports() {
  local base=$((PORT_BASE + 100 * $1)) workers=$((PORT_BASE + 10000 + 200 * $1))
  echo "--node-manager-port=$base --object-manager-port=$((base + 1))" \
       "--runtime-env-agent-port=$((base + 2)) --dashboard-agent-grpc-port=$((base + 3))" \
       "--dashboard-agent-listen-port=$((base + 4)) --metrics-export-port=$((base + 5))" \
       "--min-worker-port=$workers --max-worker-port=$((workers + 199))"
}

# The node labels of the cloud files: `qfleet_learner` on the head, one `qfleet_actor` per
# worker CPU (configs/spaceinvaders.yaml asks for both). With QFLEET_LEARNER_NODES=N the
# label is on worker nodes 1..N instead: a learner that can lose its node and move.
learner_label() {  # learner_label INDEX: the node's qfleet_learner entry, if it has one
  local nodes="${QFLEET_LEARNER_NODES:-0}"
  if { (($1 == 0)) && ((nodes == 0)); } || { (($1 > 0)) && (($1 <= nodes)); }; then
    echo ', "qfleet_learner": 1'
  fi
}

start_head() {  # start_head [EXTRA RAY START ARGS...]
  mkdir -p "$DIR"
  chmod 700 "$DIR"
  if [[ ! -s "$TOKEN_FILE" ]]; then
    (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(32))' >"$TOKEN_FILE")
  fi
  # shellcheck disable=SC2046
  ray start --head --port="$GCS_PORT" --num-cpus="${QFLEET_HEAD_CPUS:-1}" \
    --resources="{$(learner_label 0 | cut -c3-)}" --node-ip-address=127.0.0.1 \
    --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASH_PORT" \
    --ray-client-server-port=$((GCS_PORT + 1)) --disable-usage-stats \
    $(node_ports 0) "$@" >"$DIR/head.log" 2>&1
  # The cluster's session directory names the processes of all its nodes: local-stop.sh
  # stops those, and leaves any other Ray on this machine running.
  python3 - "$GCS_PORT" >"$DIR/session" <<'PY'
import os, sys

import psutil

for proc in psutil.process_iter(["cmdline"]):
    args = proc.info["cmdline"] or []
    if f"--gcs_server_port={sys.argv[1]}" in args:
        logs = next(a.split("=", 1)[1] for a in args if a.startswith("--log_dir="))
        print(os.path.dirname(logs))
        break
PY
}

print_client_settings() {
  echo "export RAY_AUTH_MODE=token"
  echo "export RAY_AUTH_TOKEN_PATH=$TOKEN_FILE"
  echo "export RAY_ADDRESS=127.0.0.1:$GCS_PORT"
  echo "export QFLEET_JOB_ADDRESS=http://127.0.0.1:$DASH_PORT"
}

start_worker() {  # start_worker INDEX CPUS
  # shellcheck disable=SC2046
  ray start --address="127.0.0.1:$GCS_PORT" --num-cpus="$2" --node-ip-address=127.0.0.1 \
    --resources="{\"qfleet_actor\": $2$(learner_label "$1")}" --disable-usage-stats \
    $(node_ports "$1") >"$DIR/worker-$1.log" 2>&1
}
