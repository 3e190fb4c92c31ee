"""Backend settings: interpreter or remote URL + token file, weights folder, start timeout."""

from __future__ import annotations

from qgis.gui import QgsFileWidget
from qgis.PyQt.QtWidgets import QDialog, QDialogButtonBox, QDoubleSpinBox, QFormLayout, QLabel, QLineEdit, QVBoxLayout

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
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel, self)
        buttons.accepted.connect(self.save)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

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
