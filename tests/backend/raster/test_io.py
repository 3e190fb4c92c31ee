"""Opening inputs, band checks and validity from nodata, masks, alpha and NaN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from geodata import textured, write_raster

from changeclip.errors import InputError
from changeclip.raster.io import GridReader, check_bands, is_8bit, open_raster


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="before raster not found.*check the path"):
        open_raster(str(tmp_path / "nope.tif"), "before")


def test_not_a_raster(tmp_path: Path) -> None:
    p = tmp_path / "notes.tif"
    p.write_text("this is not an image")
    with pytest.raises(InputError, match="after file .* is not a raster GDAL can read"):
        open_raster(str(p), "after")


def test_band_mapping_checks(tmp_path: Path) -> None:
    ds = open_raster(write_raster(tmp_path / "one.tif", textured(16, 16, c=1)), "before")
    with pytest.raises(InputError, match="has 1 band\\(s\\) but the band mapping 1,2,3 needs 3.*--bands"):
        check_bands(ds, [1, 2, 3], "before")
    ds4 = open_raster(write_raster(tmp_path / "four.tif", textured(16, 16, c=4)), "after")
    check_bands(ds4, [3, 2, 1], "after")
    with pytest.raises(InputError, match="band 5 does not exist in the after raster.*1 to 4"):
        check_bands(ds4, [5, 2, 1], "after")
    assert is_8bit(ds4, [1, 2])


def test_reader_band_order_and_float32(tmp_path: Path) -> None:
    data = np.stack([np.full((8, 10), v, np.uint16) for v in (100, 200, 300)])
    ds = open_raster(write_raster(tmp_path / "u16.tif", data), "before")
    r = GridReader(ds, [3, 1, 1])
    arr, valid = r.read(2, 1, 5, 4)
    assert arr.dtype == np.float32 and arr.shape == (3, 4, 5)
    assert [float(arr[i, 0, 0]) for i in range(3)] == [300.0, 100.0, 100.0]
    assert valid.all()


def test_validity_sources(tmp_path: Path) -> None:
    img = textured(20, 20)
    img[:, :5, :] = 0
    r = GridReader(open_raster(write_raster(tmp_path / "nd.tif", img, nodata=0), "b"), [1, 2, 3])
    assert not r.read_valid(0, 0, 20, 20)[:5].any() and r.read_valid(0, 0, 20, 20)[5:].all()

    alpha = np.full((20, 20), 255, np.uint8)
    alpha[:, :3] = 0
    r = GridReader(open_raster(write_raster(tmp_path / "alpha.tif", textured(20, 20), alpha=alpha), "b"), [1, 2, 3])
    v = r.read_valid(0, 0, 20, 20)
    assert not v[:, :3].any() and v[:, 3:].all()

    mask = np.ones((20, 20), np.uint8)
    mask[10:, 10:] = 0
    r = GridReader(open_raster(write_raster(tmp_path / "mask.tif", textured(20, 20), mask=mask), "b"), [1, 2, 3])
    v = r.read_valid(0, 0, 20, 20)
    assert not v[10:, 10:].any() and v.sum() == 400 - 100

    f = textured(20, 20).astype(np.float32)
    f[1, 4, 4] = np.nan
    r = GridReader(open_raster(write_raster(tmp_path / "f.tif", f), "b"), [1, 2, 3])
    _, v = r.read(0, 0, 20, 20)
    assert not v[4, 4] and v.sum() == 399
