#!/usr/bin/env bash
# Wheels for installing qfleet on a GPU host without network access, whose own CUDA torch
# stays: every package qfleet (and its `bench` extra) needs, except torch and its NVIDIA
# libraries, for the host's Python and platform. Run on a machine with network access,
# from the repository root (docs/gpu-box.md):
#
#   cluster/offline-wheels.sh [DEST=wheels] [PYTHON_VERSION=3.12]
#   # copy DEST to the GPU host, then there:
#   pip install --no-index --find-links DEST "qfleet[bench]"
#
# pip's resolver lists what an install on that Python and platform would take (a dry run
# that downloads no torch); the list less torch, triton and nvidia-* is then downloaded
# wheel by wheel, and qfleet itself is built into DEST.
set -euo pipefail
dest="${1:-wheels}"
pyver="${2:-3.12}"
plat=(--only-binary=:all: --python-version "$pyver" --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
pip install -q --dry-run --ignore-installed --report "$work/report.json" "${plat[@]}" \
  --target "$work/target" ".[bench]"
python3 - "$work/report.json" > "$work/pins.txt" <<'EOF'
import json, re, sys
report = json.load(open(sys.argv[1]))
for item in report["install"]:
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    if re.fullmatch(r"(?i)torch|triton|nvidia-.*|qfleet", name):
        continue  # the host's own CUDA torch, and qfleet built below
    print(f"{name}=={version}")
EOF
mkdir -p "$dest"
pip download -q --no-deps "${plat[@]}" -d "$dest" -r "$work/pins.txt"
pip wheel -q --no-deps -w "$dest" .
echo "$(find "$dest" -name '*.whl' | wc -l) wheels in $dest ($(du -sh "$dest" | cut -f1));" \
  "on the GPU host: pip install --no-index --find-links $dest \"qfleet[bench]\""
