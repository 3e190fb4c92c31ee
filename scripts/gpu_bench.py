#!/usr/bin/env python3
"""GPU benchmark: one short call on the device machine (about 5 minutes on one H100).

What it does, in order (full numbers go to ``$OUT/gpu_bench.json``, a table is printed last):

1. Checks correctness first: on fresh random pairs, the optimised predictor in fp32 against
   the naive baseline (same function: relative error far under 1e-3), and bf16 autocast
   against fp32 (expected 1e-3..1e-2), for RN50 and ViT-B/16 with seeded weights.
2. Runs ``changeclip bench``'s ``gpu`` profile: network pairs/s per variant × batch
   (16/64/128) × precision (fp32/bf16) next to the naive baseline (batch 1, fp32, text encoded
   per pair); text-side cost and cache hit rate; end to end on a 6144² synthetic pair through
   the real pipeline (needs GDAL's Python bindings) and through the overlapped prototype loop
   (reader threads + batched bf16 + writer thread); peak host RSS and GPU memory.
   Training throughput: one optimizer step (forward, backward, AdamW) per variant x batch
   (12/20) x precision (fp32/bf16) in pairs/s, with peak host RSS and peak GPU memory.
   Sections that would start after ``--budget-s`` seconds are skipped and listed.

The device image has PyTorch but neither open_clip (our tokenizer) nor GDAL. Carry the
open_clip wheels (see docs/benchmarks.md); without GDAL the pipeline section is skipped and
the stream loop uses tifffile (plain TIFF, no georeferencing), which the report says.

Run from the repository root on the device machine::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:backend PYTHONUNBUFFERED=1 python3 scripts/gpu_bench.py --out "$OUT"
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "backend"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

log = logging.getLogger("gpu_bench")


def rel_err(out, ref) -> float:  # noqa: ANN001 - numpy arrays
    import numpy as np

    ref64 = ref.astype(np.float64)
    return float(np.linalg.norm(out.astype(np.float64) - ref64) / max(np.linalg.norm(ref64), 1e-30))


def correctness(device: str, variants: list[str]) -> list[dict]:
    """Optimised fp32 vs naive, and bf16 vs fp32, on fresh random pairs (never zeros)."""
    import dataclasses as dc

    import numpy as np

    from changeclip.bench.common import random_pairs, seeded_model
    from changeclip.bench.naive import NaivePredictor
    from changeclip.inference.predictor import ChangeCLIPPredictor

    rows = []
    for variant in variants:
        lm = seeded_model(variant, device, "fp32")
        naive_lm = seeded_model(variant, device, "fp32", channels_last=False)
        a, b = random_pairs(2 if device == "cpu" else 8, 256, seed=int(time.time()) % 10_000)
        fp32 = ChangeCLIPPredictor(lm, "none", batch_size=8).predict_logits(a, b)
        naive = NaivePredictor(naive_lm).predict_logits(a, b)
        bf16 = ChangeCLIPPredictor(dc.replace(lm, precision="bf16"), "none", batch_size=8).predict_logits(a, b)
        finite = bool(np.isfinite(fp32).all() and np.isfinite(bf16).all() and np.isfinite(naive).all())
        rows.append({"variant": variant, "optimised_fp32_vs_naive": rel_err(fp32, naive),
                     "bf16_vs_fp32": rel_err(bf16, fp32), "finite": finite,
                     "argmax_agreement_bf16": float((fp32.argmax(1) == bf16.argmax(1)).mean())})
        del lm, naive_lm
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "build"), help="folder for gpu_bench.json")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--budget-s", type=float, default=300.0, help="skip sections starting after this")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    parser.add_argument("--e2e-size", type=int, default=6144, help="end-to-end raster side in px")
    parser.add_argument("--smoke", action="store_true",
                        help="check this script on a CPU in a minute or two: tiny networks, small rasters")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    import torch

    if args.smoke:
        args.device = "cpu"
    elif not torch.cuda.is_available():
        sys.stderr.write("no CUDA device visible: this script is for the GPU machine\n")
        return 2
    missing = [m for m in ("open_clip", "safetensors") if importlib.util.find_spec(m) is None]
    if missing:
        sys.stderr.write(f"missing Python packages {missing}: carry their wheels (docs/benchmarks.md)\n")
        return 2
    have_gdal = importlib.util.find_spec("osgeo") is not None
    have_tifffile = importlib.util.find_spec("tifffile") is not None
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 in the fp32 rows
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True

    from changeclip.bench.suite import PROFILES, format_report, run_suite

    t0 = time.perf_counter()
    variants = ["tiny-rn50"] if args.smoke else ["rn50", "vit-b-16"]
    checks = correctness(args.device, variants)
    log.info("correctness: %s", checks)
    base = PROFILES["gpu"]
    if args.smoke:
        base = dataclasses.replace(base, variants=variants, batches=[2], reps=1, naive_pairs=1, net_size=64,
                                   e2e_variants=variants, e2e_naive_size=256, e2e_batch=4, hit_rate_tiles=4,
                                   train_variants=variants, train_batches=[2], train_size=64, train_reps=1)
        args.e2e_size = min(args.e2e_size, 384)
        base = dataclasses.replace(base, host_size=min(base.host_size, 384), describe_size=256, describe_clip="tiny")
    profile = dataclasses.replace(base, compile_model=args.compile, e2e_size=args.e2e_size,
                                  budget_s=max(0.0, args.budget_s - (time.perf_counter() - t0)))
    notes = []
    if not have_gdal:
        if not have_tifffile:
            sys.stderr.write("neither GDAL (osgeo) nor tifffile is importable: no end-to-end section possible\n")
            return 2
        profile = dataclasses.replace(profile, e2e_paths=["stream"], e2e_io="tifffile", host_size=0, describe_size=0)
        notes.append("GDAL's Python bindings are not installed on this machine: the pipeline end-to-end and "
                     "describe sections were not run; the stream loop read and wrote plain TIFFs through tifffile "
                     "(no georeferencing)")
    report = run_suite(profile, args.device)
    report["correctness"] = checks
    report["notes"] = notes
    report["tf32"] = False
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_bench.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lines = ["Correctness (relative L2 error of logits, fresh random pairs)"]
    for c in checks:
        lines.append(f"  {c['variant']}: optimised fp32 vs naive {c['optimised_fp32_vs_naive']:.2e}; bf16 vs fp32 "
                     f"{c['bf16_vs_fp32']:.2e}; argmax agreement {c['argmax_agreement_bf16']:.4f}; "
                     f"finite {c['finite']}")
    lines += [f"note: {n}" for n in notes]
    print("\n".join(lines) + "\n\n" + format_report(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
