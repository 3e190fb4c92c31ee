"""Running a backend job from a Processing algorithm: progress, cancel and the backend's messages in the log.

Shared by ``changeclip:createtrainingdata`` and ``changeclip:trainmodel``; raster inputs that are
not local files are exported as ``changeclip:detectchanges`` exports them.
"""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsApplication,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsRasterLayer,
)

from ..core import protocol
from ..core.backend_launcher import LAUNCHER
from ..core.errors import ChangeClipPluginError, JobCancelledError
from ..core.layers import ExportRequest, local_raster_path, prepare_input, run_export
from ..core.runner import format_duration, progress_percent, progress_text, run_job, validation_line
from ..core.settings import BackendConfig


def raster_path(layer: QgsRasterLayer | None, other: QgsRasterLayer | None, key: str, work_dir: str,
                context: QgsProcessingContext, feedback: QgsProcessingFeedback) -> str:
    """A local file for raster input ``key``: the layer's own file, or a temporary GeoTIFF of a
    non-file layer (WMS/XYZ, virtual rasters) over the other raster's extent and pixel grid."""
    if layer is None:
        raise QgsProcessingException(f"{key}: no raster layer given")
    extent = crs = pixel = None
    if local_raster_path(layer) is None and isinstance(other, QgsRasterLayer) \
            and local_raster_path(other) is not None:
        extent, crs, pixel = other.extent(), other.crs(), other.rasterUnitsPerPixelX()
    try:
        prepared = prepare_input(layer, extent, crs, pixel, context.transformContext())
        if isinstance(prepared, ExportRequest):
            feedback.pushInfo(f"{key}: layer '{layer.name()}' is not a local file; exporting "
                              f"{prepared.width}x{prepared.height} px to a temporary GeoTIFF")
            return run_export(prepared, work_dir, feedback)
        return prepared
    except ChangeClipPluginError as exc:
        raise QgsProcessingException(f"{key}: {exc}") from None


class JobLog:
    """Forwards a job's progress and events to a Processing feedback."""

    def __init__(self, feedback: QgsProcessingFeedback) -> None:
        self.feedback = feedback
        self.validations: list[dict[str, Any]] = []
        self.last_message = ""

    def submitted(self, info: protocol.JobInfo) -> None:
        """Say so when the job waits behind another one."""
        if info.state == "queued" and info.progress.message:
            self.feedback.pushInfo(f"ChangeCLIP: {info.progress.message}")

    def progress(self, progress: protocol.JobProgress) -> None:
        """Progress bar and its text."""
        self.feedback.setProgress(progress_percent(progress))
        self.feedback.setProgressText(progress_text(progress))

    def event(self, event: dict[str, Any]) -> None:
        """Training events in the log: the start, each validation's metrics, the backend's notes."""
        kind = event.get("event")
        if kind == "val":
            self.validations.append(event)
            self.feedback.pushInfo(validation_line(event))
        elif kind == "note":
            self.feedback.pushWarning(f"ChangeCLIP backend: {event.get('message')}")
        elif kind == "start":
            s = event.get("schedule") or {}
            self.feedback.pushInfo(
                f"Training {event.get('train_tiles')} tiles ({event.get('val_tiles')} for validation) on "
                f"{event.get('device')}, {event.get('precision')}: iterations {event.get('iteration')} to "
                f"{event.get('iters')}, batch {s.get('batch_size')} x accumulate {s.get('accumulate')}")
        elif kind == "step" and isinstance(event.get("eta_s"), (int, float)) and event.get("iteration") == 1:
            self.feedback.pushInfo(f"First iteration done; about {format_duration(event['eta_s'])} left")
        elif kind == "checkpoint" and event.get("reason") == "interrupted":
            self.feedback.pushInfo(f"Resumable checkpoint saved at iteration {event.get('iteration')}")


def run_backend_job(params: protocol.JobParams, feedback: QgsProcessingFeedback, log: JobLog | None = None
                    ) -> dict[str, Any]:
    """Run ``params`` on the backend (started if needed); return the job's result summary.

    Raises:
        QgsProcessingException: the job failed, was cancelled (the message says what was kept), or the
            backend could not be reached.
    """
    log = log or JobLog(feedback)
    config = BackendConfig.load()
    feedback.pushInfo(f"ChangeCLIP: backend {config.describe()}")
    try:
        return run_job(params, log.progress, feedback.isCanceled, on_event=log.event, config=config,
                       on_submitted=log.submitted)
    except JobCancelledError as exc:
        raise QgsProcessingException(f"ChangeCLIP: {exc}") from None
    except ChangeClipPluginError as exc:
        raise QgsProcessingException(f"ChangeCLIP: {exc}") from None
    finally:
        if QgsApplication.platform() == "qgis_process":
            # qgis_process exits without running Python's atexit hooks: stop the backend we started.
            LAUNCHER.stop()
