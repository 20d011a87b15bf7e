#!/usr/bin/env bash
# Take a worker node away at once, as a machine failure would (SIGKILL to its raylet; its
# worker processes follow it). INDEX is the node's number, or `learner` for the worker
# node that hosts a run's learner (whichever node that is now).
#   cluster/local-kill-worker.sh INDEX|learner
set -euo pipefail
source "$(dirname "$0")/local-env.sh"
index="$1"
if [[ "$index" == learner ]]; then
  # A worker process is its raylet's child; the raylet's object manager port names the node.
  index=""
  for pid in $(pgrep -f '^ray::LearnerWorker' || true); do
    # Either process may be gone by now (another run's learner that ended, say).
    raylet=$(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ' || true)
    [[ -n "$raylet" ]] || continue
    # -ww: the whole command line; ps cuts it at $COLUMNS, which may be set (pytest-xdist).
    port=$(ps -ww -o args= -p "$raylet" 2>/dev/null | grep -o -- '--object_manager_port=[0-9]*' \
      | cut -d= -f2 || true)
    [[ -n "$port" ]] || continue
    offset=$((port - 1 - PORT_BASE))
    if ((offset >= 0 && offset % 100 == 0 && offset / 100 < 100)); then
      index=$((offset / 100))
      break
    fi
  done
  if [[ -z "$index" ]]; then
    echo "no learner runs on a node of this cluster (ports from $PORT_BASE)" >&2
    exit 1
  fi
  if ((index == 0)); then
    echo "the learner runs on the head node: killing it would end the cluster" >&2
    exit 1
  fi
fi
pkill -9 -f -- "--object_manager_port=$((PORT_BASE + 100 * index + 1)) " || true
echo "worker node $index killed"
