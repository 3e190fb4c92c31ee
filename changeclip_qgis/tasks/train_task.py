"""The Train page's background work: a QgsTask that makes the training data and trains, as backend jobs.

``run()`` (worker thread) exports non-file rasters, runs the ``dataset`` job (unless the dataset
folder is already there) and then the ``train`` job, following both; the job's events reach the
page through :attr:`TrainTask.eventReceived` (queued across threads). Cancelling cancels the
backend job: the trainer then saves a resumable checkpoint. ``mode`` ``estimate`` trains a few
iterations into a scratch folder to measure the seconds per iteration on the backend's device.
"""

from __future__ import annotations

import os
import shutil
import statistics
from dataclasses import replace
from typing import Any

from qgis.PyQt.QtCore import pyqtSignal

from ..core import protocol
from ..core.backend_launcher import LAUNCHER, BackendLauncher
from ..core.errors import JobCancelledError
from ..core.layers import ExportRequest, run_export
from ..core.runner import progress_percent, progress_text, run_job
from ..core.settings import BackendConfig
from .backend_job_task import BackendJobTask

ESTIMATE_ITERATIONS = 4
"""Iterations of the warm-up run that measures the speed (the first one is not counted)."""


def seconds_per_iteration(events: list[dict[str, Any]]) -> tuple[float, float]:
    """Measured seconds per iteration (steps after the first) and per validation, from a run's events.

    Raises:
        ValueError: too few step events to measure.
    """
    steps = [e for e in events if e.get("event") == "step" and isinstance(e.get("time"), (int, float))]
    if len(steps) < 2:
        raise ValueError("the warm-up run reported fewer than two iterations")
    gaps = [b["time"] - a["time"] for a, b in zip(steps, steps[1:], strict=False)
            if b.get("iteration", 0) == a.get("iteration", 0) + 1]
    per_step = statistics.median(gaps) if gaps else (steps[-1]["time"] - steps[0]["time"]) / (len(steps) - 1)
    vals = [e for e in events if e.get("event") == "val" and isinstance(e.get("time"), (int, float))]
    per_val = 0.0
    if vals:
        before = [s["time"] for s in steps if s["time"] <= vals[0]["time"]]
        per_val = max(0.0, vals[0]["time"] - before[-1]) if before else 0.0
    return max(per_step, 1e-3), per_val


class TrainTask(BackendJobTask):
    """Make training data (if needed) and train, or measure the speed, for the Train page.

    Args:
        dataset: the dataset job (``None``: ``train.datasets`` already exist).
        train: the training job.
        exports: raster inputs of the dataset job to export first, by field name.
        mode: ``train`` or ``estimate``.
        launcher, config: the backend (the shared launcher and the settings by default).

    Signals:
        stageChanged(str): what happens now.
        eventReceived(dict): each training event (start, step, val, note, checkpoint, end).
        progressInfo(object): each new :class:`protocol.JobProgress` of the training job.
        succeeded(dict): the training job's result (``estimate``: ``{"seconds_per_iteration",
            "seconds_per_validation", "device"}``).
        failedWith(str): the error (also for a cancel: the message says the run is resumable).
    """

    stageChanged = pyqtSignal(str)
    eventReceived = pyqtSignal(dict)
    progressInfo = pyqtSignal(object)
    succeeded = pyqtSignal(dict)
    failedWith = pyqtSignal(str)

    def __init__(self, dataset: protocol.DatasetParams | None, train: protocol.TrainParams,
                 exports: dict[str, ExportRequest] | None = None, mode: str = "train",
                 launcher: BackendLauncher = LAUNCHER, config: BackendConfig | None = None) -> None:
        super().__init__("ChangeCLIP: training" if mode == "train" else "ChangeCLIP: measuring training speed",
                         launcher, config)
        self.dataset = dataset
        self.train = train
        self.exports = exports or {}
        self.mode = mode
        self.result: dict[str, Any] | None = None
        self.events: list[dict[str, Any]] = []

    def _work(self) -> None:  # worker thread: no layers, no widgets
        if self.dataset is not None:
            for field_name, request in self.exports.items():
                self.stageChanged.emit(f"Exporting '{request.name}' to a temporary GeoTIFF")
                folder = os.path.dirname(self.dataset.output_dir)
                setattr(self.dataset, field_name, run_export(request, folder, self._feedback))
                if self.isCanceled():
                    raise JobCancelledError("cancelled before training started")
            self.stageChanged.emit("Starting the backend; cutting training tiles")
            run_job(self.dataset, self._on_dataset_progress, self.isCanceled, launcher=self.launcher,
                    config=self.config)
        if self.isCanceled():
            raise JobCancelledError("cancelled before training started")
        self.stageChanged.emit("Training: waiting for the backend")
        result = run_job(self.train, self._on_progress, self.isCanceled, on_event=self._on_event,
                         launcher=self.launcher, config=self.config, on_submitted=self._on_submitted)
        if self.mode == "estimate":
            per_step, per_val = seconds_per_iteration(self.events)
            start = next((e for e in self.events if e.get("event") == "start"), {})
            result = {"seconds_per_iteration": per_step, "seconds_per_validation": per_val,
                      "device": start.get("device", "?")}
            # the warm-up's whole folder (its polygons, tiles and run) is scratch
            shutil.rmtree(os.path.dirname(self.train.run_dir), ignore_errors=True)
        self.result = result

    def _unexpected_error(self, exc: Exception) -> str:
        if isinstance(exc, ValueError):  # e.g. seconds_per_iteration: the warm-up measured too little
            return f"could not measure the speed: {exc}"
        return super()._unexpected_error(exc)

    def _on_dataset_progress(self, progress: protocol.JobProgress) -> None:
        self.setProgress(progress_percent(progress) * 0.1)
        self.stageChanged.emit(progress_text(replace(progress)).replace("Detecting changes", "Cutting tiles"))

    def _on_submitted(self, info: protocol.JobInfo) -> None:
        if info.state == "queued" and info.progress.message:
            self.stageChanged.emit(f"Training {info.progress.message}")

    def _on_progress(self, progress: protocol.JobProgress) -> None:
        self.setProgress(10 + 0.9 * progress_percent(progress))
        self.stageChanged.emit(progress_text(progress))
        self.progressInfo.emit(progress)  # after the plain text: the page writes a fuller line

    def _on_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.eventReceived.emit(dict(event))

    def finished(self, result: bool) -> None:  # noqa: D102 - main thread
        if result and self.result is not None:
            self.succeeded.emit(self.result)
            return
        if self.error is None:
            self.error = "cancelled" if self.isCanceled() else "the run stopped without a result"
            self.cancelled_by_user = self.isCanceled()
        self.failedWith.emit(self.error)
