"""What the dock tells the user stays true: the backend line follows saved Settings, a stale error
goes when the engine changes, messages use the engines' UI names, failed runs leave no empty run
folder, and a bad weights file is described in words, not raw bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.qgis


@pytest.fixture()
def dock(qgis_app: object, project: object, tmp_path: Path, pump):  # noqa: ANN001, ANN201
    from qgis.core import QgsSettings

    from changeclip_qgis.core.settings import KEY_DOCK_CHOICES, PREFIX
    from changeclip_qgis.gui.dock import ChangeClipDock

    QgsSettings().remove(PREFIX + KEY_DOCK_CHOICES.rstrip("/"))  # each test starts from the defaults
    widget = ChangeClipDock(None)
    widget.output_widget.setFilePath(str(tmp_path / "runs"))
    yield widget
    if widget.task is not None:
        widget.task.cancel()
        pump(lambda: widget.task is None, 120)
    widget.deleteLater()


def _pair(project, raster_pair: tuple[Path, Path]):  # noqa: ANN001, ANN202
    from qgis.core import QgsRasterLayer

    before, after = QgsRasterLayer(str(raster_pair[0]), "before_2015"), QgsRasterLayer(str(raster_pair[1]), "after_2020")
    project.addMapLayers([before, after])
    return before, after


def test_backend_line_follows_saved_settings(qgis_app: object, mock_iface, tmp_path: Path,  # noqa: ANN001
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import changeclip_qgis
    from changeclip_qgis.core import settings

    monkeypatch.delenv("CHANGECLIP_BACKEND_PYTHON", raising=False)
    monkeypatch.delenv("CHANGECLIP_BACKEND_URL", raising=False)
    old = settings.get(settings.KEY_PYTHON), settings.get(settings.KEY_URL)
    plugin = changeclip_qgis.classFactory(mock_iface)
    plugin.initGui()
    try:
        plugin._open("settings")
        dialog = plugin._dialogs["settings"]
        dialog.python_widget.setFilePath(str(tmp_path / "my-backend" / "bin" / "python"))
        dialog.url_edit.setText("")
        dialog.save()  # Save, as the user clicks it: no Connect pressed afterwards
        assert plugin.dock.backend_label.text() == \
            f"Backend: local, started with {tmp_path / 'my-backend' / 'bin' / 'python'} (not connected)"
        plugin._open("settings")
        plugin._dialogs["settings"].url_edit.setText("http://gpu-box:8765")
        plugin._dialogs["settings"].save()
        assert plugin.dock.backend_label.text() == "Backend: remote server http://gpu-box:8765 (not connected)"
    finally:
        settings.set_value(settings.KEY_PYTHON, old[0])
        settings.set_value(settings.KEY_URL, old[1])
        plugin.unload()


def test_stale_weights_error_clears_and_names_are_the_ui_names(dock, project, raster_pair: tuple[Path, Path],  # noqa: ANN001
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from changeclip_qgis.core import settings

    monkeypatch.delenv("CHANGECLIP_WEIGHTS_DIR", raising=False)
    old = settings.get(settings.KEY_WEIGHTS_DIR)
    settings.set_value(settings.KEY_WEIGHTS_DIR, "")
    try:
        before, after = _pair(project, raster_pair)
        dock.before_combo.setLayer(before)
        dock.after_combo.setLayer(after)
        dock.engine_combo.setCurrentIndex(dock.engine_combo.findData("changeclip"))
        dock.weights_widget.setFilePath("")
        assert dock.start_run() is None
        error = dock.stage_label.text()
        assert error.startswith("Error: The ChangeCLIP engine needs a weights file") and "IR-MAD engine" in error
        assert "irmad" not in error and "changeclip engine" not in error
        assert [dock.engine_combo.itemText(i).split(" (")[0] for i in range(dock.engine_combo.count())] == \
            ["ChangeCLIP", "IR-MAD"]
        dock.engine_combo.setCurrentIndex(dock.engine_combo.findData("irmad"))
        assert dock.stage_label.text() == "Ready", "the weights error no longer applies to IR-MAD"
    finally:
        settings.set_value(settings.KEY_WEIGHTS_DIR, old)


def test_bad_weights_file_is_refused_in_words(dock, project, raster_pair: tuple[Path, Path],  # noqa: ANN001
                                             tmp_path: Path) -> None:
    before, after = _pair(project, raster_pair)
    dock.before_combo.setLayer(before)
    dock.after_combo.setLayer(after)
    dock.engine_combo.setCurrentIndex(dock.engine_combo.findData("changeclip"))
    dock.prompt_mode_combo.setCurrentIndex(dock.prompt_mode_combo.findData("none"))
    for name, content, why in (("downloaded.safetensors", bytes(range(7, 200)) * 3, "no valid safetensors header"),
                               ("page.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00<html>\x87\xff</ht",
                                "its safetensors header is not text"),
                               ("model.pth", b"<!DOCTYPE html>", "not a PyTorch checkpoint")):
        bad = tmp_path / name
        bad.write_bytes(content)
        dock.weights_widget.setFilePath(str(bad))
        assert dock.start_run() is None
        message = dock.stage_label.text()
        assert message.startswith(f"Error: Weights file {bad} is not ChangeCLIP weights: ") and why in message
        assert "b'" not in message and "\\x" not in message, message
    assert not (tmp_path / "runs").exists(), "refused before a run folder is made"


@pytest.mark.server
def test_failed_run_leaves_no_run_folder(dock, project, pump, backend_env: None,  # noqa: ANN001
                                         raster_pair: tuple[Path, Path], xyz_uri: str) -> None:
    from qgis.core import QgsRasterLayer

    tiles = QgsRasterLayer(xyz_uri, "tiles", "wms")
    _before, after = _pair(project, raster_pair)
    project.addMapLayers([tiles])
    dock.before_combo.setLayer(tiles)  # exported into the run folder first, then the backend refuses the job
    dock.after_combo.setLayer(after)
    dock.engine_combo.setCurrentIndex(dock.engine_combo.findData("irmad"))
    dock.bands_edit.setText("1,2,9")  # the rasters have 3 bands: the backend fails the job
    failed: list[str] = []
    dock.runFailed.connect(failed.append)
    task = dock.start_run()
    assert task is not None and set(task.exports) == {"before"}
    run_folder = Path(task.params.output_dir)
    assert run_folder.is_dir()
    pump(lambda: failed, 300)
    assert "9" in failed[0] and dock.stage_label.text().startswith("Error: ")
    assert Path(task.params.before).parent == run_folder, "the tiles were exported into the run folder"
    assert not run_folder.exists(), f"a failed run left {list(run_folder.iterdir())}"
    assert not list(run_folder.parent.iterdir())
