"""The dock end to end with a real backend: irmad and seeded-tiny ChangeCLIP runs load styled,
grouped layers; cancel works; the UI thread never waits on the backend."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.qgis, pytest.mark.server]


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


def _add_pair(project, before: Path, after: Path):  # noqa: ANN001, ANN202
    from qgis.core import QgsRasterLayer

    b, a = QgsRasterLayer(str(before), "before_2015"), QgsRasterLayer(str(after), "after_2020")
    assert b.isValid() and a.isValid()
    project.addMapLayers([b, a])
    return b, a


def _tiles_before_file_after(dock, project, xyz_uri: str, after_path: Path):  # noqa: ANN001, ANN202
    """XYZ tiles as *before*, a file as *after*, engine irmad: the non-file export set-up."""
    from qgis.core import QgsRasterLayer

    xyz = QgsRasterLayer(xyz_uri, "tiles", "wms")
    after = QgsRasterLayer(str(after_path), "after_file")
    project.addMapLayers([xyz, after])
    dock.before_combo.setLayer(xyz)
    dock.after_combo.setLayer(after)
    dock.engine_combo.setCurrentIndex(dock.engine_combo.findData("irmad"))
    return xyz, after


def _run(dock, pump, timeout_s: float = 600) -> dict:  # noqa: ANN001
    results: dict = {}
    dock.runFinished.connect(lambda s: results.setdefault("summary", s))
    dock.runFailed.connect(lambda m: results.setdefault("error", m))
    task = dock.start_run()
    assert task is not None, dock.stage_label.text()
    assert not results, "start_run must return before the run ends (it never waits on the backend)"
    assert not dock.run_button.isEnabled() and dock.cancel_button.isEnabled()
    pump(lambda: results, timeout_s)
    return results


def test_dock_irmad_end_to_end(dock, project, pump, backend_env: None, raster_pair: tuple[Path, Path]) -> None:  # noqa: ANN001
    from qgis.core import QgsPalettedRasterRenderer, QgsProject

    before, after = _add_pair(project, *raster_pair)
    dock.before_combo.setLayer(before)
    dock.after_combo.setLayer(after)
    dock.engine_combo.setCurrentIndex(dock.engine_combo.findData("irmad"))
    assert not dock.weights_widget.isEnabled()
    results = _run(dock, pump)
    assert "summary" in results, results.get("error")
    summary = results["summary"]
    assert summary["changed_area_m2"] > 0 and "Changed area" in dock.summary_label.text()
    assert dock.run_button.isEnabled() and not dock.cancel_button.isEnabled()
    assert dock.progress_bar.value() == 100
    root = QgsProject.instance().layerTreeRoot()
    group = root.children()[0]
    assert group.name() == "ChangeCLIP: before_2015 → after_2020 [IR-MAD]"
    names = [node.layer().name() for node in group.findLayers()]
    assert names == ["change polygons — before_2015 → after_2020 [IR-MAD]",
                     "change mask — before_2015 → after_2020 [IR-MAD]",
                     "change probability — before_2015 → after_2020 [IR-MAD]"]
    mask_layer = group.findLayers()[1].layer()
    assert isinstance(mask_layer.renderer(), QgsPalettedRasterRenderer)
    assert Path(mask_layer.source()).parent.parent == Path(dock.output_widget.filePath())


def test_dock_shows_run_warnings_and_unknown_area(dock, project, pump, backend_env: None,  # noqa: ANN001
                                                  raster_pair_without_crs: tuple[Path, Path]) -> None:
    before, after = _add_pair(project, *raster_pair_without_crs)
    dock.before_combo.setLayer(before)
    dock.after_combo.setLayer(after)
    dock.engine_combo.setCurrentIndex(dock.engine_combo.findData("irmad"))
    results = _run(dock, pump)
    assert "summary" in results, results.get("error")
    assert results["summary"]["changed_area_m2"] is None
    text = dock.summary_label.text()
    assert text.startswith("Changed pixels: ") and "area unknown" in text and "0 m²" not in text
    assert "Warning: the rasters have no CRS" in text
    assert dock.stage_label.text() == "Done (1 warning)"


def test_dock_remembers_the_last_run_choices(dock, project, pump, backend_env: None,  # noqa: ANN001
                                              raster_pair: tuple[Path, Path], tmp_path: Path) -> None:
    from qgis.core import QgsSettings

    from changeclip_qgis.core.settings import KEY_DOCK_CHOICES, PREFIX
    from changeclip_qgis.gui.dock import ChangeClipDock

    defaults = dock._choices()
    assert defaults["engine"] == "changeclip" and defaults["tile"] == "256" and defaults["precision"] == "auto"
    before, after = _add_pair(project, *raster_pair)
    dock.before_combo.setLayer(before)
    dock.after_combo.setLayer(after)
    dock.engine_combo.setCurrentIndex(dock.engine_combo.findData("irmad"))
    dock.prompt_mode_combo.setCurrentIndex(dock.prompt_mode_combo.findData("words"))
    dock.prompt_edit.setText("building, road")
    dock.device_combo.setCurrentText("cpu")
    dock.precision_combo.setCurrentText("bf16")
    dock.bands_edit.setText("3,2,1")
    dock.tile_spin.setValue(128)
    dock.overlap_spin.setValue(32)
    dock.threshold_spin.setValue(0.9)
    dock.polygons_check.setChecked(False)
    dock.min_area_spin.setValue(25.0)
    chosen = dock._choices()
    results = _run(dock, pump)
    assert "summary" in results, results.get("error")
    again = ChangeClipDock(None)  # e.g. the next QGIS session
    try:
        assert again._choices() == chosen
    finally:
        again.deleteLater()
    # stored values that no longer fit are ignored, never half-applied
    settings = QgsSettings()
    for key, value in (("tile", "abc"), ("overlap", "99999"), ("engine", "gone"), ("precision", "int8"),
                       ("weights", str(tmp_path / "deleted.safetensors"))):
        settings.setValue(PREFIX + KEY_DOCK_CHOICES + key, value)
    third = ChangeClipDock(None)
    try:
        got = third._choices()
        assert (got["tile"], got["overlap"], got["engine"], got["precision"], got["weights"]) == \
            ("256", "64", "changeclip", "auto", "")
        assert got["bands"] == "3,2,1" and got["prompt"] == "building, road"  # the usable ones still apply
    finally:
        third.deleteLater()


def test_dock_tiny_changeclip_and_device_line(dock, project, pump, backend_env: None, tiny_weights,  # noqa: ANN001
                                              raster_pair: tuple[Path, Path]) -> None:
    before, after = _add_pair(project, *raster_pair)
    dock.before_combo.setLayer(before)
    dock.after_combo.setLayer(after)
    dock.engine_combo.setCurrentIndex(dock.engine_combo.findData("changeclip"))
    dock.weights_widget.setFilePath(str(tiny_weights("tiny-rn50")))
    dock.prompt_mode_combo.setCurrentIndex(dock.prompt_mode_combo.findData("none"))
    dock.tile_spin.setValue(128)
    dock.overlap_spin.setValue(0)
    dock.polygons_check.setChecked(False)
    results = _run(dock, pump)
    assert "summary" in results, results.get("error")
    summary = results["summary"]
    assert summary["engine"] == "changeclip" and summary["prompt_mode"] == "none"
    assert Path(summary["outputs"]["mask"]).is_file()
    from qgis.core import QgsPalettedRasterRenderer, QgsProject, QgsSingleBandPseudoColorRenderer

    group = QgsProject.instance().layerTreeRoot().children()[0]
    assert group.name() == "ChangeCLIP: before_2015 → after_2020"
    layers = [node.layer() for node in group.findLayers()]
    assert [type(lyr.renderer()) for lyr in layers] == [QgsPalettedRasterRenderer, QgsSingleBandPseudoColorRenderer]
    check = dock.check_backend()
    pump(lambda: "connecting" not in dock.backend_label.text(), 120)
    assert check is not None and "CPU — slow" in dock.backend_label.text()


def test_dock_refuses_bad_choices(dock, project, pump, backend_env: None, raster_pair: tuple[Path, Path]) -> None:  # noqa: ANN001
    before, _after = _add_pair(project, *raster_pair)
    dock.before_combo.setLayer(before)
    dock.after_combo.setLayer(before)
    assert dock.start_run() is None
    assert "same raster" in dock.stage_label.text()
    dock.after_combo.setLayer(_after)
    dock.engine_combo.setCurrentIndex(dock.engine_combo.findData("irmad"))
    dock.tile_spin.setValue(100)
    assert dock.start_run() is None
    assert "Tile size" in dock.stage_label.text()
    dock.tile_spin.setValue(256)
    dock.grid_combo.setCurrentIndex(dock.grid_combo.findData("custom"))
    assert dock.start_run() is None
    assert dock.stage_label.text() == ("Error: Output grid 'custom' needs a Target CRS and a Resolution: pick the "
                                       "outputs' CRS (e.g. EPSG:32633) and give their pixel size in that CRS's "
                                       "units (e.g. 10 for 10 m in UTM)")


def test_dock_cancel(dock, project, pump, backend_env: None, tiny_weights, repo_root: Path) -> None:  # noqa: ANN001
    sample = repo_root / "resources" / "sample"
    before, after = _add_pair(project, sample / "naip_2015.tif", sample / "naip_2020.tif")
    dock.before_combo.setLayer(before)
    dock.after_combo.setLayer(after)
    dock.weights_widget.setFilePath(str(tiny_weights("tiny-rn50")))
    dock.prompt_mode_combo.setCurrentIndex(dock.prompt_mode_combo.findData("none"))
    dock.tile_spin.setValue(64)
    dock.overlap_spin.setValue(0)
    results: dict = {}
    dock.runFailed.connect(lambda m: results.setdefault("error", m))
    dock.runFinished.connect(lambda s: results.setdefault("summary", s))
    task = dock.start_run()
    assert task is not None
    ends: list[str] = []  # QGIS announces "Task failed" for a terminated task: a cancel must complete
    task.taskTerminated.connect(lambda: ends.append("terminated"))
    task.taskCompleted.connect(lambda: ends.append("completed"))
    pump(lambda: dock.progress_bar.value() > 0 or results, 600)  # the job runs in the backend
    dock.cancel_button.click()
    pump(lambda: results, 300)
    assert "error" in results and "cancel" in results["error"]
    assert dock.stage_label.text().startswith("Cancelled")
    assert ends == ["completed"], "a cancelled run is not a failed task"
    assert not Path(task.params.output_paths()["mask"]).exists()
    assert not Path(task.params.output_dir).exists(), "a cancelled run leaves no empty run folder"
    assert dock.run_button.isEnabled()


def test_dock_exports_tile_layer(dock, project, pump, backend_env: None, raster_pair: tuple[Path, Path],  # noqa: ANN001
                                 xyz_uri: str) -> None:
    """A non-file layer (XYZ tiles) is exported on the other raster's grid, then compared."""
    _tiles_before_file_after(dock, project, xyz_uri, raster_pair[1])
    dock.polygons_check.setChecked(False)
    task = dock.start_run()
    assert task is not None and set(task.exports) == {"before"}
    results: dict = {}
    dock.runFinished.connect(lambda s: results.setdefault("summary", s))
    dock.runFailed.connect(lambda m: results.setdefault("error", m))
    pump(lambda: results, 600)
    assert "summary" in results, results.get("error")
    exported = Path(task.params.before)
    assert exported.suffix == ".tif" and exported.parent == Path(task.params.output_dir)
    from osgeo import gdal

    ds = gdal.Open(str(exported))
    assert (ds.RasterXSize, ds.RasterYSize) == (128, 128)
    assert ds.GetProjection() == gdal.Open(str(raster_pair[1])).GetProjection()


def test_backend_missing_offers_diagnostics(qgis_app: object, mock_iface, project, pump,  # noqa: ANN001
                                            monkeypatch: pytest.MonkeyPatch, raster_pair: tuple[Path, Path],
                                            tmp_path: Path) -> None:
    from qgis.core import QgsRasterLayer
    from qgis.PyQt.QtWidgets import QPushButton

    from changeclip_qgis.gui.dock import ChangeClipDock

    monkeypatch.setenv("CHANGECLIP_BACKEND_PYTHON", "/usr/bin/python3")  # has no backend installed
    monkeypatch.delenv("CHANGECLIP_BACKEND_URL", raising=False)
    dock = ChangeClipDock(mock_iface)
    dock.output_widget.setFilePath(str(tmp_path))
    before, after = (QgsRasterLayer(str(p), p.stem) for p in raster_pair)
    project.addMapLayers([before, after])
    dock.before_combo.setLayer(before)
    dock.after_combo.setLayer(after)
    dock.engine_combo.setCurrentIndex(dock.engine_combo.findData("irmad"))
    failed: list[str] = []
    dock.runFailed.connect(failed.append)
    assert dock.start_run() is not None
    pump(lambda: failed, 120)
    assert "does not have the changeclip backend installed" in failed[0]
    assert dock.backend_label.text().startswith("Backend not available")
    assert "bold" in dock.diagnostics_button.styleSheet()
    item = mock_iface.messageBar().currentItem()
    assert item is not None and "does not have the changeclip backend" in item.text()
    buttons = [b.text() for b in item.findChildren(QPushButton)]
    assert "Diagnostics" in buttons
    dock.deleteLater()


def test_dock_custom_grid_sends_the_processing_job(dock, project, pump, provider, backend_env: None,  # noqa: ANN001
                                                   raster_pair: tuple[Path, Path]) -> None:
    """The dock and Processing, given the same choices, build the same job; the dock's run is on that grid."""
    from unittest import mock

    import processing
    from osgeo import gdal, osr
    from qgis.core import QgsCoordinateReferenceSystem, QgsProcessingException

    from changeclip_qgis.core.errors import ChangeClipPluginError
    from changeclip_qgis.processing import detect_changes

    before, after = _add_pair(project, *raster_pair)
    dock.before_combo.setLayer(before)
    dock.after_combo.setLayer(after)
    dock.engine_combo.setCurrentIndex(dock.engine_combo.findData("irmad"))
    assert dock.grid_combo.currentData() == "before"
    assert not dock.target_crs_widget.isEnabled() and not dock.resolution_spin.isEnabled()
    dock.grid_combo.setCurrentIndex(dock.grid_combo.findData("custom"))
    assert dock.target_crs_widget.isEnabled() and dock.resolution_spin.isEnabled()
    dock.target_crs_widget.setCrs(QgsCoordinateReferenceSystem("EPSG:32634"))
    assert dock.resolution_spin.suffix() == " m"
    dock.resolution_spin.setValue(5.0)
    from_dock, exports, _name = dock.collect()
    assert not exports

    sent: list = []

    def capture(params, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        sent.append(params)
        raise ChangeClipPluginError("captured")

    with mock.patch.object(detect_changes, "run_detection", capture), \
            pytest.raises(QgsProcessingException, match="captured"):
        processing.run("changeclip:detectchanges", {
            "BEFORE": str(raster_pair[0]), "AFTER": str(raster_pair[1]), "ENGINE": "irmad", "PROMPT_MODE": "none",
            "OUTPUT_GRID": "custom", "TARGET_CRS": "EPSG:32634", "RESOLUTION": 5.0,
            "CHANGE_MASK": "TEMPORARY_OUTPUT", "CHANGE_PROBABILITY": "TEMPORARY_OUTPUT",
            "CHANGE_POLYGONS": "TEMPORARY_OUTPUT"})
    where = ("output_dir", "mask_path", "probability_path", "polygons_path", "overwrite")  # each front-end's own
    job = {k: v for k, v in from_dock.to_dict().items() if k not in where}
    assert job == {k: v for k, v in sent[0].to_dict().items() if k not in where}
    assert (job["grid"], job["target_crs"], job["resolution"]) == ("custom", "EPSG:32634", 5.0)

    results = _run(dock, pump)
    assert "summary" in results, results.get("error")
    ds = gdal.Open(results["summary"]["outputs"]["mask"])
    expected = osr.SpatialReference()
    expected.ImportFromEPSG(32634)
    assert ds.GetSpatialRef().IsSame(expected)
    assert ds.GetGeoTransform()[1] == 5.0 and ds.GetGeoTransform()[5] == -5.0


def test_dock_restores_output_grid_choices(dock, qgis_app: object) -> None:  # noqa: ANN001
    from qgis.core import QgsCoordinateReferenceSystem, QgsSettings

    from changeclip_qgis.core.settings import KEY_DOCK_CHOICES, PREFIX
    from changeclip_qgis.gui.dock import ChangeClipDock

    defaults = dock._choices()
    assert (defaults["grid"], defaults["target_crs"], defaults["resolution"]) == ("before", "", "0.0")

    def reopened(expect_custom: bool) -> ChangeClipDock:  # what the next QGIS session shows
        again = ChangeClipDock(None)
        assert again.target_crs_widget.isEnabled() == expect_custom
        assert again.resolution_spin.isEnabled() == expect_custom
        return again

    # a CRS without an authority id is kept as WKT and comes back as the same CRS
    no_id = QgsCoordinateReferenceSystem()
    assert no_id.createFromProj("+proj=tmerc +lat_0=0 +lon_0=21.5 +k=0.9996 +x_0=500000 +y_0=0 +datum=WGS84 "
                                "+units=m +no_defs")
    dock.grid_combo.setCurrentIndex(dock.grid_combo.findData("custom"))
    dock.target_crs_widget.setCrs(no_id)
    dock.resolution_spin.setValue(2.5)
    dock._save_choices()
    again = reopened(expect_custom=True)
    try:
        assert again.grid_combo.currentData() == "custom" and again.resolution_spin.value() == 2.5
        assert again.target_crs_widget.crs() == no_id and again._choices() == dock._choices()
    finally:
        again.deleteLater()
    dock.grid_combo.setCurrentIndex(dock.grid_combo.findData("after"))  # CRS and resolution stay, unused
    dock.target_crs_widget.setCrs(QgsCoordinateReferenceSystem("EPSG:32634"))
    dock._save_choices()
    again = reopened(expect_custom=False)
    try:
        assert again.grid_combo.currentData() == "after"
        assert again._choices()["target_crs"] == "EPSG:32634" and again._choices()["resolution"] == "2.5"
    finally:
        again.deleteLater()
    # stored values that no longer fit are ignored, the others still apply
    settings = QgsSettings()
    for key, value in (("grid", "diagonal"), ("target_crs", "not a CRS"), ("resolution", "-3")):
        settings.setValue(PREFIX + KEY_DOCK_CHOICES + key, value)
    settings.setValue(PREFIX + KEY_DOCK_CHOICES + "tile", "128")
    third = reopened(expect_custom=False)
    try:
        got = third._choices()
        assert (got["grid"], got["target_crs"], got["resolution"], got["tile"]) == ("before", "", "0.0", "128")
    finally:
        third.deleteLater()


def test_dock_exports_tile_layer_onto_the_custom_grid(dock, project, raster_pair: tuple[Path, Path],  # noqa: ANN001
                                                      xyz_uri: str) -> None:
    """With Output grid 'custom' a non-file layer is exported straight onto that grid (not resampled twice)."""
    from qgis.core import QgsCoordinateReferenceSystem

    _xyz, after = _tiles_before_file_after(dock, project, xyz_uri, raster_pair[1])
    dock.grid_combo.setCurrentIndex(dock.grid_combo.findData("custom"))
    dock.target_crs_widget.setCrs(QgsCoordinateReferenceSystem("EPSG:32634"))
    dock.resolution_spin.setValue(5.0)
    params, exports, _name = dock.collect()
    request = exports["before"]
    assert request.crs.authid() == "EPSG:32634" and request.extent.xMinimum() % 5.0 == 0.0
    assert request.width == round(request.extent.width() / 5.0)
    assert (params.grid, params.target_crs, params.resolution) == ("custom", "EPSG:32634", 5.0)
    dock.grid_combo.setCurrentIndex(dock.grid_combo.findData("before"))  # back to the after file's grid
    params, exports, _name = dock.collect()
    assert exports["before"].crs == after.crs() and (exports["before"].width, exports["before"].height) == (128, 128)
    assert (params.grid, params.target_crs, params.resolution) == ("before", None, None)


def test_dock_describes_the_weights_file(dock, tiny_weights, tmp_path: Path,  # noqa: ANN001
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copy(tiny_weights("tiny-vit"), folder / "only.safetensors")
    monkeypatch.setenv("CHANGECLIP_WEIGHTS_DIR", str(folder))
    dock.engine_combo.setCurrentIndex(dock.engine_combo.findData("changeclip"))
    dock.weights_widget.setFilePath("")
    dock.refresh_weights_info()  # as when the settings dialog that set the folder closes
    assert dock.weights_info.text().startswith("default only.safetensors: tiny-vit · RANDOM")
    dock.weights_widget.setFilePath(str(tiny_weights("tiny-rn50")))
    assert dock.weights_info.text().startswith("tiny-rn50 · RANDOM test weights")
    assert "b35900" in dock.weights_info.styleSheet()  # shown as a warning
    dock.weights_widget.setFilePath(str(tmp_path / "missing.safetensors"))
    assert "does not exist" in dock.weights_info.text()
    dock.engine_combo.setCurrentIndex(dock.engine_combo.findData("irmad"))
    assert dock.weights_info.isHidden(), "IR-MAD uses no weights: nothing to describe"


def test_dock_describes_changes_and_reports_the_matches(dock, project, pump, backend_env: None,  # noqa: ANN001
                                                        raster_pair: tuple[Path, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Describe + Find through a real backend (CLIP with seeded random weights from the weights folder's
    tagger/ file): the summary line counts the matches and the polygons are styled by matches_query."""
    from qgis.core import QgsCategorizedSymbolRenderer, QgsProject
    from safetensors.torch import save_file

    from changeclip.model.tagger import random_clip_state_dict

    (tmp_path / "weights" / "tagger").mkdir(parents=True)
    save_file(random_clip_state_dict(seed=0, tiny=True), str(tmp_path / "weights" / "tagger" / "clip.safetensors"))
    monkeypatch.setenv("CHANGECLIP_WEIGHTS_DIR", str(tmp_path / "weights"))
    before, after = _add_pair(project, *raster_pair)
    dock.before_combo.setLayer(before)
    dock.after_combo.setLayer(after)
    dock.engine_combo.setCurrentIndex(dock.engine_combo.findData("irmad"))
    assert "IR-MAD uses no prompt" in dock.prompt_edit.toolTip()
    assert not dock.query_edit.isEnabled()
    dock.polygons_check.setChecked(False)
    dock.describe_check.setChecked(True)
    assert dock.polygons_check.isChecked() and dock.query_edit.isEnabled()
    dock.query_edit.setText("farmland to building")
    results = _run(dock, pump)
    assert "summary" in results, results.get("error")
    query = results["summary"]["describe"]["query"]
    assert query["kind"] == "transition" and query["text"] == "farmland to building"
    line = f"{query['matching']} of {results['summary']['describe']['polygons']} changes match 'farmland to building'"
    assert line in dock.summary_label.text()
    group = QgsProject.instance().layerTreeRoot().children()[0]
    polygons = group.findLayers()[0].layer()
    assert polygons.fields().indexOf("change_label") >= 0
    renderer = polygons.renderer()
    assert isinstance(renderer, QgsCategorizedSymbolRenderer) and renderer.classAttribute() == "matches_query"
    assert polygons.attributeTableConfig().sortExpression() == '"query_score"'
