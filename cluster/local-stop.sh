#!/usr/bin/env bash
# Stop the local cluster: every process of its nodes (found by the cluster's session
# directory and its GCS port), its nodes' workers with them. Any other Ray on this machine
# (another cluster, a run's embedded Ray) keeps running.
set -euo pipefail
source "$(dirname "$0")/local-env.sh"
if [[ ! -s "$DIR/session" ]]; then
  echo "no cluster started from $DIR (no session file)"
  exit 0
fi
python3 - "$(cat "$DIR/session")" "$GCS_PORT" <<'PY'
import os
import sys

import psutil

session, port = sys.argv[1], sys.argv[2]


def ours(args: list[str]) -> bool:
    return any(session in a or (a.startswith("--address=") and a.endswith(f":{port}"))
               for a in args)


me = psutil.Process()
spared = {me.pid, *(p.pid for p in me.parents())}  # this script names the session too
found: dict[int, psutil.Process] = {}
for proc in psutil.process_iter(["cmdline"]):
    if proc.pid not in spared and ours(proc.info["cmdline"] or []):
        found[proc.pid] = proc
        for child in proc.children(recursive=True):  # workers, dashboard modules
            found[child.pid] = child
for proc in found.values():
    try:
        proc.terminate()
    except psutil.Error:
        pass
_, alive = psutil.wait_procs(list(found.values()), timeout=3)
for proc in alive:
    try:
        proc.kill()
    except psutil.Error:
        pass
psutil.wait_procs(alive, timeout=10)

# As `ray stop` does: a plain `ray.init()` must not find this cluster's address any more
# (it would try to join the stopped cluster); another cluster's address stays.
from ray._common.utils import get_ray_address_file

address_file = get_ray_address_file(None)
try:
    with open(address_file) as f:
        if f.read().strip().endswith(f":{port}"):
            os.remove(address_file)
except OSError:
    pass
PY
rm -f "$DIR/session"
echo "stopped"
