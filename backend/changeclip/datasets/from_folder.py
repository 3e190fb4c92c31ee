"""``changeclip dataset from-folder``: a dataset folder from LEVIR-CD / SYSU-CD style folders.

The source is found with the code ``eval`` uses (:func:`changeclip.evaluation.datasets.discover_levir`):
``A/B/label`` or ``time1/time2/label``, either directly in SRC or under ``train/``, ``val/``,
``test/``. Labels are read and their encoding decided by :mod:`changeclip.evaluation.labels`
(0/255 or 0/1 detected; ``any>0`` on request), then written as 0/1 with 255 = ignore.

Cutting (the official LEVIR-CD preparation, spec §4.2): an image side larger than ``tile`` is
cut into ``n = ceil(side / stride)`` tiles after mirror padding to ``tile + stride * (n - 1)``
(1024 px, tile 256, stride 192: padded to 1216, 6 x 6 = 36 tiles named ``<name>_<col>_<row>``,
1-based); labels in the padding are 255 (ignored), so mirrored pixels are never counted twice.
A side equal to ``tile`` is kept as is (SYSU-CD, already cut LEVIR-CD); a smaller one is
mirror-padded to ``tile``. Without a ``val/`` split, whole source images (never single tiles)
are moved to val by a seeded shuffle.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from osgeo import gdal

from changeclip.datasets.manifest import IGNORE, SPLITS, Manifest, SplitInfo, write_manifest
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
from changeclip.evaluation.datasets import LAYOUTS, Triplet, discover_levir
from changeclip.evaluation.labels import ENCODINGS, Encoding, detect_encoding, present_values, read_mask

gdal.UseExceptions()
log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]
LABEL_ENCODINGS = ENCODINGS
"""Values of ``--label-encoding`` (those of :mod:`changeclip.evaluation.labels`)."""
_SHOW = 5


@dataclass
class FolderDatasetOptions:
    """Every option of ``dataset from-folder``."""

    source: str
    output: str
    tile: int = 256
    stride: int = 192
    label_encoding: str = "auto"
    val_fraction: float = 0.15
    seed: int = 0
    gsd: float | None = None
    train_dataset: str | None = None
    overwrite: bool = False

    def validate(self) -> None:
        """Raises InputError naming a bad option."""
        check_tiling(self.tile, self.stride, self.val_fraction)
        if self.label_encoding not in LABEL_ENCODINGS:
            raise InputError(f"--label-encoding must be one of {', '.join(LABEL_ENCODINGS)}")
        if self.gsd is not None and not self.gsd > 0:
            raise InputError(f"--gsd must be a positive number of metres, got {self.gsd}")


@dataclass
class _Source:
    """One checked source triplet: its split, size and georeference."""

    split: str
    triplet: Triplet
    width: int
    height: int
    geotransform: tuple[float, ...] | None
    crs_wkt: str


def cut_plan(length: int, tile: int, stride: int) -> tuple[int, list[int]]:
    """Padding before the image and tile starts (in padded pixels) along one side of ``length`` px.

    Returns:
        ``(pad_before, starts)``; the padded side is ``starts[-1] + tile`` long.
    """
    if length == tile:
        return 0, [0]
    if length < tile:
        return (tile - length) // 2, [0]
    n = math.ceil(length / stride)
    padded = tile + stride * (n - 1)
    return (padded - length) // 2, [i * stride for i in range(n)]


def find_splits(root: Path) -> dict[str, list[Triplet]]:
    """The triplets of each split of SRC (``train`` only when SRC holds one layout directly)."""
    if not root.is_dir():
        raise InputError(f"source folder {root} does not exist or is not a folder")
    present = [s for s in SPLITS if (root / s).is_dir()]
    direct = any((root / name).is_dir() for layout in LAYOUTS for name in layout[:2])
    if present and not direct:
        if "train" not in present:
            raise InputError(f"{root} has {', '.join(p + '/' for p in present)} but no train/ split; the training "
                             "data must be in train/ (A/, B/, label/)")
        return {s: discover_levir(root / s) for s in present}
    return {"train": discover_levir(root)}


def _open_image(path: Path, role: str) -> gdal.Dataset:
    try:
        ds = gdal.Open(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot read {role} image {path}: {str(exc).strip()}") from None
    if ds.RasterCount < 3:
        raise InputError(f"{role} image {path} has {ds.RasterCount} band(s); training needs RGB images "
                         "(3 bands, 8-bit)")
    if ds.GetRasterBand(1).DataType != gdal.GDT_Byte:
        raise InputError(f"{role} image {path} is {gdal.GetDataTypeName(ds.GetRasterBand(1).DataType)}, not 8-bit; "
                         "convert it to 8-bit RGB first, or use 'dataset from-vectors' with --value-range")
    return ds


def _check_sources(splits: dict[str, list[Triplet]]) -> tuple[list[_Source], dict[Path, set[int]]]:
    """Open every image (sizes, bands) and read every label's values; errors name the file."""
    sources: list[_Source] = []
    values: dict[Path, set[int]] = {}
    for split, triplets in splits.items():
        for t in triplets:
            a = _open_image(t.before, "before")
            b = _open_image(t.after, "after")
            size = (a.RasterXSize, a.RasterYSize)
            if (b.RasterXSize, b.RasterYSize) != size:
                raise InputError(f"after image {t.after} is {b.RasterXSize} x {b.RasterYSize} px but before image "
                                 f"{t.before} is {size[0]} x {size[1]}; both dates must have the same size")
            mask = read_mask(t.label)
            if mask.values.shape != (size[1], size[0]):
                raise InputError(f"label {t.label} is {mask.values.shape[1]} x {mask.values.shape[0]} px but its images "
                                 f"are {size[0]} x {size[1]}; labels must have the size of their images")
            values[t.label] = present_values(mask)
            gt = a.GetGeoTransform(can_return_null=True)
            sources.append(_Source(split, t, size[0], size[1], tuple(gt) if gt else None, a.GetProjection() or ""))
    return sources, values


def _check_one_encoding(values: dict[Path, set[int]]) -> None:
    """``auto`` decides one encoding for the whole set: refuse a set that mixes 0/255 and 0/1 files.

    Read as one encoding, one kind would lose its change pixels (0/1 with 255 = ignore drops every
    change of the 0/255 files). Where some files hold 0, 1 and 255 (0/1 with 255 = ignore, as
    SYSU-style sparse labels do), files with only 0 and 255 are read that way too, with a warning.
    """
    ones = [p for p, v in values.items() if 1 in v and 255 not in v]
    whites = [p for p, v in values.items() if 255 in v and 1 not in v]
    both = [p for p, v in values.items() if 1 in v and 255 in v]
    if ones and whites and not both:
        raise InputError(f"the labels mix two encodings: {len(whites)} file(s) mark change with 255 (e.g. {whites[0]}) "
                         f"and {len(ones)} with 1 (e.g. {ones[0]}); read as one encoding, the changes of one kind "
                         "would be lost. Convert them to one encoding, or pass --label-encoding any>0 if every "
                         "non-zero value means change")
    if both and whites:
        log.warning("%d label file(s) hold only 0 and 255 (e.g. %s) while %d hold 0, 1 and 255 (e.g. %s): read as "
                    "0/1 with 255 = ignore, so those files contribute no change pixel; pass --label-encoding any>0 "
                    "if 255 means change there", len(whites), whites[0], len(both), both[0])


def _encoding(requested: str, values: dict[Path, set[int]], root: Path) -> Encoding:
    """The label encoding of the whole set; errors name the offending files."""
    if requested == "any>0":
        bad = {p: v for p, v in values.items() if any(x < 0 for x in v)}
    else:
        allowed = {0, 1, 255} if requested == "auto" else {0, 255 if requested == "0/255" else 1}
        bad = {p: v for p, v in values.items() if not v <= allowed}
    if bad:
        shown = "; ".join(f"{p} has {sorted(v)[:8]}" for p, v in list(bad.items())[:_SHOW])
        more = f" and {len(bad) - _SHOW} more files" if len(bad) > _SHOW else ""
        hint = ("pass --label-encoding any>0 if every non-zero value means change" if requested != "any>0"
                else "labels must not be negative")
        raise InputError(f"label values fit no encoding ({'0/255 or 0/1' if requested == 'auto' else requested}): "
                         f"{shown}{more}; {hint}")
    if requested == "auto":
        _check_one_encoding(values)
    union: set[int] = set().union(*values.values()) if values else set()
    enc = detect_encoding(union, requested, what=f"labels of {root}")
    if enc.name == "all-zero" or (enc.name == "any>0" and not any(x > 0 for x in union)):
        raise InputError(f"all {len(values)} labels of {root} are 0 (no change pixel anywhere): a model cannot learn "
                         "change from them; check the label folder (empty masks, or masks saved blank)")
    return enc


def _val_from_train(sources: list[_Source], fraction: float, seed: int) -> int:
    """Move whole source images from train to val (seeded); returns how many moved."""
    train = [s for s in sources if s.split == "train"]
    if len(train) < 2:
        raise InputError(f"the source has {len(train)} image pair(s) and no val/ split, so no val split can be made; "
                         "add a val/ folder (A/, B/, label/) or more images")
    n_val = min(len(train) - 1, max(1, round(fraction * len(train))))
    for i in np.random.default_rng(seed).permutation(len(train))[:n_val]:
        train[int(i)].split = "val"
    return n_val


def _read_rgb(path: Path) -> np.ndarray:
    return gdal.Open(str(path)).ReadAsArray(band_list=[1, 2, 3]).astype(np.uint8)


def _tiles_of(src: _Source, enc: Encoding, opts: FolderDatasetOptions
              ) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, tuple[float, ...] | None]]:
    """Cut one source triplet: ``[(name, before, after, label, geotransform), ...]``."""
    t, tile = src.triplet, opts.tile
    change, valid = enc.decode(read_mask(t.label))
    label = np.full(change.shape, IGNORE, dtype=np.uint8)
    label[valid] = 0
    label[valid & change] = 1
    a, b = _read_rgb(t.before), _read_rgb(t.after)
    pad_x, xs = cut_plan(src.width, tile, opts.stride)
    pad_y, ys = cut_plan(src.height, tile, opts.stride)
    ext_w, ext_h = xs[-1] + tile, ys[-1] + tile
    pads = ((pad_y, ext_h - src.height - pad_y), (pad_x, ext_w - src.width - pad_x))
    if any(p for pair in pads for p in pair):
        a = np.pad(a, ((0, 0), *pads), mode="symmetric")
        b = np.pad(b, ((0, 0), *pads), mode="symmetric")
        label = np.pad(label, pads, mode="constant", constant_values=IGNORE)
    cut = len(xs) > 1 or len(ys) > 1
    out = []
    for r, y in enumerate(ys):
        for c, x in enumerate(xs):
            name = f"{t.name}_{c + 1}_{r + 1}" if cut else t.name
            gt = None
            if src.geotransform is not None:
                x0, dx, rx, y0, ry, dy = src.geotransform
                px, py = x - pad_x, y - pad_y
                gt = (x0 + px * dx + py * rx, dx, rx, y0 + px * ry + py * dy, ry, dy)
            sl = (slice(y, y + tile), slice(x, x + tile))
            out.append((name, a[:, sl[0], sl[1]], b[:, sl[0], sl[1]], label[sl], gt))
    return out


def _folder_digest(sources: list[_Source], root: Path) -> str:
    """SHA-256 over ``relative path + file SHA-256`` of every file used, sorted by path."""
    lines = []
    for s in sources:
        for p in (s.triplet.before, s.triplet.after, s.triplet.label):
            lines.append(f"{p.relative_to(root).as_posix()} {file_sha256(p)}\n")
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


def make_dataset(opts: FolderDatasetOptions, progress: ProgressFn | None = None) -> Manifest:
    """Build the dataset folder ``opts.output`` from ``opts.source``; returns its manifest.

    Raises:
        InputError: a bad layout, image, label or option, or an existing output without overwrite.
    """
    report = progress or (lambda stage, done, total: None)
    opts.validate()
    root = Path(opts.source)
    final = Path(opts.output)
    check_output(final, opts.overwrite)
    split_triplets = find_splits(root)
    sources, values = _check_sources(split_triplets)
    enc = _encoding(opts.label_encoding, values, root)
    log.info("label encoding of %s: %s (%s), values found %s", root, enc.name, enc.how, enc.values_found)
    made_val = 0 if "val" in split_triplets else _val_from_train(sources, opts.val_fraction, opts.seed)
    georef = all(s.geotransform is not None and s.crs_wkt for s in sources)
    fmt = "tif" if georef else "png"
    crs_set = {s.crs_wkt for s in sources} if georef else set()
    crs_wkt = next(iter(crs_set)) if len(crs_set) == 1 else None
    infos = {s: SplitInfo(tiles=[], pixels={}) for s in SPLITS if any(x.split == s for x in sources)}
    with StagedFolder(final, opts.overwrite) as stage:
        dirs = {s: stage.split_dirs(s) for s in infos}
        report("tiles", 0, len(sources))
        for i, src in enumerate(sources):
            d = dirs[src.split]
            for name, a, b, label, gt in _tiles_of(src, enc, opts):
                write_tile(d["A"] / f"{name}.{fmt}", a, gt, src.crs_wkt)
                write_tile(d["B"] / f"{name}.{fmt}", b, gt, src.crs_wkt)
                write_tile(d["label"] / f"{name}.{fmt}", label, gt, src.crs_wkt, label=True)
                infos[src.split].tiles.append(name)
                add_histogram(infos[src.split].pixels, label_histogram(label))
            report("tiles", i + 1, len(sources))
        options: dict[str, Any] = {
            "tile": opts.tile, "stride": opts.stride, "seed": opts.seed, "val_fraction": opts.val_fraction,
            "source_label_encoding": enc.describe(), "source_splits": sorted(split_triplets),
            "val_made_from_train": made_val,
            "source_images": {s: sum(1 for x in sources if x.split == s) for s in infos},
            "cut": "mirror padding to tile + stride * (ceil(side / stride) - 1), labels 255 in the padding",
        }
        manifest = Manifest(
            root=stage.path, kind="from-folder", tile_size=opts.tile, image_format=fmt, splits=infos,
            sources=[{"role": "folder", "path": str(root.resolve()), "sha256": _folder_digest(sources, root),
                      "files": 3 * len(sources)}],
            crs_wkt=crs_wkt, gsd_m=opts.gsd, train_dataset=opts.train_dataset, bands=[1, 2, 3], value_range=None,
            options=options, **maker_stamp("from-folder"))
        write_manifest(manifest)
        stage.commit()
    manifest.root = final
    return manifest
