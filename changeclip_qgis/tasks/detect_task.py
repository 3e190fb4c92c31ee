"""The dock's background run: a QgsTask that starts/reuses the backend and follows one job.

``run()`` (worker thread) only exports inputs, talks HTTP and stores the outcome; ``finished()``
(main thread) loads the styled layers and reports. Progress reaches the dock through the
``progressChanged``/``stageChanged`` signals (queued across threads).
"""

from __future__ import annotations

import os
from typing import Any

from qgis.core import QgsProject, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from ..core import protocol
from ..core.backend_launcher import LAUNCHER, BackendLauncher
from ..core.errors import ChangeClipPluginError, JobCancelledError
from ..core.layers import ExportRequest, load_outputs, run_export
from ..core.log import log
from ..core.runner import progress_percent, progress_text, run_detection
from ..core.settings import BackendConfig
from .backend_job_task import BackendJobTask


class DetectTask(BackendJobTask):
    """One change-detection run for the dock.

    Args:
        params: the job; its ``before``/``after`` may be placeholders when ``exports`` is given.
        run_name: the name of the layer group the outputs go into.
        exports: inputs to export first, by field name (``"before"``/``"after"``).
        launcher: the backend launcher (the shared one by default).
        config: the backend configuration (read from settings by default).
        load_layers: load the outputs into the project when done.

    Signals:
        stageChanged(str): human description of the current stage.
        succeeded(dict): the summary, after the layers were loaded.
        failedWith(str): the error message (also for cancellation).
    """

    stageChanged = pyqtSignal(str)
    succeeded = pyqtSignal(dict)
    failedWith = pyqtSignal(str)

    def __init__(self, params: protocol.DetectParams, run_name: str,
                 exports: dict[str, ExportRequest] | None = None, launcher: BackendLauncher = LAUNCHER,
                 config: BackendConfig | None = None, load_layers: bool = True) -> None:
        super().__init__(f"ChangeCLIP: {run_name}", launcher, config)
        self.params = params
        self.run_name = run_name
        self.exports = exports or {}
        self.load_layers = load_layers
        self.summary: dict[str, Any] | None = None
        self.layers: dict[str, Any] = {}

    def _work(self) -> None:  # worker thread: no layers, no widgets
        for field_name, request in self.exports.items():
            self.stageChanged.emit(f"Exporting '{request.name}' to a temporary GeoTIFF")
            setattr(self.params, field_name, run_export(request, self.params.output_dir, self._feedback))
            if self.isCanceled():
                raise JobCancelledError("the run was cancelled")
        self.stageChanged.emit("Starting the backend (first run: can take a minute)")
        self.summary = run_detection(self.params, self._on_progress, self.isCanceled,
                                     launcher=self.launcher, config=self.config)

    def _stopped_result(self) -> bool:
        if self.isCanceled():
            self.cancelled_by_user = True
        # A cancel is not a failure: returning False would make QGIS announce "Task failed".
        return self.cancelled_by_user

    def remove_run_folder(self) -> None:
        """After a failed or cancelled run: delete the inputs this task exported, then the output
        folder if that left it empty (the backend already removed its partial outputs).

        Only an empty folder is removed, so nothing the user or the backend put there is lost.
        """
        folder = os.path.abspath(self.params.output_dir)
        for field_name in self.exports:
            path = os.path.abspath(str(getattr(self.params, field_name, "") or ""))
            if os.path.dirname(path) == folder and os.path.isfile(path):
                try:
                    os.remove(path)
                except OSError as exc:
                    log(f"could not remove the exported input {path}: {exc}", "warning")
        try:
            os.rmdir(folder)
        except OSError:  # not empty (or already gone): keep it
            pass

    def _on_progress(self, progress: protocol.JobProgress) -> None:
        self.setProgress(progress_percent(progress))
        self.stageChanged.emit(progress_text(progress))

    def finished(self, result: bool) -> None:  # noqa: D102 - main thread
        if result and self.summary is not None and not self.cancelled_by_user:
            if self.load_layers:
                self.layers = load_outputs(self.summary, self.run_name, QgsProject.instance())
            log(f"run '{self.run_name}' done: {self.summary.get('changed_area_m2')} m² changed; "
                f"outputs in {os.path.dirname(self.params.output_paths()['mask'])}")
            self.succeeded.emit(self.summary)
            return
        if self.isCanceled():
            self.cancelled_by_user = True
        if self.error is None:
            self.error = "the run was cancelled" if self.cancelled_by_user else "the run stopped without a result"
        log(f"run '{self.run_name}' failed: {self.error}", "info" if self.cancelled_by_user else "warning")
        self.failedWith.emit(self.error)


class BackendCheckTask(QgsTask):
    """Start/reuse the backend and read its status in the background (for the dock's device line)."""

    statusReady = pyqtSignal(dict)
    failedWith = pyqtSignal(str)

    def __init__(self, launcher: BackendLauncher = LAUNCHER, config: BackendConfig | None = None) -> None:
        super().__init__("ChangeCLIP: connecting to the backend", QgsTask.Flag.CanCancel)
        self.launcher = launcher
        self.config = config
        self.status: dict[str, Any] | None = None
        self.error: str | None = None

    def run(self) -> bool:  # noqa: D102
        try:
            backend = self.launcher.ensure(self.config)
            self.status = backend.client.status()
            return True
        except ChangeClipPluginError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001
            self.error = f"unexpected error: {exc!r}"
        return self.isCanceled()  # a cancel is not a failure (False would make QGIS say "Task failed")

    def finished(self, result: bool) -> None:  # noqa: D102
        if result and self.status is not None:
            self.statusReady.emit(self.status)
        else:
            self.failedWith.emit(self.error or "cancelled")
