#!/usr/bin/env bash
# Run HERE (the development machine, repository root) before a GPU session: puts into .gpu/
# what the lent GPU machine lacks, so that one `run` call with carry [".gpu"] can do the whole
# GPU check and benchmark (scripts/gpu_session.sh):
#   .gpu/whl/     wheels of open_clip_torch and ftfy (+ wcwidth) for the device's Python 3.12;
#   .gpu/parity/  the parity kit's full-size reference logits (for gpu_check.py's 'vs kit' column).
# .gpu/ is git-ignored (added to .git/info/exclude). About 10 MB in all.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu
mkdir -p .gpu/whl .gpu/parity
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu/whl open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
kit="${CHANGECLIP_PARITY_DIR:-../shared/parity}"
if [ -f "$kit/full_rn50_s0_256.npz" ]; then
  cp "$kit"/full_rn50_s0_256.npz "$kit"/full_vit_s0_256.npz "$kit"/README.md .gpu/parity/
else
  echo "gpu_prepare: no parity kit at $kit (set CHANGECLIP_PARITY_DIR); gpu_check will show 'n/a' vs the kit" >&2
fi
du -sh .gpu
echo 'next: run (device tool) command "bash scripts/gpu_session.sh", carry [".gpu"], timeout_s 580'
