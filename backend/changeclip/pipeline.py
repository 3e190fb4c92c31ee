"""The one core call: two georeferenced rasters in, georeferenced change layers out.

:func:`run_detection` is what the command line, the job server and therefore the QGIS plugin
run. Steps (reported through ``progress(stage, done, total)`` with the stages of
``protocol.STAGES``):

1. *preparing*: validate parameters, then :func:`changeclip.preflight.preflight` (the same
   file checks as the job server's: missing inputs, an existing output without ``overwrite``
   or an unwritable folder stop here, before any work), open both rasters, check bands and
   CRSs, pick the reference grid, warp the other raster onto it (a streaming VRT) and compute
   the processed window (the intersection). What an output may replace is
   :mod:`changeclip.output_safety`'s rule. Then the output folders are created and locked
   (:mod:`changeclip.folder_lock`: a second run on the same folder stops here) and stale
   temporary files of an interrupted earlier run are removed.
2. *loading_model*: build the engine (changeclip loads weights through the model cache); warn
   when the grid's ground pixel size is 2x or more from the weights' training GSD.
3. *scaling*: one fixed per-band range for both dates from a nodata-free sample.
4. *fitting*: the engine's global fit (IR-MAD's canonical correlation; no-op for changeclip).
5. *tiles*: stream tiles in row order, batched; blend overlapping probabilities; write finished
   output rows straight to temporary GeoTIFFs. ``is_cancelled()`` is polled before every batch.
6. *polygons* (optional), *finalising* (COGs, summary.json, renames to the final names all or
   nothing: :meth:`~changeclip.raster.outputs.TempFiles.publish`), *done*.

Any failure or cancellation removes every temporary file; nothing appears under a final name
before all outputs are complete.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
from osgeo import gdal

from changeclip import __version__, output_safety, prefetch
from changeclip.engines import ChangeEngine, build_engine
from changeclip.errors import InputError, JobCancelled
from changeclip.folder_lock import FolderLocks
from changeclip.inference.cache import ModelCache
from changeclip.prefetch import BatchReader, TileSource
from changeclip.preflight import confirm_writable, preflight
from changeclip.protocol import (
    MASK_NAME,
    MATCHING_MASK_NAME,
    MATCHING_POLYGONS_NAME,
    POLYGONS_NAME,
    PROBABILITY_NAME,
    SUMMARY_NAME,
    DetectParams,
    ParamError,
)
from changeclip.raster import align, scaling
from changeclip.raster.area import ground_pixel_size_m, row_pixel_areas
from changeclip.raster.outputs import (
    ChangeRasterWriter,
    PublishError,
    TempFiles,
    polygonize,
    remove_empty_dirs,
    to_cog,
    write_json,
)
from changeclip.raster.pair import AlignedPair as Inputs
from changeclip.raster.pair import open_pair
from changeclip.raster.tiling import BlendAccumulator, tile_starts
from changeclip.writeback import Writeback

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]
CancelFn = Callable[[], bool]
PREFETCH_THREADS: int | None = None
"""Reader threads that read the next tile batch while the engine computes the current one
(None: :data:`changeclip.prefetch.DEFAULT_THREADS`; 0: no overlap, every read on the main thread).
An internal switch (tests compare both); outputs are identical either way."""
WRITE_THREAD = True
"""Blend and write finished tiles on a writer thread while the engine computes the next batch
(:mod:`changeclip.writeback`); False does it on the main thread. An internal switch (tests compare
both); outputs are identical either way."""
_GDAL_CACHE_BYTES = 256 * 1024 * 1024


_DISK_FULL_BYTES = 1 << 20
"""An output disk with less free space than this (1 MiB) right after a failed write was full."""


def run_detection(params: DetectParams, progress: ProgressFn | None = None,
                  is_cancelled: CancelFn | None = None, cache: ModelCache | None = None,
                  engine: ChangeEngine | None = None, describe_cache: ModelCache | None = None) -> dict[str, Any]:
    """Run change detection for one job and write its outputs.

    Args:
        params: Every option of the run (validated here again).
        progress: Called as ``progress(stage, done, total)``.
        is_cancelled: Polled before every tile batch; True stops the run.
        cache: Model cache shared between jobs (None: load the model for this run only).
        engine: Use this engine instead of building the one ``params`` names (benchmarks and
            tests: e.g. the no-op engine that measures the pipeline's own ceiling).
        describe_cache: Cache of describe CLIP encoders (and their embedded vocabularies) shared
            between jobs (None: load CLIP for this run only); see :mod:`changeclip.describe.loading`.

    Returns:
        The summary (also written to ``summary.json``), with every ``protocol.SUMMARY_KEYS`` key.

    Raises:
        InputError: Bad parameters, inputs or output location, or writing failed (disk full).
        ModelError: Weights missing, unreadable or of another model.
        JobCancelled: ``is_cancelled()`` returned True; partial outputs were removed.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    report = progress or (lambda stage, done, total: None)
    cancelled = is_cancelled or (lambda: False)
    _limit_gdal_cache()

    report("preparing", 0, 1)
    try:
        params.validate()
    except ParamError as exc:
        raise InputError(str(exc)) from None
    paths = params.output_paths()
    created_dirs = preflight(params)
    confirm_writable(params, created_dirs)
    inputs = _prepare_inputs(params)
    timings["preparing"] = time.perf_counter() - started

    temp = TempFiles()
    locks = FolderLocks(os.path.dirname(os.path.abspath(p)) for p in paths.values() if p)
    try:
        for d in created_dirs:  # made now so that they can be locked; removed again if the run fails
            os.makedirs(d, exist_ok=True)
        locks.acquire()
        locks.remove_stale()
        t = time.perf_counter()
        report("loading_model", 0, 1)
        if engine is None:
            engine = build_engine(params, cache)
        log.info("engine: %s on %s", engine.name, engine.device)
        scale = _scale_warning(inputs, engine)
        if scale:
            log.warning("%s", scale)
            inputs.warnings.append(scale)
        words = _load_describer(params, engine, describe_cache) if params.describe else None
        timings["loading_model"] = time.perf_counter() - t
        _check_cancel(cancelled)

        t = time.perf_counter()
        report("scaling", 0, 1)
        sample_b, sample_a, _ = scaling.collect_sample(inputs.before, inputs.after, inputs.window)
        scaler = scaling.choose_scaling(params.value_range, inputs.eight_bit, sample_b, sample_a)
        log.info("radiometric scaling (%s): low %s high %s", scaler.source, scaler.low.round(3).tolist(),
                 scaler.high.round(3).tolist())
        timings["scaling"] = time.perf_counter() - t

        t = time.perf_counter()
        report("fitting", 0, 1)
        engine.fit(scaler.apply_pixels(sample_b, engine.clip_input),
                   scaler.apply_pixels(sample_a, engine.clip_input))
        timings["fitting"] = time.perf_counter() - t
        _check_cancel(cancelled)
        if getattr(engine, "wants_calibration_tiles", False):
            t = time.perf_counter()
            report("calibrating", 0, 1)
            _calibrate(params, inputs, engine, scaler)
            timings["calibrating"] = time.perf_counter() - t
            _check_cancel(cancelled)

        threshold = params.threshold if params.threshold is not None else engine.default_threshold
        t = time.perf_counter()
        tmp_mask = temp.new(paths["mask"], "part")
        tmp_prob = temp.new(paths["probability"], "part")
        writer = ChangeRasterWriter(tmp_mask, tmp_prob, inputs.grid, params.probability_dtype, threshold)
        try:
            stats = _run_tiles(params, inputs, engine, scaler, writer, report, cancelled)
        finally:
            writer.close()
        timings["tiles"] = time.perf_counter() - t

        polygons_info = None
        if paths["polygons"]:
            t = time.perf_counter()
            report("polygons", 0, 100)
            tmp_gpkg = temp.new(paths["polygons"])
            polygons_info = polygonize(tmp_mask, tmp_gpkg, inputs.grid, params.min_area,
                                       lambda f: report("polygons", int(100 * f), 100), cancelled,
                                       attributes=_polygon_attributes(params, engine, threshold),
                                       probability_path=tmp_prob, min_pixels=params.min_pixels)
            polygons_info.update(min_pixels=params.min_pixels, min_area_m2=params.min_area)
            timings["polygons"] = time.perf_counter() - t

        describe_info = None
        matching_tmp: dict[str, str] = {}
        if words is not None:
            t = time.perf_counter()
            describe_info, matching_tmp = _describe(params, inputs, scaler, words, tmp_gpkg, tmp_mask, temp, paths,
                                                    report, cancelled)
            timings["describing"] = time.perf_counter() - t

        t = time.perf_counter()
        report("finalising", 0, 200)
        final_mask = temp.new(paths["mask"])
        to_cog(tmp_mask, final_mask, "NEAREST", lambda f: report("finalising", int(100 * f), 200), cancelled)
        final_prob = temp.new(paths["probability"])
        to_cog(tmp_prob, final_prob, "AVERAGE", lambda f: report("finalising", 100 + int(100 * f), 200), cancelled)
        report("finalising", 200, 200)
        timings["finalising"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - started
        summary = _summary(params, inputs, engine, scaler, threshold, stats, polygons_info, paths,
                           {k: round(v, 3) for k, v in timings.items()})
        if describe_info is not None:
            summary["describe"] = describe_info
            summary["outputs"]["polygons_matching"] = paths["polygons_matching"]
            summary["outputs"]["mask_matching"] = paths["mask_matching"]
        tmp_summary = temp.new(paths["summary"])
        write_json(tmp_summary, summary)
        if cancelled():
            raise JobCancelled("the run was cancelled; no outputs were written")
        finals = [(final_mask, paths["mask"]), (final_prob, paths["probability"])]
        if paths["polygons"]:
            finals.append((tmp_gpkg, paths["polygons"]))
        finals += [(tmp, paths[key]) for key, tmp in matching_tmp.items()]
        temp.publish([*finals, (tmp_summary, paths["summary"])])
        temp.cleanup()
        if params.overwrite:
            _remove_stale_outputs(params.output_dir, paths)
        locks.release()
        report("done", 1, 1)
        log.info("engine %s: %.4f %% of the valid area changed (%.1f m²); outputs in %s", engine.name,
                 100 * (summary["changed_fraction"] or 0), summary["changed_area_m2"] or 0, params.output_dir)
        return summary
    except PublishError as exc:
        _abandon(temp, locks, created_dirs)
        raise InputError(f"writing the outputs failed: {exc.strerror}; check the folder, or choose another "
                         "output folder") from None
    except OSError as exc:
        full = _disk_full(paths) if exc.errno != errno.ENOSPC else ""  # measured before the cleanup frees space
        _abandon(temp, locks, created_dirs)
        if exc.errno == errno.ENOSPC or full:
            raise _disk_full_error(exc, full) from None
        raise InputError(f"writing the outputs failed ({exc.strerror or exc}); check the folder, or choose "
                         "another output folder; no output was written") from None
    except RuntimeError as exc:
        full = _disk_full(paths) if _raised_by_gdal(exc) else ""
        _abandon(temp, locks, created_dirs)
        if not _raised_by_gdal(exc):  # e.g. torch (CUDA out of memory): not a problem of the input files
            raise
        if full:
            raise _disk_full_error(exc, full) from None
        raise InputError(f"reading the rasters failed: {str(exc).strip()}; check that both files are "
                         "complete and readable") from None
    except BaseException:
        _abandon(temp, locks, created_dirs)
        raise


def _abandon(temp: TempFiles, locks: FolderLocks, created_dirs: list[str]) -> None:
    """After a failure or a cancellation: remove the temporary files, unlock, remove new empty folders."""
    temp.cleanup()
    locks.release()
    remove_empty_dirs(created_dirs)


_KNOWN_OUTPUTS = (MASK_NAME, PROBABILITY_NAME, POLYGONS_NAME, SUMMARY_NAME, MATCHING_POLYGONS_NAME, MATCHING_MASK_NAME)


def _remove_stale_outputs(output_dir: str, paths: dict[str, str | None]) -> None:
    """After an ``overwrite`` run: delete our own output names in ``output_dir`` that this run did
    not write (e.g. an earlier run's ``change_polygons.gpkg`` beside a run without polygons), so
    the folder never mixes two runs. Only regular files are removed (never links or folders)."""
    written = {os.path.normcase(os.path.abspath(p)) for p in paths.values() if p}
    for name in _KNOWN_OUTPUTS:
        path = os.path.join(output_dir, name)
        if os.path.normcase(os.path.abspath(path)) in written:
            continue
        for victim in (path, *(path + s for s in ("-wal", "-shm", "-journal", ".aux.xml"))):
            try:
                if stat.S_ISREG(os.lstat(victim).st_mode):
                    os.remove(victim)
                    log.info("removed %s, an output of an earlier run that this run did not make", victim)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("could not remove %s, an output of an earlier run: %s", victim, exc)


def _disk_full(paths: dict[str, str | None]) -> str:
    """``"<folder> has N bytes free"`` when the disk of an output folder is (nearly) full, else ``""``.

    GDAL reports a full disk in its own words ("TIFFAppendToStrip: Seek error", "Write error"),
    so a failed write is told apart by the free space left right after it failed.
    """
    for path in paths.values():
        folder = os.path.dirname(os.path.abspath(path)) if path else ""
        while folder and not os.path.isdir(folder):
            folder = os.path.dirname(folder)
        try:
            free = shutil.disk_usage(folder).free if folder else None
        except OSError:
            continue
        if free is not None and free < _DISK_FULL_BYTES:
            return f"{folder} has {free} bytes free"
    return ""


def _disk_full_error(exc: BaseException, full: str) -> InputError:
    said = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip()
    detail = "; ".join(part for part in (full, said if "no space left" not in said.lower() else "") if part)
    return InputError(f"writing the outputs failed (No space left on device{': ' + detail if detail else ''}); "
                      "the disk is full: free some space, or choose another output folder; no output was written")


def _raised_by_gdal(exc: BaseException) -> bool:
    """True when the innermost Python frame of ``exc`` is GDAL's bindings (a read or write error)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and f"{os.sep}osgeo{os.sep}" in frames[-1].filename


def _limit_gdal_cache() -> None:
    """Keep GDAL's block cache small (its default, 5 % of RAM, would make RSS grow with the raster)."""
    if "GDAL_CACHEMAX" not in os.environ and gdal.GetCacheMax() > _GDAL_CACHE_BYTES:
        gdal.SetCacheMax(_GDAL_CACHE_BYTES)


def _check_cancel(cancelled: CancelFn) -> None:
    if cancelled():
        raise JobCancelled("the run was cancelled; partial outputs were removed")


def _prepare_inputs(params: DetectParams) -> Inputs:
    """Open, check and align both rasters; no pixel is read except for validation."""
    outputs = output_safety.outputs_of(params)

    def not_outputs(role: str, files: list[str]) -> None:  # its .aux.xml, .ovr, a VRT's sources ...
        try:
            output_safety.check_not_input_files(outputs, files, role)
        except output_safety.OutputPathError as exc:
            raise InputError(str(exc)) from None

    return open_pair(params.before, params.after, params.bands, params.grid, params.target_crs, params.resolution,
                     check_files=not_outputs)


def _scale_warning(inputs: Inputs, engine: ChangeEngine) -> str | None:
    """A warning when the output grid's ground pixel size is far from the engine's training GSD."""
    if engine.training_data is None:
        return None
    from changeclip.weights.training_data import scale_warning  # here: the weights package imports torch

    win = inputs.window
    gsd = ground_pixel_size_m(inputs.grid, win.xoff + win.width / 2, win.yoff + win.height / 2)
    if gsd is None:
        return None
    epsg = inputs.grid.to_dict()["epsg"]
    return scale_warning(gsd, engine.training_data, align.pixel_size_in(inputs.grid, inputs.grid.wkt),
                         crs=f"EPSG:{epsg}" if epsg else None)


def _calibrate(params: DetectParams, inputs: Inputs, engine: ChangeEngine, scaler: scaling.BandScaling) -> None:
    """int8: hand the engine a few dozen tile pairs sampled (evenly, deterministically) from the
    valid overlap of the two rasters, scaled like the tiles of the run."""
    from changeclip.inference.int8 import CALIBRATION_TILES, HELD_OUT_TILES

    win, tile = inputs.window, params.tile
    step = max(1, tile - params.overlap)
    xs = list(range(0, max(1, win.width - tile + 1), step)) or [0]
    ys = list(range(0, max(1, win.height - tile + 1), step)) or [0]
    positions = [(x, y) for y in ys for x in xs]
    wanted = CALIBRATION_TILES + HELD_OUT_TILES
    order = np.random.default_rng(0).permutation(len(positions))
    source = TileSource(win, scaler, engine.clip_input, tile, (inputs.before, inputs.after),
                        lambda: (inputs.before, inputs.after))
    before, after = [], []
    for k in order:
        got = source.read(*positions[int(k)])
        if got is not None and got[2].mean() >= 0.5:  # mostly valid: nodata fill would skew the ranges
            before.append(got[0])
            after.append(got[1])
            if len(before) == wanted:
                break
    if not before:
        raise InputError("no tile of the overlapping area is at least half valid in both rasters, so int8 "
                         "cannot be calibrated; use --precision fp32")
    engine.calibrate(np.stack(before), np.stack(after))  # type: ignore[attr-defined]


def _run_tiles(params: DetectParams, inputs: Inputs, engine: ChangeEngine, scaler: scaling.BandScaling,
               writer: ChangeRasterWriter, report: ProgressFn, cancelled: CancelFn) -> dict[str, Any]:
    """Stream every tile of the window through the engine; write finished rows.

    For engines that use context the tile grid covers the window plus a margin of half the
    overlap on every side, filled by reflecting the raster at its edges: edge pixels then sit
    inside a tile, with mirrored context, instead of on its border.
    """
    win, grid = inputs.window, inputs.grid
    tile = params.tile
    overlap = params.overlap if engine.needs_context else 0
    margin = overlap // 2
    ext_w, ext_h = win.width + 2 * margin, win.height + 2 * margin
    per_row = len(tile_starts(ext_w, tile, overlap))
    acc = BlendAccumulator(ext_w, ext_h, tile, overlap, rows_ahead=-(-params.batch_size // per_row))
    total = len(acc.xs) * len(acc.ys)
    skipped = 0
    changed_px = valid_px = 0
    changed_m2 = valid_m2 = 0.0
    has_area = bool(grid.wkt)
    report("tiles", 0, total)

    def blend_and_write(item: tuple[list[tuple[int, int]], np.ndarray | None, np.ndarray | None, int]) -> None:
        """Add a batch's tiles, then write the rows finished before row ``until`` (writer thread)."""
        nonlocal changed_px, valid_px, changed_m2, valid_m2
        where, probs, tile_valid, until = item
        if probs is not None and tile_valid is not None:
            for (x0, y0), p, v in zip(where, probs, tile_valid, strict=True):
                acc.add(p, v, x0 + margin, y0 + margin)
        for row0, prob, valid in acc.release(until):
            lo, hi = max(row0, margin), min(row0 + len(prob), margin + win.height)
            if hi <= lo:
                continue
            rows = slice(lo - row0, hi - row0)
            cols = slice(margin, margin + win.width)
            y = win.yoff + lo - margin
            ch, va = writer.write_rows(prob[rows, cols], valid[rows, cols], win.xoff, y)
            changed_px += int(ch.sum())
            valid_px += int(va.sum())
            areas = row_pixel_areas(grid, y, len(ch))
            if areas is not None:
                changed_m2 += float(ch @ areas)
                valid_m2 += float(va @ areas)

    positions = [(x0 - margin, y0 - margin) for y0 in acc.ys for x0 in acc.xs]  # row-major
    batches = [positions[s:s + params.batch_size] for s in range(0, total, params.batch_size)]
    source = TileSource(win, scaler, engine.clip_input, tile, (inputs.before, inputs.after),
                        inputs.reopen or (lambda: (inputs.before, inputs.after)))
    threads = prefetch.DEFAULT_THREADS if PREFETCH_THREADS is None else PREFETCH_THREADS
    if inputs.reopen is None:
        threads = 0
    with BatchReader(source, batches, threads) as reader, \
            Writeback(blend_and_write, threaded=WRITE_THREAD) as back:
        for i in range(len(batches)):
            _check_cancel(cancelled)
            batch = reader.get(i)
            skipped += batch.skipped
            probs = None
            if batch.positions:
                probs = engine.predict_proba(batch.before, batch.after, batch.valid)
            nxt = (i + 1) * params.batch_size
            back.put((batch.positions, probs, batch.valid, positions[nxt][1] + margin if nxt < total else acc.height))
            del batch
            report("tiles", min(nxt, total), total)
        back.finish()

    if valid_px == 0:
        raise InputError("no pixel of the overlapping area is valid in both rasters; check nodata values "
                         "and masks")
    return {"tiles": {"size": tile, "overlap": overlap, "overlap_requested": params.overlap,
                      "edge_margin": margin, "batch_size": params.batch_size, "total": total,
                      "processed": total - skipped, "skipped_nodata": skipped},
            "changed_px": changed_px, "valid_px": valid_px,
            "changed_m2": changed_m2 if has_area else None, "valid_m2": valid_m2 if has_area else None}


def _load_describer(params: DetectParams, engine: ChangeEngine, cache: ModelCache | None) -> tuple[Any, Any]:
    """CLIP and the embedded vocabulary/query (a ``TextBank``) for describing, loaded with the model so
    that every error about them comes before any work; through ``cache`` when the server gives one."""
    from changeclip.describe.describer import load_words
    from changeclip.describe.loading import load_describer
    from changeclip.inference.devices import resolve_device

    if DESCRIBE_ENCODER is not None:
        return DESCRIBE_ENCODER, load_words(DESCRIBE_ENCODER, params.vocabulary, params.query)
    device = str(engine.device) if engine.name == "changeclip" else resolve_device(params.device)
    loaded = load_describer(params.describe_weights, params.describe_model, device, cache)
    return loaded.encoder, loaded.words(params.vocabulary, params.query)


def _describe(params: DetectParams, inputs: Inputs, scaler: scaling.BandScaling, words: tuple[Any, Any],
              gpkg: str, mask: str, temp: TempFiles, paths: dict[str, str | None], report: ProgressFn,
              cancelled: CancelFn) -> tuple[dict[str, Any], dict[str, str]]:
    """Stage *describing*: CLIP words for every polygon of the temporary GeoPackage.

    Args:
        words: ``(encoder, TextBank)`` from :func:`_load_describer`.

    Returns:
        The summary's ``describe`` part, and the matching outputs' temporary paths by output key
        (``polygons_matching``, ``mask_matching``; empty without ``keep_matching``) for the final renames.
    """
    from changeclip.describe.describer import DescribeSetup, describe_polygons, write_matching

    report("describing", 0, 1)
    encoder, bank = words
    setup = DescribeSetup(inputs.before, inputs.after, inputs.grid, inputs.window, scaler, encoder, bank,
                          params.query_threshold)
    info = describe_polygons(gpkg, setup, lambda done, total: report("describing", done, total), cancelled)
    if not (params.keep_matching and paths["polygons_matching"] and paths["mask_matching"]):
        return info, {}
    tmp_gpkg = temp.new(paths["polygons_matching"])
    tmp_plain = temp.new(paths["mask_matching"], "part")
    write_matching(gpkg, tmp_gpkg, mask, tmp_plain, inputs.grid)
    tmp_mask = temp.new(paths["mask_matching"])
    to_cog(tmp_plain, tmp_mask, "NEAREST", None, cancelled)
    return info, {"polygons_matching": tmp_gpkg, "mask_matching": tmp_mask}


DESCRIBE_ENCODER: Any = None
"""A :class:`changeclip.describe.encoder.ClipEncoder` to use instead of building one (tests: the
stand-in encoder that proves which class lands on which polygon)."""


def _polygon_attributes(params: DetectParams, engine: ChangeEngine, threshold: float) -> dict[str, str | float]:
    """The run's provenance, stored on every change polygon (see :func:`outputs.polygonize`)."""
    model = engine.describe()
    if engine.name == "changeclip":
        model_text = f"{model.get('variant', '')} ({os.path.basename(str(model.get('weights', '')))})"
        words = params.prompt.strip()
        prompt = {"none": "", "words": words}.get(params.prompt_mode, f"auto tags + {words}" if words else "auto tags")
    else:
        model_text, prompt = engine.name, ""
    return {"before": os.path.basename(params.before), "after": os.path.basename(params.after),
            "engine": engine.name, "model": model_text, "prompt": prompt, "threshold": float(threshold),
            "detected_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _summary(params: DetectParams, inputs: Inputs, engine: ChangeEngine, scaler: scaling.BandScaling,
             threshold: float, stats: dict[str, Any], polygons_info: dict[str, Any] | None,
             paths: dict[str, str | None], timings: dict[str, float]) -> dict[str, Any]:
    warnings = list(inputs.warnings)
    is_net = engine.name == "changeclip"
    if not is_net and params.weights:
        warnings.append("weights are not used by the irmad engine")
    if not is_net and params.prompt.strip():
        warnings.append("prompt words are not used by the irmad engine")
    valid_m2, changed_m2 = stats["valid_m2"], stats["changed_m2"]
    fraction = (changed_m2 / valid_m2 if valid_m2 else
                stats["changed_px"] / stats["valid_px"] if stats["valid_px"] else 0.0)
    win = inputs.window
    return {
        "engine": engine.name,
        "model": engine.describe(),
        "device": engine.device,
        "prompt_mode": params.prompt_mode if is_net else None,
        "prompt": params.prompt if is_net else None,
        "grid": {**inputs.grid.to_dict(), "reference": params.grid,
                 "window": {"xoff": win.xoff, "yoff": win.yoff, "width": win.width, "height": win.height}},
        "outputs": {"mask": paths["mask"], "probability": paths["probability"],
                    "probability_dtype": params.probability_dtype, "polygons": paths["polygons"],
                    "summary": paths["summary"]},
        "changed_area_m2": changed_m2,
        "changed_fraction": fraction,
        "valid_area_m2": valid_m2,
        "changed_pixels": stats["changed_px"],
        "valid_pixels": stats["valid_px"],
        "tiles": stats["tiles"],
        "timings_s": timings,
        "threshold": threshold,
        "backend_version": __version__,
        "inputs": {"before": params.before, "after": params.after, "bands": params.bands,
                   "warped": inputs.warped},
        "scaling": scaler.to_dict(),
        "polygons": polygons_info,
        "warnings": warnings,
    }
