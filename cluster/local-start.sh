#!/usr/bin/env bash
# Start a multi-node Ray cluster on this one machine: a head and N worker nodes, each a
# separate raylet with its own ports, everything bound to 127.0.0.1, token auth on.
#
#   cluster/local-start.sh [WORKERS=2] [CPUS_PER_WORKER=1]
#   eval "$(cluster/local-start.sh 2 1 | grep ^export)"   # the client settings, this shell
#
# Run it from the repository root: `ray job submit` runs entrypoints there, so
# `qfleet train configs/...` finds its config. State and the token live in
# $QFLEET_CLUSTER_DIR (default /tmp/qfleet-cluster, mode 700, token file mode 600).
set -euo pipefail
source "$(dirname "$0")/local-env.sh"
WORKERS="${1:-2}"
CPUS="${2:-1}"

mkdir -p "$DIR"
chmod 700 "$DIR"
if [[ ! -s "$TOKEN_FILE" ]]; then
  (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(32))' >"$TOKEN_FILE")
fi

# shellcheck disable=SC2046
ray start --head --port="$GCS_PORT" --num-cpus="${QFLEET_HEAD_CPUS:-1}" \
  --node-ip-address=127.0.0.1 --include-dashboard=true --dashboard-host=127.0.0.1 \
  --dashboard-port="$DASH_PORT" --ray-client-server-port=$((GCS_PORT + 1)) \
  --disable-usage-stats $(node_ports 0) >"$DIR/head.log" 2>&1
for i in $(seq 1 "$WORKERS"); do
  start_worker "$i" "$CPUS"
done

echo "started a head and $WORKERS worker node(s); job server http://127.0.0.1:$DASH_PORT"
echo "export RAY_AUTH_MODE=token"
echo "export RAY_AUTH_TOKEN_PATH=$TOKEN_FILE"
echo "export RAY_ADDRESS=127.0.0.1:$GCS_PORT"
echo "export QFLEET_JOB_ADDRESS=http://127.0.0.1:$DASH_PORT"
