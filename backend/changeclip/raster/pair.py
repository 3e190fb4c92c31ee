"""Open a before/after raster pair and put both on one reference grid.

This is the one place where two dates are opened, checked and aligned: ``changeclip detect``
(:mod:`changeclip.pipeline`) and ``changeclip dataset from-vectors``
(:mod:`changeclip.datasets.from_vectors`) both call :func:`open_pair`, so training tiles are cut
from exactly the pixels detection would see. No pixel is read here except for validation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from osgeo import gdal

from changeclip.errors import InputError
from changeclip.raster import align, io

log = logging.getLogger(__name__)


@dataclass
class AlignedPair:
    """Both rasters opened, checked and on the reference grid."""

    grid: align.Grid
    window: align.Window
    before: io.GridReader
    after: io.GridReader
    warped: dict[str, bool]
    eight_bit: bool
    warnings: list[str] = field(default_factory=list)
    reopen: Callable[[], tuple[io.GridReader, io.GridReader]] | None = None
    """Opens another ``(before, after)`` reader pair with its own datasets (for reader threads)."""


def open_pair(before: str, after: str, bands: Sequence[int], grid_kind: str = "before",
              target_crs: str | None = None, resolution: float | None = None,
              check_files: Callable[[str, list[str]], None] | None = None) -> AlignedPair:
    """Open, check and align both rasters.

    Args:
        before, after: Raster paths (any GDAL raster).
        bands: 1-based band mapping used for both dates.
        grid_kind: ``before``, ``after`` or ``custom`` (see :func:`align.reference_grid`).
        target_crs, resolution: The custom grid's CRS and pixel size.
        check_files: Called as ``check_files(role, files)`` with every file GDAL reads for each
            raster (its .aux.xml, .ovr, a VRT's sources ...) right after opening it; raises to refuse.

    Raises:
        InputError: Missing/unreadable rasters, bad bands, GCP/RPC-only georeferencing, one CRS
            missing, no overlap, or a custom grid without CRS.
    """
    ds_b = io.open_raster(before, "before")
    ds_a = io.open_raster(after, "after")
    if check_files is not None:
        for role, ds in (("before", ds_b), ("after", ds_a)):
            check_files(role, list(ds.GetFileList() or []))
    io.check_bands(ds_b, bands, "before")
    io.check_bands(ds_a, bands, "after")
    align.check_georeferenced(ds_b, before, "before")
    align.check_georeferenced(ds_a, after, "after")
    g_b, g_a = align.grid_of(ds_b), align.grid_of(ds_a)
    align.check_crs(g_b, g_a, before, after)
    warnings: list[str] = []
    if not g_b.wkt:
        if grid_kind == "custom" or not align.same_grid(g_b, g_a):
            raise InputError("neither raster has a CRS and their grids differ, so they cannot be aligned; "
                             "assign the right CRS to both (gdal_edit.py -a_srs EPSG:XXXX FILE)")
        warnings.append("the rasters have no CRS: outputs are in pixel coordinates and areas are unknown")
    grid = align.reference_grid(grid_kind, g_b, g_a, target_crs, resolution)
    if resolution is not None and grid_kind != "custom":
        warnings.append(f"resolution {resolution} is ignored with grid '{grid_kind}' "
                        "(it only applies to a custom grid)")
    warnings += align.resolution_warnings(grid, {"before": g_b, "after": g_a})
    window = align.processed_window(grid, [g_b, g_a])
    readers, warped = grid_readers(grid, bands, ds_b, ds_a)
    for role in ("before", "after"):
        if warped[role]:
            log.info("%s raster warped onto the reference grid (bilinear, streaming VRT)", role)
    srs = grid.srs()
    if srs is not None and srs.IsGeographic():
        warnings.append("the reference grid is in a geographic CRS (degrees); areas are computed on the "
                        "ellipsoid, but pixels are not square on the ground")
    for w in warnings:
        log.warning("%s", w)
    return AlignedPair(grid, window, readers["before"], readers["after"], warped,
                       io.is_8bit(ds_b, bands) and io.is_8bit(ds_a, bands), warnings,
                       reopen=lambda: reopen_readers(before, after, bands, grid))


def grid_readers(grid: align.Grid, bands: Sequence[int], ds_b: gdal.Dataset, ds_a: gdal.Dataset
                 ) -> tuple[dict[str, io.GridReader], dict[str, bool]]:
    """Readers of both rasters on ``grid`` (a streaming warped VRT where a raster is off the grid)."""
    readers: dict[str, io.GridReader] = {}
    warped: dict[str, bool] = {}
    for role, ds in (("before", ds_b), ("after", ds_a)):
        if align.same_grid(align.grid_of(ds), grid):
            readers[role] = io.GridReader(ds, bands)
            warped[role] = False
        else:
            vrt, alpha = align.warp_to_grid(ds, grid)
            readers[role] = io.GridReader(vrt, bands, alpha_band=alpha, keep=[ds])
            warped[role] = True
    return readers, warped


def reopen_readers(before: str, after: str, bands: Sequence[int], grid: align.Grid
                   ) -> tuple[io.GridReader, io.GridReader]:
    """A new reader pair with datasets of its own (GDAL datasets must not be shared by threads)."""
    readers, _ = grid_readers(grid, bands, io.open_raster(before, "before"), io.open_raster(after, "after"))
    return readers["before"], readers["after"]
