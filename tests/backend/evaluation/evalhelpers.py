"""Helpers for the evaluation tests: small masks and images written with GDAL (imported by name)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from osgeo import gdal


def write_image(path: Path, arr: np.ndarray, nodata: int | None = None,
                geotransform: tuple[float, ...] | None = None) -> Path:
    """Write a (H, W) or (C, H, W) uint8 array as PNG/BMP/GeoTIFF by extension."""
    arr = np.asarray(arr, np.uint8)
    if arr.ndim == 2:
        arr = arr[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    mem = gdal.GetDriverByName("MEM").Create("", arr.shape[2], arr.shape[1], arr.shape[0], gdal.GDT_Byte)
    for i, band in enumerate(arr):
        mem.GetRasterBand(i + 1).WriteArray(band)
        if nodata is not None:
            mem.GetRasterBand(i + 1).SetNoDataValue(nodata)
    if geotransform:
        mem.SetGeoTransform(geotransform)
    driver = {".png": "PNG", ".bmp": "BMP", ".tif": "GTiff"}[path.suffix.lower()]
    gdal.GetDriverByName(driver).CreateCopy(str(path), mem)
    for aux in path.parent.glob(path.name + ".aux.xml"):
        aux.unlink()
    return path

