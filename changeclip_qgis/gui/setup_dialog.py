"""The "Set up backend…" dialog: make the backend's venv and install it, with progress and a log."""

from __future__ import annotations

import sys
from collections.abc import Callable
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
from ..core.backend_setup import (
    InterpreterCheck,
    InterpreterChoice,
    SetupStep,
    TorchChoice,
    check_interpreter,
    choose_torch,
    detect_nvidia_gpu,
    find_qgis_python,
    run_steps,
    setup_steps,
)
from ..core.errors import ChangeClipPluginError, ConfigError
from ..core.paths import bundled_backend_dir
from ..core.settings import (
    KEY_PYTHON,
    KEY_SETUP_PYTHON,
    KEY_SETUP_REASON,
    KEY_WEIGHTS_DIR,
    default_venv_dir,
    get,
    set_value,
    venv_python,
)


class PlanTask(QgsTask):
    """Finds QGIS's interpreter (or takes the user's), probes what it imports, and looks for an NVIDIA GPU.

    Runs in the background when the dialog opens and when the interpreter field changes, so that
    the dialog says which interpreter and which PyTorch build (and its download size) before
    anything starts.
    """

    planned = pyqtSignal()

    def __init__(self, python_override: str, detect_gpu: bool = True) -> None:
        super().__init__("ChangeCLIP: checking the Python for the backend", QgsTask.Flag.CanCancel)
        self.python_override = python_override
        self.detect_gpu = detect_gpu
        self.choice: InterpreterChoice | None = None
        self.check: InterpreterCheck | None = None
        self.gpus: str | None = None
        self.error = ""

    def run(self) -> bool:  # noqa: D102
        try:
            self.choice = interpreter_choice(self.python_override)
        except ChangeClipPluginError as exc:
            self.error = str(exc)
        if self.choice is not None:
            self.check = check_interpreter(self.choice.python)
        if self.detect_gpu:
            self.gpus = detect_nvidia_gpu()
        return True

    def finished(self, result: bool) -> None:  # noqa: D102
        self.planned.emit()


def interpreter_choice(python_override: str) -> InterpreterChoice:
    """The user's interpreter if they chose one, else QGIS's own (see :func:`find_qgis_python`).

    Raises:
        ConfigError: no interpreter was chosen and QGIS's cannot be found.
    """
    if python_override.strip():
        return InterpreterChoice(python_override.strip(), "chosen by you in 'Python to build from'")
    return find_qgis_python()


class SetupTask(QgsTask):
    """Checks the interpreter, then runs the set-up steps in the background; emits each output line.

    The check comes first: an interpreter without GDAL stops the set-up before anything is
    created or downloaded, with a message naming the interpreter and the fix.

    Args:
        choice: the interpreter to build the venv from, and why.
        make_steps: the steps, given that interpreter's check (its numpy version is pinned).
    """

    lineReady = pyqtSignal(str)
    stepStarted = pyqtSignal(int, str)
    done = pyqtSignal(bool, str)

    def __init__(self, choice: InterpreterChoice,
                 make_steps: Callable[[InterpreterCheck], list[SetupStep]]) -> None:
        super().__init__("ChangeCLIP: setting up the backend", QgsTask.Flag.CanCancel)
        self.choice = choice
        self.make_steps = make_steps
        self.steps: list[SetupStep] = []
        self.error = ""

    def run(self) -> bool:  # noqa: D102
        def on_step(index: int, step: SetupStep) -> None:
            self.setProgress(100.0 * index / len(self.steps))
            self.stepStarted.emit(index, step.title)

        try:
            self.lineReady.emit(f"Checking {self.choice.python} ({self.choice.reason})")
            check = check_interpreter(self.choice.python)
            self.lineReady.emit(f"  {check.summary()}")
            problem = check.problem(self.choice.reason)
            if problem:
                raise ConfigError(problem)
            self.steps = self.make_steps(check)
            run_steps(self.steps, self.lineReady.emit, self.isCanceled, on_step)
        except ChangeClipPluginError as exc:
            self.error = str(exc)
            return self.isCanceled()  # a cancel is not a failure (False would make QGIS say "Task failed")
        return True

    def finished(self, result: bool) -> None:  # noqa: D102
        self.done.emit(result and not self.error, self.error)


class SetupDialog(QDialog):
    """Creates ``<profile>/changeclip/backend-venv`` (or a chosen folder) and installs the backend."""

    def __init__(self, parent=None, detect_gpu: bool = True) -> None:  # noqa: ANN001
        super().__init__(parent)
        self.setWindowTitle("Set up the ChangeCLIP backend")
        self.resize(760, 600)
        self.task: SetupTask | None = None
        self.plan_task: PlanTask | None = None
        self.plan: PlanTask | None = None  # the last finished plan
        self.detect_gpu = detect_gpu
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(
            "The backend (PyTorch + ChangeCLIP) runs in its own Python environment, never inside QGIS.\n"
            "This creates that environment from QGIS's Python (sharing its GDAL) and installs the backend "
            "shipped with the plugin. Online it downloads PyTorch (the size is shown below before you start); "
            "offline, point it at a folder of wheels."))
        form = QFormLayout()
        self.python_widget = QgsFileWidget(self)
        self.python_widget.lineEdit().setPlaceholderText("automatic: the Python QGIS runs on")
        self.python_widget.setToolTip("the interpreter the environment is made from; it must import GDAL "
                                      "(osgeo.gdal). Leave empty for QGIS's own Python")
        self.python_widget.fileChanged.connect(lambda *_: self.refresh_plan())
        form.addRow("Python to build from", self.python_widget)
        self.python_label = QLabel("Checking QGIS's Python…", self)
        self.python_label.setWordWrap(True)
        form.addRow("", self.python_label)
        self.venv_widget = QgsFileWidget(self)
        self.venv_widget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.venv_widget.setFilePath(str(default_venv_dir()))
        form.addRow("Environment folder", self.venv_widget)
        self.wheels_widget = QgsFileWidget(self)
        self.wheels_widget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.wheels_widget.lineEdit().setPlaceholderText("optional: folder of wheels for offline installs")
        self.wheels_widget.fileChanged.connect(lambda *_: self._show_torch_choice())
        form.addRow("Wheels folder", self.wheels_widget)
        self.index_edit = QLineEdit(self)
        self.index_edit.setPlaceholderText("automatic: CPU build without an NVIDIA GPU; or e.g. "
                                           "https://download.pytorch.org/whl/cu126")
        self.index_edit.textChanged.connect(lambda *_: self._show_torch_choice())
        form.addRow("PyTorch index URL", self.index_edit)
        self.torch_label = QLabel("Looking for an NVIDIA GPU…", self)
        self.torch_label.setWordWrap(True)
        form.addRow("PyTorch", self.torch_label)
        self.weights_widget = QgsFileWidget(self)
        self.weights_widget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.weights_widget.setFilePath(get(KEY_WEIGHTS_DIR))
        form.addRow("Weights folder", self.weights_widget)
        layout.addLayout(form)
        self.progress = QProgressBar(self)
        self.progress.setRange(0, 100)
        layout.addWidget(self.progress)
        self.step_label = QLabel("", self)
        self.step_label.setWordWrap(True)
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
        self.refresh_plan()

    # -- the plan: which interpreter, which PyTorch, how big ---------------------------

    def refresh_plan(self) -> PlanTask:
        """Check the interpreter (and look for a GPU) in the background; the labels update when done."""
        self.python_label.setText("Checking the Python…")
        gpu_known = self.plan is not None and self.plan.gpus is not None
        task = PlanTask(self.python_widget.filePath(), detect_gpu=self.detect_gpu and not gpu_known)
        if gpu_known:
            task.gpus = self.plan.gpus
        task.planned.connect(lambda: self._planned(task))
        self.plan_task = task
        QgsApplication.taskManager().addTask(task)
        return task

    def _planned(self, task: PlanTask) -> None:
        if task is not self.plan_task:  # an older check finished after a newer one started
            return
        self.plan_task = None
        self.plan = task
        if task.choice is None or task.check is None:
            self.python_label.setText(task.error)
            self.python_label.setStyleSheet("color: #b35900;")
        else:
            problem = task.check.problem(task.choice.reason)
            text = f"{task.choice.python}: {task.choice.reason}\n{task.check.summary()}"
            self.python_label.setText(text + (f"\n{problem}" if problem else ""))
            self.python_label.setStyleSheet("color: #b35900;" if problem else "")
        self._show_torch_choice()

    def torch_choice(self) -> TorchChoice:
        """The PyTorch build the set-up would install now (GPU as last found: none if not looked yet)."""
        gpus = self.plan.gpus if self.plan is not None and self.plan.gpus is not None else ""
        return choose_torch(sys.platform, gpus, self.index_edit.text().strip(),
                            offline=bool(self.wheels_widget.filePath().strip()))

    def _show_torch_choice(self) -> None:
        if self.plan is None and self.detect_gpu:
            return  # still looking for a GPU
        self.torch_label.setText(self.torch_choice().describe())

    # -- running -------------------------------------------------------------------

    def start(self) -> SetupTask | None:
        """Start the set-up in the background (it first checks the interpreter; nothing is downloaded if that fails)."""
        backend_dir = bundled_backend_dir()
        if backend_dir is None:
            self.log.appendPlainText("The backend project is not bundled with this plugin; reinstall it from its zip.")
            return None
        venv_dir = Path(self.venv_widget.filePath().strip() or str(default_venv_dir()))
        wheels = self.wheels_widget.filePath().strip()
        wheels_dir = Path(wheels) if wheels else None
        try:
            choice = interpreter_choice(self.python_widget.filePath())
            torch = self.torch_choice()
            setup_steps(venv_dir, backend_dir, python=choice.python, wheels_dir=wheels_dir,
                        torch_index_url=torch.index_url)  # refuses a missing backend/wheels folder now
        except ChangeClipPluginError as exc:
            self.step_label.setText(f"Error: {exc}")
            self.log.appendPlainText(f"Error: {exc}")
            return None
        if self.weights_widget.filePath().strip():
            set_value(KEY_WEIGHTS_DIR, self.weights_widget.filePath().strip())
        set_value(KEY_SETUP_PYTHON, choice.python)
        set_value(KEY_SETUP_REASON, choice.reason)
        self.venv_dir = venv_dir
        self.log.appendPlainText(f"Building from {choice.python} ({choice.reason})")
        self.log.appendPlainText(f"Installing {torch.describe()}")

        def make_steps(check: InterpreterCheck) -> list[SetupStep]:
            return setup_steps(venv_dir, backend_dir, python=choice.python, wheels_dir=wheels_dir,
                               torch_index_url=torch.index_url, numpy_version=check.numpy)

        self.task = SetupTask(choice, make_steps)
        self.task.lineReady.connect(self.log.appendPlainText)
        self.task.stepStarted.connect(
            lambda i, title: self.step_label.setText(f"Step {i + 1}/{len(self.task.steps) if self.task else '?'}: "
                                                     f"{title}"))
        self.task.progressChanged.connect(lambda v: self.progress.setValue(int(v)))
        self.task.done.connect(self._done)
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.step_label.setText(f"Checking {choice.python}…")
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
