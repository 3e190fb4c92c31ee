"""End-to-end speed, GeoTIFF → GeoTIFF: the real pipeline against the naive tile loop.

A synthetic georeferenced pair (3-band uint8, tiled GeoTIFF, UTM, 0.5 m) is written
first. The pipeline (``changeclip.pipeline.run_detection``) runs with a warm model cache,
so loading weights is not counted; its time includes reading, radiometric scaling,
tiling/blending, writing the mask and probability and converting both to COGs. The
naive loop (:func:`changeclip.bench.naive.naive_geotiff_detect`) reads, computes and
writes one tile at a time, batch 1, fp32, text encoded per tile.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from changeclip.bench.common import gpu_peak_mib, reset_gpu_peak, seeded_model, seeded_weights
from changeclip.bench.naive import NaivePredictor, naive_geotiff_detect

log = logging.getLogger(__name__)


def synthetic_arrays(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A (3, size, size) uint8 before/after pair: smooth texture plus noise; the after image
    has a few inverted rectangles ("changes")."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(40, 220, (3, size // 64 + 2, size // 64 + 2))
    yy = np.linspace(0, coarse.shape[1] - 1.001, size)
    xx = np.linspace(0, coarse.shape[2] - 1.001, size)
    base = coarse[:, yy.astype(int)][:, :, xx.astype(int)]
    before = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    after = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    for _ in range(max(1, size // 256)):
        y, x = rng.integers(0, size - 64, 2)
        after[:, y:y + 48, x:x + 64] = 255 - after[:, y:y + 48, x:x + 64]
    return before, after


def write_synthetic_pair(folder: Path, size: int, seed: int = 0) -> tuple[Path, Path]:
    """Write ``before.tif``/``after.tif``: size × size, 3 bands uint8, EPSG:32633, 0.5 m pixels
    (tiled GeoTIFF, uncompressed) holding :func:`synthetic_arrays`."""
    from osgeo import gdal, osr

    gdal.UseExceptions()
    before, after = synthetic_arrays(size, seed)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    paths = []
    for name, arr in (("before.tif", before), ("after.tif", after)):
        path = folder / name
        ds = gdal.GetDriverByName("GTiff").Create(str(path), size, size, 3, gdal.GDT_Byte,
                                                  options=["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256"])
        ds.SetGeoTransform((500000.0, 0.5, 0.0, 5000000.0, 0.0, -0.5))
        ds.SetProjection(srs.ExportToWkt())
        for i in range(3):
            ds.GetRasterBand(i + 1).WriteArray(arr[i])
        ds = None
        paths.append(path)
    return paths[0], paths[1]


def bench_end_to_end(variant: str, device: str, size: int, precisions: list[str], batch: int,
                     naive_size: int | None = None, workdir: str | None = None,
                     runtimes: list[str] | None = None) -> list[dict[str, Any]]:
    """Time the pipeline (per precision) and the naive loop on synthetic pairs.

    Args:
        variant: preset name (seeded weights are written to a temporary native file).
        device: ``cpu`` / ``cuda:N``.
        size: side of the pipeline's raster in px.
        precisions: pipeline precisions to time.
        batch: pipeline batch size.
        naive_size: side of the naive loop's raster (default ``size``; smaller keeps a slow
            baseline short — MPix/s are comparable).
        workdir: folder for the temporary files (default: system temp).
        runtimes: further pipeline rows as ``"runtime:precision"`` (CPU runtimes; the warm-up run
            exports or reads the graph and, for int8, calibrates on the warm-up raster's tiles:
            the timed run calibrates again on its own, which is part of its cost).

    Returns:
        Rows with ``mpix_per_s`` and, for pipeline rows, ``speedup_vs_naive``.
    """
    from changeclip.inference.cache import ModelCache
    from changeclip.pipeline import run_detection
    from changeclip.protocol import DetectParams
    from changeclip.weights.native import save_weights

    rows: list[dict[str, Any]] = []
    naive_size = naive_size or size
    with tempfile.TemporaryDirectory(prefix="changeclip-bench-", dir=workdir) as tmp:
        tmpd = Path(tmp)
        lw = seeded_weights(variant)
        wpath = save_weights(lw.state_dict, lw.cfg, tmpd / f"{variant}.safetensors", meta={"source": "seeded"})
        (tmpd / "big").mkdir()
        before, after = write_synthetic_pair(tmpd / "big", size)
        if naive_size != size:
            (tmpd / "small").mkdir()
            nb, na = write_synthetic_pair(tmpd / "small", naive_size)
        else:
            nb, na = before, after
        (tmpd / "warm").mkdir()
        wb, wa = write_synthetic_pair(tmpd / "warm", 256)

        naive = NaivePredictor(seeded_model(variant, device, "fp32", channels_last=False))
        naive.predict_one(*[np.zeros((1, 3, 256, 256), np.float32) + 1] * 2)  # warm-up
        reset_gpu_peak(device)
        t0 = time.perf_counter()
        tiles = naive_geotiff_detect(naive, nb, na, tmpd / "naive.tif")
        dt = time.perf_counter() - t0
        base = naive_size * naive_size / 1e6 / dt
        rows.append({"variant": variant, "path": "naive", "precision": "fp32", "batch": 1, "raster_px": naive_size,
                     "tiles": tiles, "seconds": dt, "mpix_per_s": base, "pairs_per_s": tiles / dt,
                     "gpu_peak_mib": gpu_peak_mib(device)})
        del naive

        for spec in [*precisions, *(runtimes or [])]:
            rt, prec = spec.split(":") if ":" in spec else ("torch", spec)
            cache = ModelCache(max_entries=1)
            params = DetectParams(before=str(before), after=str(after), output_dir=str(tmpd / f"out-{rt}-{prec}"),
                                  engine="changeclip", weights=str(wpath), variant="auto", prompt_mode="none",
                                  device=device, precision=prec, runtime=rt, batch_size=batch, tile=256, overlap=64,
                                  value_range=[[0, 255]], overwrite=True)
            warm = DetectParams(**{**params.to_dict(), "before": str(wb), "after": str(wa),
                                   "output_dir": str(tmpd / f"warm-{rt}-{prec}")})
            run_detection(warm, cache=cache)  # loads the model into the cache, warms kernels (one tile)
            reset_gpu_peak(device)
            t0 = time.perf_counter()
            summary = run_detection(params, cache=cache)
            dt = time.perf_counter() - t0
            n_tiles = summary["tiles"]["total"] if isinstance(summary.get("tiles"), dict) else None
            # int8 calibrates (and quantises) once per raster pair: a fixed cost, reported apart from
            # the rate, which is what a large raster runs at
            once = float((summary.get("timings_s") or {}).get("calibrating", 0.0))
            mpix = size * size / 1e6 / (dt - once)
            model = summary.get("model") or {}
            rows.append({"variant": variant, "path": "pipeline", "precision": model.get("precision", prec),
                         "runtime": model.get("runtime", rt), "runtime_fallback": model.get("runtime_fallback"),
                         "int8": model.get("int8"), "batch": batch, "raster_px": size, "tiles": n_tiles,
                         "seconds": dt, "once_s": once, "mpix_per_s": mpix,
                         "pairs_per_s": n_tiles / (dt - once) if n_tiles else None, "speedup_vs_naive": mpix / base,
                         "timings_s": summary.get("timings_s"), "gpu_peak_mib": gpu_peak_mib(device)})
            del cache
    return rows


def bench_irmad_end_to_end(size: int, workdir: str | None = None) -> dict[str, Any]:
    """The irmad engine through the pipeline (no weights): MPix/s of the non-network path."""
    from changeclip.pipeline import run_detection
    from changeclip.protocol import DetectParams

    with tempfile.TemporaryDirectory(prefix="changeclip-bench-", dir=workdir) as tmp:
        before, after = write_synthetic_pair(Path(tmp), size)
        params = DetectParams(before=str(before), after=str(after), output_dir=str(Path(tmp) / "out"),
                              engine="irmad", device="cpu", overwrite=True)
        t0 = time.perf_counter()
        summary = run_detection(params)
        dt = time.perf_counter() - t0
    return {"variant": "irmad", "path": "pipeline", "precision": "fp64", "batch": params.batch_size,
            "raster_px": size, "seconds": dt, "mpix_per_s": size * size / 1e6 / dt,
            "timings_s": summary.get("timings_s")}


class NoOpEngine:
    """An engine that costs (almost) nothing: what the pipeline sustains around any network.

    It returns a smooth, fixed probability pattern (so the outputs compress like real ones, not
    like a constant) and uses context like the network (overlapping tiles, blending).
    """

    name = "no-op"
    default_threshold = 0.5
    clip_input = True
    needs_context = True
    device = "cpu"
    training_data = None

    def __init__(self) -> None:
        self._pattern: np.ndarray | None = None

    def fit(self, before_sample: np.ndarray, after_sample: np.ndarray) -> None:
        """Nothing to fit."""

    def predict_proba(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """The fixed pattern for every tile (a fresh array, as real engines return)."""
        n, _, h, w = before.shape
        if self._pattern is None or self._pattern.shape != (h, w):
            yy, xx = np.mgrid[0:h, 0:w]
            self._pattern = ((np.sin(xx / 9.0) * np.cos(yy / 7.0) + 1) / 2).astype(np.float32)
        return np.broadcast_to(self._pattern, (n, h, w)).copy()

    def describe(self) -> dict[str, Any]:
        """Name only."""
        return {"name": self.name}


def bench_host_ceiling(size: int, batch: int, workdir: str | None = None) -> dict[str, Any]:
    """The pipeline with :class:`NoOpEngine`: the most pairs/s reading, blending and writing sustain.

    A network cannot run faster end to end than this on the same machine: compare it with the
    network's pairs/s to see whether a run would be bound by the network or by the host.
    """
    from changeclip.pipeline import run_detection
    from changeclip.protocol import DetectParams

    with tempfile.TemporaryDirectory(prefix="changeclip-bench-", dir=workdir) as tmp:
        before, after = write_synthetic_pair(Path(tmp), size)
        params = DetectParams(before=str(before), after=str(after), output_dir=str(Path(tmp) / "out"),
                              engine="changeclip", weights=None, prompt_mode="none", tile=256, overlap=64,
                              batch_size=batch, value_range=[[0, 255]], overwrite=True)
        t0 = time.perf_counter()
        summary = run_detection(params, engine=NoOpEngine())
        dt = time.perf_counter() - t0
    tiles = summary["tiles"]["total"]
    timings = summary.get("timings_s") or {}
    return {"variant": "no-op engine", "path": "pipeline", "precision": "-", "batch": batch, "raster_px": size,
            "tiles": tiles, "seconds": dt, "mpix_per_s": size * size / 1e6 / dt, "pairs_per_s": tiles / dt,
            "tile_stage_pairs_per_s": tiles / timings["tiles"] if timings.get("tiles") else None,
            "timings_s": timings}


def bench_describe(size: int, clip: str = "vit-b-16", device: str = "cpu", workdir: str | None = None
                   ) -> dict[str, Any]:
    """``detect --polygons --describe`` with IR-MAD on a synthetic pair: polygons/s of the describe
    stage and its share of the whole detection.

    Args:
        size: raster side (px).
        clip: ``"vit-b-16"`` (CLIP ViT-B/16-shaped weights: the real cost) or ``"tiny"`` (quick profile).
        device: where CLIP runs.
    """
    from safetensors.torch import save_file

    from changeclip.model.tagger import random_clip_state_dict
    from changeclip.pipeline import run_detection
    from changeclip.protocol import DetectParams

    with tempfile.TemporaryDirectory(prefix="changeclip-bench-", dir=workdir) as tmp:
        before, after = write_synthetic_pair(Path(tmp), size)
        weights = Path(tmp) / "clip.safetensors"
        save_file(random_clip_state_dict(seed=0, tiny=clip != "vit-b-16"), str(weights))
        params = DetectParams(before=str(before), after=str(after), output_dir=str(Path(tmp) / "out"),
                              engine="irmad", device=device, polygons=True, describe=True,
                              describe_weights=str(weights), query="building", overwrite=True)
        t0 = time.perf_counter()
        summary = run_detection(params)
        dt = time.perf_counter() - t0
    polygons = summary["describe"]["polygons"]
    describe_s = summary["timings_s"].get("describing") or 0.0
    return {"clip": clip, "device": device, "raster_px": size, "polygons": polygons, "seconds": dt,
            "describe_s": describe_s, "polygons_per_s": polygons / describe_s if describe_s else None,
            "share_of_detection": describe_s / dt if dt else None}
