"""The reference grid, the processed window (intersection) and warping inputs onto the grid.

By default the *before* raster defines the grid; ``after`` uses the *after* raster's; ``custom``
builds a north-up grid in a target CRS with a given resolution over the intersection of both
footprints. An input that is not exactly on the grid is wrapped in a warped VRT
(``gdal.Warp(format="VRT")``, bilinear, with an alpha band marking its footprint): nothing is
loaded, pixels are warped on demand window by window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from osgeo import gdal, osr

from changeclip.errors import InputError

gdal.UseExceptions()
osr.UseExceptions()


@dataclass(frozen=True)
class Grid:
    """A raster grid: size in pixels, GDAL geotransform and CRS as WKT ("" = none)."""

    width: int
    height: int
    geotransform: tuple[float, float, float, float, float, float]
    wkt: str

    def bounds(self) -> tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)`` of a north-up grid in CRS units."""
        x0, dx, _, y0, _, dy = self.geotransform
        xs = (x0, x0 + dx * self.width)
        ys = (y0, y0 + dy * self.height)
        return min(xs), min(ys), max(xs), max(ys)

    def srs(self) -> osr.SpatialReference | None:
        """The CRS, or None when the grid has none."""
        return srs_from_wkt(self.wkt)

    def to_dict(self) -> dict[str, object]:
        """JSON-able description (for summary.json)."""
        srs = self.srs()
        epsg = None
        if srs is not None and srs.GetAuthorityName(None) == "EPSG":
            epsg = int(srs.GetAuthorityCode(None))
        return {"width": self.width, "height": self.height, "geotransform": list(self.geotransform),
                "epsg": epsg, "crs_wkt": self.wkt}


@dataclass(frozen=True)
class Window:
    """A pixel window of the reference grid: offset and size."""

    xoff: int
    yoff: int
    width: int
    height: int


def srs_from_wkt(wkt: str) -> osr.SpatialReference | None:
    """An ``osr.SpatialReference`` with traditional x/y axis order, or None for ""."""
    if not wkt:
        return None
    srs = osr.SpatialReference()
    srs.ImportFromWkt(wkt)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def grid_of(ds: gdal.Dataset) -> Grid:
    """The grid of an open dataset (identity geotransform if it has none)."""
    gt = tuple(float(v) for v in ds.GetGeoTransform(can_return_null=True) or (0, 1, 0, 0, 0, 1))
    return Grid(int(ds.RasterXSize), int(ds.RasterYSize), gt, ds.GetProjection() or "")  # type: ignore[arg-type]


def check_georeferenced(ds: gdal.Dataset, path: str, role: str) -> None:
    """Refuse a raster georeferenced only by ground control points or RPCs (no geotransform).

    GDAL reads such a file on a pixel grid with no CRS, so aligning it with the other date
    would silently go wrong; it must be warped (GCPs) or orthorectified (RPCs) first.

    Raises:
        InputError: Naming the raster and the command that georeferences it.
    """
    if ds.GetGeoTransform(can_return_null=True) is not None:
        return
    if ds.GetMetadata("RPC"):
        raise InputError(
            f"the {role} raster {path!r} has rational polynomial coefficients (RPCs) but no map grid: it is "
            "not orthorectified; orthorectify it first, e.g. gdalwarp -rpc -to RPC_DEM=dem.tif -t_srs "
            "EPSG:XXXX -r bilinear FILE OUT.tif, then use OUT.tif")
    if ds.GetGCPCount() > 0:
        raise InputError(
            f"the {role} raster {path!r} is georeferenced only by {ds.GetGCPCount()} ground control points "
            "(GCPs), not by a geotransform; warp it onto a map grid first, e.g. gdalwarp -r bilinear "
            "-t_srs EPSG:XXXX FILE OUT.tif (or in QGIS: Raster > Georeferencer, or Raster > Projections > "
            "Warp), then use OUT.tif")


def same_grid(a: Grid, b: Grid) -> bool:
    """True if two grids have the same size, geotransform (to 1e-6 px) and CRS."""
    if (a.width, a.height) != (b.width, b.height):
        return False
    tol = 1e-6 * max(abs(a.geotransform[1]), abs(a.geotransform[5]), 1e-12)
    if any(abs(p - q) > tol for p, q in zip(a.geotransform, b.geotransform, strict=True)):
        return False
    return same_crs(a.wkt, b.wkt)


def same_crs(wkt_a: str, wkt_b: str) -> bool:
    """True if both CRSs are equal (or both missing)."""
    sa, sb = srs_from_wkt(wkt_a), srs_from_wkt(wkt_b)
    if sa is None or sb is None:
        return sa is None and sb is None
    return bool(sa.IsSame(sb))


def check_crs(before: Grid, after: Grid, before_path: str, after_path: str) -> None:
    """Refuse a pair where one raster has a CRS and the other has none.

    Raises:
        InputError: Naming the raster without a CRS and how to assign one.
    """
    if bool(before.wkt) == bool(after.wkt):
        return
    missing, path = ("before", before_path) if not before.wkt else ("after", after_path)
    raise InputError(
        f"the {missing} raster {path!r} has no coordinate reference system (CRS) but the other one has; "
        "assign the right CRS first, e.g. gdal_edit.py -a_srs EPSG:32633 FILE (or in QGIS: "
        "Raster > Projections > Assign Projection)")


def _check_north_up(grid: Grid, what: str) -> None:
    if grid.geotransform[2] != 0 or grid.geotransform[4] != 0:
        raise InputError(f"the {what} grid is rotated (geotransform {grid.geotransform}); outputs need a "
                         "north-up grid: use --grid with the other raster or a target CRS, or warp it first "
                         "with gdalwarp")


def footprint(grid: Grid, target_wkt: str, densify: int = 21) -> tuple[float, float, float, float]:
    """Bounding box of a grid's footprint in another CRS (edges densified).

    Returns:
        ``(xmin, ymin, xmax, ymax)`` in the target CRS's units.
    """
    x0, dx, rx, y0, ry, dy = grid.geotransform
    t = np.linspace(0.0, 1.0, densify)
    px = np.concatenate([t * grid.width, np.full_like(t, grid.width), (1 - t) * grid.width, np.zeros_like(t)])
    py = np.concatenate([np.zeros_like(t), t * grid.height, np.full_like(t, grid.height), (1 - t) * grid.height])
    xs = x0 + px * dx + py * rx
    ys = y0 + px * ry + py * dy
    src, dst = srs_from_wkt(grid.wkt), srs_from_wkt(target_wkt)
    if src is not None and dst is not None and not src.IsSame(dst):
        ct = osr.CoordinateTransformation(src, dst)
        pts = np.array(ct.TransformPoints(np.stack([xs, ys], axis=1).tolist()))
        xs, ys = pts[:, 0], pts[:, 1]
        ok = np.isfinite(xs) & np.isfinite(ys)
        if not ok.any():
            raise InputError("the two rasters' footprints cannot be transformed into each other's CRS; "
                             "check that both CRSs are right")
        xs, ys = xs[ok], ys[ok]
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def pixel_size_in(grid: Grid, target_wkt: str) -> float:
    """Mean pixel side of ``grid`` expressed in the units of ``target_wkt`` (geometric mean of x and y)."""
    xmin, ymin, xmax, ymax = footprint(grid, target_wkt)
    return float(np.sqrt(max(xmax - xmin, 0.0) / grid.width * max(ymax - ymin, 0.0) / grid.height))


def resolution_warnings(reference: Grid, inputs: dict[str, Grid], ratio: float = 2.0) -> list[str]:
    """Warnings for inputs whose pixels are much coarser or finer than the reference grid's.

    Both are resampled onto the reference grid (bilinear), which is right for small
    differences; at a factor of ``ratio`` or more the analyst should know what it means.

    Args:
        reference: The grid every output is on.
        inputs: The input grids by role (``before``, ``after``).
        ratio: The factor from which a warning is given.
    """
    if not reference.wkt:
        return []
    ref = pixel_size_in(reference, reference.wkt)
    out = []
    for role, grid in inputs.items():
        size = pixel_size_in(grid, reference.wkt)
        if ref <= 0 or size <= 0:
            continue
        other = "after" if role == "before" else "before"
        if size >= ratio * ref:
            out.append(f"the {role} raster's pixels are about {size / ref:.1f}x larger than the output grid's "
                       f"({size:.3g} vs {ref:.3g} CRS units): it is upsampled (bilinear), so changes smaller than "
                       f"a few of its pixels are blurred; to work at its resolution instead, put the outputs on its grid "
                       f"(command line: --grid {role}; QGIS: Output grid '{role}')")
        elif ref >= ratio * size:
            out.append(f"the {role} raster's pixels are about {ref / size:.1f}x smaller than the output grid's "
                       f"({size:.3g} vs {ref:.3g} CRS units): it is downsampled (bilinear), so its detail is lost; "
                       f"to keep it, put the outputs on its grid (command line: --grid {role}; QGIS: Output grid "
                       f"'{role}'; the {other} raster is then upsampled)")
    return out


def reference_grid(kind: str, before: Grid, after: Grid, target_crs: str | None = None,
                   resolution: float | None = None) -> Grid:
    """The grid every output is on.

    Args:
        kind: ``"before"``, ``"after"`` or ``"custom"`` (protocol.GRIDS).
        before, after: The inputs' grids.
        target_crs: For ``custom``: any CRS string GDAL understands (``EPSG:32633``, WKT, PROJ).
        resolution: For ``custom``: pixel size in target-CRS units. For ``before``/``after``
            it is not allowed (resampling a raster's own grid is what ``custom`` is for).

    Raises:
        InputError: Unknown target CRS, rotated reference grid, or no overlap.
    """
    if kind == "before":
        grid = before
    elif kind == "after":
        grid = after
    else:
        srs = osr.SpatialReference()
        try:
            srs.SetFromUserInput(str(target_crs))
        except RuntimeError:
            raise InputError(f"target CRS {target_crs!r} is not a CRS GDAL knows; use e.g. EPSG:32633") from None
        wkt = srs.ExportToWkt()
        if not before.wkt:
            raise InputError("a target CRS needs inputs with a CRS; assign one to both rasters first")
        if resolution is None or not resolution > 0:
            raise InputError("grid 'custom' needs a positive --resolution in target-CRS units")
        b1, b2 = footprint(before, wkt), footprint(after, wkt)
        xmin, ymin = max(b1[0], b2[0]), max(b1[1], b2[1])
        xmax, ymax = min(b1[2], b2[2]), min(b1[3], b2[3])
        if xmin >= xmax or ymin >= ymax:
            raise no_overlap_error()
        xmin = math.floor(xmin / resolution) * resolution
        ymax = math.ceil(ymax / resolution) * resolution
        width = max(1, math.ceil((xmax - xmin) / resolution - 1e-9))
        height = max(1, math.ceil((ymax - ymin) / resolution - 1e-9))
        grid = Grid(width, height, (xmin, resolution, 0.0, ymax, 0.0, -resolution), wkt)
    _check_north_up(grid, kind)
    return grid


def no_overlap_error() -> InputError:
    """The error for two rasters that do not overlap."""
    return InputError("the before and after rasters do not overlap; check that they cover the same place "
                      "and that both CRSs are right (a wrong CRS puts a raster somewhere else)")


def processed_window(grid: Grid, inputs: list[Grid]) -> Window:
    """The pixel window of ``grid`` covered by every input's footprint (the intersection).

    Raises:
        InputError: The footprints do not overlap within the grid.
    """
    x0, dx, _, y0, _, dy = grid.geotransform
    cx0, cy0, cx1, cy1 = 0.0, 0.0, float(grid.width), float(grid.height)
    for g in inputs:
        if same_grid(g, grid):
            continue
        xmin, ymin, xmax, ymax = footprint(g, grid.wkt)
        px = sorted(((xmin - x0) / dx, (xmax - x0) / dx))
        py = sorted(((ymin - y0) / dy, (ymax - y0) / dy))
        cx0, cx1 = max(cx0, px[0]), min(cx1, px[1])
        cy0, cy1 = max(cy0, py[0]), min(cy1, py[1])
    # pixels partly covered are kept; their validity comes from the warped alpha band
    ix0, iy0 = max(0, math.floor(cx0 + 1e-6)), max(0, math.floor(cy0 + 1e-6))
    ix1, iy1 = min(grid.width, math.ceil(cx1 - 1e-6)), min(grid.height, math.ceil(cy1 - 1e-6))
    if ix1 <= ix0 or iy1 <= iy0:
        raise no_overlap_error()
    return Window(ix0, iy0, ix1 - ix0, iy1 - iy0)


def warp_to_grid(ds: gdal.Dataset, grid: Grid, resample: str = "bilinear") -> tuple[gdal.Dataset, int]:
    """Wrap ``ds`` in a warped VRT exactly on ``grid``, streaming (no pixels are read now).

    Args:
        ds: The source dataset (kept alive by the caller as long as the VRT is used).
        grid: The reference grid (north-up).
        resample: GDAL resampling name (bilinear for imagery).

    Returns:
        ``(vrt_dataset, alpha_band_index)``: the alpha band (1-based) is 0 outside the footprint and
        where the source has nodata/masked pixels.
    """
    xmin, ymin, xmax, ymax = grid.bounds()
    opts = gdal.WarpOptions(format="VRT", outputBounds=(xmin, ymin, xmax, ymax), width=grid.width,
                            height=grid.height, dstSRS=grid.wkt or None, resampleAlg=resample,
                            dstAlpha=True, multithread=False)
    try:
        vrt = gdal.Warp("", ds, options=opts)
    except RuntimeError as exc:
        raise InputError(f"cannot warp {ds.GetDescription()!r} onto the reference grid ({str(exc).strip()}); "
                         "check its CRS") from None
    return vrt, int(vrt.RasterCount)
