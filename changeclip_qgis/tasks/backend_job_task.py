"""What the plugin's background runs share: a cancellable QgsTask that runs backend jobs.

:class:`BackendJobTask` holds the plumbing of such a task: the backend it talks to, a
:class:`QgsFeedback` that a cancel also stops (layer exports listen to it), and the bookkeeping of
how :meth:`run` ended (the error, whether the user cancelled, whether the backend was not there).
A subclass does its work in :meth:`_work`; :meth:`run` turns any exception into that bookkeeping,
so a failure is reported instead of crashing QGIS.
"""

from __future__ import annotations

from qgis.core import QgsFeedback, QgsTask

from ..core.backend_launcher import LAUNCHER, BackendLauncher
from ..core.errors import BackendUnavailable, ChangeClipPluginError, JobCancelledError
from ..core.settings import BackendConfig


class BackendJobTask(QgsTask):
    """Base of the tasks that run backend jobs in the background.

    Args:
        description: the task's name in QGIS's task manager.
        launcher: the backend launcher (the shared one by default).
        config: the backend configuration (read from settings by default).

    Attributes:
        launcher: the backend launcher the jobs run through.
        config: the backend configuration (``None``: read from settings).
        error: why :meth:`run` stopped without a result (``None`` while there is none).
        cancelled_by_user: the run stopped because it was cancelled.
        backend_unavailable: the run failed because the backend could not be started or reached.
    """

    def __init__(self, description: str, launcher: BackendLauncher = LAUNCHER,
                 config: BackendConfig | None = None) -> None:
        super().__init__(description, QgsTask.Flag.CanCancel)
        self.launcher: BackendLauncher = launcher
        self.config: BackendConfig | None = config
        self.error: str | None = None
        self.cancelled_by_user: bool = False
        self.backend_unavailable: bool = False
        self._feedback = QgsFeedback()  # lets cancel() stop a running layer export

    def cancel(self) -> None:  # noqa: D102
        self._feedback.cancel()
        super().cancel()

    def run(self) -> bool:
        """Worker thread: :meth:`_work`, then ``True``; on an exception, record it and return
        :meth:`_stopped_result`. No layers, no widgets here."""
        try:
            self._work()
            return True
        except JobCancelledError as exc:
            self.cancelled_by_user = True
            self.error = str(exc)
        except ChangeClipPluginError as exc:
            self.error = str(exc)
            self.backend_unavailable = isinstance(exc, BackendUnavailable)
        except Exception as exc:  # noqa: BLE001 - report anything instead of crashing QGIS
            self.error = self._unexpected_error(exc)
        return self._stopped_result()

    def _work(self) -> None:
        """The task's work (worker thread); it stores its outcome on the task. Subclasses implement it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _work()")

    def _unexpected_error(self, exc: Exception) -> str:
        """The error message for an exception that is not a plugin error."""
        return f"unexpected error: {exc!r}"

    def _stopped_result(self) -> bool:
        """What :meth:`run` returns after an exception: ``False``, which QGIS announces as a failed task."""
        return False
