"""Shared benchmark helpers: timing, memory, environment, seeded models, synthetic inputs."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from changeclip.inference.devices import cpu_name
from changeclip.inference.predictor import LoadedModel, load_model
from changeclip.inference.runtime import runtime_status
from changeclip.model.config import PRESETS
from changeclip.weights import LoadedWeights


def sync(device: str) -> None:
    """Wait for queued device work (no-op on the CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def time_calls(fn: Callable[[], Any], device: str, reps: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``reps`` calls of ``fn`` after ``warmup`` calls (device synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def time_interleaved(fns: dict[str, Callable[[], Any]], device: str, reps: int,
                     warmup: int = 1) -> dict[str, list[float]]:
    """Time several functions in alternation (A B A B ...), so that a changing machine load
    (other processes on a shared CPU) hits all of them alike. Returns seconds per call."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            out[k].append(time.perf_counter() - t0)
    return out


def median(xs: list[float]) -> float:
    """Median of a non-empty list."""
    return float(statistics.median(xs))


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_gpu_peak(device: str) -> None:
    """Reset the CUDA peak-memory counter (no-op on the CPU)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(torch.device(device))


def gpu_peak_mib(device: str) -> float | None:
    """Peak CUDA memory allocated by torch since the last reset, MiB (None on the CPU)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(torch.device(device)) / 2**20
    return None


def environment(device: str) -> dict[str, Any]:
    """Versions, device and machine load, for the report."""
    from changeclip import __version__

    try:
        from osgeo import gdal

        gdal_version = gdal.__version__
    except ImportError:  # pragma: no cover - GDAL is a hard dependency
        gdal_version = None
    info: dict[str, Any] = {
        "changeclip": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
        "numpy": np.__version__, "gdal": gdal_version, "platform": platform.platform(),
        "cpu": cpu_name(), "cpu_vector_extensions": cpu_vector_extensions(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "device": device, "load_avg_start": list(os.getloadavg()),
        "runtimes": runtime_status(),
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


_VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                 "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_vector_extensions() -> list[str]:
    """The CPU's SIMD / matrix extensions that matter to the runtimes (from /proc/cpuinfo's flags)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in _VECTOR_FLAGS if f in flags]
    except OSError:
        pass
    return []


@lru_cache(maxsize=4)
def seeded_weights(variant: str, seed: int = 0) -> LoadedWeights:
    """Full-size (or tiny) weights made with the parity kit's seeded rule (no file, no download)."""
    from changeclip.weights.seeded import seeded_state_dict

    cfg = PRESETS[variant]
    return LoadedWeights(cfg=cfg, state_dict=seeded_state_dict(cfg, seed=seed), source_format="native",
                         sha256=f"seeded:{variant}:{seed}", meta={"source": "seeded"}, path=f"<seeded {variant}>")


def seeded_model(variant: str, device: str, precision: str, channels_last: bool | None = None) -> LoadedModel:
    """A model with seeded weights through the normal :func:`load_model`.

    Args:
        variant: a preset name (``rn50``, ``vit-b-16``, ``tiny-rn50``, ``tiny-vit``).
        device: ``cpu`` / ``cuda:N``.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        channels_last: override the loader's choice (it uses channels-last for RN50).
    """
    lm = load_model(seeded_weights(variant), device=device, precision=precision)
    if channels_last is not None and channels_last != lm.channels_last:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        lm.model = lm.model.to(memory_format=fmt)
        lm.channels_last = channels_last
    return lm


def random_pairs(n: int, size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random (never all-zero) float32 RGB pairs in 0..255: two (n, 3, size, size) arrays."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, 255, (n, 3, size, size)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 30, a.shape), 0, 255).astype(np.float32)
    return a, b
