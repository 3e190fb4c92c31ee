"""changeclip:detectchanges with a real backend process: processing.run, styled loading, a batch of
two pairs, a saved .model3 model that chains the numbers, and cancellation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = [pytest.mark.qgis, pytest.mark.server]

ALG = "changeclip:detectchanges"


def _read(path: str) -> np.ndarray:
    from osgeo import gdal

    ds = gdal.Open(path)  # keep the dataset alive while its band is read
    return ds.GetRasterBand(1).ReadAsArray()


def _irmad_params(before: Path, after: Path, out: Path, polygons: bool = True) -> dict:
    params = {"BEFORE": str(before), "AFTER": str(after), "ENGINE": "irmad", "PROMPT_MODE": "none",
              "CHANGE_MASK": str(out / "mask.tif"), "CHANGE_PROBABILITY": str(out / "prob.tif")}
    if polygons:
        params["CHANGE_POLYGONS"] = str(out / "polygons.gpkg")
    return params


def test_run_irmad_and_load_styled(provider: object, backend_env: None, project: object,
                                   raster_pair: tuple[Path, Path], tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsPalettedRasterRenderer, QgsProject, QgsSingleBandPseudoColorRenderer

    params = _irmad_params(*raster_pair, tmp_path)
    params["SUMMARY"] = str(tmp_path / "run" / "summary.json")
    results = processing.runAndLoadResults(ALG, params)
    mask = _read(results["CHANGE_MASK"])
    changed = int((mask == 1).sum())
    assert mask.shape == (128, 128) and changed > 0
    assert (mask[40:72, 50:82] == 1).mean() > 0.9, "the bright square must be detected as change"
    assert results["CHANGED_AREA_M2"] == pytest.approx(changed * 4.0)  # 2 m pixels
    assert results["CHANGED_FRACTION"] == pytest.approx(changed / mask.size, rel=1e-6)
    assert Path(results["CHANGE_POLYGONS"]).is_file()
    summary = json.loads(Path(results["SUMMARY"]).read_text(encoding="utf-8"))
    assert results["SUMMARY"] == params["SUMMARY"]
    assert summary["outputs"]["summary"] == params["SUMMARY"]
    for key in ("CHANGE_MASK", "CHANGE_PROBABILITY", "CHANGE_POLYGONS"):  # sidecar styles: files open styled
        assert Path(results[key]).with_suffix(".qml").is_file(), key
    from qgis.core import QgsRasterLayer

    reopened = QgsRasterLayer(results["CHANGE_MASK"], "reopened")  # a fresh layer picks up the sidecar
    assert isinstance(reopened.renderer(), QgsPalettedRasterRenderer)
    assert summary["engine"] == "irmad" and summary["changed_area_m2"] == pytest.approx(results["CHANGED_AREA_M2"])
    layers = {lyr.source().split("|")[0]: lyr for lyr in QgsProject.instance().mapLayers().values()}
    assert isinstance(layers[results["CHANGE_MASK"]].renderer(), QgsPalettedRasterRenderer)
    assert isinstance(layers[results["CHANGE_PROBABILITY"]].renderer(), QgsSingleBandPseudoColorRenderer)
    poly = layers[results["CHANGE_POLYGONS"]]
    assert poly.featureCount() > 0
    assert poly.renderer().symbol().symbolLayer(0).strokeColor().name() == "#ffe600"


def test_batch_of_two_pairs_reuses_backend(provider: object, backend_env: None, raster_pair: tuple[Path, Path],
                                           tmp_path: Path) -> None:
    """What batch mode does: one algorithm, rows run one after the other, one backend."""
    import processing
    from qgis.core import QgsApplication

    from changeclip_qgis.core.backend_launcher import LAUNCHER

    alg = QgsApplication.processingRegistry().algorithmById(ALG)
    assert alg.flags() & alg.FlagSupportsBatch
    before, after = raster_pair
    rows = [(before, after, tmp_path / "row1"), (after, before, tmp_path / "row2")]
    pids, masks = set(), []
    for b, a, out in rows:
        out.mkdir()
        results = processing.run(ALG, _irmad_params(b, a, out, polygons=False))
        masks.append(_read(results["CHANGE_MASK"]))
        pids.add(LAUNCHER.current().process.pid)
        assert results["CHANGE_POLYGONS"] is None
        assert results["SUMMARY"] is None  # optional, not asked for
    assert len(pids) == 1, "the backend must be reused between rows"
    assert all((m == 1).sum() > 0 for m in masks)


def test_saved_model_chains_outputs(provider: object, backend_env: None, raster_pair: tuple[Path, Path],
                                    tmp_path: Path) -> None:
    import processing
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterRasterLayer,
    )

    src = QgsProcessingModelChildParameterSource
    model = QgsProcessingModelAlgorithm("changes then constant", "tests")
    for name in ("before_img", "after_img"):
        model.addModelParameter(QgsProcessingParameterRasterLayer(name, name), QgsProcessingModelParameter(name))
    detect = QgsProcessingModelChildAlgorithm(ALG)
    detect.setChildId("detect")
    detect.addParameterSources("BEFORE", [src.fromModelParameter("before_img")])
    detect.addParameterSources("AFTER", [src.fromModelParameter("after_img")])
    detect.addParameterSources("ENGINE", [src.fromStaticValue("irmad")])
    detect.addParameterSources("PROMPT_MODE", [src.fromStaticValue("none")])
    mask_out = QgsProcessingModelOutput("mask_out")
    mask_out.setChildId("detect")
    mask_out.setChildOutputName("CHANGE_MASK")
    detect.setModelOutputs({"mask_out": mask_out})
    model.addChildAlgorithm(detect)
    const = QgsProcessingModelChildAlgorithm("native:createconstantrasterlayer")
    const.setChildId("const")
    const.addParameterSources("EXTENT", [src.fromModelParameter("before_img")])
    const.addParameterSources("TARGET_CRS", [src.fromModelParameter("before_img")])
    const.addParameterSources("PIXEL_SIZE", [src.fromStaticValue(16.0)])
    const.addParameterSources("NUMBER", [src.fromChildOutput("detect", "CHANGED_FRACTION")])
    const.addParameterSources("OUTPUT_TYPE", [src.fromStaticValue(5)])  # Float32
    const_out = QgsProcessingModelOutput("fraction_raster")
    const_out.setChildId("const")
    const_out.setChildOutputName("OUTPUT")
    const.setModelOutputs({"fraction_raster": const_out})
    const.setDependencies([])
    model.addChildAlgorithm(const)
    path = tmp_path / "changes.model3"
    assert model.toFile(str(path))
    loaded = QgsProcessingModelAlgorithm()
    assert loaded.fromFile(str(path))
    before, after = raster_pair
    results = processing.run(loaded, {"before_img": str(before), "after_img": str(after),
                                      "detect:mask_out": str(tmp_path / "model_mask.tif"),
                                      "const:fraction_raster": str(tmp_path / "fraction.tif")})
    mask = _read(results["detect:mask_out"])
    fraction = float((mask == 1).sum()) / mask.size
    assert fraction > 0
    assert float(_read(results["const:fraction_raster"])[0, 0]) == pytest.approx(fraction, rel=1e-5)


def test_precision_parameter_reaches_the_model(provider: object, backend_env: None, tiny_weights,  # noqa: ANN001
                                               raster_pair: tuple[Path, Path], tmp_path: Path) -> None:
    import processing

    summary = tmp_path / "summary.json"
    results = processing.run(ALG, {"BEFORE": str(raster_pair[0]), "AFTER": str(raster_pair[1]),
                                   "ENGINE": "changeclip", "WEIGHTS": str(tiny_weights("tiny-rn50")),
                                   "PROMPT_MODE": "none", "TILE_SIZE": 64, "OVERLAP": 16, "DEVICE": "cpu",
                                   "PRECISION": "bf16", "SUMMARY": str(summary),
                                   "CHANGE_MASK": str(tmp_path / "mask.tif"),
                                   "CHANGE_PROBABILITY": str(tmp_path / "prob.tif")})
    assert Path(results["CHANGE_MASK"]).is_file()
    model = json.loads(summary.read_text(encoding="utf-8"))["model"]
    assert model["precision"] == "bf16" and model["device"] == "cpu"


def _recording_feedback() -> Any:
    """A QgsProcessingFeedback that keeps the warnings it is given (in ``.warnings``)."""
    from qgis.core import QgsProcessingFeedback

    class Recording(QgsProcessingFeedback):
        def __init__(self) -> None:
            super().__init__()
            self.warnings: list[str] = []

        def pushWarning(self, warning: str) -> None:  # noqa: N802 - Qt's name
            self.warnings.append(warning)
            super().pushWarning(warning)

    return Recording()


def test_run_warnings_reach_the_processing_log(provider: object, backend_env: None, geotiff: Any,
                                               raster_pair_without_crs: tuple[Path, Path], tmp_path: Path) -> None:
    import processing

    rng = np.random.default_rng(1)
    # after: 8 m pixels over the 2 m before grid -> upsampled 4x, which the backend warns about
    before = geotiff(tmp_path / "b.tif", rng.integers(60, 120, (3, 64, 64)).astype(np.uint8))
    after = geotiff(tmp_path / "a.tif", rng.integers(60, 120, (3, 16, 16)).astype(np.uint8), pixel=8.0)
    feedback = _recording_feedback()
    results = processing.run(ALG, _irmad_params(before, after, tmp_path / "r1"), feedback=feedback)
    assert any("ChangeCLIP: the after raster's pixels are about 4.0x larger" in w for w in feedback.warnings)
    assert results["CHANGED_AREA_M2"] is not None
    # no CRS on either (same pixel grid): the area is unknown, not 0, and the log says why
    feedback = _recording_feedback()
    results = processing.run(ALG, _irmad_params(*raster_pair_without_crs, tmp_path / "r2"), feedback=feedback)
    assert any("no CRS" in w for w in feedback.warnings), feedback.warnings
    assert results["CHANGED_AREA_M2"] is None


def test_cancel_from_processing(provider: object, backend_env: None, tiny_weights, repo_root: Path,
                                tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    feedback = QgsProcessingFeedback()
    # cancel at the first progress report of the running job (whatever the machine's speed)
    feedback.progressChanged.connect(lambda value: feedback.cancel() if value > 0 else None)
    sample = repo_root / "resources" / "sample"
    with pytest.raises(QgsProcessingException, match="cancelled"):
        processing.run(ALG, {"BEFORE": str(sample / "naip_2015.tif"), "AFTER": str(sample / "naip_2020.tif"),
                             "ENGINE": "changeclip", "WEIGHTS": str(tiny_weights("tiny-rn50")),
                             "PROMPT_MODE": "none", "TILE_SIZE": 64, "OVERLAP": 0,
                             "CHANGE_MASK": str(tmp_path / "mask.tif"),
                             "CHANGE_PROBABILITY": str(tmp_path / "prob.tif")}, feedback=feedback)
    assert not (tmp_path / "mask.tif").exists() and not (tmp_path / "prob.tif").exists()


def test_bad_input_names_the_fix(provider: object, backend_env: None, raster_pair: tuple[Path, Path],
                                 tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsProcessingException

    params = _irmad_params(*raster_pair, tmp_path)
    params["TILE_SIZE"] = 100
    with pytest.raises(QgsProcessingException, match="Tile size: .*multiple of 32"):
        processing.run(ALG, params)
    params["TILE_SIZE"] = 256
    params["CHANGE_MASK"] = str(tmp_path / "mask.png")
    with pytest.raises(QgsProcessingException, match="CHANGE_MASK"):
        processing.run(ALG, params)
    assert json.dumps(params)


@pytest.fixture()
def external_server(tmp_path: Path):  # noqa: ANN201
    """A ``changeclip serve`` started outside the plugin, with its token in a file (like a remote box)."""
    import subprocess
    import sys

    token_file = tmp_path / "token"
    proc = subprocess.Popen([sys.executable, "-m", "changeclip", "serve", "--port", "0", "--token-file",
                             str(token_file)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        handshake = json.loads(proc.stdout.readline())
        yield handshake["url"], token_file
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        proc.stdout.close()


def test_remote_url_and_token(provider: object, external_server, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                              raster_pair: tuple[Path, Path], tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsProcessingException

    from changeclip_qgis.core.backend_launcher import LAUNCHER

    url, token_file = external_server
    monkeypatch.delenv("CHANGECLIP_BACKEND_PYTHON", raising=False)
    monkeypatch.setenv("CHANGECLIP_BACKEND_URL", url)
    monkeypatch.setenv("CHANGECLIP_TOKEN_FILE", str(token_file))
    results = processing.run(ALG, _irmad_params(*raster_pair, tmp_path, polygons=False))
    assert results["CHANGED_AREA_M2"] > 0
    backend = LAUNCHER.current()
    assert backend.url == url and not backend.owned
    LAUNCHER.stop()  # never stops a server the plugin did not start
    assert backend.client.live()
    wrong = tmp_path / "wrong_token"
    wrong.write_text("x" * 43 + "\n")
    monkeypatch.setenv("CHANGECLIP_TOKEN_FILE", str(wrong))
    with pytest.raises(QgsProcessingException, match="HTTP 401"):
        processing.run(ALG, _irmad_params(*raster_pair, tmp_path / "again", polygons=False))


def test_non_file_layer_is_exported(provider: object, backend_env: None, project, xyz_uri: str,  # noqa: ANN001
                                    raster_pair: tuple[Path, Path], tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsProcessingFeedback, QgsRasterLayer

    xyz = QgsRasterLayer(xyz_uri, "tiles", "wms")
    project.addMapLayer(xyz)
    messages: list[str] = []

    class Feedback(QgsProcessingFeedback):
        def pushInfo(self, info: str) -> None:  # noqa: N802
            messages.append(info)

    params = _irmad_params(raster_pair[0], raster_pair[1], tmp_path, polygons=False)
    params["AFTER"] = xyz.id()
    results = processing.run(ALG, params, feedback=Feedback())
    assert _read(results["CHANGE_MASK"]).shape == (128, 128)
    assert any("AFTER: layer 'tiles' is not a local file; exporting 128x128 px" in m for m in messages), messages


def test_output_grid_parameters(provider: object) -> None:
    """OUTPUT_GRID, TARGET_CRS and RESOLUTION: advanced, labelled as the errors name them, explained in the help."""
    from qgis.core import (
        QgsApplication,
        QgsProcessingParameterCrs,
        QgsProcessingParameterDefinition,
        QgsProcessingParameterEnum,
        QgsProcessingParameterNumber,
    )

    alg = QgsApplication.processingRegistry().algorithmById(ALG)
    grid, crs, resolution = (alg.parameterDefinition(n) for n in ("OUTPUT_GRID", "TARGET_CRS", "RESOLUTION"))
    assert isinstance(grid, QgsProcessingParameterEnum) and grid.description() == "Output grid"
    assert grid.options() == ["before", "after", "custom"] and grid.usesStaticStrings()
    assert grid.defaultValue() == "before"
    assert isinstance(crs, QgsProcessingParameterCrs) and crs.description() == "Target CRS (custom grid)"
    assert isinstance(resolution, QgsProcessingParameterNumber)
    assert resolution.description() == "Resolution (custom grid, CRS units)"
    assert resolution.dataType() == QgsProcessingParameterNumber.Double and 0 < resolution.minimum() < 1e-6
    for param in (grid, crs, resolution):
        assert param.flags() & QgsProcessingParameterDefinition.FlagAdvanced, param.name()
    for param in (crs, resolution):
        assert param.flags() & QgsProcessingParameterDefinition.FlagOptional, param.name()
    help_text = alg.shortHelpString()
    assert "OUTPUT_GRID" in help_text and "TARGET_CRS" in help_text and "RESOLUTION" in help_text
    assert "the AFTER raster is aligned onto the BEFORE raster's grid" not in help_text


def _grid(path: str) -> tuple[Any, tuple[float, ...], tuple[int, int]]:
    """(spatial reference, geotransform, (width, height)) of a raster file."""
    from osgeo import gdal

    ds = gdal.Open(path)
    return ds.GetSpatialRef(), ds.GetGeoTransform(), (ds.RasterXSize, ds.RasterYSize)


def test_custom_output_grid_end_to_end(provider: object, backend_env: None, raster_pair: tuple[Path, Path],
                                       tmp_path: Path) -> None:
    """The outputs really are on the requested grid: the same CRS at a coarser resolution, then another
    UTM-like CRS that has no EPSG code (sent as WKT)."""
    import processing
    from osgeo import osr
    from qgis.core import QgsCoordinateReferenceSystem, QgsRasterLayer, QgsRectangle

    # 1. the before raster's CRS (EPSG:32633, 2 m pixels) at 4 m: the 256 m square becomes 64 x 64 px
    params = _irmad_params(*raster_pair, tmp_path / "coarse", polygons=False)
    params.update(OUTPUT_GRID="custom", TARGET_CRS="EPSG:32633", RESOLUTION=4.0)
    params["SUMMARY"] = str(tmp_path / "coarse" / "summary.json")
    results = processing.run(ALG, params)
    for key in ("CHANGE_MASK", "CHANGE_PROBABILITY"):
        layer = QgsRasterLayer(results[key], key)
        assert layer.crs().authid() == "EPSG:32633", key
        assert (layer.rasterUnitsPerPixelX(), layer.rasterUnitsPerPixelY()) == (4.0, 4.0), key
        assert (layer.width(), layer.height()) == (64, 64), key
        assert layer.extent() == QgsRectangle(500000.0, 4499744.0, 500256.0, 4500000.0), key
    mask = _read(results["CHANGE_MASK"])
    changed = int((mask == 1).sum())
    assert (mask[20:36, 25:41] == 1).mean() > 0.9, "the bright square (rows 40-72, cols 50-82 at 2 m) must be found"
    assert results["CHANGED_AREA_M2"] == pytest.approx(changed * 16.0)  # 4 m pixels
    summary = json.loads(Path(params["SUMMARY"]).read_text(encoding="utf-8"))
    assert summary["grid"]["geotransform"] == [500000.0, 4.0, 0.0, 4500000.0, 0.0, -4.0]

    # 2. a transverse Mercator CRS centred 6.5 degrees east, without an authority id: it goes as WKT
    proj = "+proj=tmerc +lat_0=0 +lon_0=21.5 +k=0.9996 +x_0=500000 +y_0=0 +datum=WGS84 +units=m +no_defs"
    target = QgsCoordinateReferenceSystem()
    assert target.createFromProj(proj) and not target.authid()
    params = _irmad_params(*raster_pair, tmp_path / "wkt", polygons=False)
    params.update(OUTPUT_GRID="custom", TARGET_CRS=target, RESOLUTION=5.0)
    messages: list[str] = []
    feedback = _recording_feedback()
    feedback.pushInfo = messages.append  # type: ignore[method-assign]
    results = processing.run(ALG, params, feedback=feedback)
    srs, (x0, dx, rx, y0, ry, dy), _size = _grid(results["CHANGE_MASK"])
    expected = osr.SpatialReference()
    expected.ImportFromProj4(proj)
    assert srs.IsSame(expected), srs.ExportToWkt()
    assert (dx, dy, rx, ry) == (5.0, -5.0, 0.0, 0.0)
    assert x0 % 5.0 == 0.0 and y0 % 5.0 == 0.0  # the custom grid is laid out on whole multiples of the resolution
    mask = _read(results["CHANGE_MASK"])
    area = int((mask == 1).sum()) * 25.0
    assert 0.6 * 64 * 64 < area < 1.6 * 64 * 64, area  # the 64 m x 64 m square, resampled and rotated a little
    assert any("output grid custom (WKT CRS" in m and "5 units/px" in m for m in messages), messages


def test_output_grid_after(provider: object, backend_env: None, raster_pair: tuple[Path, Path],
                           tmp_path: Path) -> None:
    """OUTPUT_GRID after: the outputs take the (coarser) after raster's grid, not the before raster's."""
    import processing
    from osgeo import gdal

    before, after = raster_pair
    coarse = tmp_path / "after_4m.tif"
    gdal.Translate(str(coarse), str(after), xRes=4.0, yRes=4.0, resampleAlg="average")
    params = _irmad_params(before, coarse, tmp_path / "after_grid", polygons=False)
    params["OUTPUT_GRID"] = "after"
    results = processing.run(ALG, params)
    srs, transform, size = _grid(results["CHANGE_MASK"])
    after_srs, after_transform, after_size = _grid(str(coarse))
    assert size == after_size == (64, 64) and transform == after_transform and srs.IsSame(after_srs)
    mask = _read(results["CHANGE_MASK"])
    assert (mask[20:36, 25:41] == 1).mean() > 0.9
    assert results["CHANGED_AREA_M2"] == pytest.approx(int((mask == 1).sum()) * 16.0)
    params = _irmad_params(before, coarse, tmp_path / "before_grid", polygons=False)  # the default: before's
    assert _grid(processing.run(ALG, params)["CHANGE_MASK"])[2] == (128, 128)


def test_output_grid_errors_name_the_fix(provider: object, backend_env: None, raster_pair: tuple[Path, Path],
                                         tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsProcessingException

    params = _irmad_params(*raster_pair, tmp_path, polygons=False)
    params["OUTPUT_GRID"] = "custom"
    with pytest.raises(QgsProcessingException, match="Output grid 'custom' needs a Target CRS and a Resolution"):
        processing.run(ALG, params)
    params["TARGET_CRS"] = "EPSG:32633"
    with pytest.raises(QgsProcessingException, match="Output grid 'custom' needs a Resolution"):
        processing.run(ALG, params)
    params["RESOLUTION"] = 0.0
    with pytest.raises(QgsProcessingException, match="RESOLUTION"):  # below its minimum: Processing refuses it
        processing.run(ALG, params)
    params.update(OUTPUT_GRID="before", RESOLUTION=10.0)
    with pytest.raises(QgsProcessingException, match="Output grid is 'before' but a Target CRS and a Resolution "
                                                     "were given; they only apply to Output grid 'custom'"):
        processing.run(ALG, params)
    assert not (tmp_path / "mask.tif").exists()


def test_non_file_layer_is_exported_onto_the_custom_grid(provider: object, backend_env: None, project,  # noqa: ANN001
                                                         xyz_uri: str, raster_pair: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsRasterLayer

    xyz = QgsRasterLayer(xyz_uri, "tiles", "wms")
    project.addMapLayer(xyz)
    feedback = _recording_feedback()
    messages: list[str] = []
    feedback.pushInfo = messages.append  # type: ignore[method-assign]
    params = _irmad_params(raster_pair[0], raster_pair[1], tmp_path, polygons=False)
    params.update(BEFORE=xyz.id(), OUTPUT_GRID="custom", TARGET_CRS="EPSG:32634", RESOLUTION=5.0)
    results = processing.run(ALG, params, feedback=feedback)
    assert any("BEFORE: layer 'tiles' is not a local file" in m and "on the custom grid (EPSG:32634, 5 units/px)"
               in m for m in messages), messages
    mask = QgsRasterLayer(results["CHANGE_MASK"], "mask")
    assert mask.crs().authid() == "EPSG:32634"
    assert (mask.rasterUnitsPerPixelX(), mask.rasterUnitsPerPixelY()) == (5.0, 5.0)
    # the export was already on the custom grid: no resampling warning for it
    assert not any("the before raster's pixels" in w for w in feedback.warnings), feedback.warnings
    assert (_read(results["CHANGE_MASK"]) != 255).any(), "the exported layer and the after raster must overlap"


def _seeded_clip(folder: Path) -> str:
    from safetensors.torch import save_file

    from changeclip.model.tagger import random_clip_state_dict

    path = folder / "clip_seeded.safetensors"
    save_file(random_clip_state_dict(seed=0, tiny=True), str(path))
    return str(path)


def test_describe_and_find_through_processing(provider: object, backend_env: None, project: object,
                                              raster_pair: tuple[Path, Path], tmp_path: Path) -> None:
    """DESCRIBE/QUERY/KEEP_MATCHING reach the backend; the numbers and the matching layer come back; the
    polygons load styled by matches_query and sorted by query_score. A threshold of 0.001 makes every
    polygon match (CLIP's probabilities with random weights are near 1/57), so the counts are known."""
    import processing
    from qgis.core import QgsCategorizedSymbolRenderer, QgsProject, QgsVectorLayer

    params = _irmad_params(*raster_pair, tmp_path)
    params.update({"DESCRIBE": True, "QUERY": "building", "QUERY_THRESHOLD": 0.001, "KEEP_MATCHING": True,
                   "DESCRIBE_WEIGHTS": _seeded_clip(tmp_path)})
    results = processing.runAndLoadResults(ALG, params)
    polygons = QgsVectorLayer(results["CHANGE_POLYGONS"], "p", "ogr")
    assert polygons.featureCount() > 0
    assert results["MATCHING_COUNT"] == polygons.featureCount()
    assert results["MATCHING_AREA_M2"] == pytest.approx(sum(f["area_m2"] for f in polygons.getFeatures()))
    matching = QgsVectorLayer(results["MATCHING_POLYGONS"], "m", "ogr")
    assert matching.featureCount() == polygons.featureCount()
    for feat in polygons.getFeatures():
        assert feat["change_label"] == f"{feat['before_class']} → {feat['after_class']}"
        assert feat["matches_query"] and 0 < feat["query_score"] <= 1
    loaded = {lyr.source().split("|")[0]: lyr for lyr in QgsProject.instance().mapLayers().values()}
    styled = loaded[results["CHANGE_POLYGONS"]]
    assert isinstance(styled.renderer(), QgsCategorizedSymbolRenderer)
    assert styled.renderer().classAttribute() == "matches_query"
    assert styled.attributeTableConfig().sortExpression() == '"query_score"'


@pytest.mark.parametrize(("extra", "match"), [
    ({"DESCRIBE": True}, "DESCRIBE describes the change polygons: set the CHANGE_POLYGONS output"),
    ({"QUERY": "building"}, "QUERY is scored on the polygons' descriptions: turn DESCRIBE on"),
])
def test_describe_needs_polygons_and_query_needs_describe(provider: object, backend_env: None,
                                                          raster_pair: tuple[Path, Path], tmp_path: Path,
                                                          extra: dict, match: str) -> None:
    import processing
    from qgis.core import QgsProcessingException

    params = _irmad_params(*raster_pair, tmp_path, polygons="QUERY" in extra)
    params.update(extra)
    with pytest.raises(QgsProcessingException, match=match):
        processing.run(ALG, params)
