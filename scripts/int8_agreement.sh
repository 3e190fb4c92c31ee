#!/usr/bin/env bash
# How far does int8 (issue #17) move the change mask of a *trained* model? Trains a tiny network
# on the shared LEVIR-CD samples with `changeclip train`, then detects on the NAIP sample pair and
# on a LEVIR-CD pair with the fp32 runtime and with int8, and prints the share of valid pixels
# whose mask agrees, plus the held-out agreement the run itself reports (summary.json model.int8).
# Usage: bash scripts/int8_agreement.sh [OUT_DIR] [ITERS]   (CPU; a few minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-build/int8_agreement}
ITERS=${2:-300}
SHARED=${CHANGECLIP_SHARED_DIR:-../shared}
CC=(.venv/bin/python -m changeclip)
rm -rf "$OUT" && mkdir -p "$OUT"
"${CC[@]}" dataset from-folder "$SHARED/data/LEVIR-CD/justchenhao_BIT_CD" -o "$OUT/levir" --gsd 0.5 \
  --train-dataset LEVIR-CD > "$OUT/dataset.log" 2>&1
"${CC[@]}" train "$OUT/levir" -o "$OUT/run" --variant tiny-rn50 --init scratch --iters "$ITERS" \
  --batch-size 4 --accumulate 1 --crop 128 --warmup 20 --val-every 100 --seed 0 --json > "$OUT/train.log" 2>&1
W="$OUT/run/best.safetensors"
pairs=("resources/sample/naip_2015.tif resources/sample/naip_2020.tif naip")
A=$(ls "$SHARED"/data/LEVIR-CD/justchenhao_BIT_CD/A/*.png | head -1); B=${A/\/A\//\/B\/}
pairs+=("$A $B levir")
for p in "${pairs[@]}"; do
  set -- $p
  for mode in "onnxruntime fp32" "onnxruntime int8" "openvino int8"; do
    set -- $p $mode
    "${CC[@]}" detect "$1" "$2" -o "$OUT/$3-$4-$5" --weights "$W" --prompt-mode none --runtime "$4" \
      --precision "$5" --device cpu > "$OUT/$3-$4-$5.log" 2>&1
  done
done
.venv/bin/python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
import numpy as np
from osgeo import gdal
out = Path(sys.argv[1])
def mask(d):
    ds = gdal.Open(str(d / "change_mask.tif")); return ds.GetRasterBand(1).ReadAsArray()
val = [json.loads(l) for l in (out / "train.log").read_text().splitlines() if l.startswith("{") and '"val"' in l]
print("trained tiny-rn50:", val[-1]["iteration"] if val else "?", "iterations;",
      "best val:", val[-1] if val else "n/a")
for pair in ("naip", "levir"):
    ref = mask(out / f"{pair}-onnxruntime-fp32")
    valid = ref != 255
    for rt in ("onnxruntime", "openvino"):
        d = out / f"{pair}-{rt}-int8"
        m = mask(d)
        s = json.loads((d / "summary.json").read_text())
        int8 = (s["model"].get("int8") or {})
        print(f"{pair:6s} {rt:11s} int8 vs fp32: whole-mask agreement {100 * (m[valid] == ref[valid]).mean():.2f} % "
              f"of {valid.sum()} px (fp32 changed {100 * (ref[valid] == 1).mean():.2f} %, int8 "
              f"{100 * (m[valid] == 1).mean():.2f} %); run's own held-out report: {int8.get('mask_agreement')}")
PY
