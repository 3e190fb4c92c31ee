"""Small georeferenced rasters written from seeded numpy for the detect tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from osgeo import gdal, osr

gdal.UseExceptions()

_GDT = {np.dtype("uint8"): gdal.GDT_Byte, np.dtype("uint16"): gdal.GDT_UInt16, np.dtype("int16"): gdal.GDT_Int16,
        np.dtype("float32"): gdal.GDT_Float32, np.dtype("float64"): gdal.GDT_Float64}


def wkt(epsg: int) -> str:
    """WKT of an EPSG code."""
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    return srs.ExportToWkt()


def write_raster(path: Path | str, data: np.ndarray,
                 gt: tuple[float, ...] | None = (500000.0, 10.0, 0.0, 5600000.0, 0.0, -10.0),
                 epsg: int | None = 32633, nodata: float | None = None, alpha: np.ndarray | None = None,
                 mask: np.ndarray | None = None, driver: str = "GTiff") -> str:
    """Write ``data`` (C, H, W) to a raster; optional geotransform, nodata, alpha band (H, W) or dataset mask (H, W)."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    c, h, w = data.shape
    n = c + (1 if alpha is not None else 0)
    opts = ["TILED=YES"] if driver == "GTiff" else []
    ds = gdal.GetDriverByName(driver).Create(str(path), w, h, n, _GDT[data.dtype], options=opts)
    if gt is not None:  # None: no geotransform at all (a bare pixel grid)
        ds.SetGeoTransform(gt)
    if epsg is not None:
        ds.SetProjection(wkt(epsg))
    for i in range(c):
        band = ds.GetRasterBand(i + 1)
        band.WriteArray(data[i])
        if nodata is not None:
            band.SetNoDataValue(nodata)
    if alpha is not None:
        ab = ds.GetRasterBand(n)
        ab.SetColorInterpretation(gdal.GCI_AlphaBand)
        ab.WriteArray(alpha.astype(data.dtype))
    if mask is not None:
        ds.CreateMaskBand(gdal.GMF_PER_DATASET)
        ds.GetRasterBand(1).GetMaskBand().WriteArray((mask > 0).astype(np.uint8) * 255)
    ds.FlushCache()
    ds = None
    return str(path)


def textured(h: int, w: int, c: int = 3, seed: int = 0, dtype: str = "uint8", scale: float = 1.0) -> np.ndarray:
    """Smooth-ish random imagery (C, H, W): blocky texture plus noise, in 20..230 (times ``scale``)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(40, 210, size=(c, h // 8 + 2, w // 8 + 2))
    img = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)[:, :h, :w]
    img = img + rng.normal(0, 6, size=(c, h, w))
    img = np.clip(img, 20, 230) * scale
    return img.astype(dtype)


def change_pair(folder: Path, h: int = 200, w: int = 240, box: tuple[int, int, int, int] | None = None,
                seed: int = 0, **kwargs: object) -> tuple[str, str, np.ndarray]:
    """A before/after pair on the same grid: the after image is the before image with a gain/offset
    change and noise everywhere (not change) and new content inside ``box`` (y0, x0, y1, x1;
    default: rows 30-60 %, columns 33-62 % of the image).

    Returns:
        ``(before_path, after_path, truth (H, W) bool)``.
    """
    before = textured(h, w, seed=seed).astype(np.float64)
    rng = np.random.default_rng(seed + 1)
    after = before * 0.9 + 12 + rng.normal(0, 2, size=before.shape)
    y0, x0, y1, x1 = box or (int(h * 0.3), int(w / 3), int(h * 0.6), int(w * 0.625))
    after[:, y0:y1, x0:x1] = textured(y1 - y0, x1 - x0, seed=seed + 7)[::-1]
    truth = np.zeros((h, w), bool)
    truth[y0:y1, x0:x1] = True
    b = write_raster(folder / "before.tif", np.clip(before, 0, 255).astype(np.uint8), **kwargs)  # type: ignore[arg-type]
    a = write_raster(folder / "after.tif", np.clip(after, 0, 255).astype(np.uint8), **kwargs)  # type: ignore[arg-type]
    return b, a, truth


def read(path: str | Path) -> np.ndarray:
    """All bands of a raster as a numpy array."""
    ds = gdal.Open(str(path))
    return ds.ReadAsArray()


def detect_small(out: Path, before: str, after: str, **kw: object) -> tuple[dict, np.ndarray, np.ndarray]:
    """run_detection with small tiles and batches (irmad by default, float32 probability).

    Returns:
        ``(summary, mask, probability)`` as read back from the outputs.
    """
    from changeclip.pipeline import run_detection
    from changeclip.protocol import MASK_NAME, PROBABILITY_NAME, DetectParams

    base: dict[str, object] = {"engine": "irmad", "tile": 64, "overlap": 16, "batch_size": 3,
                               "probability_dtype": "float32"}
    base.update(kw)
    summary = run_detection(DetectParams(before, after, str(out), **base))  # type: ignore[arg-type]
    return summary, read(out / MASK_NAME), read(out / PROBABILITY_NAME)
