"""The training-data folder: its layout and its ``dataset.json`` manifest.

This module is the one contract between the commands that *make* training data
(``changeclip dataset from-vectors``, ``changeclip dataset from-folder``) and the code that
*reads* it (``changeclip train``, ``changeclip dataset info``). Nothing else may assume the
layout.

Layout of a dataset folder::

    DATASET_DIR/
      dataset.json              the manifest below (written last, under a temporary name)
      train/A/<tile>.<ext>      before image of each tile  (3 bands, uint8 RGB)
      train/B/<tile>.<ext>      after image               (same size, same grid)
      train/label/<tile>.<ext>  label, uint8, one band: 0 = no change, 1 = change, 255 = ignore
      val/...                   the same three folders
      test/...                  optional, the same three folders

``<ext>`` is ``.tif`` (GeoTIFF, when the tiles are georeferenced) or ``.png``. A tile is
listed in ``dataset.json`` by its name without extension; the three files of a tile share it.
Images are already converted to 8-bit RGB (band mapping and value range applied by the
maker and recorded in the manifest), so a reader only decodes and normalises like ``detect``.

Manifest (``dataset.json``), ``format_version`` 1::

    {
      "format": "changeclip-dataset",
      "format_version": 1,
      "created_by": "changeclip 0.x dataset from-vectors",
      "created_at": "2026-11-29T12:00:00Z",
      "kind": "from-vectors" | "from-folder",
      "tile_size": 256,                       # every tile is tile_size x tile_size
      "image_format": "tif" | "png",
      "label_encoding": "0/1 with 255 = ignore",
      "sources": [{"role": "before"|"after"|"changes"|"aoi"|"folder", "path": "...", "sha256": "..."}],
      "crs_wkt": "..." | null,               # null for non-georeferenced tiles
      "gsd_m": 0.6 | null,                    # ground pixel size of the tiles, metres
      "train_dataset": "NAME" | null,         # a name for the imagery (written into trained weights)
      "bands": [1, 2, 3],                     # source bands used as R, G, B
      "value_range": [[lo, hi], ...] | null,  # per band, null = 8-bit input used as is
      "options": {...},                       # the maker's options, for the record
      "splits": {
        "train": {"tiles": ["t000001", ...], "pixels": {"0": n0, "1": n1, "255": n255}},
        "val":   {"tiles": [...], "pixels": {...}},
        "test":  {"tiles": [...], "pixels": {...}}      # optional
      }
    }
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from changeclip.errors import InputError

MANIFEST_NAME = "dataset.json"
"""File name of the manifest inside a dataset folder."""

FORMAT = "changeclip-dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
"""Split names, in this order; ``test`` is optional."""
SUBFOLDERS = ("A", "B", "label")
"""Per split: before images, after images, labels."""
IGNORE = 255
"""Label value that is ignored by the loss and the metrics."""
IMAGE_FORMATS = ("tif", "png")


@dataclass
class SplitInfo:
    """One split: its tile names and its label pixel histogram (keys "0", "1", "255")."""

    tiles: list[str] = field(default_factory=list)
    pixels: dict[str, int] = field(default_factory=lambda: {"0": 0, "1": 0, str(IGNORE): 0})

    @property
    def changed_share(self) -> float | None:
        """Share of changed pixels among labelled (non-ignored) pixels; None if none labelled."""
        labelled = self.pixels.get("0", 0) + self.pixels.get("1", 0)
        return self.pixels.get("1", 0) / labelled if labelled else None


@dataclass
class Manifest:
    """The parsed ``dataset.json`` of a dataset folder (see the module docstring)."""

    root: Path
    kind: str
    tile_size: int
    image_format: str
    splits: dict[str, SplitInfo]
    sources: list[dict[str, Any]] = field(default_factory=list)
    crs_wkt: str | None = None
    gsd_m: float | None = None
    train_dataset: str | None = None
    bands: list[int] = field(default_factory=lambda: [1, 2, 3])
    value_range: list[list[float]] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    created_by: str = ""
    created_at: str = ""
    label_encoding: str = "0/1 with 255 = ignore"

    def tile_paths(self, split: str, tile: str) -> tuple[Path, Path, Path]:
        """Paths of (before, after, label) of one tile of one split."""
        base = self.root / split
        return tuple(base / sub / f"{tile}.{self.image_format}" for sub in SUBFOLDERS)  # type: ignore[return-value]

    def to_json(self) -> dict[str, Any]:
        """The manifest as the JSON object written to ``dataset.json``."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "kind": self.kind,
            "tile_size": self.tile_size,
            "image_format": self.image_format,
            "label_encoding": self.label_encoding,
            "sources": self.sources,
            "crs_wkt": self.crs_wkt,
            "gsd_m": self.gsd_m,
            "train_dataset": self.train_dataset,
            "bands": self.bands,
            "value_range": self.value_range,
            "options": self.options,
            "splits": {name: {"tiles": s.tiles, "pixels": s.pixels} for name, s in self.splits.items()},
        }

    def sha256(self) -> str:
        """Hash of the manifest's canonical JSON: identifies the data a run was trained on."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def _fail(root: Path, what: str) -> InputError:
    return InputError(f"{root / MANIFEST_NAME}: {what}. Make the folder again with 'changeclip dataset "
                      "from-vectors' or 'changeclip dataset from-folder'")


def read_manifest(root: str | Path, check_files: bool = True) -> Manifest:
    """Read and validate a dataset folder's manifest.

    Args:
        root: the dataset folder.
        check_files: also check that every listed tile has its three files.

    Raises:
        InputError: not a dataset folder, unreadable or invalid manifest, missing tile files.
    """
    root = Path(root)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise InputError(f"dataset folder {root} does not exist")
    if not path.is_file():
        raise InputError(f"{root} is not a ChangeCLIP dataset folder (no {MANIFEST_NAME}). Make one with "
                         f"'changeclip dataset from-folder {root} -o DATASET_DIR' (LEVIR-CD/SYSU-CD layouts) or "
                         "'changeclip dataset from-vectors BEFORE AFTER CHANGES -o DATASET_DIR'")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(root, f"cannot be read ({exc})") from None
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        raise _fail(root, f"is not a {FORMAT!r} manifest")
    if data.get("format_version") != FORMAT_VERSION:
        raise _fail(root, f"has format_version {data.get('format_version')!r}; this backend reads {FORMAT_VERSION}")
    fmt = data.get("image_format")
    if fmt not in IMAGE_FORMATS:
        raise _fail(root, f"image_format {fmt!r} is not one of {IMAGE_FORMATS}")
    tile_size = data.get("tile_size")
    if not isinstance(tile_size, int) or tile_size < 16:
        raise _fail(root, f"tile_size {tile_size!r} is not an integer >= 16")
    raw_splits = data.get("splits")
    if not isinstance(raw_splits, Mapping) or "train" not in raw_splits:
        raise _fail(root, "has no 'train' split")
    splits: dict[str, SplitInfo] = {}
    for name, raw in raw_splits.items():
        if name not in SPLITS:
            raise _fail(root, f"unknown split {name!r} (expected {', '.join(SPLITS)})")
        tiles = raw.get("tiles") if isinstance(raw, Mapping) else None
        pixels = raw.get("pixels") if isinstance(raw, Mapping) else None
        if not isinstance(tiles, list) or not all(isinstance(t, str) and t for t in tiles):
            raise _fail(root, f"split {name!r} has no valid tile list")
        if not isinstance(pixels, Mapping):
            raise _fail(root, f"split {name!r} has no pixel histogram")
        splits[name] = SplitInfo(tiles=list(tiles), pixels={str(k): int(v) for k, v in pixels.items()})
    gsd = data.get("gsd_m")
    manifest = Manifest(
        root=root, kind=str(data.get("kind", "")), tile_size=tile_size, image_format=fmt, splits=splits,
        sources=list(data.get("sources") or []), crs_wkt=data.get("crs_wkt") or None,
        gsd_m=float(gsd) if isinstance(gsd, int | float) and gsd > 0 else None,
        train_dataset=data.get("train_dataset") or None, bands=list(data.get("bands") or [1, 2, 3]),
        value_range=data.get("value_range"), options=dict(data.get("options") or {}),
        created_by=str(data.get("created_by", "")), created_at=str(data.get("created_at", "")),
        label_encoding=str(data.get("label_encoding", "0/1 with 255 = ignore")),
    )
    if check_files:
        for name, split in splits.items():
            for tile in split.tiles:
                for p in manifest.tile_paths(name, tile):
                    if not p.is_file():
                        raise _fail(root, f"lists tile {tile!r} of split {name!r} but {p} is missing")
    return manifest


def write_manifest(manifest: Manifest) -> Path:
    """Write ``dataset.json`` atomically (temporary name, fsync, rename); returns its path."""
    path = manifest.root / MANIFEST_NAME
    tmp = manifest.root / f".{MANIFEST_NAME}.part"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(manifest.to_json(), fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path
