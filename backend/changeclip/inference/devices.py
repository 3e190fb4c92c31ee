"""Compute devices: which exist, which one a ``--device`` value means, which precision runs there."""

from __future__ import annotations

import logging
import platform
import re
from typing import Any

import torch

from changeclip.errors import InputError

log = logging.getLogger(__name__)

_DEVICE_RE = re.compile(r"auto|cpu|cuda(?::(\d+))?")


def cuda_available() -> bool:
    """True when torch can use at least one CUDA device."""
    try:
        return bool(torch.cuda.is_available()) and torch.cuda.device_count() > 0
    except Exception:  # a broken driver install raises from deep inside torch
        log.debug("CUDA probe failed", exc_info=True)
        return False


def resolve_device(spec: str = "auto") -> str:
    """The concrete torch device a user's device choice means.

    Args:
        spec: ``auto`` (first CUDA device if any, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        ``"cpu"`` or ``"cuda:N"``.

    Raises:
        InputError: malformed value, CUDA requested but unavailable, or N out of range.
    """
    match = _DEVICE_RE.fullmatch(str(spec).strip().lower())
    if not match:
        raise InputError(f"device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    value = match.group(0)
    if value == "cpu":
        return "cpu"
    if value == "auto":
        return "cuda:0" if cuda_available() else "cpu"
    if not cuda_available():
        raise InputError(
            f"device {spec!r} was requested but CUDA is not available here (torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda or 'none'}); use --device cpu or --device auto"
        )
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise InputError(f"device {spec!r} does not exist: this machine has {count} CUDA device(s), "
                         f"cuda:0..cuda:{count - 1}")
    return f"cuda:{index}"


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where available)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def list_devices() -> list[dict[str, Any]]:
    """Every device this backend can run on, CPU first.

    Returns:
        Dicts with ``id`` (``cpu`` / ``cuda:N``), ``name``, ``memory_total_bytes``, ``kind``
        ``bf16`` (native bf16 arithmetic: AMX / AVX-512 BF16 on a CPU) and, for CUDA,
        ``memory_free_bytes`` and ``capability``.
    """
    import os

    try:
        import psutil

        cpu_mem = int(psutil.virtual_memory().total)
    except Exception:  # psutil missing or restricted /proc
        cpu_mem = 0
    out: list[dict[str, Any]] = [{"id": "cpu", "kind": "cpu", "name": cpu_name(),
                                  "cores": os.cpu_count() or 1, "memory_total_bytes": cpu_mem,
                                  "bf16": cpu_has_native_bf16()}]
    if cuda_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            entry: dict[str, Any] = {"id": f"cuda:{i}", "kind": "cuda", "name": props.name,
                                     "memory_total_bytes": int(props.total_memory),
                                     "capability": f"{props.major}.{props.minor}"}
            try:
                free, _total = torch.cuda.mem_get_info(i)
                entry["memory_free_bytes"] = int(free)
            except Exception:  # some drivers refuse the query; the total is still useful
                pass
            entry["bf16"] = _bf16_ok(i)
            out.append(entry)
    return out


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AMX tiles or AVX-512 BF16), so that bf16
    autocast is faster than fp32 rather than emulated and slower."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    for probe in probes:
        try:
            if probe is not None and probe():
                return True
        except Exception:  # private torch probes: a missing or failing one means "unknown"
            log.debug("CPU bf16 probe failed", exc_info=True)
    return False


def _bf16_ok(index: int) -> bool:
    try:
        with torch.cuda.device(index):
            return bool(torch.cuda.is_bf16_supported())
    except Exception:
        return False


def resolve_precision(precision: str, device: str) -> str:
    """The precision a run will use on ``device``.

    Args:
        precision: ``auto``, ``fp32``, ``bf16``, ``fp16`` or ``int8``.
        device: A resolved device (``cpu`` / ``cuda:N``).

    Returns:
        ``fp32``, ``bf16``, ``fp16`` or ``int8`` (CPU only: a statically quantised graph run by
        onnxruntime or openvino, never chosen by ``auto``). ``auto`` = fp32 on the CPU; on CUDA bf16 autocast where
        the GPU supports it, else fp16. bf16 on a CPU without native bf16 runs (emulated, slower
        than fp32) with a logged warning.

    Raises:
        InputError: unknown value, fp16 on the CPU, or bf16 on a GPU without bf16.
    """
    if precision not in ("auto", "fp32", "bf16", "fp16", "int8"):
        raise InputError(f"precision must be auto, fp32, bf16, fp16 or int8, got {precision!r}")
    if precision == "int8" and device != "cpu":
        raise InputError(f"precision int8 runs on the CPU only (onnxruntime or openvino), not on {device}; use "
                         "--device cpu, or auto, fp32, bf16 or fp16 on the GPU")
    if device == "cpu":
        if precision == "fp16":
            raise InputError("precision fp16 is not supported on the CPU; use fp32 (default) or bf16")
        if precision == "bf16" and not cpu_has_native_bf16():
            log.warning("this CPU has no native bf16 (AMX or AVX-512 BF16): bf16 will be emulated and slower "
                        "than fp32; use --precision fp32")
        return "fp32" if precision == "auto" else precision
    index = int(device.split(":")[1]) if ":" in device else 0
    if precision == "auto":
        return "bf16" if _bf16_ok(index) else "fp16"
    if precision == "bf16" and not _bf16_ok(index):
        raise InputError(f"{device} does not support bf16; use --precision fp16 or fp32")
    return precision
