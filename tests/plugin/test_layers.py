"""Layers -> local paths, temporary GeoTIFF exports of non-file layers, or clear refusals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.qgis


def test_local_file_is_passed_as_is(qgis_app: object, raster_pair: tuple[Path, Path]) -> None:
    from qgis.core import QgsRasterLayer

    from changeclip_qgis.core.layers import local_raster_path, prepare_input

    layer = QgsRasterLayer(str(raster_pair[0]), "before")
    assert local_raster_path(layer) == str(raster_pair[0])
    assert prepare_input(layer) == str(raster_pair[0])


def test_xyz_layer_is_exported_or_refused(qgis_app: object, xyz_uri: str, tmp_path: Path) -> None:
    from osgeo import gdal
    from qgis.core import QgsCoordinateReferenceSystem, QgsRasterLayer, QgsRectangle, QgsVectorLayer

    from changeclip_qgis.core.errors import LayerNotSupported
    from changeclip_qgis.core.layers import ExportRequest, prepare_input, run_export

    layer = QgsRasterLayer(xyz_uri, "tiles", "wms")
    assert layer.isValid()
    with pytest.raises(LayerNotSupported, match="not a local file and has no fixed extent"):
        prepare_input(layer)
    with pytest.raises(LayerNotSupported, match="pick a raster layer"):
        prepare_input(QgsVectorLayer("Point?crs=EPSG:4326", "points", "memory"))
    crs = QgsCoordinateReferenceSystem("EPSG:3857")
    with pytest.raises(LayerNotSupported, match="limit 20000 px per side"):
        prepare_input(layer, QgsRectangle(-1e7, -1e7, 1e7, 1e7), crs, 100.0)
    request = prepare_input(layer, QgsRectangle(-1e7, -1e7, 1e7, 1e7), crs, 2e7 / 128)
    assert isinstance(request, ExportRequest) and (request.width, request.height) == (128, 128)
    path = run_export(request, str(tmp_path))
    assert os.path.isfile(path) and path.endswith(".tif") and not os.path.exists(path + ".part.tif")
    ds = gdal.Open(path)
    assert (ds.RasterXSize, ds.RasterYSize) == (128, 128) and ds.RasterCount >= 3
    red = ds.GetRasterBand(1).ReadAsArray()
    assert set(red.ravel().tolist()) <= {10, 50, 150}, "exported pixels must come from the tiles"
    assert abs(ds.GetGeoTransform()[0] - -1e7) < 1.0


def test_cancelled_export_leaves_nothing(qgis_app: object, xyz_uri: str, tmp_path: Path) -> None:
    from qgis.core import QgsCoordinateReferenceSystem, QgsFeedback, QgsRasterLayer, QgsRectangle

    from changeclip_qgis.core.errors import JobCancelledError
    from changeclip_qgis.core.layers import prepare_input, run_export

    layer = QgsRasterLayer(xyz_uri, "tiles", "wms")
    request = prepare_input(layer, QgsRectangle(-1e7, -1e7, 1e7, 1e7), QgsCoordinateReferenceSystem("EPSG:3857"),
                            2e7 / 256)
    feedback = QgsFeedback()
    feedback.cancel()
    out = tmp_path / "exports"
    out.mkdir()
    with pytest.raises(JobCancelledError, match="export of layer 'tiles' was cancelled"):
        run_export(request, str(out), feedback)
    assert list(out.iterdir()) == []


def test_export_onto_a_custom_grid(qgis_app: object, xyz_uri: str, raster_pair: tuple[Path, Path],
                                   tmp_path: Path) -> None:
    """Output grid 'custom': a non-file layer is written straight in the Target CRS, on whole multiples
    of the Resolution (where the backend lays out the custom grid), covering the other raster."""
    from osgeo import gdal, osr
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsProject, QgsRasterLayer

    from changeclip_qgis.core.layers import ExportRequest, prepare_input, run_export

    layer = QgsRasterLayer(xyz_uri, "tiles", "wms")
    other = QgsRasterLayer(str(raster_pair[0]), "before")  # EPSG:32633, 2 m, 256 m square
    zone34 = QgsCoordinateReferenceSystem("EPSG:32634")
    request = prepare_input(layer, other.extent(), other.crs(), 5.0, target_crs=zone34)
    assert isinstance(request, ExportRequest) and request.crs == zone34
    box = request.extent
    for value in (box.xMinimum(), box.yMinimum(), box.xMaximum(), box.yMaximum()):
        assert value % 5.0 == pytest.approx(0.0, abs=1e-6) or value % 5.0 == pytest.approx(5.0, abs=1e-6)
    assert (request.width, request.height) == (round(box.width() / 5.0), round(box.height() / 5.0))
    covered = QgsCoordinateTransform(other.crs(), zone34, QgsProject.instance()).transformBoundingBox(other.extent())
    assert box.contains(covered) and box.width() < covered.width() + 10.0  # widened by less than a pixel a side
    path = run_export(request, str(tmp_path))
    ds = gdal.Open(path)
    x0, dx, _, y0, _, dy = ds.GetGeoTransform()
    assert (dx, dy) == (5.0, -5.0) and (x0, y0) == (box.xMinimum(), box.yMaximum())
    expected = osr.SpatialReference()
    expected.ImportFromEPSG(32634)
    assert ds.GetSpatialRef().IsSame(expected)
    # without a target CRS nothing changes: the export is on the other raster's grid
    plain = prepare_input(layer, other.extent(), other.crs(), other.rasterUnitsPerPixelX())
    assert plain.crs == other.crs() and (plain.width, plain.height) == (128, 128)
