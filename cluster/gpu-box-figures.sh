#!/usr/bin/env bash
# The figures of one GPU machine (docs/gpu-box.md), each part one command that writes its
# JSON (and pictures) under $OUT. Run from the repository root.
#
#   cluster/gpu-box-figures.sh speed      # ~5 min: the learner alone (expected-value and
#                                         # C51 with noisy nets), acting per actor vs a
#                                         # central server, the whole fleet (GPU actors,
#                                         # then CPU actors)
#   cluster/gpu-box-figures.sh learning   # ~8 min: SpaceInvaders, 7 minutes from the
#                                         # command's start, SB3's zoo DQN beside it
#   cluster/gpu-box-figures.sh pong       # ~6 min: Pong's time to greedy 18, SB3 beside
#   QFLEET_DRY_RUN=1 cluster/gpu-box-figures.sh speed   # the same steps, seconds long, on
#                                                       # any machine (a CPU one too)
#
# On a host without network access, the wheels come along (docs/gpu-box.md): with
# .bundle/site.tar.gz present (../shared/tools/gpu-bundle.sh makes it) it is unpacked and
# put on PYTHONPATH, which Ray's workers inherit.
set -uo pipefail
part="${1:-speed}"
OUT="${OUT:-/tmp/qfleet-gpu-figures}"
mkdir -p "$OUT"
if [[ -f .bundle/site.tar.gz ]]; then
  mkdir -p /tmp/site && tar xzf .bundle/site.tar.gz -C /tmp/site
  export PYTHONPATH="/tmp/site:$PWD"
fi
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
dry="${QFLEET_DRY_RUN:-}"
# real or dry: the first value on the GPU machine, the second in a dry run
pick() { if [[ -n "$dry" ]]; then echo "$2"; else echo "$1"; fi; }
# On a CPU the GPU config's sizes would take minutes a step: the dry run shrinks them.
small=()
if [[ -n "$dry" ]]; then
  small=(replay.capacity=100000 replay.min_size=2000 learner.batch_size=32
         actors.envs_per_actor=4 eval.episodes=2)
fi
# Run `qfleet ARGS`: its output appended to $OUT/log.txt, its JSON line to $OUT/NAME.json
# (the device machine sends back 8 files at most: one log for all).
bench() {
  local name="$1" step; shift
  step="$(mktemp)"
  echo "== $name: qfleet $*" | tee -a "$OUT/log.txt"
  python3 -m qfleet.cli "$@" --json > "$step" 2>&1
  grep -v '^{' "$step" | tee -a "$OUT/log.txt" | tail -n 12
  grep '^{' "$step" | tail -n 1 > "$OUT/$name.json"
  [[ -s "$OUT/$name.json" ]] || echo "!! $name wrote no JSON (see $OUT/log.txt)"
  rm -f "$step"
}
{
  date -u
  echo "cores: $(nproc)"
  nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
} > "$OUT/machine.txt"
cat "$OUT/machine.txt"

case "$part" in
  speed)
    bench learner bench learner --device "$(pick cuda auto)" --batch-size "$(pick 512 32)" \
      --seconds "$(pick 8 1)"
    bench learner-c51-noisy bench learner --device "$(pick cuda auto)" \
      --batch-size "$(pick 512 32)" --head c51 --noisy --seconds "$(pick 8 1)"
    bench inference bench inference --device "$(pick cuda auto)" --actors "$(pick 15 2)" \
      --seconds "$(pick 16 2)"
    bench fleet-gpu-actors bench fleet --config configs/atari-1gpu.yaml \
      --seconds "$(pick 40 4)" --bare-seconds "$(pick 10 1)" "${small[@]}"
    bench fleet-cpu-actors bench fleet --config configs/atari-1gpu.yaml \
      --seconds "$(pick 40 4)" --bare-seconds "$(pick 10 1)" --no-learner-alone \
      actors.device=cpu "${small[@]}"
    ;;
  learning)
    # Five evaluation points over the budget (one every 84 s), 16 episodes each.
    bench learning-spaceinvaders bench learning --env ALE/SpaceInvaders-v5 \
      --config configs/atari-1gpu.yaml --seconds "$(pick 420 60)" --points 5 \
      --episodes "$(pick 16 2)" --against sb3 --beside \
      --plot "$OUT/spaceinvaders-curve.png" "${small[@]}"
    ;;
  pong)
    bench learning-pong bench learning --env ALE/Pong-v5 --config configs/atari-1gpu.yaml \
      --seconds "$(pick 300 60)" --target 18 --episodes "$(pick 8 1)" --against sb3 \
      --beside --plot "$OUT/pong-curve.png" eval.every_s=30 "${small[@]}"
    ;;
  *)
    echo "usage: $0 speed|learning|pong" >&2
    exit 2
    ;;
esac
ls -la "$OUT"
