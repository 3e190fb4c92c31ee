"""Where each date is cropped around a polygon, on the reference grid."""

from __future__ import annotations

from pathlib import Path

import pytest
from geodata import wkt
from osgeo import gdal

from changeclip.describe.crops import CropSpec, crop_window
from changeclip.raster.align import Window, grid_of


def _grid(pixel: float = 2.0, size: int = 500, epsg: int = 32633):
    from changeclip.raster.align import Grid

    return Grid(size, size, (500000.0, pixel, 0.0, 4500000.0, 0.0, -pixel), wkt(epsg))


def test_a_polygon_in_a_known_place_gets_a_centred_window_with_margin() -> None:
    grid = _grid(pixel=2.0)
    # a 40 m x 20 m box whose top-left corner is pixel (100, 50)
    bbox = (500200.0, 500240.0, 4499880.0, 4499900.0)  # xmin, xmax, ymin, ymax
    win = crop_window(bbox, grid, Window(0, 0, 500, 500), CropSpec(margin=0.25, min_crop_m=0.0, min_crop_px=1))
    # bbox is 20 x 10 px centred at (110, 55); side = 20 * 1.5 = 30 px
    assert (win.width, win.height) == (30, 30)
    assert (win.xoff, win.yoff) == (95, 40)


def test_tiny_polygons_are_seen_in_context_of_at_least_min_crop_metres() -> None:
    grid = _grid(pixel=0.5)
    bbox = (500100.0, 500101.0, 4499899.0, 4499900.0)  # 2 x 2 px
    win = crop_window(bbox, grid, Window(0, 0, 500, 500), CropSpec(min_crop_m=60.0, min_crop_px=32))
    assert win.width == win.height and 120 <= win.width <= 121  # 60 m on the ground at ~0.5 m (UTM scale)


def test_crops_near_the_edge_shift_inside_the_processed_window() -> None:
    grid = _grid(pixel=2.0)
    bbox = (500000.0, 500010.0, 4499990.0, 4500000.0)  # the top-left corner
    bounds = Window(3, 4, 200, 150)
    win = crop_window(bbox, grid, bounds, CropSpec(min_crop_m=100.0))
    assert (win.xoff, win.yoff, win.width, win.height) == (3, 4, 50, 50)
    small = crop_window(bbox, grid, Window(0, 0, 20, 10), CropSpec(min_crop_m=100.0))
    assert (small.width, small.height) == (20, 10)


def test_window_on_the_shifted_naip_grid(repo_root: Path) -> None:
    """The NAIP pair's 2015 image is the reference grid; a polygon given in map coordinates lands
    on the pixels those coordinates name (the 2020 image, shifted by 1 m, is warped onto this grid)."""
    ds = gdal.Open(str(repo_root / "resources" / "sample" / "naip_2015.tif"))
    grid = grid_of(ds)
    x0, dx, _, y0, _, dy = grid.geotransform
    bbox = (x0 + 100 * dx, x0 + 140 * dx, y0 + 80 * dy, y0 + 60 * dy)  # cols 100-140, rows 60-80
    win = crop_window(bbox, grid, Window(0, 0, grid.width, grid.height), CropSpec(margin=0.5, min_crop_m=0.0))
    assert (win.width, win.height) == (80, 80)
    assert (win.xoff, win.yoff) == (80, 30)


@pytest.mark.parametrize("epsg", [4326])
def test_min_crop_metres_on_a_geographic_grid(epsg: int) -> None:
    from changeclip.raster.align import Grid

    grid = Grid(1000, 1000, (10.0, 1e-5, 0.0, 50.0, 0.0, -1e-5), wkt(epsg))  # ~0.7 x 1.1 m pixels at 50 N
    win = crop_window((10.001, 10.00101, 49.99899, 49.999), grid, Window(0, 0, 1000, 1000),
                      CropSpec(min_crop_m=60.0, min_crop_px=1))
    assert 60 <= win.width <= 80  # 60 m over ~0.9 m pixels (geometric mean), never in degrees
