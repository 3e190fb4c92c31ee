"""Block writer, COG conversion, polygons with areas (projected and geographic), temp files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from geodata import wkt
from osgeo import gdal, ogr

from changeclip.raster import outputs
from changeclip.raster.align import Grid
from changeclip.raster.area import PolygonArea, row_pixel_areas
from changeclip.raster.outputs import BlockRasterWriter, ChangeRasterWriter, TempFiles, polygonize, to_cog

UTM = Grid(1200, 700, (500000.0, 10.0, 0.0, 5600000.0, 0.0, -10.0), wkt(32633))


def test_unwritten_blocks_are_nodata_and_cog_has_overviews(tmp_path: Path) -> None:
    w = BlockRasterWriter(str(tmp_path / "m.tif"), UTM, "uint8", 255)
    w.write(np.ones((10, 20), np.uint8), 600, 300)
    w.close()
    to_cog(str(tmp_path / "m.tif"), str(tmp_path / "cog.tif"), "NEAREST")
    ds = gdal.Open(str(tmp_path / "cog.tif"))
    arr = ds.ReadAsArray()
    assert (arr == 1).sum() == 200 and (arr == 255).sum() == arr.size - 200
    info = gdal.Info(ds, format="json")
    assert info["metadata"]["IMAGE_STRUCTURE"]["LAYOUT"] == "COG"
    assert info["metadata"]["IMAGE_STRUCTURE"]["COMPRESSION"] == "DEFLATE"
    band = info["bands"][0]
    assert band["block"] == [512, 512] and band["noDataValue"] == 255 and band["overviews"]
    assert tuple(ds.GetGeoTransform()) == UTM.geotransform


def test_change_writer_values_and_counts(tmp_path: Path) -> None:
    grid = Grid(30, 20, UTM.geotransform, UTM.wkt)
    cw = ChangeRasterWriter(str(tmp_path / "m.tif"), str(tmp_path / "p.tif"), grid, "uint8", 0.5)
    prob = np.tile(np.linspace(0, 1, 10, dtype=np.float32), (4, 1))
    valid = np.ones((4, 10), bool)
    valid[0, 0] = False
    ch, va = cw.write_rows(prob, valid, 5, 6)
    cw.close()
    m = gdal.Open(str(tmp_path / "m.tif")).ReadAsArray()
    p = gdal.Open(str(tmp_path / "p.tif")).ReadAsArray()
    assert set(np.unique(m)) == {0, 1, 255}
    assert m[6, 5] == 255 and p[6, 5] == 255
    assert m[7, 14] == 1 and p[7, 14] == 100 and p[7, 5] == 0 and m[7, 5] == 0
    assert ch.tolist() == [5, 5, 5, 5] and va.tolist() == [9, 10, 10, 10]
    cw = ChangeRasterWriter(str(tmp_path / "m2.tif"), str(tmp_path / "p2.tif"), grid, "float32", 0.5)
    cw.write_rows(prob, valid, 0, 0)
    cw.close()
    pf = gdal.Open(str(tmp_path / "p2.tif")).ReadAsArray()
    assert pf.dtype == np.float32 and pf[0, 0] == -1.0 and pf[1, 9] == pytest.approx(1.0)


def _mask_file(tmp_path: Path, grid: Grid, mask: np.ndarray) -> str:
    w = BlockRasterWriter(str(tmp_path / "mask.tif"), grid, "uint8", 255)
    w.write(mask, 0, 0)
    w.close()
    return str(tmp_path / "mask.tif")


def test_polygons_area_and_min_area(tmp_path: Path) -> None:
    grid = Grid(60, 40, UTM.geotransform, UTM.wkt)
    mask = np.zeros((40, 60), np.uint8)
    mask[5:15, 5:25] = 1  # 200 px = 20 000 m²
    mask[30:32, 40:42] = 1  # 4 px = 400 m²
    mask[:, 55:] = 255  # nodata is not change
    info = polygonize(_mask_file(tmp_path, grid, mask), str(tmp_path / "p.gpkg"), grid, min_area_m2=1000)
    assert info == {"count": 1, "dropped": 1, "area_m2": pytest.approx(20000.0)}
    ds = ogr.Open(str(tmp_path / "p.gpkg"))
    layer = ds.GetLayer(0)
    assert layer.GetFeatureCount() == 1
    feat = layer.GetNextFeature()
    assert feat.GetField("area_m2") == pytest.approx(20000.0)
    assert layer.GetSpatialRef().GetAuthorityCode(None) == "32633"
    info = polygonize(_mask_file(tmp_path, grid, mask), str(tmp_path / "all.gpkg"), grid, min_area_m2=0)
    assert info["count"] == 2 and info["area_m2"] == pytest.approx(20400.0)


def test_polygons_smaller_than_min_pixels_are_dropped(tmp_path: Path) -> None:
    """min_pixels counts output pixels (so it also works without a CRS) and adds to min_area."""
    mask = np.zeros((40, 60), np.uint8)
    mask[5:15, 5:25] = 1  # 200 px
    mask[30:32, 40:42] = 1  # 4 px
    mask[20, 10:13] = 1  # 3 px
    mask[35, 5] = 1  # 1 px
    for crs_wkt, name in ((UTM.wkt, "utm"), ("", "nocrs")):
        grid = Grid(60, 40, UTM.geotransform, crs_wkt)
        path = _mask_file(tmp_path, grid, mask)
        info = polygonize(path, str(tmp_path / f"{name}4.gpkg"), grid, 0, min_pixels=4)
        assert (info["count"], info["dropped"]) == (2, 2), name
        info = polygonize(path, str(tmp_path / f"{name}0.gpkg"), grid, 0, min_pixels=0)
        assert (info["count"], info["dropped"]) == (4, 0), name
    grid = Grid(60, 40, UTM.geotransform, UTM.wkt)
    both = polygonize(_mask_file(tmp_path, grid, mask), str(tmp_path / "both.gpkg"), grid, 1000, min_pixels=2)
    assert (both["count"], both["dropped"]) == (1, 3), "either rule drops a polygon"


def test_polygons_carry_the_run_attributes(tmp_path: Path) -> None:
    grid = Grid(60, 40, UTM.geotransform, UTM.wkt)
    mask = np.zeros((40, 60), np.uint8)
    mask[5:15, 5:25] = 1
    mask[30:32, 40:42] = 1
    attrs = {"before": "2015.tif", "prompt": "building, road", "threshold": 0.5}
    polygonize(_mask_file(tmp_path, grid, mask), str(tmp_path / "p.gpkg"), grid, 0, attributes=attrs)
    ds = ogr.Open(str(tmp_path / "p.gpkg"))  # keep the dataset referenced while its layer is used
    layer = ds.GetLayer(0)
    defn = layer.GetLayerDefn()
    types = {defn.GetFieldDefn(i).GetName(): defn.GetFieldDefn(i).GetType() for i in range(defn.GetFieldCount())}
    assert types == {"area_m2": ogr.OFTReal, "before": ogr.OFTString, "prompt": ogr.OFTString,
                     "threshold": ogr.OFTReal}
    rows = [{k: f.GetField(k) for k in types} for f in layer]
    assert len(rows) == 2 and all({k: r[k] for k in attrs} == attrs for r in rows)


def test_geographic_areas_agree_between_raster_and_polygons(tmp_path: Path) -> None:
    # 1°x1° at the equator on WGS 84 is 12 308.8 km² (ellipsoidal)
    one_deg = Grid(1, 1, (0.0, 1.0, 0.0, 1.0, 0.0, -1.0), wkt(4326))
    assert row_pixel_areas(one_deg, 0, 1)[0] == pytest.approx(12_308.8e6, rel=1e-4)
    grid = Grid(200, 100, (10.0, 0.001, 0.0, 60.0, 0.0, -0.001), wkt(4326))
    areas = row_pixel_areas(grid, 0, 100)
    assert areas[0] < areas[-1], "pixels shrink towards the pole"
    assert areas[50] == pytest.approx(111_000 * 0.001 * 111_000 * 0.001 * math.cos(math.radians(59.95)), rel=0.01)
    mask = np.zeros((100, 200), np.uint8)
    mask[10:60, 20:120] = 1
    info = polygonize(_mask_file(tmp_path, grid, mask), str(tmp_path / "g.gpkg"), grid, 0)
    assert info["area_m2"] == pytest.approx(100 * areas[10:60].sum(), rel=1e-6)


def test_polygon_area_without_crs_is_none() -> None:
    geom = ogr.CreateGeometryFromWkt("POLYGON((0 0,1 0,1 1,0 1,0 0))")
    assert PolygonArea(Grid(1, 1, (0, 1, 0, 0, 0, -1), "")).area_m2(geom) is None
    assert PolygonArea(UTM).area_m2(geom) == pytest.approx(1.0)


def test_temp_files_commit_and_cleanup(tmp_path: Path) -> None:
    t = TempFiles()
    final = tmp_path / "summary.json"
    a = t.new(str(final))
    b = t.new(str(tmp_path / "mask.tif"))
    assert Path(a).name.startswith(".summary.") and a.endswith(".json")
    Path(a).write_text(json.dumps({}))
    Path(b).write_text("x")
    t.commit(a, str(final))
    t.cleanup()
    assert final.exists() and not Path(b).exists() and not Path(a).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_write_failure_is_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="writing"):
        to_cog(str(tmp_path / "missing.tif"), str(tmp_path / "out.tif"), "NEAREST")


def test_cog_progress_and_cancel(tmp_path: Path) -> None:
    from changeclip.errors import JobCancelled

    w = BlockRasterWriter(str(tmp_path / "m.tif"), UTM, "uint8", 255)
    w.write(np.ones((100, 100), np.uint8), 0, 0)
    w.close()
    seen: list[float] = []
    to_cog(str(tmp_path / "m.tif"), str(tmp_path / "c.tif"), "NEAREST", seen.append)
    assert seen and seen[-1] == pytest.approx(1.0)
    with pytest.raises(JobCancelled):
        to_cog(str(tmp_path / "m.tif"), str(tmp_path / "c2.tif"), "NEAREST", None, lambda: True)


def test_gdal_disk_full_message_maps_to_enospc() -> None:
    import errno

    from changeclip.raster.outputs import write_error

    assert write_error("x.tif", "x.tif: Free disk space available is 0 bytes; No space left on device").errno == errno.ENOSPC
    assert write_error("x.tif", "TIFFWriteEncodedTile failed").errno == errno.EIO


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_polygons_mean_probability(tmp_path: Path, dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outputs, "_PIXELS_PER_READ", 60 * 7)  # strips of 7 rows cut through the polygons
    grid = Grid(60, 40, UTM.geotransform, UTM.wkt)
    mask = np.zeros((40, 60), np.uint8)
    prob = np.full((40, 60), 0.2, np.float32)
    mask[5:15, 5:25] = 1
    prob[5:15, 5:25] = 0.8  # mean 0.8
    mask[20:30, 30:40] = 1
    prob[20:30, 30:35], prob[20:30, 35:40] = 0.6, 1.0  # mean 0.8 too, from two halves
    prob[20:30, 30:31] = 0.55  # one column lower: mean (0.55 + 4 * 0.6 + 5 * 1.0) / 10 = 0.795
    mask[0, 59] = 1  # a 1-px polygon, dropped by min_area; it must not disturb the others
    prob[0, 59] = 0.99
    writer = ChangeRasterWriter(str(tmp_path / "m.tif"), str(tmp_path / "p.tif"), grid, dtype, 0.5)
    writer.write_rows(prob, np.ones_like(mask, bool), 0, 0)
    writer.close()
    m = gdal.Open(str(tmp_path / "m.tif")).ReadAsArray()
    np.testing.assert_array_equal(m, (prob > 0.5).astype(np.uint8))
    info = polygonize(str(tmp_path / "m.tif"), str(tmp_path / "p.gpkg"), grid, 200,
                      probability_path=str(tmp_path / "p.tif"))
    assert info["count"] == 2 and info["dropped"] == 1
    ds = ogr.Open(str(tmp_path / "p.gpkg"))
    means = sorted(round(f["mean_prob"], 3) for f in ds.GetLayer(0))
    assert means == [0.795, 0.8]
    assert not list(tmp_path.glob("*.fid.tif")), "the temporary FID raster is removed"
