"""Backend settings: interpreter or remote URL + token file, weights folder, start timeout."""

from __future__ import annotations

from qgis.gui import QgsFileWidget
from qgis.PyQt.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
)

from ..core import settings as cfg
from ..core.backend_launcher import LAUNCHER


class SettingsDialog(QDialog):
    """Edits the QgsSettings behind :class:`core.settings.BackendConfig` (env variables still win)."""

    def __init__(self, parent=None) -> None:  # noqa: ANN001
        super().__init__(parent)
        self.setWindowTitle("ChangeCLIP settings")
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.python_widget = QgsFileWidget(self)
        self.python_widget.setFilePath(_stored(cfg.KEY_PYTHON))
        self.python_widget.lineEdit().setPlaceholderText(f"default: {cfg.venv_python(cfg.default_venv_dir())}")
        form.addRow("Backend Python", self.python_widget)
        self.url_edit = QLineEdit(_stored(cfg.KEY_URL), self)
        self.url_edit.setPlaceholderText("optional: http://host:port of a running 'changeclip serve'")
        form.addRow("Backend URL", self.url_edit)
        self.token_widget = QgsFileWidget(self)
        self.token_widget.setFilePath(_stored(cfg.KEY_TOKEN_FILE))
        form.addRow("Token file (for the URL)", self.token_widget)
        self.weights_widget = QgsFileWidget(self)
        self.weights_widget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.weights_widget.setFilePath(_stored(cfg.KEY_WEIGHTS_DIR))
        form.addRow("Weights folder", self.weights_widget)
        self.timeout_spin = QDoubleSpinBox(self)
        self.timeout_spin.setRange(10, 3600)
        self.timeout_spin.setSuffix(" s")
        self.timeout_spin.setValue(float(_stored(cfg.KEY_START_TIMEOUT) or cfg.DEFAULT_START_TIMEOUT_S))
        form.addRow("Backend start timeout", self.timeout_spin)
        layout.addLayout(form)
        overrides = [f"{env} (overrides '{key}')" for key, env in cfg.ENV.items() if cfg.overridden_by_env(key)]
        if overrides:
            layout.addWidget(QLabel("Set in the environment, these win over the values above:\n" + "\n".join(overrides)))
        backend = LAUNCHER.current()
        running = (f"Running backend: {backend.url} ({'started by the plugin' if backend.owned else 'external'})"
                   if backend is not None else "No backend is running in this QGIS session.")
        self.backend_label = QLabel(running, self)
        layout.addWidget(self.backend_label)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel, self)
        self.stop_button = QPushButton("Stop backend", self)
        self.stop_button.setToolTip("stop the backend this QGIS started; the next run starts a fresh one")
        self.stop_button.setEnabled(backend is not None and backend.owned)
        self.stop_button.clicked.connect(self.stop_backend)
        buttons.addButton(self.stop_button, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.accepted.connect(self.save)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def stop_backend(self) -> None:
        """Stop the backend the plugin started (in the background)."""
        LAUNCHER.stop_async()
        self.stop_button.setEnabled(False)
        self.backend_label.setText("Backend stopping; the next run starts a fresh one.")

    def save(self) -> None:
        """Store the values; the next run (re)starts the backend with them."""
        cfg.set_value(cfg.KEY_PYTHON, self.python_widget.filePath().strip())
        cfg.set_value(cfg.KEY_URL, self.url_edit.text().strip())
        cfg.set_value(cfg.KEY_TOKEN_FILE, self.token_widget.filePath().strip())
        cfg.set_value(cfg.KEY_WEIGHTS_DIR, self.weights_widget.filePath().strip())
        cfg.set_value(cfg.KEY_START_TIMEOUT, str(self.timeout_spin.value()))
        LAUNCHER.stop_async()
        self.accept()


def _stored(key: str) -> str:
    from qgis.core import QgsSettings

    value = QgsSettings().value(cfg.PREFIX + key, "")
    return "" if value is None else str(value)
