"""Network throughput: 256² pairs/s per variant × batch size × precision, against the naive baseline.

"Optimised" is the production predictor (:class:`~changeclip.inference.predictor.ChangeCLIPPredictor`,
prompt mode ``none``: text features come from the cache after the first call) on
batches of ``batch`` pairs under the precision's autocast; "naive" is
:class:`~changeclip.bench.naive.NaivePredictor` (batch 1, fp32, prompts tokenised and
encoded for both dates on every pair). Both include the host→device copy of the inputs
and the device→host copy of the logits. Calls are timed in alternation so that load
from other processes hits every configuration alike; the median and the best (minimum)
time per call are both reported — on a shared, busy CPU the best is the better estimate
of the uncontended cost.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from changeclip.bench.common import (
    gpu_peak_mib,
    median,
    random_pairs,
    reset_gpu_peak,
    seeded_model,
    time_interleaved,
)
from changeclip.bench.naive import NaivePredictor
from changeclip.inference.predictor import ChangeCLIPPredictor
from changeclip.inference.runtime import physical_cores
from changeclip.model.prompts import TextFeatureCache

log = logging.getLogger(__name__)

INT8_CALIBRATION_PAIRS = 8


def bench_network(variant: str, device: str, batches: list[int], precisions: list[str], reps: int = 3,
                  naive_pairs: int = 1, size: int = 256, channels_last: bool | None = None,
                  compile_model: bool = False, runtimes: list[str] | None = None) -> list[dict[str, Any]]:
    """Measure one variant.

    Args:
        variant: preset name.
        device: ``cpu`` / ``cuda:N``.
        batches: batch sizes of the optimised path.
        precisions: ``fp32`` / ``bf16`` / ``fp16`` of the optimised path.
        reps: timed calls per configuration (median reported).
        naive_pairs: pairs per timed naive call.
        size: tile side in px.
        channels_last: override the loader's memory-format choice for the optimised path.
        compile_model: wrap the optimised model's forward in ``torch.compile`` (GPU lever).
        runtimes: CPU runtime rows as ``"runtime:precision"`` (``openvino:fp32``, ``onnxruntime:int8``...),
            each at every batch size, timed in alternation with the torch rows. The graph is
            exported (or read from the cache) and compiled before timing; int8 is calibrated on
            :data:`INT8_CALIBRATION_PAIRS` random pairs (other than the timed ones).

    Returns:
        One row per configuration, the naive one first; each optimised row has
        ``speedup_vs_naive``.
    """
    opt = seeded_model(variant, device, "fp32", channels_last=channels_last)
    if compile_model:
        import torch

        opt.model.forward = torch.compile(opt.model.forward, mode="max-autotune-no-cudagraphs")  # type: ignore[method-assign]
    naive_model = opt if not opt.channels_last and not compile_model else seeded_model(
        variant, device, "fp32", channels_last=False)
    naive = NaivePredictor(naive_model)
    n_max = max(batches)
    a, b = random_pairs(max(n_max, naive_pairs), size)
    fns = {("naive", 1, "fp32"): lambda: naive.predict_logits(a[:naive_pairs], b[:naive_pairs])}
    predictors = {}
    for prec in precisions:
        lm = dataclasses.replace(opt, precision=prec)
        lm.text_cache = TextFeatureCache(lm.encode_text, device=device)
        for bs in batches:
            p = ChangeCLIPPredictor(lm, "none", "", batch_size=bs)
            predictors[(prec, bs)] = p
            fns[("optimised", bs, prec)] = (lambda p=p, bs=bs: p.predict_logits(a[:bs], b[:bs]))
    for spec in runtimes or []:
        rt, prec = spec.split(":")
        lm = dataclasses.replace(opt, precision=prec, runtime=rt, threads=physical_cores(), runtime_choice=None,
                                 runtime_fallback=None, export_s={}, _sessions={}, _graphs={})
        lm.text_cache = TextFeatureCache(lm.encode_text, device=device)
        for bs in batches:
            p = ChangeCLIPPredictor(lm, "none", "", batch_size=bs)
            if prec == "int8":
                ca, cb = random_pairs(INT8_CALIBRATION_PAIRS, size, seed=7)
                p.calibrate(ca, cb)
            p.predict_logits(a[:bs], b[:bs])  # export / compile before timing
            if lm.runtime != rt or lm.precision != prec:
                log.warning("runtime row %s fell back to %s %s: not timed", spec, lm.runtime, lm.precision)
                continue
            predictors[(spec, bs)] = p
            fns[("optimised", bs, spec)] = (lambda p=p, bs=bs: p.predict_logits(a[:bs], b[:bs]))
    log.info("network %s on %s: %d configurations x %d reps", variant, device, len(fns), reps)
    times = time_interleaved({str(k): f for k, f in fns.items()}, device, reps)
    rows = []
    base = base_best = None
    for key, fn in fns.items():
        mode, bs, spec = key
        rt, prec = spec.split(":") if ":" in spec else ("torch", spec)
        pairs = naive_pairs if mode == "naive" else bs
        s = median(times[str(key)])
        s_min = min(times[str(key)])
        reset_gpu_peak(device)
        if device.startswith("cuda"):
            fn()
        row: dict[str, Any] = {"variant": variant, "size": size, "mode": mode, "batch": bs, "precision": prec,
                               "runtime": rt,
                               "channels_last": (naive_model if mode == "naive" else opt).channels_last,
                               "compiled": compile_model and mode != "naive",
                               "s_per_call": s, "s_per_call_min": s_min, "pairs_per_call": pairs,
                               "pairs_per_s": pairs / s, "pairs_per_s_best": pairs / s_min,
                               "gpu_peak_mib": gpu_peak_mib(device), "calls": len(times[str(key)])}
        if mode == "naive":
            base, base_best = row["pairs_per_s"], row["pairs_per_s_best"]
        else:
            row["speedup_vs_naive"] = row["pairs_per_s"] / base if base else None
            row["speedup_vs_naive_best"] = row["pairs_per_s_best"] / base_best if base_best else None
            row["text_cache"] = predictors[(spec, bs)].cache.stats()
            if rt != "torch":
                row["threads"] = predictors[(spec, bs)].loaded.threads
                row["int8"] = predictors[(spec, bs)].int8_report
        rows.append(row)
    return rows
