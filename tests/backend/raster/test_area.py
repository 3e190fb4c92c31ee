"""Ground pixel sizes in metres on projected, Web Mercator and geographic grids."""

from __future__ import annotations

import math

import pytest
from osgeo import osr

from changeclip.raster.align import Grid
from changeclip.raster.area import ground_pixel_size_m


def _wkt(epsg: int) -> str:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    return srs.ExportToWkt()


def test_utm_pixel_is_its_nominal_size_times_the_scale_factor() -> None:
    grid = Grid(100, 100, (500_000.0, 0.5, 0.0, 5_000_000.0, 0.0, -0.5), _wkt(32633))
    # on the central meridian UTM's scale factor is 0.9996
    assert ground_pixel_size_m(grid, 50, 50) == pytest.approx(0.5 * 0.9996, rel=2e-3)


def test_web_mercator_pixels_shrink_with_latitude() -> None:
    y50 = 6_446_275.84  # northing of 50 degrees N in EPSG:3857
    grid = Grid(100, 100, (1_113_194.9, 10.0, 0.0, y50, 0.0, -10.0), _wkt(3857))
    assert ground_pixel_size_m(grid, 0, 0) == pytest.approx(10 * math.cos(math.radians(50)), rel=5e-3)


def test_geographic_pixel_is_measured_on_the_ground() -> None:
    grid = Grid(100, 100, (10.0, 1e-4, 0.0, 50.0, 0.0, -1e-4), _wkt(4326))
    north = 1e-4 * 111_195  # metres per 1e-4 degree of latitude on the mean sphere
    east = north * math.cos(math.radians(50))
    assert ground_pixel_size_m(grid, 0, 0) == pytest.approx(math.sqrt(north * east), rel=5e-3)


def test_no_crs_means_unknown() -> None:
    assert ground_pixel_size_m(Grid(10, 10, (0.0, 1.0, 0.0, 0.0, 0.0, -1.0), ""), 5, 5) is None
