"""Settings, set-up and diagnostics dialogs build offscreen and do their job."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.qgis


def test_settings_dialog_saves_and_env_wins(qgis_app: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from changeclip_qgis.core import settings
    from changeclip_qgis.gui.settings_dialog import SettingsDialog

    monkeypatch.delenv("CHANGECLIP_WEIGHTS_DIR", raising=False)
    dialog = SettingsDialog()
    dialog.weights_widget.setFilePath(str(tmp_path))
    dialog.url_edit.setText("")
    dialog.save()
    assert settings.get(settings.KEY_WEIGHTS_DIR) == str(tmp_path)
    monkeypatch.setenv("CHANGECLIP_WEIGHTS_DIR", "/from/env")
    assert settings.get(settings.KEY_WEIGHTS_DIR) == "/from/env"
    assert settings.overridden_by_env(settings.KEY_WEIGHTS_DIR) == "CHANGECLIP_WEIGHTS_DIR"
    assert settings.BackendConfig.load().weights_dir == "/from/env"
    settings.set_value(settings.KEY_WEIGHTS_DIR, "")


def test_setup_dialog_builds_with_bundled_backend(qgis_app: object) -> None:
    from changeclip_qgis.core.paths import bundled_backend_dir
    from changeclip_qgis.gui.setup_dialog import SetupDialog

    dialog = SetupDialog()
    assert dialog.venv_widget.filePath().endswith("backend-venv")
    assert bundled_backend_dir() is not None


def test_diagnostics_dialog_collects_report(qgis_app: object, pump, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                                            tmp_path: Path) -> None:
    from changeclip_qgis.gui.diagnostics_dialog import DiagnosticsDialog

    monkeypatch.setenv("CHANGECLIP_BACKEND_PYTHON", str(tmp_path / "missing-python"))
    dialog = DiagnosticsDialog()
    pump(lambda: dialog.text.toPlainText().startswith("# ChangeCLIP diagnostics"), 120)
    report = dialog.text.toPlainText()
    assert "missing-python does not exist" in report and "## GPU" in report
    assert "## Set-up interpreter" in report and "- QGIS's Python: " in report
    dialog.copy()
    from qgis.PyQt.QtGui import QGuiApplication

    assert QGuiApplication.clipboard().text() == report


@pytest.mark.server
def test_settings_dialog_stops_the_backend(qgis_app: object, pump, backend_env: None) -> None:  # noqa: ANN001
    from changeclip_qgis.core.backend_launcher import LAUNCHER
    from changeclip_qgis.gui.settings_dialog import SettingsDialog

    backend = LAUNCHER.ensure()
    dialog = SettingsDialog()
    assert backend.url in dialog.backend_label.text() and dialog.stop_button.isEnabled()
    dialog.stop_button.click()
    pump(lambda: LAUNCHER.current() is None and backend.process.poll() is not None, 60)
    assert not dialog.stop_button.isEnabled()


def test_setup_dialog_runs_steps_and_stores_the_interpreter(qgis_app: object, pump, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                                                            tmp_path: Path) -> None:
    """The dialog's wiring: steps run in a task, output lands in the log, the new venv becomes the backend."""
    import sys

    from changeclip_qgis.core import settings
    from changeclip_qgis.core.backend_setup import SetupStep
    from changeclip_qgis.gui import setup_dialog

    calls = {}

    def fake_steps(venv_dir, backend_dir, **kwargs):  # noqa: ANN001, ANN003, ANN202
        calls.update(kwargs, venv_dir=venv_dir)
        return [SetupStep("Saying hello", [sys.executable, "-c", "print('hello from step 1')"]),
                SetupStep("Saying bye", [sys.executable, "-c", "print('bye from step 2')"])]

    monkeypatch.setattr(setup_dialog, "setup_steps", fake_steps)
    monkeypatch.delenv("CHANGECLIP_BACKEND_PYTHON", raising=False)
    dialog = setup_dialog.SetupDialog()
    dialog.venv_widget.setFilePath(str(tmp_path / "venv"))
    dialog.index_edit.setText("https://download.pytorch.org/whl/cu128")
    assert dialog.start() is not None
    pump(lambda: dialog.task is None, 120)
    log = dialog.log.toPlainText()
    assert "hello from step 1" in log and "bye from step 2" in log
    assert dialog.step_label.text().startswith("Done")
    assert calls["torch_index_url"] == "https://download.pytorch.org/whl/cu128" and calls["wheels_dir"] is None
    assert settings.get(settings.KEY_PYTHON) == str(settings.venv_python(tmp_path / "venv"))
    settings.set_value(settings.KEY_PYTHON, "")
