"""The "Set up backend…" dialog: make the backend's venv and install it, with progress and a log."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsApplication, QgsTask
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtGui import QFontDatabase
from qgis.PyQt.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
)

from ..core.backend_launcher import LAUNCHER
from ..core.backend_setup import SetupStep, run_steps, setup_steps
from ..core.errors import ChangeClipPluginError
from ..core.paths import bundled_backend_dir
from ..core.settings import KEY_PYTHON, KEY_WEIGHTS_DIR, default_venv_dir, get, set_value, venv_python


class SetupTask(QgsTask):
    """Runs the set-up steps in the background; emits each output line."""

    lineReady = pyqtSignal(str)
    stepStarted = pyqtSignal(int, str)
    done = pyqtSignal(bool, str)

    def __init__(self, steps: list[SetupStep]) -> None:
        super().__init__("ChangeCLIP: setting up the backend", QgsTask.Flag.CanCancel)
        self.steps = steps
        self.error = ""

    def run(self) -> bool:  # noqa: D102
        def on_step(index: int, step: SetupStep) -> None:
            self.setProgress(100.0 * index / len(self.steps))
            self.stepStarted.emit(index, step.title)

        try:
            run_steps(self.steps, self.lineReady.emit, self.isCanceled, on_step)
        except ChangeClipPluginError as exc:
            self.error = str(exc)
            return False
        return True

    def finished(self, result: bool) -> None:  # noqa: D102
        self.done.emit(result, self.error)


class SetupDialog(QDialog):
    """Creates ``<profile>/changeclip/backend-venv`` (or a chosen folder) and installs the backend."""

    def __init__(self, parent=None) -> None:  # noqa: ANN001
        super().__init__(parent)
        self.setWindowTitle("Set up the ChangeCLIP backend")
        self.resize(760, 560)
        self.task: SetupTask | None = None
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(
            "The backend (PyTorch + ChangeCLIP) runs in its own Python environment, never inside QGIS.\n"
            "This creates that environment from QGIS's Python (sharing its GDAL) and installs the backend "
            "shipped with the plugin. Online it downloads PyTorch (~1-3 GB); offline, point it at a folder "
            "of wheels."))
        form = QFormLayout()
        self.venv_widget = QgsFileWidget(self)
        self.venv_widget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.venv_widget.setFilePath(str(default_venv_dir()))
        form.addRow("Environment folder", self.venv_widget)
        self.wheels_widget = QgsFileWidget(self)
        self.wheels_widget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.wheels_widget.lineEdit().setPlaceholderText("optional: folder of wheels for offline installs")
        form.addRow("Wheels folder", self.wheels_widget)
        self.index_edit = QLineEdit(self)
        self.index_edit.setPlaceholderText("optional, e.g. https://download.pytorch.org/whl/cu128 for CUDA 12.8")
        form.addRow("PyTorch index URL", self.index_edit)
        self.weights_widget = QgsFileWidget(self)
        self.weights_widget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.weights_widget.setFilePath(get(KEY_WEIGHTS_DIR))
        form.addRow("Weights folder", self.weights_widget)
        layout.addLayout(form)
        self.progress = QProgressBar(self)
        self.progress.setRange(0, 100)
        layout.addWidget(self.progress)
        self.step_label = QLabel("", self)
        layout.addWidget(self.step_label)
        self.log = QPlainTextEdit(self)
        self.log.setReadOnly(True)
        self.log.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        layout.addWidget(self.log, 1)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        self.start_button = QPushButton("Set up", self)
        self.cancel_button = QPushButton("Cancel set-up", self)
        self.cancel_button.setEnabled(False)
        buttons.addButton(self.start_button, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.addButton(self.cancel_button, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.rejected.connect(self.reject)
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        layout.addWidget(buttons)

    def start(self) -> SetupTask | None:
        """Start the set-up in the background."""
        backend_dir = bundled_backend_dir()
        if backend_dir is None:
            self.log.appendPlainText("The backend project is not bundled with this plugin; reinstall it from its zip.")
            return None
        venv_dir = Path(self.venv_widget.filePath().strip() or str(default_venv_dir()))
        wheels = self.wheels_widget.filePath().strip()
        try:
            steps = setup_steps(venv_dir, backend_dir, wheels_dir=Path(wheels) if wheels else None,
                                torch_index_url=self.index_edit.text().strip())
        except ChangeClipPluginError as exc:
            self.log.appendPlainText(f"Error: {exc}")
            return None
        if self.weights_widget.filePath().strip():
            set_value(KEY_WEIGHTS_DIR, self.weights_widget.filePath().strip())
        self.venv_dir = venv_dir
        self.task = SetupTask(steps)
        self.task.lineReady.connect(self.log.appendPlainText)
        self.task.stepStarted.connect(lambda i, title: self.step_label.setText(f"Step {i + 1}/{len(steps)}: {title}"))
        self.task.progressChanged.connect(lambda v: self.progress.setValue(int(v)))
        self.task.done.connect(self._done)
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def cancel(self) -> None:
        """Stop the running step."""
        if self.task is not None:
            self.task.cancel()

    def _done(self, ok: bool, error: str) -> None:
        self.task = None
        self.start_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if ok:
            python = str(venv_python(self.venv_dir))
            set_value(KEY_PYTHON, python)
            LAUNCHER.stop_async()  # the next run starts the freshly installed backend
            self.progress.setValue(100)
            self.step_label.setText(f"Done: the backend is installed ({python}). The dock is ready.")
        else:
            self.step_label.setText(f"Failed: {error}")
            self.log.appendPlainText(f"Error: {error}")
