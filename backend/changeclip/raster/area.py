"""Areas in square metres and pixel sizes in metres on the ground, on projected and geographic grids.

Projected CRS: a pixel's area is ``|det(geotransform)| * (metres per CRS unit)²`` (area in the
projection plane, as GIS tools report it). Geographic CRS: the exact ellipsoidal area of the
cell between its two latitudes (authalic-latitude formula), so it changes from row to row.
Polygons in a geographic CRS are measured after projecting them to a Lambert azimuthal
equal-area projection on the same ellipsoid, which preserves area exactly.
"""

from __future__ import annotations

import math

import numpy as np
from osgeo import ogr, osr

from changeclip.raster.align import Grid


def _q(phi: np.ndarray, e: float) -> np.ndarray:
    s = np.sin(phi)
    if e < 1e-12:
        return 2.0 * s
    return (1 - e * e) * (s / (1 - (e * s) ** 2) - np.log((1 - e * s) / (1 + e * s)) / (2 * e))


def row_pixel_areas(grid: Grid, row0: int, n: int) -> np.ndarray | None:
    """Area in m² of one pixel of each row ``row0 .. row0 + n - 1``: ``(n,)`` float64.

    Returns:
        None when the grid has no CRS (areas unknown).
    """
    srs = grid.srs()
    if srs is None:
        return None
    x0, dx, rx, y0, ry, dy = grid.geotransform
    if srs.IsGeographic():
        to_rad = srs.GetAngularUnits()  # radians per CRS unit
        a = srs.GetSemiMajor()
        inv_f = srs.GetInvFlattening()
        f = 1.0 / inv_f if inv_f else 0.0
        e = math.sqrt(max(f * (2 - f), 0.0))
        rows = np.arange(row0, row0 + n, dtype=np.float64)
        lat1 = np.clip((y0 + rows * dy) * to_rad, -math.pi / 2, math.pi / 2)
        lat2 = np.clip((y0 + (rows + 1) * dy) * to_rad, -math.pi / 2, math.pi / 2)
        return 0.5 * a * a * abs(dx) * to_rad * np.abs(_q(lat1, e) - _q(lat2, e))
    unit = srs.GetLinearUnits() or 1.0
    return np.full(n, abs(dx * dy - rx * ry) * unit * unit, dtype=np.float64)


_EARTH_MEAN_RADIUS_M = 6_371_008.8


def ground_pixel_size_m(grid: Grid, col: float, row: float) -> float | None:
    """Ground size in metres of the pixel at ``(col, row)``: the geometric mean of its two sides.

    Measured on the ground, not in the projection plane, so that it is right for geographic
    CRSs and for projections whose scale varies (Web Mercator pixels at 50° N are 0.64x their
    nominal size). The sides are great-circle distances between the pixel's corners on a sphere
    of the Earth's mean radius (within 0.5 % of the ellipsoid, ample for a scale check).

    Returns:
        None when the grid has no CRS or the point cannot be transformed.
    """
    srs = grid.srs()
    if srs is None:
        return None
    wgs84 = osr.SpatialReference()
    wgs84.SetWellKnownGeogCS("WGS84")
    wgs84.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    x0, dx, rx, y0, ry, dy = grid.geotransform

    def at(c: float, r: float) -> tuple[float, float]:
        return x0 + c * dx + r * rx, y0 + c * ry + r * dy

    try:
        ct = osr.CoordinateTransformation(srs, wgs84)
        corner, right, below = (ct.TransformPoint(*at(c, r)) for c, r in ((col, row), (col + 1, row), (col, row + 1)))
    except RuntimeError:
        return None

    def distance(p: tuple[float, ...], q: tuple[float, ...]) -> float:
        lon1, lat1, lon2, lat2 = (math.radians(v) for v in (p[0], p[1], q[0], q[1]))
        h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
        return 2 * _EARTH_MEAN_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))

    size = math.sqrt(distance(corner, right) * distance(corner, below))
    return size if math.isfinite(size) and size > 0 else None


class PolygonArea:
    """Measures OGR polygons given in ``grid``'s CRS, in m² (None-returning without CRS)."""

    def __init__(self, grid: Grid) -> None:
        self._srs = grid.srs()
        self._ct: osr.CoordinateTransformation | None = None
        self._unit2 = 1.0
        if self._srs is None:
            return
        if self._srs.IsGeographic():
            xmin, ymin, xmax, ymax = grid.bounds()
            laea = osr.SpatialReference()
            laea.CopyGeogCSFrom(self._srs)
            laea.SetLAEA((ymin + ymax) / 2, (xmin + xmax) / 2, 0.0, 0.0)
            laea.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
            self._ct = osr.CoordinateTransformation(self._srs, laea)
        else:
            unit = self._srs.GetLinearUnits() or 1.0
            self._unit2 = unit * unit

    def area_m2(self, geom: ogr.Geometry) -> float | None:
        """Area of ``geom`` in m² (None when the grid has no CRS)."""
        if self._srs is None:
            return None
        if self._ct is not None:
            g = geom.Clone()
            g.Transform(self._ct)
            return float(g.GetArea())
        return float(geom.GetArea()) * self._unit2
