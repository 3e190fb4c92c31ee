"""What a new user meets first (issue #13): the dock's Before/After defaults follow the project,
the polygon minimum size is the same everywhere, and the dock and Processing load results by one
rule (one group, same names, mask and polygons visible, probability present but hidden)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.qgis


@pytest.fixture()
def fresh_dock(qgis_app: object, project: object, pump):  # noqa: ANN001, ANN201
    """A dock built on an empty project, as QGIS builds it before a project's layers load."""
    from qgis.core import QgsSettings

    from changeclip_qgis.core.settings import KEY_DOCK_CHOICES, PREFIX
    from changeclip_qgis.gui.dock import ChangeClipDock

    QgsSettings().remove(PREFIX + KEY_DOCK_CHOICES.rstrip("/"))
    widget = ChangeClipDock(None)
    yield widget
    widget.shutdown()
    widget.deleteLater()


def _settle(pump) -> None:  # noqa: ANN001
    """Let the deferred proposal run (a few event-loop turns)."""
    from qgis.core import QgsApplication

    for _ in range(5):
        QgsApplication.processEvents()
    pump(lambda: True, 5)


def _layer(path: Path, name: str):  # noqa: ANN202
    from qgis.core import QgsRasterLayer

    layer = QgsRasterLayer(str(path), name)
    assert layer.isValid(), path
    return layer


def _chosen(dock) -> tuple[str, str]:  # noqa: ANN001
    return dock.before_combo.currentLayer().name(), dock.after_combo.currentLayer().name()


def test_layers_loaded_after_the_dock_get_two_different_rasters(fresh_dock, project, pump,  # noqa: ANN001
                                                                 geotiff, tmp_path: Path) -> None:
    """The first run of a new user used to fail: After = Before, because the dock was built first."""
    data = np.zeros((3, 16, 16), np.uint8)
    late = geotiff(tmp_path / "scene_20200831.tif", data)
    early = geotiff(tmp_path / "scene_20150926.tif", data)
    assert fresh_dock.before_combo.currentLayer() is None
    project.addMapLayers([_layer(late, "scene_20200831"), _layer(early, "scene_20150926")])
    _settle(pump)
    assert _chosen(fresh_dock) == ("scene_20150926", "scene_20200831"), "older date as Before"
    # the user's own choice is kept when more layers arrive
    index = fresh_dock.after_combo.findText("scene_20150926")
    fresh_dock.after_combo.setCurrentIndex(index)
    fresh_dock.after_combo.activated.emit(index)  # what a click in the list emits
    project.addMapLayer(_layer(geotiff(tmp_path / "scene_2010.tif", data), "scene_2010"))
    _settle(pump)
    assert _chosen(fresh_dock) == ("scene_20150926", "scene_20150926")
    # a newly loaded project gets a fresh proposal
    project.clear()
    project.addMapLayers([_layer(late, "late"), _layer(early, "early")])  # dates only in the file names
    _settle(pump)
    assert _chosen(fresh_dock) == ("early", "late")


def test_dates_from_tiff_metadata_and_outputs_never_proposed(fresh_dock, project, pump,  # noqa: ANN001
                                                              geotiff, tmp_path: Path) -> None:
    from osgeo import gdal

    from changeclip_qgis.core.layers import KIND_PROPERTY

    data = np.zeros((3, 16, 16), np.uint8)
    paths = {}
    for name, stamp in (("alpha", "2021:05:01 10:00:00"), ("beta", "2018:04:30 09:00:00")):
        paths[name] = geotiff(tmp_path / f"{name}.tif", data)
        ds = gdal.Open(str(paths[name]), gdal.GA_Update)
        ds.SetMetadataItem("TIFFTAG_DATETIME", stamp)
        ds = None
    output = _layer(geotiff(tmp_path / "out.tif", data[:1]), "change mask — before_2001 → after_2002")
    output.setCustomProperty(KIND_PROPERTY, "mask")
    project.addMapLayers([output, _layer(paths["alpha"], "alpha"), _layer(paths["beta"], "beta")])
    _settle(pump)
    assert _chosen(fresh_dock) == ("beta", "alpha")


def test_dock_built_after_the_layers_also_gets_two(qgis_app: object, project, pump, geotiff,  # noqa: ANN001
                                                   tmp_path: Path) -> None:
    from changeclip_qgis.gui.dock import ChangeClipDock

    data = np.zeros((3, 16, 16), np.uint8)
    project.addMapLayers([_layer(geotiff(tmp_path / "a.tif", data), "a"),
                          _layer(geotiff(tmp_path / "b.tif", data), "b")])
    dock = ChangeClipDock(None)
    try:
        before, after = _chosen(dock)
        assert before != after
    finally:
        dock.shutdown()
        dock.deleteLater()


def test_min_polygon_size_default_is_the_same_everywhere(fresh_dock, provider) -> None:  # noqa: ANN001
    """Dock, Processing and the CLI drop polygons under the same number of output pixels by default."""
    from qgis.core import QgsApplication

    from changeclip.cli import build_parser
    from changeclip_qgis.core import protocol

    default = protocol.DEFAULT_MIN_POLYGON_PIXELS
    assert default >= 2, "single-pixel specks must not be polygons by default"
    assert fresh_dock.min_pixels_spin.value() == default
    assert fresh_dock.min_pixels_spin.suffix() == " px" and f"{default} px" in fresh_dock.min_pixels_spin.toolTip()
    alg = QgsApplication.processingRegistry().algorithmById("changeclip:detectchanges")
    assert alg.parameterDefinition("MIN_PIXELS").defaultValue() == default
    assert f"default {default}" in alg.shortHelpString()
    args = build_parser().parse_args(["detect", "b.tif", "a.tif", "-o", "out"])
    assert args.min_pixels == default and args.min_area == 0.0


def test_dock_sends_the_minimum_size(fresh_dock, project, raster_pair: tuple[Path, Path]) -> None:  # noqa: ANN001
    project.addMapLayers([_layer(raster_pair[0], "before"), _layer(raster_pair[1], "after")])
    fresh_dock.propose_pair()
    fresh_dock.engine_combo.setCurrentIndex(fresh_dock.engine_combo.findData("irmad"))
    fresh_dock.min_pixels_spin.setValue(9)
    params, _exports, _name = fresh_dock.collect()
    assert params.min_pixels == 9 and params.polygons


def test_styles_let_the_imagery_show_through(qgis_app: object, raster_pair: tuple[Path, Path],  # noqa: ANN001
                                             tmp_path: Path) -> None:
    from qgis.core import QgsRasterLayer, QgsVectorLayer

    from changeclip_qgis.core.layers import apply_style

    mask = QgsRasterLayer(str(raster_pair[0]), "mask")
    assert apply_style(mask, "mask")
    assert mask.renderer().opacity() <= 0.5
    polygons = QgsVectorLayer("Polygon?crs=EPSG:32633", "polygons", "memory")
    assert apply_style(polygons, "polygons")
    stroke = polygons.renderer().symbol().symbolLayer(0)
    assert stroke.strokeWidth() <= 0.3 and stroke.strokeColor().alpha() < 255
    assert stroke.color().alpha() == 0, "no fill: the imagery stays visible inside"


def test_processing_dialog_makes_polygons_by_default(provider) -> None:  # noqa: ANN001
    """The toolbox dialog opens with CHANGE_POLYGONS set to a temporary layer, not skipped (the dock
    makes polygons by default too)."""
    from processing.gui.AlgorithmDialog import AlgorithmDialog
    from qgis.core import QgsApplication, QgsProcessing

    alg = QgsApplication.processingRegistry().createAlgorithmById("changeclip:detectchanges")
    dialog = AlgorithmDialog(alg)
    try:
        value = dialog.mainWidget().wrappers["CHANGE_POLYGONS"].parameterValue()
        assert value is not None, "polygons are skipped by default"
        assert value.sink.staticValue() == QgsProcessing.TEMPORARY_OUTPUT
    finally:
        dialog.deleteLater()


def _tree(group) -> list[tuple[str, bool]]:  # noqa: ANN001
    return [(node.layer().name(), node.isVisible()) for node in group.findLayers()]


@pytest.mark.server
def test_processing_and_dock_load_results_by_one_rule(provider, backend_env: None, project,  # noqa: ANN001
                                                      raster_pair: tuple[Path, Path], tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsApplication

    from changeclip_qgis.core.layers import load_outputs

    alg = QgsApplication.processingRegistry().algorithmById("changeclip:detectchanges")
    assert alg.parameterDefinition("CHANGE_POLYGONS").createByDefault(), "the dialog makes polygons, like the dock"
    before, after = raster_pair
    results = processing.runAndLoadResults("changeclip:detectchanges", {
        "BEFORE": str(before), "AFTER": str(after), "ENGINE": "irmad", "PROMPT_MODE": "none",
        "CHANGE_MASK": str(tmp_path / "mask.tif"), "CHANGE_PROBABILITY": str(tmp_path / "prob.tif"),
        "CHANGE_POLYGONS": str(tmp_path / "polygons.gpkg")})
    root = project.layerTreeRoot()
    assert len(root.children()) == 1, [c.name() for c in root.children()]
    group = root.children()[0]
    run = "before → after [IR-MAD]"
    assert group.name() == f"ChangeCLIP: {run}"
    expected = [(f"change polygons — {run}", True), (f"change mask — {run}", True),
                (f"change probability — {run}", False)]
    assert _tree(group) == expected
    sources = [node.layer().source().split("|")[0] for node in group.findLayers()]
    assert sources == [results["CHANGE_POLYGONS"], results["CHANGE_MASK"], results["CHANGE_PROBABILITY"]]
    # the dock's loader, on the same files: the same group
    summary = {"outputs": {"mask": results["CHANGE_MASK"], "probability": results["CHANGE_PROBABILITY"],
                           "polygons": results["CHANGE_POLYGONS"]}}
    load_outputs(summary, run, project)
    assert len(root.children()) == 2 and root.children()[0].name() == group.name()
    assert _tree(root.children()[0]) == expected
