"""The one call both front-ends use: make sure a backend runs, then run a job on it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import protocol
from .backend_launcher import LAUNCHER, BackendLauncher
from .settings import BackendConfig

STAGE_LABELS = {
    "queued": "Waiting in the backend's queue", "preparing": "Opening and aligning rasters",
    "loading_model": "Loading the model", "scaling": "Scaling radiometry", "fitting": "Fitting IR-MAD",
    "calibrating": "Calibrating int8 on sample tiles",
    "tiles": "Detecting changes", "polygons": "Making polygons", "describing": "Describing changes",
    "finalising": "Writing outputs",
    "done": "Done", "training": "Training",
}


def progress_text(progress: protocol.JobProgress) -> str:
    """A one-line description of a progress report, e.g. ``"Detecting changes (12/40 tiles)"``."""
    label = STAGE_LABELS.get(progress.stage, progress.stage)
    if progress.stage == "training" and progress.iterations:
        label += f" (iteration {progress.iteration or 0}/{progress.iterations}"
        label += f", loss {progress.loss:.4f})" if progress.loss is not None else ")"
        if progress.eta_s is not None and progress.eta_s > 1:
            label += f", about {format_duration(progress.eta_s)} left"
        return label
    if progress.total:
        unit = " tiles" if progress.stage == "tiles" else ""
        label += f" ({progress.done}/{progress.total}{unit})"
    if progress.eta_s is not None and progress.stage == "tiles" and progress.eta_s > 1:
        label += f", about {progress.eta_s:.0f} s left"
    if progress.stage == "queued" and progress.message:
        label += f": {progress.message}"
    return label


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"12 min"``, ``"2 h 05 min"``."""
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min"


def validation_line(event: dict[str, Any]) -> str:
    """A training ``val`` event in words: ``"Validation at iteration 200: change precision 71.2 %, recall
    64.0 %, F1 67.4 %, IoU 50.8 % (best so far)"``."""
    def pct(key: str) -> str:
        value = event.get(key)
        return "-" if not isinstance(value, (int, float)) else f"{100 * value:.1f} %"

    best = " (best so far)" if event.get("best") else ""
    return (f"Validation at iteration {event.get('iteration')}: change precision {pct('precision')}, recall "
            f"{pct('recall')}, F1 {pct('f1')}, IoU {pct('iou')}{best}")


def progress_percent(progress: protocol.JobProgress) -> float:
    """Overall progress in percent (0-100)."""
    return max(0.0, min(100.0, float(progress.fraction or 0.0) * 100.0))


def run_job(params: protocol.JobParams,
            on_progress: Callable[[protocol.JobProgress], None] | None = None,
            is_cancelled: Callable[[], bool] | None = None,
            on_event: Callable[[dict[str, Any]], None] | None = None,
            launcher: BackendLauncher = LAUNCHER,
            config: BackendConfig | None = None,
            on_submitted: Callable[[protocol.JobInfo], None] | None = None) -> dict[str, Any]:
    """Start or reuse the backend and run a job of any kind on it; return its result summary.

    Raises:
        BackendUnavailable, BackendError, JobFailed, JobCancelledError: see :mod:`errors`.
    """
    backend = launcher.ensure(config)
    return backend.client.run_job(params, on_progress=on_progress, is_cancelled=is_cancelled, on_event=on_event,
                                  on_submitted=on_submitted)


def run_detection(params: protocol.DetectParams,
                  on_progress: Callable[[protocol.JobProgress], None] | None = None,
                  is_cancelled: Callable[[], bool] | None = None,
                  launcher: BackendLauncher = LAUNCHER,
                  config: BackendConfig | None = None) -> dict[str, Any]:
    """Start or reuse the backend and run ``params`` on it; return the run's summary.

    Raises:
        BackendUnavailable, BackendError, JobFailed, JobCancelledError: see :mod:`errors`.
    """
    backend = launcher.ensure(config)
    return backend.client.run_job(params, on_progress=on_progress, is_cancelled=is_cancelled)


def result_line(summary: dict[str, Any]) -> str:
    """The changed area of a finished run in words, e.g. ``"Changed area: 1,234 m² (2.50 % of the
    valid area)"``; where the rasters have no CRS the area is unknown and pixels are counted instead.

    Args:
        summary: the run's ``summary.json`` content.
    """
    fraction = float(summary.get("changed_fraction") or 0.0)
    area = summary.get("changed_area_m2")
    if area is None:
        pixels = int(summary.get("changed_pixels") or 0)
        return (f"Changed pixels: {pixels:,} ({fraction * 100:.2f} % of the valid area; area unknown: "
                "the rasters have no CRS)")
    return f"Changed area: {float(area):,.0f} m² ({fraction * 100:.2f} % of the valid area)"


def runtime_line(summary: dict[str, Any]) -> str:
    """Which runtime and precision computed a network run, for the dock (empty for irmad), e.g.
    ``", runtime openvino, fp32"``, ``", runtime onnxruntime, int8 (mask agrees with fp32 on 99.1 %
    of sample pixels)"`` or the fallback reason when a CPU runtime could not be used.

    Args:
        summary: the run's ``summary.json`` content.
    """
    model = summary.get("model")
    if not isinstance(model, dict) or not model.get("runtime"):
        return ""
    text = f", runtime {model['runtime']}, {model.get('precision', '?')}"
    int8 = model.get("int8")
    if isinstance(int8, dict) and int8.get("mask_agreement") is not None:
        text += f" (mask agrees with fp32 on {100 * float(int8['mask_agreement']):.1f} % of sample pixels)"
    if model.get("runtime_fallback"):
        text += f"\nRuntime fallback: {model['runtime_fallback']}"
    return text


def device_line(status: dict[str, Any]) -> str:
    """Where the backend computes, for the dock: ``"cuda:0 NVIDIA H100 …"`` or ``"CPU — slow"``.

    Args:
        status: the answer of ``GET /v1/status``.
    """
    device = str(status.get("default_device") or "")
    devices = status.get("devices") or []
    name = ""
    cpu_bf16 = False
    for entry in devices:
        if not isinstance(entry, dict):
            continue
        if str(entry.get("id", "")) == "cpu":
            cpu_bf16 = entry.get("bf16") is True
        if str(entry.get("id", "")) == device:
            name = str(entry.get("name", ""))
            memory = entry.get("memory_total_bytes")
            if memory:
                name += f" ({float(memory) / 2**30:.0f} GiB)"
    if not device or device == "cpu":
        hint = "; precision bf16 runs 2-3x faster on this CPU" if cpu_bf16 else ""
        return f"CPU — slow (no GPU available to the backend){hint}"
    return f"{device} {name}".strip()
