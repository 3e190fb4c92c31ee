"""changeclip:createtrainingdata in QGIS: the refusals before anything runs, and a dataset job from the
selected features of an in-memory layer (exported to a temporary GeoPackage) inside an AOI, whose labels
equal an independent ``gdal.Rasterize`` of the same polygon."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.qgis, pytest.mark.server]

REPO = Path(__file__).resolve().parents[2]
BEFORE = REPO / "resources" / "sample" / "naip_2015.tif"
AFTER = REPO / "resources" / "sample" / "naip_2020.tif"
X0, Y0 = 486900.0, 5208495.0  # top-left of naip_2015.tif, EPSG:26914, 5 m pixels, 512 x 384 px
ALG = "changeclip:createtrainingdata"


def square(dx: float, dy: float, side: float = 200.0) -> str:
    """WKT of a square ``side`` m wide whose top-left corner is (dx, dy) m right of / below the origin."""
    x, y = X0 + dx, Y0 - dy
    return f"POLYGON(({x} {y},{x + side} {y},{x + side} {y - side},{x} {y - side},{x} {y}))"


def memory_layer(wkts: list[str], geometry: str = "Polygon", crs: str | None = "EPSG:26914"):  # noqa: ANN201
    from qgis.core import QgsCoordinateReferenceSystem, QgsFeature, QgsGeometry, QgsVectorLayer

    layer = QgsVectorLayer(f"{geometry}?crs={crs or 'EPSG:26914'}", "changes", "memory")
    assert layer.isValid()
    if crs is None:
        layer.setCrs(QgsCoordinateReferenceSystem())  # a layer whose CRS is unknown
    features = []
    for wkt in wkts:
        f = QgsFeature()
        f.setGeometry(QgsGeometry.fromWkt(wkt))
        features.append(f)
    layer.dataProvider().addFeatures(features)
    layer.updateExtents()
    return layer


def _params(changes: object, out: Path, **extra: object) -> dict:
    return {"BEFORE": str(BEFORE), "AFTER": str(AFTER), "CHANGES": changes, "TILE_SIZE": 64, "STRIDE": 64,
            "VAL_FRACTION": 0.3, "OUTPUT": str(out), **extra}


@pytest.mark.parametrize(("case", "message"), [
    ("points", "holds points, not polygons"),
    ("no_crs", "has no CRS"),
    ("empty", "has no polygon"),
    ("outside", "lies in the area both rasters cover"),
    ("aoi_misses", "AOI: it covers none of the change polygons"),
    ("aoi_lines", "AOI: the layer holds lines"),
])
def test_bad_polygons_are_refused_before_anything_runs(provider: object, backend_env: None, project: object,
                                                        tmp_path: Path, case: str, message: str) -> None:
    import processing
    from qgis.core import QgsProcessingException

    from changeclip_qgis.core.backend_launcher import LAUNCHER

    good = memory_layer([square(300, 300)])
    extra: dict = {}
    if case == "points":
        changes = memory_layer([f"POINT({X0 + 300} {Y0 - 300})"], "Point")
    elif case == "no_crs":
        changes = memory_layer([square(300, 300)], crs=None)
    elif case == "empty":
        changes = memory_layer([])
    elif case == "outside":
        changes = memory_layer([square(-5000, 300)])
    elif case == "aoi_misses":
        changes, extra = good, {"AOI": memory_layer([square(1500, 1200)])}
    else:
        changes = good
        extra = {"AOI": memory_layer([f"LINESTRING({X0} {Y0},{X0 + 100} {Y0 - 100})"], "LineString")}
    backend_before = LAUNCHER.current()
    with pytest.raises(QgsProcessingException, match=message):
        processing.run(ALG, _params(changes, tmp_path / "ds", **extra))
    assert not (tmp_path / "ds").exists()
    assert LAUNCHER.current() is backend_before  # refused in QGIS: no backend was started for it


def _rasterize_like(label_path: Path, vector: str, layer: str) -> np.ndarray:
    """An independent rasterisation of ``layer`` of ``vector`` on a label tile's grid (pixel centres,
    GDAL's default)."""
    from osgeo import gdal

    tile = gdal.Open(str(label_path))
    mem = gdal.GetDriverByName("MEM").Create("", tile.RasterXSize, tile.RasterYSize, 1, gdal.GDT_Byte)
    mem.SetGeoTransform(tile.GetGeoTransform())
    mem.SetProjection(tile.GetProjection())
    gdal.Rasterize(mem, vector, burnValues=[1], layers=[layer])
    return mem.GetRasterBand(1).ReadAsArray()


def _read(path: Path) -> np.ndarray:
    from osgeo import gdal

    ds = gdal.Open(str(path))
    return ds.GetRasterBand(1).ReadAsArray()


def test_selected_features_inside_an_aoi_make_labels_equal_to_gdal_rasterize(
        provider: object, backend_env: None, project: object, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import processing
    from osgeo import ogr, osr
    from qgis.core import QgsProcessingFeatureSourceDefinition, QgsProject

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    changes = memory_layer([square(300, 300), square(1500, 300), square(300, 1200), square(1500, 1200)])
    aoi = memory_layer([square(0, 0, 1300)])  # the top-left 1300 m: holds the first square only
    QgsProject.instance().addMapLayers([changes, aoi])
    first = next(changes.getFeatures()).id()
    changes.selectByIds([first, first + 1])  # the first two squares; the second lies outside the AOI
    source = QgsProcessingFeatureSourceDefinition(changes.id(), True)
    out = tmp_path / "ds"
    results = processing.run(ALG, _params(source, out, AOI=aoi, VAL_FRACTION=0.25, VAL_BLOCK_SIZE=640))
    assert results["OUTPUT"] == str(out)
    manifest = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    tiles = {name: len(split["tiles"]) for name, split in manifest["splits"].items()}
    assert results["TRAIN_TILES"] == tiles["train"] and results["VAL_TILES"] == tiles["val"]
    # the reference: the first square alone, and the AOI, written by OGR here, rasterised by GDAL
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(26914)
    reference = tmp_path / "reference.gpkg"
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(reference))
    for name, wkt in (("change", square(300, 300)), ("aoi", square(0, 0, 1300))):
        layer = ds.CreateLayer(name, srs, ogr.wkbPolygon)
        f = ogr.Feature(layer.GetLayerDefn())
        f.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
        layer.CreateFeature(f)
    ds = None
    changed = 0
    for split in ("train", "val"):
        for label_path in sorted((out / split / "label").glob("*.tif")):
            label = _read(label_path)
            change = _rasterize_like(label_path, str(reference), "change")
            inside = _rasterize_like(label_path, str(reference), "aoi")
            assert set(np.unique(label)) <= {0, 1, 255}
            assert (label[inside == 0] == 255).all(), label_path  # outside the AOI: ignored
            valid = label != 255
            # inside the labelled area, change exactly where GDAL burns the selected square inside the AOI
            assert np.array_equal(label[valid] == 1, change[valid] == 1), label_path
            changed += int((label == 1).sum())
    assert changed == 40 * 40  # the 200 m square at 5 m: the second selected square (outside the AOI) adds none
    shares = [results["TRAIN_CHANGED_SHARE"], results["VAL_CHANGED_SHARE"]]
    assert any(s for s in shares if s) and all(s is None or 0 <= s < 1 for s in shares)
