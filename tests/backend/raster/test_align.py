"""Reference grid, intersection window and streaming warps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from geodata import textured, wkt, write_raster
from osgeo import gdal

from changeclip.errors import InputError
from changeclip.raster import align
from changeclip.raster.io import GridReader, open_raster

GT = (500000.0, 10.0, 0.0, 5600000.0, 0.0, -10.0)


def _grid(tmp_path: Path, name: str, gt: tuple[float, ...] = GT, size: tuple[int, int] = (60, 80),
          epsg: int | None = 32633) -> tuple[gdal.Dataset, align.Grid]:
    ds = open_raster(write_raster(tmp_path / name, textured(*size), gt=gt, epsg=epsg), name)
    return ds, align.grid_of(ds)


def test_same_grid_and_crs(tmp_path: Path) -> None:
    _, a = _grid(tmp_path, "a.tif")
    _, b = _grid(tmp_path, "b.tif")
    assert align.same_grid(a, b)
    _, c = _grid(tmp_path, "c.tif", gt=(500001.0, 10.0, 0.0, 5600000.0, 0.0, -10.0))
    assert not align.same_grid(a, c)
    assert align.processed_window(a, [a, b]) == align.Window(0, 0, 80, 60)


def test_missing_crs_next_to_crs_is_refused(tmp_path: Path) -> None:
    _, a = _grid(tmp_path, "a.tif")
    _, b = _grid(tmp_path, "b.tif", epsg=None)
    with pytest.raises(InputError, match="after raster .* has no coordinate reference system.*gdal_edit"):
        align.check_crs(a, b, "a.tif", "b.tif")
    align.check_crs(a, a, "a.tif", "a.tif")


def test_no_overlap(tmp_path: Path) -> None:
    _, a = _grid(tmp_path, "a.tif")
    _, b = _grid(tmp_path, "b.tif", gt=(600000.0, 10.0, 0.0, 5600000.0, 0.0, -10.0))
    with pytest.raises(InputError, match="do not overlap"):
        align.processed_window(a, [a, b])


def test_partial_overlap_window(tmp_path: Path) -> None:
    _, a = _grid(tmp_path, "a.tif")
    # after raster starts 200 m east and 100 m south: intersection = columns 20.., rows 10..
    _, b = _grid(tmp_path, "b.tif", gt=(500200.0, 10.0, 0.0, 5599900.0, 0.0, -10.0))
    assert align.processed_window(a, [a, b]) == align.Window(20, 10, 60, 50)
    assert align.processed_window(b, [a, b]) == align.Window(0, 0, 60, 50)


def test_subpixel_shift_is_warped_bilinear(tmp_path: Path) -> None:
    """A grid shifted by 1 m (as the NAIP 2015/2020 pair): warped values are bilinear blends."""
    ramp = np.tile(np.arange(80, dtype=np.float32) * 2.0, (60, 1))[None].repeat(3, 0)
    ref = align.grid_of(open_raster(write_raster(tmp_path / "ref.tif", ramp), "before"))
    src = open_raster(write_raster(tmp_path / "shift.tif", ramp, gt=(500001.0, 10.0, 0.0, 5600001.0, 0.0, -10.0)),
                      "after")
    vrt, alpha = align.warp_to_grid(src, ref)
    assert (vrt.RasterXSize, vrt.RasterYSize) == (80, 60)
    assert tuple(vrt.GetGeoTransform()) == pytest.approx(GT)
    reader = GridReader(vrt, [1, 2, 3], alpha_band=alpha, keep=[src])
    data, valid = reader.read(10, 10, 20, 20)
    # ref pixel centre x lies 0.1 px left of the shifted pixel centre: value = 2 * (i - 0.1)
    np.testing.assert_allclose(data[0][valid], (np.arange(10, 30) * 2.0 - 0.2)[None].repeat(20, 0)[valid], atol=0.05)
    assert valid.all(), "the shifted raster covers the interior completely"


def test_other_crs_is_warped_and_windowed(tmp_path: Path) -> None:
    """The after raster in geographic coordinates is warped onto the before UTM grid."""
    _, ref = _grid(tmp_path, "utm.tif", size=(100, 100))
    # 15°E, ~50.5°N area covering the UTM raster roughly (EPSG:32633 centre meridian 15°E)
    gdal.Warp(str(tmp_path / "geo.tif"), str(tmp_path / "utm.tif"), dstSRS="EPSG:4326").FlushCache()
    ds_geo = open_raster(str(tmp_path / "geo.tif"), "after")
    g = align.grid_of(ds_geo)
    assert not align.same_crs(g.wkt, ref.wkt)
    win = align.processed_window(ref, [ref, g])
    assert win.width >= 95 and win.height >= 95
    vrt, alpha = align.warp_to_grid(ds_geo, ref)
    reader = GridReader(vrt, [1, 2, 3], alpha_band=alpha, keep=[ds_geo])
    data, valid = reader.read(20, 20, 40, 40)
    orig = open_raster(str(tmp_path / "utm.tif"), "b").ReadAsArray(20, 20, 40, 40).astype(np.float32)
    assert valid.mean() > 0.95
    assert np.median(np.abs(data - orig)[:, valid]) < 12


def test_reference_grid_choices(tmp_path: Path) -> None:
    _, a = _grid(tmp_path, "a.tif")
    _, b = _grid(tmp_path, "b.tif", gt=(500200.0, 5.0, 0.0, 5599900.0, 0.0, -5.0))
    assert align.reference_grid("before", a, b) is a
    assert align.reference_grid("after", a, b) is b
    c = align.reference_grid("custom", a, b, "EPSG:32633", 20.0)
    xmin, ymin, xmax, ymax = c.bounds()
    assert c.geotransform[1] == 20.0 and c.geotransform[5] == -20.0
    assert xmin == pytest.approx(500200.0) and ymax == pytest.approx(5599900.0)
    assert (xmax, ymin) == pytest.approx((500600.0, 5599600.0))  # b: 80 x 5 m wide, 60 x 5 m high
    assert align.same_crs(c.wkt, wkt(32633))
    with pytest.raises(InputError, match="not a CRS GDAL knows"):
        align.reference_grid("custom", a, b, "EPSG:999999", 20.0)
