"""``changeclip dataset from-vectors``: training tiles from two rasters and a layer of change polygons.

Steps:

1. Check every option, the output folder, both rasters (opened and aligned by
   :func:`changeclip.raster.pair.open_pair`, the code ``detect`` uses), the change layer and
   the AOI (polygons, CRS, inside the overlap, AOI covering a change): all before any tile is cut.
2. Fix the radiometric scaling exactly as ``detect`` does (user range, 8-bit, or the 2–98 %
   percentiles of both dates) and read tiles through detect's :class:`changeclip.prefetch.TileSource`
   (invalid pixels filled, reflect padding past the overlap), rounded to 8-bit RGB.
3. Labels per tile: 255 everywhere, 0 inside the labelled area (AOI polygons, else the overlap)
   where both dates are valid, 1 where a change polygon also covers the pixel (``gdal.RasterizeLayer``).
4. Tiles live in spatial blocks (:mod:`changeclip.datasets.splits`); whole blocks go to ``val``.
   ``--keep-empty`` thins the *training* tiles without change; validation keeps all of its tiles
   so its scores reflect the real share of unchanged land.
5. Tiles, then ``dataset.json``, are written into a staging folder that is renamed at the end.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from osgeo import gdal

from changeclip.datasets import splits, vectors
from changeclip.datasets.info import crs_name
from changeclip.datasets.manifest import IGNORE, Manifest, SplitInfo, write_manifest
from changeclip.datasets.writing import (
    StagedFolder,
    add_histogram,
    check_output,
    check_tiling,
    file_sha256,
    label_histogram,
    maker_stamp,
    write_tile,
)
from changeclip.errors import InputError
from changeclip.prefetch import TileSource
from changeclip.protocol import GRIDS, DatasetParams
from changeclip.raster import align, scaling
from changeclip.raster.area import ground_pixel_size_m
from changeclip.raster.pair import AlignedPair, open_pair

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]

DEFAULT_BLOCK_TILES = 4
"""Without ``--val-block-size`` a block is this many tiles wide."""


def check_options(opts: DatasetParams) -> None:
    """Check the numeric and choice options (the rules and wording of the command line's options).

    A server job has passed :meth:`DatasetParams.validate` already; the command line builds
    :class:`DatasetParams` from its options and relies on this check alone.

    Raises:
        InputError: naming the option, the value received and the accepted range.
    """
    if len(opts.bands) != 3:
        raise InputError(f"--bands needs three band numbers (used as R,G,B), got {opts.bands}")
    if opts.grid not in GRIDS:
        raise InputError(f"--grid must be one of {', '.join(GRIDS)}, got {opts.grid!r}")
    if opts.grid == "custom" and (not opts.target_crs or not opts.resolution or opts.resolution <= 0):
        raise InputError("--grid custom needs --target-crs and a positive --resolution")
    check_tiling(opts.tile, opts.stride, opts.val_fraction)
    if opts.val_block_size is not None and not opts.val_block_size > 0:
        raise InputError(f"--val-block-size must be a positive number of metres, got {opts.val_block_size}")
    if not 0 <= opts.keep_empty <= 1:
        raise InputError(f"--keep-empty must be between 0 and 1, got {opts.keep_empty}")
    if opts.value_range is not None and len(opts.value_range) not in (1, 3):
        raise InputError("--value-range needs one MIN:MAX for all bands or one per band (three)")


@dataclass
class _Plan:
    """Everything decided before the first tile is cut."""

    pair: AlignedPair
    area: align.Window
    changes: vectors.PolygonLayer
    aoi: vectors.PolygonLayer | None
    gsd_m: float
    block_px: int
    blocks: list[splits.Block]
    warnings: list[str]


@dataclass
class _TileRecord:
    name: str
    block: str
    pixels: dict[str, int]


def make_dataset(opts: DatasetParams, progress: ProgressFn | None = None) -> Manifest:
    """Build the dataset folder ``opts.output_dir``; returns its manifest.

    ``opts`` holds every option of ``dataset from-vectors`` (the job parameters of a ``dataset``
    job, see ``docs/training-data.md``); they are checked by :func:`check_options`.

    Raises:
        InputError: any bad input or option (before any tile is written where it can be known),
            or a result that cannot train (empty validation split, no change pixel).
    """
    report = progress or (lambda stage, done, total: None)
    check_options(opts)
    final = Path(opts.output_dir)
    check_output(final, opts.overwrite)
    plan = _plan(opts)
    scaler = _scaler(opts, plan.pair)
    source = TileSource(plan.area, scaler, True, opts.tile, (plan.pair.before, plan.pair.after),
                        plan.pair.reopen or (lambda: (plan.pair.before, plan.pair.after)))
    positions = [(b, xy) for b in plan.blocks for xy in splits.tiles_in_block(b, opts.tile, opts.stride)]
    with StagedFolder(final, opts.overwrite) as stage:
        records = _cut_tiles(opts, plan, source, positions, stage, report)
        split_of = _assign_splits(opts, plan, records, stage)
        manifest = _manifest(opts, plan, scaler, records, split_of, stage.path)
        write_manifest(manifest)
        stage.commit()
    manifest.root = final
    return manifest


def _plan(opts: DatasetParams) -> _Plan:
    """Open and check every input; decide the labelled area, GSD and blocks."""
    pair = open_pair(opts.before, opts.after, opts.bands, opts.grid, opts.target_crs, opts.resolution)
    grid = pair.grid
    if not grid.wkt:
        raise InputError("the rasters have no coordinate reference system, so change polygons cannot be placed on "
                         "them; assign the right CRS to both (gdal_edit.py -a_srs EPSG:XXXX FILE)")
    changes = vectors.open_polygon_layer(opts.changes, "changes", "--layer", grid, opts.layer, opts.where)
    aoi = (vectors.open_polygon_layer(opts.aoi, "AOI", "--aoi-layer", grid, opts.aoi_layer)
           if opts.aoi else None)
    win = pair.window
    x0, dx, _, y0, _, dy = grid.geotransform
    wx = sorted((x0 + win.xoff * dx, x0 + (win.xoff + win.width) * dx))
    wy = sorted((y0 + win.yoff * dy, y0 + (win.yoff + win.height) * dy))
    overlap = vectors.rectangle(wx[0], wy[0], wx[1], wy[1])
    inside = changes.count_intersecting(overlap)
    grid_crs = crs_name(grid.wkt)
    if inside == 0:
        cx = changes.bounds()
        raise InputError(
            f"none of the {changes.count} change polygons of {opts.changes!r} lies inside the overlap of the two "
            f"rasters (overlap {wx[0]:.1f}, {wy[0]:.1f} – {wx[1]:.1f}, {wy[1]:.1f}; polygons {cx[0]:.1f}, "
            f"{cx[1]:.1f} – {cx[2]:.1f}, {cx[3]:.1f}, both in {grid_crs}); check that the layer's CRS is right "
            "and that it belongs to these rasters")
    warnings = list(pair.warnings)
    if inside < changes.count:
        warnings.append(f"{changes.count - inside} of {changes.count} change polygons lie outside the overlap of "
                        "the two rasters and are not used")
    area = win
    if aoi is not None:
        aoi_geoms = aoi.geometries()
        if not any(g.Intersects(overlap) for g in aoi_geoms):
            raise InputError(f"the AOI {opts.aoi!r} does not overlap the two rasters' overlap; give an AOI inside it")
        union = aoi_geoms[0]
        for g in aoi_geoms[1:]:
            union = union.Union(g)
        if changes.count_intersecting(union.Intersection(overlap)) == 0:
            raise InputError(f"the AOI {opts.aoi!r} covers none of the change polygons; the labelled area must "
                             "contain the changes you drew: enlarge the AOI or check both layers' CRSs")
        area = _aoi_window(grid, win, aoi.bounds(), opts.tile)
    gsd = ground_pixel_size_m(grid, area.xoff + area.width / 2, area.yoff + area.height / 2)
    if gsd is None:
        raise InputError(f"the ground pixel size of the grid ({grid_crs}) cannot be computed; check its CRS")
    block_m = opts.val_block_size if opts.val_block_size is not None else DEFAULT_BLOCK_TILES * opts.tile * gsd
    block_px = int(round(block_m / gsd))
    if block_px < opts.tile:
        raise InputError(f"--val-block-size {block_m:g} m is smaller than one tile ({opts.tile} px x {gsd:.3g} m = "
                         f"{opts.tile * gsd:.4g} m); give at least {math.ceil(opts.tile * gsd)}")
    blocks = splits.blocks(area.width, area.height, block_px, opts.tile)
    if len(blocks) < 2:
        raise InputError(
            f"the labelled area ({area.width} x {area.height} px, {area.width * gsd:.0f} x {area.height * gsd:.0f} m) "
            f"holds a single validation block of {block_m:g} m, so the val split would be empty; lower "
            f"--val-block-size (at least {math.ceil(opts.tile * gsd)} m, one tile) or label a larger area")
    for w in warnings[len(pair.warnings):]:
        log.warning("%s", w)
    return _Plan(pair, area, changes, aoi, gsd, block_px, blocks, warnings)


def _aoi_window(grid: align.Grid, win: align.Window, bounds: tuple[float, float, float, float],
                tile: int) -> align.Window:
    """The part of the overlap window covered by the AOI's bounding box, grown to one tile if possible."""
    x0, dx, _, y0, _, dy = grid.geotransform
    px = sorted(((bounds[0] - x0) / dx, (bounds[2] - x0) / dx))
    py = sorted(((bounds[1] - y0) / dy, (bounds[3] - y0) / dy))
    ix0, ix1 = max(win.xoff, math.floor(px[0])), min(win.xoff + win.width, math.ceil(px[1]))
    iy0, iy1 = max(win.yoff, math.floor(py[0])), min(win.yoff + win.height, math.ceil(py[1]))

    def grow(lo: int, hi: int, wlo: int, whi: int) -> tuple[int, int]:
        need = min(tile, whi - wlo) - (hi - lo)
        if need <= 0:
            return lo, hi
        lo = max(wlo, lo - need // 2)
        hi = lo + min(tile, whi - wlo)
        if hi > whi:
            lo, hi = whi - (hi - lo), whi
        return lo, hi

    ix0, ix1 = grow(ix0, ix1, win.xoff, win.xoff + win.width)
    iy0, iy1 = grow(iy0, iy1, win.yoff, win.yoff + win.height)
    return align.Window(ix0, iy0, ix1 - ix0, iy1 - iy0)


def _scaler(opts: DatasetParams, pair: AlignedPair) -> scaling.BandScaling:
    """The same scaling ``detect`` would use on this pair."""
    sample_b, sample_a, _ = scaling.collect_sample(pair.before, pair.after, pair.window)
    scaler = scaling.choose_scaling(opts.value_range, pair.eight_bit, sample_b, sample_a)
    log.info("radiometric scaling (%s): low %s high %s", scaler.source, scaler.low.round(3).tolist(),
             scaler.high.round(3).tolist())
    return scaler


def _tile_geotransform(grid: align.Grid, gx: int, gy: int) -> tuple[float, ...]:
    x0, dx, rx, y0, ry, dy = grid.geotransform
    return (x0 + gx * dx + gy * rx, dx, rx, y0 + gx * ry + gy * dy, ry, dy)


def _cut_tiles(opts: DatasetParams, plan: _Plan, source: TileSource,
               positions: Sequence[tuple[splits.Block, tuple[int, int]]], stage: StagedFolder,
               report: ProgressFn) -> list[_TileRecord]:
    """Read, label and write every tile with a labelled pixel into ``train``; returns their records."""
    grid, area, tile = plan.pair.grid, plan.area, opts.tile
    dirs = stage.split_dirs("train")
    records: list[_TileRecord] = []
    report("tiles", 0, len(positions))
    for i, (block, (x, y)) in enumerate(positions):
        read = source.read(x, y)
        report("tiles", i + 1, len(positions))
        if read is None:
            continue
        before, after, valid = read
        gx, gy = area.xoff + x, area.yoff + y
        gt = _tile_geotransform(grid, gx, gy)
        labelled = valid.copy()
        if plan.aoi is not None:
            labelled &= vectors.rasterize(plan.aoi, gt, grid.wkt, tile, tile) > 0
        if not labelled.any():
            continue
        change = vectors.rasterize(plan.changes, gt, grid.wkt, tile, tile, opts.all_touched) > 0
        label = np.full((tile, tile), IGNORE, dtype=np.uint8)
        label[labelled] = 0
        label[labelled & change] = 1
        name = f"x{gx:06d}_y{gy:06d}"
        write_tile(dirs["A"] / f"{name}.tif", _to_uint8(before), gt, grid.wkt)
        write_tile(dirs["B"] / f"{name}.tif", _to_uint8(after), gt, grid.wkt)
        write_tile(dirs["label"] / f"{name}.tif", label, gt, grid.wkt, label=True)
        records.append(_TileRecord(name, block.key, label_histogram(label)))
    if not records:
        raise InputError("no tile holds a pixel that is labelled and valid in both rasters; check the nodata "
                         "values and the AOI")
    if sum(r.pixels["1"] for r in records) == 0:
        raise InputError(f"the {plan.changes.count} change polygons cover no pixel centre of the grid (they are "
                         f"smaller than a pixel of {plan.gsd_m:.3g} m, or lie where a date has nodata); pass "
                         "--all-touched to burn every pixel they touch")
    return records


def _to_uint8(tile: np.ndarray) -> np.ndarray:
    """Scaled 0..255 float tile to uint8 (round half to even, as numpy does)."""
    return np.rint(tile).astype(np.uint8)


def _assign_splits(opts: DatasetParams, plan: _Plan, records: list[_TileRecord],
                   stage: StagedFolder) -> dict[str, str]:
    """Move the tiles of validation blocks to ``val``, thin empty training tiles; tile name -> split."""
    counts: dict[str, int] = {}
    for r in records:
        counts[r.block] = counts.get(r.block, 0) + 1
    val_blocks = splits.choose_val_blocks(counts, opts.val_fraction, opts.seed)
    if not val_blocks:
        raise InputError(f"only one validation block ({plan.block_px * plan.gsd_m:.0f} m) holds labelled tiles, so "
                         "the val split would be empty; lower --val-block-size (at least "
                         f"{math.ceil(opts.tile * plan.gsd_m)} m) or label a larger area")
    split_of = {r.name: "val" if r.block in val_blocks else "train" for r in records}
    train_empty = [r.name for r in records if split_of[r.name] == "train" and r.pixels["1"] == 0]
    keep = round(opts.keep_empty * len(train_empty))
    rng = np.random.default_rng(opts.seed)
    kept = set(rng.choice(train_empty, size=keep, replace=False).tolist()) if keep else set()
    for name in train_empty:
        if name not in kept:
            split_of[name] = "drop"
    if not any(s == "train" for s in split_of.values()):
        raise InputError("no training tile is left: every training tile is without change and --keep-empty "
                         f"{opts.keep_empty:g} dropped them; raise --keep-empty")
    src = stage.split_dirs("train")
    dst = stage.split_dirs("val")
    for name, split in split_of.items():
        for sub in ("A", "B", "label"):
            path = src[sub] / f"{name}.tif"
            if split == "val":
                os.replace(path, dst[sub] / path.name)
            elif split == "drop":
                path.unlink()
    return split_of


def _file_entry(role: str, path: str, files: Sequence[str] | None) -> dict[str, Any]:
    """``role``, ``path`` and ``sha256`` of a source, plus ``sidecars`` (the SHA-256 of the other files GDAL
    reads with it: ``.dbf``/``.shx``/``.prj``, ``.hdr``, ``.aux.xml`` …); the hash is None for /vsi… paths."""
    if not os.path.isfile(path):
        return {"role": role, "path": path, "sha256": None}
    entry: dict[str, Any] = {"role": role, "path": os.path.abspath(path), "sha256": file_sha256(path)}
    others = {os.path.basename(f): file_sha256(f) for f in files or []
              if os.path.isfile(f) and os.path.abspath(f) != os.path.abspath(path)}
    if others:
        entry["sidecars"] = others
    return entry


def _raster_source(role: str, path: str) -> dict[str, Any]:
    ds = gdal.Open(path)
    grid = align.grid_of(ds)
    return {**_file_entry(role, path, ds.GetFileList()), "crs": crs_name(grid.wkt), "size": [grid.width, grid.height],
            "gsd_m": ground_pixel_size_m(grid, grid.width / 2, grid.height / 2)}


def _vector_source(role: str, layer: vectors.PolygonLayer, where: str | None) -> dict[str, Any]:
    files = gdal.OpenEx(layer.path, gdal.OF_VECTOR).GetFileList()
    entry = {**_file_entry(role, layer.path, files), "crs": crs_name(layer.crs_wkt), "layer": layer.layer_name,
             "polygons": layer.count}
    if where:
        entry["where"] = where
    return entry


def _manifest(opts: DatasetParams, plan: _Plan, scaler: scaling.BandScaling, records: list[_TileRecord],
              split_of: dict[str, str], root: Path) -> Manifest:
    split_infos = {"train": SplitInfo(tiles=[], pixels={}), "val": SplitInfo(tiles=[], pixels={})}
    for r in records:
        split = split_of[r.name]
        if split in split_infos:
            split_infos[split].tiles.append(r.name)
            add_histogram(split_infos[split].pixels, r.pixels)
    sources = [_raster_source("before", opts.before), _raster_source("after", opts.after),
               _vector_source("changes", plan.changes, opts.where)]
    if plan.aoi is not None:
        sources.append(_vector_source("aoi", plan.aoi, None))
    value_range = None if scaler.source == "8-bit" else [[float(lo), float(hi)]
                                                         for lo, hi in zip(scaler.low, scaler.high, strict=True)]
    area = plan.area
    options = {
        "layer": plan.changes.layer_name, "where": opts.where, "aoi_layer": plan.aoi.layer_name if plan.aoi else None,
        "grid": opts.grid, "target_crs": opts.target_crs, "resolution": opts.resolution, "tile": opts.tile,
        "stride": opts.stride, "val_fraction": opts.val_fraction, "val_block_size_m": plan.block_px * plan.gsd_m,
        "val_block_size_px": plan.block_px, "keep_empty": opts.keep_empty, "all_touched": opts.all_touched,
        "seed": opts.seed, "scaling": scaler.to_dict(), "grid_geotransform": list(plan.pair.grid.geotransform),
        "labelled_window": {"xoff": area.xoff, "yoff": area.yoff, "width": area.width, "height": area.height},
        "blocks": {"total": len(plan.blocks),
                   "val": sorted({r.block for r in records if split_of[r.name] == "val"})},
        "dropped_empty_tiles": sum(1 for s in split_of.values() if s == "drop"),
        "warnings": plan.warnings,
    }
    return Manifest(
        root=root, kind="from-vectors", tile_size=opts.tile, image_format="tif", splits=split_infos,
        sources=sources, crs_wkt=plan.pair.grid.wkt, gsd_m=plan.gsd_m, train_dataset=opts.train_dataset,
        bands=list(opts.bands), value_range=value_range, options=options,
        **maker_stamp("from-vectors"))
