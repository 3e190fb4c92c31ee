"""The dock's Train page with a real backend, driven with QTest: create the change layer, draw polygons
programmatically, estimate, train, QGIS "closed" mid-run (the backend stops and saves a resumable
checkpoint), a new dock offers Resume, cancel (resumable), resume to the end, use the weights on the
Detect page and detect with them. A TINY network, 64 px tiles, a few iterations on one thread."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.qgis, pytest.mark.server]

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "resources" / "sample"
X0, Y0 = 486900.0, 5208495.0  # top-left of naip_2015.tif, EPSG:26914, 5 m pixels


@pytest.fixture()
def clean_settings(qgis_app: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    from qgis.core import QgsSettings

    from changeclip_qgis.core.settings import KEY_DOCK_CHOICES, PREFIX
    from changeclip_qgis.gui.train_page import KEY_LAST_RUN

    for key in (KEY_DOCK_CHOICES.rstrip("/"), KEY_LAST_RUN):
        QgsSettings().remove(PREFIX + key)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one torch thread: a shared 2-core machine
    yield
    QgsSettings().remove(PREFIX + KEY_LAST_RUN)


def _dock(tmp_path: Path):  # noqa: ANN202
    from changeclip_qgis.gui.dock import ChangeClipDock

    dock = ChangeClipDock(None)
    dock.output_widget.setFilePath(str(tmp_path / "runs"))
    page = dock.train_page
    page.output_widget.setFilePath(str(tmp_path / "training"))
    page.tile_spin.setValue(64)
    page.batch_spin.setValue(2)
    page.device_edit.setCurrentText("cpu")
    dock.resize(420, 900)
    dock.show()  # laid out (offscreen) so that QTest clicks land on the buttons
    dock.tabs.setCurrentIndex(1)
    return dock, page


def _square(layer, dx: float, dy: float, side: float = 200.0):  # noqa: ANN001, ANN202
    """A new feature of ``layer``: a square as a user would draw it with the add-polygon tool."""
    from qgis.core import QgsGeometry, QgsVectorLayerUtils

    x, y = X0 + dx, Y0 - dy
    geometry = QgsGeometry.fromWkt(f"POLYGON(({x} {y},{x + side} {y},{x + side} {y - side},{x} {y - side},{x} {y}))")
    return QgsVectorLayerUtils.createFeature(layer, geometry)


def _outcome(page) -> dict:  # noqa: ANN001
    results: dict = {}
    page.trainingFinished.connect(lambda r: results.setdefault("result", r))
    page.trainingFailed.connect(lambda m: results.setdefault("error", m))
    page.estimateReady.connect(lambda r: results.setdefault("estimate", r))
    return results


def test_train_page_draw_train_close_resume_cancel_resume_use_and_detect(
        project, pump, backend_env: None, clean_settings: None, tiny_weights, tmp_path: Path) -> None:  # noqa: ANN001
    from qgis.core import QgsCoordinateReferenceSystem, QgsProject, QgsRasterLayer, QgsVectorLayer
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtTest import QTest

    from changeclip_qgis.core.backend_launcher import LAUNCHER

    project.setCrs(QgsCoordinateReferenceSystem("EPSG:26914"))
    before = QgsRasterLayer(str(SAMPLE / "naip_2015.tif"), "naip_2015")
    after = QgsRasterLayer(str(SAMPLE / "naip_2020.tif"), "naip_2020")
    project.addMapLayers([before, after])
    dock, page = _dock(tmp_path)
    assert dock.tabs.tabText(1) == "Train"
    page.before_combo.setLayer(before)
    page.after_combo.setLayer(after)

    # nothing to train on yet: a clear refusal, nothing started
    assert page.start_run() is None and "New layer" in page.status_label.text()

    # one click: a styled GeoPackage polygon layer in the project CRS, on the map, in edit mode
    QTest.mouseClick(page.new_changes_button, Qt.MouseButton.LeftButton)
    layer = page.changes_combo.currentLayer()
    assert isinstance(layer, QgsVectorLayer) and layer.isEditable() and layer.crs().authid() == "EPSG:26914"
    assert layer.source().split("|")[0].endswith(".gpkg") and layer.id() in QgsProject.instance().mapLayers()
    assert layer.renderer().symbol().color().red() == 255
    assert page.figures_label.text().startswith("0 polygons")
    for dx, dy in ((300, 300), (1500, 300), (300, 1200), (1500, 1200)):  # "drawn": added to the edit buffer
        assert layer.addFeature(_square(layer, dx, dy))
    text = page.figures_label.text()
    assert text.startswith("4 polygons, ") and text.endswith(" m² labelled"), text
    area = float(text.split(", ")[1].split(" ")[0].replace(",", ""))
    assert area == pytest.approx(4 * 200 * 200, rel=2e-3)  # ellipsoidal: UTM's scale factor, within 0.2 %

    page.weights_widget.setFilePath(str(tiny_weights("tiny-vit")))
    assert page.variant_combo.currentText() == "tiny-vit" and not page.variant_combo.isEnabled()

    # the warm-up estimate
    results = _outcome(page)
    assert page.start_estimate() is not None, page.status_label.text()
    pump(lambda: results, 600)
    assert "estimate" in results, results.get("error")
    assert results["estimate"]["seconds_per_iteration"] > 0 and results["estimate"]["device"] == "cpu"
    assert "s/iteration" in page.estimate_label.text() and "on cpu" in page.estimate_label.text()

    # train; "close QGIS" once it runs: the backend stops, saving a resumable checkpoint
    page.iterations_spin.setValue(12)
    results = _outcome(page)
    QTest.mouseClick(page.run_button, Qt.MouseButton.LeftButton)
    assert page.task is not None and not page.run_button.isEnabled() and page.cancel_button.isEnabled()
    pump(lambda: len(page.chart.loss) >= 1 or results, 600)
    assert page.chart.loss and "Training on cpu" in page.status_label.text(), page.status_label.text()
    run_dir = Path(page.last_params.run_dir)
    dock.shutdown()  # what unloading the plugin does when QGIS closes ...
    LAUNCHER.stop()  # ... and the backend stops with QGIS
    pump(lambda: results or page.task is None, 300)
    assert (run_dir / "state.pt").is_file() and (run_dir / "last.safetensors").is_file()
    stopped_at = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["iteration"]
    assert 1 <= stopped_at < 12
    dock.deleteLater()

    # QGIS "opens again": the page offers Resume
    dock, page = _dock(tmp_path)
    assert page.resume_button.isEnabled() and "unfinished training run" in page.status_label.text()
    results = _outcome(page)
    QTest.mouseClick(page.resume_button, Qt.MouseButton.LeftButton)
    pump(lambda: any(it > stopped_at for it, _ in page.chart.loss) or results, 600)
    QTest.mouseClick(page.cancel_button, Qt.MouseButton.LeftButton)
    pump(lambda: results, 300)
    if "result" not in results:  # cancelled before the end (the usual case): resumable again
        assert "resumable checkpoint" in results["error"] and page.status_label.text().startswith("Cancelled")
        assert page.resume_button.isEnabled()
        results = _outcome(page)
        QTest.mouseClick(page.resume_button, Qt.MouseButton.LeftButton)
        pump(lambda: results, 600)
    assert "result" in results, results.get("error")
    result = results["result"]
    assert result["iteration"] == 12 and result["status"] == "finished"
    assert page.chart.f1 or page.chart.iou or result["best"] is not None
    assert "best change F1" in page.result_label.text()
    pixmap = page.chart.grab()  # the chart paints (offscreen) without error
    assert not pixmap.isNull()

    # one click: the Detect page uses the new weights; detection with them
    assert page.use_weights_button.isEnabled()
    QTest.mouseClick(page.use_weights_button, Qt.MouseButton.LeftButton)
    weights = result["outputs"]["weights"]
    assert dock.weights_widget.filePath() == weights and dock.tabs.currentIndex() == 0
    dock.before_combo.setLayer(before)
    dock.after_combo.setLayer(after)
    dock.prompt_mode_combo.setCurrentIndex(dock.prompt_mode_combo.findData("none"))
    dock.tile_spin.setValue(128)
    dock.overlap_spin.setValue(0)
    dock.polygons_check.setChecked(False)
    detected: dict = {}
    dock.runFinished.connect(lambda s: detected.setdefault("summary", s))
    dock.runFailed.connect(lambda m: detected.setdefault("error", m))
    assert dock.start_run() is not None
    pump(lambda: detected, 600)
    assert "summary" in detected, detected.get("error")
    assert Path(detected["summary"]["outputs"]["mask"]).is_file()
    assert Path(detected["summary"]["model"]["weights"]).resolve() == Path(weights).resolve()
    dock.shutdown()
    dock.deleteLater()
