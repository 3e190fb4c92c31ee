"""Writing a dataset folder: the output checks, the staging folder renamed at the end, tile files.

A dataset is built in a hidden sibling folder (``.NAME.part-PID``) and renamed to its final
name only once every tile and ``dataset.json`` are written, so a crash, an error or Ctrl-C
never leaves a half-made dataset under the final name (the staging folder is removed).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import shutil
from pathlib import Path
from types import TracebackType

import numpy as np
from osgeo import gdal

from changeclip import __version__
from changeclip.datasets.manifest import IGNORE, MANIFEST_NAME, SUBFOLDERS
from changeclip.errors import InputError

gdal.UseExceptions()

_TIFF_OPTIONS = ["COMPRESS=DEFLATE", "PREDICTOR=2"]


def check_output(final: Path, overwrite: bool) -> None:
    """Refuse an output folder that exists (without ``overwrite``) or cannot be created.

    With ``overwrite`` only an empty folder or a dataset folder (one with ``dataset.json``) is
    replaced, so a mistyped ``-o`` never deletes an unrelated folder.

    Raises:
        InputError: naming the folder and the fix.
    """
    if final.exists():
        if not final.is_dir():
            raise InputError(f"output {final} exists and is a file; choose a folder name with -o")
        if not overwrite:
            raise InputError(f"output folder {final} already exists; pass --overwrite to replace it or choose "
                             "another -o")
        if any(final.iterdir()) and not (final / MANIFEST_NAME).is_file():
            raise InputError(f"output folder {final} is not empty and is not a dataset folder (no {MANIFEST_NAME}); "
                             "--overwrite only replaces dataset folders: choose another -o")
    parent = final.parent if str(final.parent) else Path(".")
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot write the output folder {final}: {existing} is not a writable folder; choose "
                         "another -o")


class StagedFolder:
    """A hidden staging folder next to ``final``; :meth:`commit` renames it to ``final``.

    Used as a context manager: leaving the block without :meth:`commit` (an error, Ctrl-C)
    removes the staging folder and everything in it.
    """

    def __init__(self, final: Path, overwrite: bool) -> None:
        self.final = final
        self.overwrite = overwrite
        self.path = final.parent / f".{final.name}.part-{os.getpid()}"
        self._done = False

    def __enter__(self) -> StagedFolder:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self._done:
            shutil.rmtree(self.path, ignore_errors=True)

    def split_dirs(self, split: str) -> dict[str, Path]:
        """The ``A``/``B``/``label`` folders of one split, created if missing."""
        out = {}
        for sub in SUBFOLDERS:
            d = self.path / split / sub
            d.mkdir(parents=True, exist_ok=True)
            out[sub] = d
        return out

    def commit(self) -> None:
        """Swap the staging folder in under the final name (the old dataset is removed after)."""
        old = None
        if self.final.exists():
            check_output(self.final, self.overwrite)
            old = self.final.parent / f".{self.final.name}.old-{os.getpid()}"
            os.replace(self.final, old)
        os.replace(self.path, self.final)
        self._done = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_tile(path: Path, array: np.ndarray, geotransform: tuple[float, ...] | None = None,
               crs_wkt: str = "", label: bool = False) -> None:
    """Write one tile: GeoTIFF (``.tif``, georeferenced when given) or PNG (``.png``).

    Args:
        path: File name with its extension.
        array: uint8 ``(C, H, W)`` image or ``(H, W)`` label.
        geotransform, crs_wkt: Georeference of a GeoTIFF tile.
        label: A label tile (its GeoTIFF gets nodata 255 so GIS viewers show ignored pixels as empty).
    """
    data = array[None] if array.ndim == 2 else array
    c, h, w = data.shape
    mem = gdal.GetDriverByName("MEM").Create("", w, h, c, gdal.GDT_Byte)
    if path.suffix == ".tif":
        if geotransform is not None:
            mem.SetGeoTransform(geotransform)
        if crs_wkt:
            mem.SetProjection(crs_wkt)
    for i in range(c):
        band = mem.GetRasterBand(i + 1)
        band.WriteArray(data[i])
        if label and path.suffix == ".tif":
            band.SetNoDataValue(IGNORE)
    if c == 3:
        for i, ci in enumerate((gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand)):
            mem.GetRasterBand(i + 1).SetColorInterpretation(ci)
    driver = "GTiff" if path.suffix == ".tif" else "PNG"
    options = _TIFF_OPTIONS if driver == "GTiff" else []
    gdal.GetDriverByName(driver).CreateCopy(str(path), mem, options=options)
    aux = Path(str(path) + ".aux.xml")
    if aux.exists():
        aux.unlink()


def label_histogram(label: np.ndarray) -> dict[str, int]:
    """Pixel counts of a 0/1/255 label: ``{"0": n0, "1": n1, "255": n255}``."""
    counts = np.bincount(label.ravel(), minlength=256)
    return {"0": int(counts[0]), "1": int(counts[1]), str(IGNORE): int(counts[IGNORE])}


def add_histogram(total: dict[str, int], part: dict[str, int]) -> None:
    """Add ``part`` into ``total`` in place."""
    for k, v in part.items():
        total[k] = total.get(k, 0) + v


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_tiling(tile: int, stride: int, val_fraction: float) -> None:
    """The options every maker shares: ``--tile``, ``--stride``, ``--val-fraction``.

    Raises:
        InputError: naming the option, the value received and the accepted range.
    """
    if not 32 <= tile <= 4096:
        raise InputError(f"--tile must be between 32 and 4096 px, got {tile}")
    if not 1 <= stride <= tile:
        raise InputError(f"--stride must be between 1 and --tile ({tile}) px, got {stride}")
    if not 0 < val_fraction < 1:
        raise InputError(f"--val-fraction must be above 0 and below 1, got {val_fraction}")


def maker_stamp(kind: str) -> dict[str, str]:
    """``created_by`` and ``created_at`` (UTC) of a manifest made by ``dataset <kind>``."""
    return {"created_by": f"changeclip {__version__} dataset {kind}",
            "created_at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
