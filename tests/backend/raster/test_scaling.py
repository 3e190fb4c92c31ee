"""One fixed per-band scaling for both dates, from a nodata-free sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from geodata import textured, write_raster

from changeclip.errors import InputError
from changeclip.raster.align import Window
from changeclip.raster.io import GridReader, open_raster
from changeclip.raster.scaling import (
    collect_sample,
    eight_bit_scaling,
    percentile_scaling,
    sample_windows,
    user_scaling,
)


def _reader(path: str) -> GridReader:
    return GridReader(open_raster(path, "x"), [1, 2, 3])


def test_percentile_range_is_shared_by_both_dates() -> None:
    rng = np.random.default_rng(0)
    b = rng.uniform(100, 1100, size=(5000, 3)).astype(np.float32)
    a = b * 2.0  # a brighter after date
    s = percentile_scaling(b, a)
    # the reference in float64, as percentile_scaling computes it: numpy 2 (Debian 13) keeps float32
    # in np.percentile of float32 data where numpy 1.x (Debian 12) upcast, a 1e-7 difference
    both = np.concatenate([b, a]).astype(np.float64)
    np.testing.assert_allclose(s.low, np.percentile(both, 2, axis=0))
    np.testing.assert_allclose(s.high, np.percentile(both, 98, axis=0))
    # the same pixel value maps to the same output whichever date it comes from
    v = np.full((3, 1, 1), 700.0, np.float32)
    np.testing.assert_array_equal(s.apply(v), s.apply(v.copy()))
    sb = s.apply(b.T[:, :, None])[:, :, 0]
    sa = s.apply(a.T[:, :, None])[:, :, 0]
    assert sa.mean() > sb.mean() + 50, "a real brightness difference is kept, not stretched away"


def test_constant_band_and_clip() -> None:
    b = np.zeros((100, 2), np.float32)
    b[:, 1] = np.arange(100)
    s = percentile_scaling(b, b)
    assert np.all(s.high > s.low)
    out = s.apply(np.array([[[5000.0]], [[-10.0]]], np.float32))
    assert out.min() >= 0 and out.max() <= 255
    raw = s.apply(np.array([[[5000.0]], [[-10.0]]], np.float32), clip=False)
    assert raw.max() > 255 and raw.min() < 0


def test_user_and_eight_bit_scaling() -> None:
    s = user_scaling([[0, 3000]], 3)
    assert s.source == "user" and s.low.tolist() == [0, 0, 0] and s.high.tolist() == [3000] * 3
    np.testing.assert_allclose(s.apply(np.full((3, 1, 1), 1500.0, np.float32)).ravel(), 127.5)
    s = user_scaling([[0, 10], [0, 20], [5, 25]], 3)
    assert s.high.tolist() == [10, 20, 25]
    e = eight_bit_scaling(3)
    np.testing.assert_array_equal(e.apply(np.full((3, 2, 2), 77.0, np.float32)), 77.0)


def test_sample_windows_cover_small_and_bound_large() -> None:
    small = sample_windows(Window(5, 7, 300, 200))
    assert sum(w.width * w.height for w in small) == 300 * 200
    large = sample_windows(Window(0, 0, 20000, 20000))
    assert len(large) == 256 and all(w.width == 64 for w in large)
    assert max(w.xoff + w.width for w in large) == 20000


def test_sample_only_pixels_valid_in_both(tmp_path: Path) -> None:
    img = textured(100, 100, dtype="uint16", scale=10)
    b_img, a_img = img.copy(), img.copy()
    b_img[:, :30] = 0
    a_img[:, :, :40] = 0
    b = _reader(write_raster(tmp_path / "b.tif", b_img, nodata=0))
    a = _reader(write_raster(tmp_path / "a.tif", a_img, nodata=0))
    sb, sa, exhaustive = collect_sample(b, a, Window(0, 0, 100, 100))
    assert exhaustive and len(sb) == 70 * 60
    assert sb.min() > 0 and sa.min() > 0


def test_sparse_valid_area_is_found_and_all_nodata_refused(tmp_path: Path) -> None:
    """A valid patch between the sample windows of a big raster is found by the full scan."""
    h = w = 1600  # 25 windows per axis > 16: sampled, not exhaustive
    img = np.zeros((3, h, w), np.uint8)
    img[:, 170:200, 170:200] = 90  # in the gap between sample windows [102, 166) and [205, 269)
    path = write_raster(tmp_path / "sparse.tif", img, nodata=0)
    r = _reader(path)
    sb, _, exhaustive = collect_sample(r, r, Window(0, 0, w, h))
    assert exhaustive and len(sb) == 30 * 30
    empty = _reader(write_raster(tmp_path / "empty.tif", np.zeros((3, 50, 50), np.uint8), nodata=0))
    with pytest.raises(InputError, match="no pixel of the overlapping area is valid in both rasters"):
        collect_sample(empty, empty, Window(0, 0, 50, 50))
