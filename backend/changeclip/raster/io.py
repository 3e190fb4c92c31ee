"""Open and validate input rasters; windowed reads of the mapped bands and their validity.

Everything here is GDAL + numpy. A :class:`GridReader` reads pixel windows of a dataset that is
already on the reference grid (the input itself, or a warped VRT made by :mod:`.align`) and
returns the mapped bands as float32 plus a boolean validity mask that combines every way GDAL
knows to mark a pixel as missing: nodata values, per-dataset masks, alpha bands, NaN/inf in
floating-point data and (for warped inputs) pixels outside the source's footprint.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from osgeo import gdal

from changeclip.errors import InputError

gdal.UseExceptions()

_SUPPORTED_TYPES = {
    gdal.GDT_Byte, gdal.GDT_UInt16, gdal.GDT_Int16, gdal.GDT_UInt32, gdal.GDT_Int32,
    gdal.GDT_Float32, gdal.GDT_Float64,
}
for _name in ("GDT_Int8", "GDT_UInt64", "GDT_Int64"):
    if hasattr(gdal, _name):
        _SUPPORTED_TYPES.add(getattr(gdal, _name))


def open_raster(path: str, role: str) -> gdal.Dataset:
    """Open a GDAL-readable raster read-only, or raise a clear :class:`InputError`.

    Args:
        path: Local path (or a GDAL virtual path such as ``/vsizip/...``).
        role: ``"before"`` or ``"after"``; used in messages.

    Returns:
        The open dataset.

    Raises:
        InputError: The file is missing, is not a raster, or has no bands.
    """
    if not path.startswith("/vsi") and not os.path.exists(path):
        raise InputError(f"{role} raster not found: {path!r}; check the path (it must exist on the "
                         "machine that runs the backend)")
    try:
        ds = gdal.Open(path, gdal.GA_ReadOnly)
    except RuntimeError as exc:
        raise InputError(f"{role} file {path!r} is not a raster GDAL can read ({str(exc).strip()}); "
                         "give a GeoTIFF, VRT, JPEG2000, ENVI or another GDAL raster format") from None
    if ds is None or ds.RasterCount == 0:
        raise InputError(f"{role} file {path!r} has no raster bands; give an image raster, "
                         "not a vector file")
    return ds


def check_bands(ds: gdal.Dataset, bands: Sequence[int], role: str) -> None:
    """Check a 1-based band mapping against a dataset and the band data types.

    Args:
        ds: The open dataset.
        bands: 1-based band numbers, e.g. ``[3, 2, 1]``.
        role: ``"before"`` or ``"after"``.

    Raises:
        InputError: Too few bands, a band number out of range, or an unsupported data type.
    """
    count = ds.RasterCount
    mapping = ",".join(str(b) for b in bands)
    missing = [b for b in bands if b > count]
    if missing and count < len(bands):
        raise InputError(
            f"the {role} raster {ds.GetDescription()!r} has {count} band(s) but the band mapping "
            f"{mapping} needs {len(bands)}; choose bands that exist with --bands (e.g. "
            f"--bands {','.join(['1'] * len(bands))} for a single-band image)")
    if missing:
        raise InputError(
            f"band {missing[0]} does not exist in the {role} raster {ds.GetDescription()!r} "
            f"({count} bands); choose band numbers from 1 to {count} with --bands")
    for b in bands:
        dtype = ds.GetRasterBand(b).DataType
        if dtype not in _SUPPORTED_TYPES:
            raise InputError(
                f"band {b} of the {role} raster has data type {gdal.GetDataTypeName(dtype)}, which is "
                "not supported; convert it to an 8/16/32-bit integer or float type (gdal_translate -ot)")


def is_8bit(ds: gdal.Dataset, bands: Sequence[int]) -> bool:
    """True if every mapped band is unsigned 8-bit."""
    return all(ds.GetRasterBand(b).DataType == gdal.GDT_Byte for b in bands)


class GridReader:
    """Windowed reads of the mapped bands of a dataset that lies on the reference grid.

    Args:
        ds: A dataset on the reference grid (the input itself or a warped VRT).
        bands: 1-based band numbers to read, in the order the engine wants them.
        alpha_band: 1-based index of an extra validity band (the warped VRT's alpha), if any.
        keep: Objects whose lifetime must cover ``ds`` (e.g. the source of a warped VRT).
    """

    def __init__(self, ds: gdal.Dataset, bands: Sequence[int], alpha_band: int | None = None,
                 keep: Sequence[object] = ()) -> None:
        self.ds = ds
        self.bands = list(bands)
        self._keep = list(keep)
        self._float = any(ds.GetRasterBand(b).DataType in (gdal.GDT_Float32, gdal.GDT_Float64)
                          for b in self.bands)
        masks: list[gdal.Band] = []
        alpha_seen = False
        for b in dict.fromkeys(self.bands):
            band = ds.GetRasterBand(b)
            flags = band.GetMaskFlags()
            if flags != gdal.GMF_ALL_VALID:
                masks.append(band.GetMaskBand())
                alpha_seen |= bool(flags & gdal.GMF_ALPHA)
        alphas = [] if alpha_band is None else [alpha_band]
        if not alpha_seen:
            # GDAL only derives masks from an alpha band in 2- and 4-band rasters; honour any band
            # labelled alpha (e.g. the 5th band of a multispectral GeoTIFF) ourselves.
            alphas += [i for i in range(1, ds.RasterCount + 1)
                       if ds.GetRasterBand(i).GetColorInterpretation() == gdal.GCI_AlphaBand]
        masks += [ds.GetRasterBand(i) for i in dict.fromkeys(alphas)]
        self._masks = masks

    @property
    def width(self) -> int:
        """Width of the grid in pixels."""
        return int(self.ds.RasterXSize)

    @property
    def height(self) -> int:
        """Height of the grid in pixels."""
        return int(self.ds.RasterYSize)

    def read_valid(self, xoff: int, yoff: int, xsize: int, ysize: int) -> np.ndarray:
        """Validity of a window: bool ``(ysize, xsize)``, True where every mask says valid.

        NaN/inf values of float bands are not checked here (see :meth:`read`).
        """
        valid = np.ones((ysize, xsize), dtype=bool)
        for mask in self._masks:
            valid &= mask.ReadAsArray(xoff, yoff, xsize, ysize) > 0
        return valid

    def read(self, xoff: int, yoff: int, xsize: int, ysize: int,
             valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Read a window of the mapped bands.

        Args:
            xoff, yoff: Top-left pixel of the window (inside the grid).
            xsize, ysize: Window size in pixels.
            valid: The window's validity if already read with :meth:`read_valid`.

        Returns:
            ``(data, valid)``: data float32 ``(C, ysize, xsize)`` in the raster's own units,
            valid bool ``(ysize, xsize)``.
        """
        if valid is None:
            valid = self.read_valid(xoff, yoff, xsize, ysize)
        data = np.empty((len(self.bands), ysize, xsize), dtype=np.float32)
        cache: dict[int, np.ndarray] = {}
        for i, b in enumerate(self.bands):
            if b not in cache:
                cache[b] = self.ds.GetRasterBand(b).ReadAsArray(xoff, yoff, xsize, ysize)
            data[i] = cache[b]
        if self._float:
            valid = valid & np.isfinite(data).all(axis=0)
        return data, valid
