"""Small dataset folders for the training tests (used through the ``make_dataset`` fixture), cut from real LEVIR-CD tiles of ../shared/data.

The folders follow the contract of ``changeclip.datasets.manifest`` (PNG tiles, labels 0/1,
``dataset.json`` written by ``write_manifest``), so the trainer reads them exactly as it reads
what ``changeclip dataset`` makes. Windows are cut from the 256 px LEVIR crops of BIT_CD
(research-only imagery, read from the shared folder, never copied into the repository).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from osgeo import gdal

from changeclip.datasets.manifest import Manifest, SplitInfo, write_manifest

LEVIR = "LEVIR-CD/justchenhao_BIT_CD"
# (tile, window index on a 4x4 grid of 64 px windows): windows with 15-55 % changed pixels
CHANGED_WINDOWS: tuple[tuple[str, int], ...] = (
    ("train_36_0512_0512", 1), ("train_412_0512_0768", 3), ("test_2_0000_0000", 9), ("val_27_0000_0256", 14),
    ("test_121_0768_0256", 5), ("test_7_0256_0512", 9), ("test_102_0512_0000", 7), ("test_55_0256_0000", 11),
)


def write_png(path: Path, array: np.ndarray) -> None:
    bands = array.shape[0] if array.ndim == 3 else 1
    h, w = array.shape[-2:]
    mem = gdal.GetDriverByName("MEM").Create("", w, h, bands, gdal.GDT_Byte)
    for i in range(bands):
        mem.GetRasterBand(i + 1).WriteArray(array[i] if array.ndim == 3 else array)
    gdal.GetDriverByName("PNG").CreateCopy(str(path), mem)


def _read(path: Path) -> np.ndarray:
    return gdal.Open(str(path)).ReadAsArray()


def dataset_maker(data_dir: Path, tmp_path: Path) -> Callable[..., Path]:
    """``make(name, train=4, val=2, size=64, labels=None) -> folder``.

    ``train``/``val``: how many windows of :data:`CHANGED_WINDOWS` go to each split (train first;
    with ``val_same=True`` the val split repeats the train windows: an overfitting check).
    ``labels``: optional function mapping each (size, size) 0/1 label to what is written.
    """
    src = data_dir / LEVIR

    def make(name: str = "ds", train: int = 4, val: int = 2, size: int = 64, val_same: bool = False,
             labels: Callable[[np.ndarray], np.ndarray] | None = None, gsd_m: float | None = 0.5,
             windows: Sequence[tuple[str, int]] = CHANGED_WINDOWS) -> Path:
        root = tmp_path / name
        chosen = list(windows[:train + (0 if val_same else val)])
        splits: dict[str, SplitInfo] = {}
        plan = {"train": chosen[:train], "val": chosen[:val] if val_same else chosen[train:train + val]}
        for split, items in plan.items():
            info = SplitInfo()
            for sub in ("A", "B", "label"):
                (root / split / sub).mkdir(parents=True, exist_ok=True)
            for tile, index in items:
                y, x = (index // 4) * 64, (index % 4) * 64
                win = (slice(y, y + size), slice(x, x + size))
                a = _read(src / "A" / f"{tile}.png")[:, win[0], win[1]]
                b = _read(src / "B" / f"{tile}.png")[:, win[0], win[1]]
                lab = (_read(src / "label" / f"{tile}.png")[win] > 0).astype(np.uint8)
                if labels is not None:
                    lab = labels(lab)
                stem = f"{tile}_{index}"
                write_png(root / split / "A" / f"{stem}.png", a)
                write_png(root / split / "B" / f"{stem}.png", b)
                write_png(root / split / "label" / f"{stem}.png", lab)
                info.tiles.append(stem)
                for v, n in zip(*np.unique(lab, return_counts=True), strict=True):
                    info.pixels[str(int(v))] = info.pixels.get(str(int(v)), 0) + int(n)
            splits[split] = info
        write_manifest(Manifest(root=root, kind="from-folder", tile_size=size, image_format="png", splits=splits,
                                sources=[{"role": "folder", "path": str(src), "sha256": None}], gsd_m=gsd_m,
                                train_dataset="LEVIR-CD", created_by="tests", created_at="2026-11-29T00:00:00Z"))
        return root

    return make
