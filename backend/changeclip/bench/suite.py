"""The benchmark suite: profiles (what to measure where), the run, the JSON and the table."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from changeclip.bench.common import environment, peak_rss_mib

log = logging.getLogger(__name__)


@dataclass
class Profile:
    """What one benchmark run measures.

    Attributes:
        name: profile name (``cpu``, ``gpu``, ``quick``).
        variants: network variants of the throughput and text sections.
        batches: optimised batch sizes.
        precisions: optimised precisions.
        reps: timed calls per configuration.
        naive_pairs: pairs per timed naive call.
        e2e_variants: variants timed end to end.
        e2e_size: pipeline raster side (px).
        e2e_naive_size: naive raster side (px).
        e2e_batch: pipeline batch size.
        e2e_precisions: pipeline precisions.
        hit_rate_tiles: tiles of the text-cache hit-rate run.
        irmad_size: raster side of the irmad end-to-end run (0 = skip).
        host_size: raster side of the pipeline run with a no-op engine, the host's ceiling
            (0 = skip; needs GDAL).
        compile_model: also time a ``torch.compile``-d forward (GPU).
        net_size: tile side of the throughput section (256 = the paper's tiles).
        e2e_paths: end-to-end paths to time: ``pipeline`` (changeclip.pipeline, needs GDAL) and/or
            ``stream`` (the overlapped prototype loop of :mod:`changeclip.bench.stream`).
        e2e_io: I/O back end of the stream loop (``gdal`` or ``tifffile``).
        budget_s: skip the sections that start after this many seconds (0 = no limit).
        describe_size: raster side of the ``--describe`` run (IR-MAD + polygons + CLIP; 0 = skip).
        describe_clip: CLIP of that run: ``vit-b-16`` (the default model's cost) or ``tiny``.
        train_variants: variants of the training-throughput section (empty = skip).
        train_batches: batch sizes of the training section.
        train_precisions: precisions of the training section.
        train_size: crop side of the training section (px).
        train_reps: timed steps per training configuration.
        runtimes: CPU runtime rows of the throughput section, ``"runtime:precision"``.
        e2e_runtimes: CPU runtime rows of the end-to-end section, ``"runtime:precision"``.
    """

    name: str
    variants: list[str]
    batches: list[int]
    precisions: list[str]
    reps: int
    naive_pairs: int
    e2e_variants: list[str]
    e2e_size: int
    e2e_naive_size: int
    e2e_batch: int
    e2e_precisions: list[str]
    hit_rate_tiles: int = 16
    irmad_size: int = 0
    host_size: int = 0
    compile_model: bool = False
    net_size: int = 256
    e2e_paths: list[str] = field(default_factory=lambda: ["pipeline"])
    e2e_io: str = "gdal"
    budget_s: float = 0.0
    describe_size: int = 0
    describe_clip: str = "vit-b-16"
    notes: list[str] = field(default_factory=list)
    train_variants: list[str] = field(default_factory=list)
    train_batches: list[int] = field(default_factory=lambda: [2])
    train_precisions: list[str] = field(default_factory=lambda: ["fp32"])
    train_size: int = 256
    train_reps: int = 2
    runtimes: list[str] = field(default_factory=list)
    e2e_runtimes: list[str] = field(default_factory=list)


PROFILES = {
    "cpu": Profile("cpu", ["rn50", "vit-b-16"], [2], ["fp32", "bf16"], reps=3, naive_pairs=1,
                   e2e_variants=["rn50"], e2e_size=512, e2e_naive_size=512, e2e_batch=4,
                   e2e_precisions=["fp32", "bf16"], hit_rate_tiles=16, irmad_size=2048, host_size=2048,
                   describe_size=1024, train_variants=["rn50", "vit-b-16"], train_batches=[2],
                   train_precisions=["fp32", "bf16"], train_reps=1,
                   runtimes=["onnxruntime:fp32", "openvino:fp32", "openvino:bf16", "onnxruntime:int8",
                             "openvino:int8"],
                   e2e_runtimes=["openvino:fp32", "onnxruntime:fp32", "openvino:bf16", "openvino:int8"]),
    "quick": Profile("quick", ["tiny-rn50"], [2], ["fp32"], reps=1, naive_pairs=1,
                     e2e_variants=["tiny-rn50"], e2e_size=384, e2e_naive_size=384, e2e_batch=4,
                     e2e_precisions=["fp32"], hit_rate_tiles=4, irmad_size=256, net_size=128, host_size=384,
                     describe_size=256, describe_clip="tiny", train_variants=["tiny-rn50"], train_batches=[2],
                     train_precisions=["fp32"], train_size=64, train_reps=1,
                     runtimes=["onnxruntime:fp32", "openvino:fp32"], e2e_runtimes=["onnxruntime:fp32"]),
    "gpu": Profile("gpu", ["rn50", "vit-b-16"], [16, 64, 128], ["fp32", "bf16"], reps=5, naive_pairs=8,
                   e2e_variants=["rn50", "vit-b-16"], e2e_size=6144, e2e_naive_size=1024, e2e_batch=64,
                   e2e_precisions=["bf16"], hit_rate_tiles=64, irmad_size=0, host_size=6144,
                   e2e_paths=["pipeline", "stream"], budget_s=300.0, describe_size=2048,
                   train_variants=["rn50", "vit-b-16"], train_batches=[12, 20], train_precisions=["fp32", "bf16"],
                   train_reps=5),
}


def run_suite(profile: Profile, device: str, tagger_weights: str | None = None,
              workdir: str | None = None) -> dict[str, Any]:
    """Run every section of ``profile`` on ``device``; return the JSON-able report."""
    from changeclip.bench.common import random_pairs
    from changeclip.bench.end_to_end import (
        bench_describe,
        bench_end_to_end,
        bench_host_ceiling,
        bench_irmad_end_to_end,
    )
    from changeclip.bench.network import bench_network
    from changeclip.bench.stream import bench_stream
    from changeclip.bench.text import bench_hit_rate, bench_text_cost
    from changeclip.bench.training import bench_training

    t_start = time.perf_counter()
    report: dict[str, Any] = {"profile": asdict(profile), "environment": environment(device), "network": [],
                              "text_cost": [], "text_cache_hit_rate": [], "end_to_end": [], "describe": [],
                              "training": [], "memory": {}, "skipped": []}

    def section(name: str) -> bool:
        if profile.budget_s and time.perf_counter() - t_start > profile.budget_s:
            log.warning("time budget of %.0f s spent: skipping %s", profile.budget_s, name)
            report["skipped"].append(f"{name}: time budget of {profile.budget_s:.0f} s spent")
            return False
        log.info("section %s", name)
        return True

    for variant in profile.variants:
        if section(f"network {variant}"):
            report["network"] += bench_network(variant, device, profile.batches, profile.precisions, profile.reps,
                                               profile.naive_pairs, size=profile.net_size,
                                               runtimes=profile.runtimes if device == "cpu" else [])
        if profile.compile_model and section(f"network {variant} compiled"):
            try:
                report["network"] += [r for r in bench_network(variant, device, [max(profile.batches)], ["bf16"],
                                                                profile.reps, profile.naive_pairs,
                                                                size=profile.net_size, compile_model=True)
                                      if r["mode"] != "naive"]
            except Exception as exc:  # noqa: BLE001 - a failed compile is a measured outcome, not a crash
                report["network"].append({"variant": variant, "mode": "optimised", "compiled": True,
                                          "error": f"{type(exc).__name__}: {exc}"[:300]})
        if section(f"text cost {variant}"):
            report["text_cost"] += bench_text_cost(variant, device, profile.precisions)
    if section("text-cache hit rate"):
        a, b = random_pairs(profile.hit_rate_tiles, 64, seed=1)  # random tiles: only none/words rates are exact
        report["text_cache_hit_rate"] = bench_hit_rate(device, a, b, batch=2, tagger_weights=tagger_weights)
    for variant in profile.train_variants:
        if section(f"training {variant}"):
            report["training"] += bench_training(variant, device, profile.train_batches, profile.train_precisions,
                                                 profile.train_reps, size=profile.train_size)
    for variant in profile.e2e_variants:
        if "pipeline" in profile.e2e_paths and section(f"end-to-end pipeline {variant}"):
            report["end_to_end"] += bench_end_to_end(variant, device, profile.e2e_size, profile.e2e_precisions,
                                                     profile.e2e_batch, profile.e2e_naive_size, workdir,
                                                     runtimes=profile.e2e_runtimes if device == "cpu" else [])
        if "stream" in profile.e2e_paths and section(f"end-to-end stream {variant}"):
            report["end_to_end"] += bench_stream(variant, device, profile.e2e_size, profile.e2e_naive_size,
                                                 profile.e2e_batch, profile.e2e_precisions[-1], profile.e2e_io,
                                                 workdir=workdir)
    if profile.irmad_size and section("end-to-end irmad"):
        report["end_to_end"].append(bench_irmad_end_to_end(profile.irmad_size, workdir))
    if profile.host_size and section("end-to-end no-op engine (host ceiling)"):
        report["end_to_end"].append(bench_host_ceiling(profile.host_size, profile.e2e_batch, workdir))
    if profile.describe_size and section("describe (CLIP words per polygon)"):
        report["describe"].append(bench_describe(profile.describe_size, profile.describe_clip, device, workdir))
    report["memory"] = {"peak_host_rss_mib": peak_rss_mib(),
                        "peak_gpu_mib_max": max((r.get("gpu_peak_mib") or 0 for r in
                                                 report["network"] + report["end_to_end"] + report["training"]),
                                                default=0) or None}
    report["environment"]["load_avg_end"] = list(os.getloadavg())
    report["seconds"] = time.perf_counter() - t_start
    return report


def _f(v: Any, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _x(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}x" if v >= 100 else f"{v:.2f}x"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
           for r in [head, *rows]]
    return [fmt[0], "-" * len(fmt[0]), *fmt[1:]]


def format_report(rep: dict[str, Any]) -> str:
    """Human-readable tables of a suite report (the table ``changeclip bench`` prints last)."""
    env = rep["environment"]
    dev = env.get("gpu") or env.get("cpu")
    lines = [f"changeclip bench, profile {rep['profile']['name']}, device {env['device']} ({dev}), torch "
             f"{env['torch']}, {env['torch_threads']} threads, load avg at start {env['load_avg_start'][0]:.1f}",
             f"CPU {env.get('cpu', '?')}, {env.get('cpu_count', '?')} logical CPUs; vector extensions: "
             f"{' '.join(env.get('cpu_vector_extensions') or []) or 'unknown'}; runtimes: "
             + ", ".join(f"{k} {v or 'not installed'}" for k, v in (env.get("runtimes") or {}).items()), ""]
    lines.append(f"Network throughput, {rep['profile']['net_size']}x{rep['profile']['net_size']} pairs/s (whole network incl. text side; naive = batch 1, fp32, "
                 "text encoded per pair)")
    rows = []
    for r in rep["network"]:
        if "error" in r:
            rows.append([r["variant"], "compiled", "-", "-", "-", "-", "-", "-", r["error"][:60]])
            continue
        rows.append([r["variant"], r["mode"] + (" +compile" if r.get("compiled") else ""), str(r["batch"]),
                     r.get("runtime", "torch"), r["precision"], _f(r["pairs_per_s"]), _x(r.get("speedup_vs_naive")), _f(r["pairs_per_s_best"]),
                     _x(r.get("speedup_vs_naive_best")), _f(r.get("gpu_peak_mib"), 0)])
    lines += _table(["variant", "mode", "batch", "runtime", "precision", "pairs/s", "vs naive", "best pairs/s",
                     "best vs naive",
                     "GPU MiB"], rows)
    lines += ["", "Text side per pair (4 prompts: background + foreground, both dates)"]
    rows = [[r["variant"], r["precision"], _f(r["tokenise_ms"]), _f(r["encode_ms"]), _f(r["cache_hit_ms"], 3),
             _x(r["uncached_over_cached"])] for r in rep["text_cost"]]
    lines += _table(["variant", "precision", "tokenise ms", "encode ms", "cache hit ms", "uncached/cached"], rows)
    lines += ["", "Text-cache hit rate per prompt mode"]
    rows = [[r["prompt_mode"], str(r["tiles"]), str(r["hits"]), str(r["misses"]), _f(r["hit_rate"], 3),
             "yes" if r["representative"] else "no (depends on tagger weights and tiles)"] for r in rep["text_cache_hit_rate"]]
    lines += _table(["prompt mode", "tiles", "hits", "misses", "hit rate", "representative"], rows)
    lines += ["", "End to end, GeoTIFF -> GeoTIFF (model already loaded; 'once s' = int8's calibration on the "
                  "pair, a fixed cost per raster pair that MPix/s and tiles/s leave out)"]
    rows = [[r["variant"], r["path"], r.get("runtime", "torch"), r["precision"], str(r["batch"]), f"{r['raster_px']}^2",
             _f(r["seconds"], 1), _f(r.get("once_s") or None, 1), _f(r["mpix_per_s"], 3), _f(r.get("pairs_per_s")),
             _x(r.get("speedup_vs_naive"))] for r in rep["end_to_end"]]
    lines += _table(["variant", "path", "runtime", "precision", "batch", "raster", "s", "once s", "MPix/s", "tiles/s",
                     "vs naive"], rows)
    if rep.get("describe"):
        lines += ["", "Describing change polygons (IR-MAD + polygons + --describe, CLIP seeded weights)"]
        rows = [[r["clip"], r["device"], f"{r['raster_px']}^2", str(r["polygons"]), _f(r["describe_s"], 1),
                 _f(r["polygons_per_s"], 1), _f(100 * r["share_of_detection"], 0) + " %" if r["share_of_detection"]
                 is not None else "-"] for r in rep["describe"]]
        lines += _table(["CLIP", "device", "raster", "polygons", "describe s", "polygons/s", "share of run"], rows)
    lines += ["", f"Training throughput, one optimizer step (forward + backward + AdamW, train mode, accumulate 1), "
                  f"{rep['profile'].get('train_size', 256)} px crops"]
    rows = [[r["variant"], str(r["batch"]), r["precision"],
             "out of memory" if r.get("out_of_memory") else _f(r["pairs_per_s"]),
             _f(r.get("pairs_per_s_best")), _f(r.get("step_ms"), 0), _f(r.get("peak_rss_mib"), 0),
             _f(r.get("gpu_peak_mib"), 0)] for r in rep.get("training", [])]
    lines += _table(["variant", "batch", "precision", "pairs/s", "best pairs/s", "step ms", "peak RSS MiB",
                     "GPU MiB"], rows)
    for skipped in rep.get("skipped", []):
        lines.append(f"skipped: {skipped}")
    mem = rep["memory"]
    lines += ["", f"peak host RSS {mem['peak_host_rss_mib']:.0f} MiB; peak GPU memory "
                  f"{_f(mem.get('peak_gpu_mib_max'), 0)} MiB; suite took {rep['seconds']:.0f} s"]
    return "\n".join(lines)
