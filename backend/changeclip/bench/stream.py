"""A prototype of the "keep the GPU fed" levers for end-to-end runs, for measurement.

:func:`stream_detect` is the tiled GeoTIFF → GeoTIFF loop with the levers the pipeline
does not have yet: tiles are read by a pool of reader threads (each with its own file
handle) one batch ahead of the network, the network runs on whole batches with the
predictor's cached text features and mixed precision, and a writer thread stores the
results while the next batch computes. Same tile grid and centre-crop writing as
:func:`changeclip.bench.naive.naive_geotiff_detect`, so the two are directly comparable.

Two I/O back ends: ``gdal`` (GeoTIFF through osgeo, as the pipeline) and ``tifffile``
(plain uncompressed TIFF through memory maps; for machines without GDAL's Python
bindings — no georeferencing is read or written then, which reports say).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

IO_BACKENDS = ("gdal", "tifffile")


def tile_origins(n: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis: stride ``tile − overlap``, last tile flush with the border."""
    if n <= tile:
        return [0]
    return sorted(set(list(range(0, n - tile, tile - overlap)) + [n - tile]))


class _Reader:
    """Thread-safe window reads of one 3-band raster ((3, h, w) uint8)."""

    def __init__(self, path: str | Path, io: str) -> None:
        self.path, self.io = str(path), io
        self._local = threading.local()
        if io == "tifffile":
            import tifffile

            self._mm = tifffile.memmap(self.path, mode="r")  # (H, W, 3)
            self.height, self.width = self._mm.shape[:2]
        else:
            ds = self._ds()
            self.height, self.width = ds.RasterYSize, ds.RasterXSize

    def _ds(self) -> Any:
        ds = getattr(self._local, "ds", None)
        if ds is None:
            from osgeo import gdal

            gdal.UseExceptions()
            ds = self._local.ds = gdal.Open(self.path)
        return ds

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        if self.io == "tifffile":
            return np.ascontiguousarray(np.moveaxis(self._mm[y:y + h, x:x + w, :3], -1, 0))
        return self._ds().ReadAsArray(x, y, w, h, band_list=[1, 2, 3])


class _Writer:
    """Single-threaded writes of uint8 windows into a new one-band raster."""

    def __init__(self, path: str | Path, like: str | Path, width: int, height: int, io: str) -> None:
        self.io = io
        if io == "tifffile":
            import tifffile

            self._mm = tifffile.memmap(str(path), shape=(height, width), dtype=np.uint8)
        else:
            from osgeo import gdal

            src = gdal.Open(str(like))
            self._ds = gdal.GetDriverByName("GTiff").Create(str(path), width, height, 1, gdal.GDT_Byte,
                                                            options=["TILED=YES", "COMPRESS=DEFLATE"])
            self._ds.SetGeoTransform(src.GetGeoTransform())
            self._ds.SetProjection(src.GetProjection())
            self._band = self._ds.GetRasterBand(1)

    def write(self, arr: np.ndarray, x: int, y: int) -> None:
        if self.io == "tifffile":
            self._mm[y:y + arr.shape[0], x:x + arr.shape[1]] = arr
        else:
            self._band.WriteArray(arr, x, y)

    def close(self) -> None:
        if self.io == "tifffile":
            self._mm.flush()
            del self._mm
        else:
            self._band.FlushCache()
            self._band = None
            self._ds = None


def _batches(items: list[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def stream_detect(predictor: Any, before: str | Path, after: str | Path, out_path: str | Path, tile: int = 256,
                  overlap: int = 64, batch: int = 64, readers: int = 4, io: str = "gdal") -> int:
    """Overlapped tiled detection: readers one batch ahead, batched network, writer thread.

    Args:
        predictor: a ChangeCLIP predictor (``predict_logits``) or anything with it.
        before, after: 3-band uint8 rasters of the same size.
        out_path: output raster (change probability in percent, uint8).
        tile, overlap: tile grid (as the pipeline's defaults).
        batch: tiles per network call.
        readers: reader threads.
        io: ``gdal`` or ``tifffile``.

    Returns:
        The number of tiles.
    """
    if io not in IO_BACKENDS:
        raise ValueError(f"io must be one of {IO_BACKENDS}")
    ra, rb = _Reader(before, io), _Reader(after, io)
    h, w = ra.height, ra.width
    th, tw = min(tile, h), min(tile, w)
    half = overlap // 2
    origins = [(x, y) for y in tile_origins(h, tile, overlap) for x in tile_origins(w, tile, overlap)]
    writer = _Writer(out_path, before, w, h, io)
    out_q: queue.Queue[Any] = queue.Queue(maxsize=4)
    errors: list[BaseException] = []

    def write_loop() -> None:
        while (item := out_q.get()) is not None:
            try:
                where, probs = item
                for (x, y), p in zip(where, probs, strict=True):
                    y0 = half if y > 0 else 0
                    x0 = half if x > 0 else 0
                    y1 = th - half if y + th < h else th
                    x1 = tw - half if x + tw < w else tw
                    writer.write(p[y0:y1, x0:x1], x + x0, y + y0)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(exc)

    def read_batch(where: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        a = np.stack(list(pool.map(lambda o: ra.read(o[0], o[1], tw, th), where)))
        b = np.stack(list(pool.map(lambda o: rb.read(o[0], o[1], tw, th), where)))
        return a.astype(np.float32), b.astype(np.float32)

    wt = threading.Thread(target=write_loop, name="bench-writer", daemon=True)
    wt.start()
    with ThreadPoolExecutor(max_workers=readers, thread_name_prefix="bench-reader") as pool, \
            ThreadPoolExecutor(max_workers=1) as prefetch:
        batches = list(_batches(origins, batch))
        nxt = prefetch.submit(read_batch, batches[0])
        for i, where in enumerate(batches):
            a, b = nxt.result()
            if i + 1 < len(batches):
                nxt = prefetch.submit(read_batch, batches[i + 1])
            logits = torch.from_numpy(predictor.predict_logits(a, b))
            probs = (logits.softmax(dim=1)[:, 1] * 100).round().to(torch.uint8).numpy()
            out_q.put((where, probs))
            if errors:
                break
    out_q.put(None)
    wt.join()
    writer.close()
    if errors:
        raise errors[0]
    return len(origins)


def write_synthetic_tiff(folder: Path, size: int, seed: int = 0) -> tuple[Path, Path]:
    """The synthetic pair of :func:`changeclip.bench.end_to_end.write_synthetic_pair` as plain
    uncompressed (H, W, 3) TIFFs through tifffile (no georeferencing)."""
    import tifffile

    from changeclip.bench.end_to_end import synthetic_arrays

    before, after = synthetic_arrays(size, seed)
    paths = []
    for name, arr in (("before.tif", before), ("after.tif", after)):
        tifffile.imwrite(folder / name, np.ascontiguousarray(np.moveaxis(arr, 0, -1)), photometric="rgb")
        paths.append(folder / name)
    return paths[0], paths[1]


def naive_detect_io(predictor: Any, before: str | Path, after: str | Path, out_path: str | Path, tile: int = 256,
                    overlap: int = 64, io: str = "gdal") -> int:
    """The naive loop (read one tile, predict it alone, write it, next) over either I/O back end.

    ``predictor`` is a :class:`~changeclip.bench.naive.NaivePredictor`. Same grid and
    writing as :func:`stream_detect`.
    """
    ra, rb = _Reader(before, io), _Reader(after, io)
    h, w = ra.height, ra.width
    th, tw = min(tile, h), min(tile, w)
    half = overlap // 2
    writer = _Writer(out_path, before, w, h, io)
    count = 0
    try:
        for y in tile_origins(h, tile, overlap):
            for x in tile_origins(w, tile, overlap):
                a = ra.read(x, y, tw, th).astype(np.float32)[None]
                b = rb.read(x, y, tw, th).astype(np.float32)[None]
                logits = torch.from_numpy(predictor.predict_one(a, b))
                p = (logits.softmax(dim=1)[0, 1] * 100).round().to(torch.uint8).numpy()
                y0 = half if y > 0 else 0
                x0 = half if x > 0 else 0
                y1 = th - half if y + th < h else th
                x1 = tw - half if x + tw < w else tw
                writer.write(p[y0:y1, x0:x1], x + x0, y + y0)
                count += 1
    finally:
        writer.close()
    return count


def bench_stream(variant: str, device: str, size: int, naive_size: int, batch: int, precision: str,
                 io: str = "gdal", readers: int = 4, workdir: str | None = None) -> list[dict[str, Any]]:
    """End-to-end rows of the naive loop and the overlapped loop over one I/O back end.

    Returns:
        Two rows (``path`` = ``naive-loop`` / ``stream``) with MPix/s; the stream row has
        ``speedup_vs_naive``.
    """
    import tempfile
    import time

    from changeclip.bench.common import gpu_peak_mib, reset_gpu_peak, seeded_model
    from changeclip.bench.end_to_end import write_synthetic_pair
    from changeclip.bench.naive import NaivePredictor
    from changeclip.inference.predictor import ChangeCLIPPredictor

    write = write_synthetic_tiff if io == "tifffile" else write_synthetic_pair
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="changeclip-stream-", dir=workdir) as tmp:
        tmpd = Path(tmp)
        for sub in ("big", "small"):
            (tmpd / sub).mkdir()
        big = write(tmpd / "big", size)
        small = write(tmpd / "small", naive_size)
        naive = NaivePredictor(seeded_model(variant, device, "fp32", channels_last=False))
        naive.predict_one(*[np.ones((1, 3, 256, 256), np.float32)] * 2)
        reset_gpu_peak(device)
        t0 = time.perf_counter()
        tiles = naive_detect_io(naive, *small, tmpd / "naive.tif", io=io)
        dt = time.perf_counter() - t0
        base = naive_size * naive_size / 1e6 / dt
        rows.append({"variant": variant, "path": f"naive-loop ({io})", "precision": "fp32", "batch": 1,
                     "raster_px": naive_size, "tiles": tiles, "seconds": dt, "mpix_per_s": base,
                     "pairs_per_s": tiles / dt, "gpu_peak_mib": gpu_peak_mib(device),
                     "georeferenced": io == "gdal"})
        del naive
        lm = seeded_model(variant, device, precision)
        pred = ChangeCLIPPredictor(lm, "none", batch_size=batch)
        stream_detect(pred, *small, tmpd / "warm.tif", batch=batch, readers=readers, io=io)  # warm-up
        reset_gpu_peak(device)
        t0 = time.perf_counter()
        tiles = stream_detect(pred, *big, tmpd / "stream.tif", batch=batch, readers=readers, io=io)
        dt = time.perf_counter() - t0
        mpix = size * size / 1e6 / dt
        rows.append({"variant": variant, "path": f"stream ({io})", "precision": precision, "batch": batch,
                     "raster_px": size, "tiles": tiles, "seconds": dt, "mpix_per_s": mpix, "pairs_per_s": tiles / dt,
                     "speedup_vs_naive": mpix / base, "gpu_peak_mib": gpu_peak_mib(device),
                     "georeferenced": io == "gdal", "readers": readers})
    return rows
