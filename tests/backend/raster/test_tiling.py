"""Tile grid, blending weights and the row-band accumulator."""

from __future__ import annotations

import numpy as np
import pytest

from changeclip.raster.tiling import (
    WEIGHT_FLOOR,
    BlendAccumulator,
    pad_to_tile,
    ramp_weights,
    tile_starts,
    weight_sums,
)


@pytest.mark.parametrize("length,tile,overlap", [(1000, 256, 64), (256, 256, 64), (257, 256, 64), (100, 256, 64),
                                                 (934, 128, 32), (5000, 512, 0)])
def test_tile_starts_cover_with_overlap(length: int, tile: int, overlap: int) -> None:
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0
    assert starts == sorted(set(starts))
    if length > tile:
        assert starts[-1] + tile == length
        for a, b in zip(starts, starts[1:], strict=False):
            assert b - a <= tile - overlap, "neighbours must overlap by at least the overlap"
    covered = np.zeros(length, int)
    for s in starts:
        covered[s:s + tile] += 1
    assert covered.min() >= 1


def test_ramp_weights_shape() -> None:
    w = ramp_weights(256, 64)
    assert w.shape == (256,)
    assert np.all(w[64:192] == 1.0)
    assert WEIGHT_FLOOR <= w.min() < 0.05
    np.testing.assert_allclose(w, w[::-1])
    assert np.all(np.diff(w[:64]) > 0)
    assert np.all(ramp_weights(128, 0) == 1.0)


def test_weight_sums_positive() -> None:
    starts = tile_starts(1000, 256, 64)
    s = weight_sums(1000, starts, ramp_weights(256, 64))
    assert s.min() > 0
    assert s.max() <= 2.0 + 1e-9


def test_pad_to_tile_reflects() -> None:
    a = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    p = pad_to_tile(a, 8)
    assert p.shape == (1, 8, 8)
    np.testing.assert_array_equal(p[0, :3, :4], a[0])
    assert p[0, 0, 4] == a[0, 0, 2]  # reflection, not zeros
    assert pad_to_tile(np.ones((2, 8, 8)), 8).shape == (2, 8, 8)


def _run_accumulator(width: int, height: int, tile: int, overlap: int, field: np.ndarray,
                     skip: set[tuple[int, int]] = frozenset()) -> tuple[np.ndarray, np.ndarray, list[int]]:
    acc = BlendAccumulator(width, height, tile, overlap)
    out = np.full((height, width), np.nan, np.float32)
    valid_out = np.zeros((height, width), bool)
    released: list[int] = []
    for i, y0 in enumerate(acc.ys):
        for x0 in acc.xs:
            if (x0, y0) in skip:
                continue
            p = np.zeros((tile, tile), np.float32)
            v = np.zeros((tile, tile), bool)
            h, w = min(tile, height - y0), min(tile, width - x0)
            p[:h, :w] = field[y0:y0 + h, x0:x0 + w]
            v[:h, :w] = True
            acc.add(p, v, x0, y0)
        until = acc.ys[i + 1] if i + 1 < len(acc.ys) else height
        for row0, prob, valid in acc.release(until):
            out[row0:row0 + len(prob)] = prob
            valid_out[row0:row0 + len(prob)] = valid
            released.extend(range(row0, row0 + len(prob)))
    return out, valid_out, released


@pytest.mark.parametrize("width,height,tile,overlap", [(700, 530, 128, 32), (100, 90, 128, 32), (512, 512, 256, 64)])
def test_blending_reproduces_a_consistent_field(width: int, height: int, tile: int, overlap: int) -> None:
    """Tiles that agree on every pixel must blend to exactly that value (weights normalise to 1)."""
    yy, xx = np.mgrid[0:height, 0:width]
    field = (0.5 + 0.4 * np.sin(xx / 37.0) * np.cos(yy / 23.0)).astype(np.float32)
    out, valid, released = _run_accumulator(width, height, tile, overlap, field)
    assert released == list(range(height)), "every row released exactly once, in order"
    assert valid.all()
    np.testing.assert_allclose(out, field, atol=2e-6)


def test_blending_is_weighted_not_plain_average() -> None:
    """Two tiles disagreeing in the overlap: each dominates near its own centre."""
    tile, overlap, width = 128, 32, 224
    acc = BlendAccumulator(width, 128, tile, overlap)
    assert acc.xs == [0, 96]
    acc.add(np.zeros((tile, tile), np.float32), np.ones((tile, tile), bool), 0, 0)
    acc.add(np.ones((tile, tile), np.float32), np.ones((tile, tile), bool), 96, 0)
    (_, prob, _), = list(acc.release(128))
    row = prob[64]
    assert row[95] == 0.0 and row[128] == 1.0
    seam = row[96:128]
    assert np.all(np.diff(seam) > 0), "smooth monotone transition across the overlap"
    assert seam[0] < 0.05 and seam[-1] > 0.95


def test_skipped_tiles_do_not_disturb_other_pixels() -> None:
    width, height, tile, overlap = 300, 300, 128, 32
    field = np.full((height, width), 0.7, np.float32)
    acc = BlendAccumulator(width, height, tile, overlap)
    skip = {(acc.xs[0], acc.ys[0])}
    out, valid, _ = _run_accumulator(width, height, tile, overlap, field, skip)
    # pixels only the skipped tile covers are invalid, the rest keep their exact value
    assert not valid[:10, :10].any()
    np.testing.assert_allclose(out[valid & (np.arange(height)[:, None] >= tile)], 0.7, atol=1e-6)


def test_tiles_out_of_order_are_refused() -> None:
    acc = BlendAccumulator(600, 600, 128, 32)
    acc.add(np.zeros((128, 128), np.float32), np.ones((128, 128), bool), 0, acc.ys[0])
    with pytest.raises(ValueError, match="row order"):  # next tile row before releasing the first
        acc.add(np.zeros((128, 128), np.float32), np.ones((128, 128), bool), 0, acc.ys[1])
    list(acc.release(acc.ys[1]))
    acc.add(np.zeros((128, 128), np.float32), np.ones((128, 128), bool), 0, acc.ys[1])
    with pytest.raises(ValueError, match="row order"):  # going back up
        acc.add(np.zeros((128, 128), np.float32), np.ones((128, 128), bool), 0, acc.ys[0])


def test_reflect_pad_sides() -> None:
    from changeclip.raster.tiling import reflect_pad

    a = np.arange(20, dtype=np.float32).reshape(1, 4, 5)
    p = reflect_pad(a, ((2, 1), (3, 0)))
    assert p.shape == (1, 7, 8)
    np.testing.assert_array_equal(p[0, 2:6, 3:], a[0])
    assert p[0, 2, 2] == a[0, 0, 1] and p[0, 1, 3] == a[0, 1, 0]  # mirrored, edge not repeated
    assert reflect_pad(np.ones((1, 1, 3)), ((0, 4), (0, 0))).shape == (1, 5, 3)  # 1-px axis: edge mode
    assert reflect_pad(a, ((0, 9), (0, 11))).shape == (1, 13, 16)  # wider than the array


@pytest.mark.parametrize("batch", [1, 3, 7, 20])
def test_batches_spanning_tile_rows(batch: int) -> None:
    """Tiles fed in row-major batches that cross tile rows blend exactly like row-by-row."""
    width, height, tile, overlap = 400, 700, 128, 32
    yy, xx = np.mgrid[0:height, 0:width]
    field = (0.5 + 0.4 * np.sin(xx / 29.0) * np.cos(yy / 17.0)).astype(np.float32)
    per_row = len(tile_starts(width, tile, overlap))
    acc = BlendAccumulator(width, height, tile, overlap, rows_ahead=-(-batch // per_row))
    positions = [(x0, y0) for y0 in acc.ys for x0 in acc.xs]
    out = np.full((height, width), np.nan, np.float32)
    for start in range(0, len(positions), batch):
        for x0, y0 in positions[start:start + batch]:
            h, w = min(tile, height - y0), min(tile, width - x0)
            p = np.zeros((tile, tile), np.float32)
            p[:h, :w] = field[y0:y0 + h, x0:x0 + w]
            acc.add(p, np.ones((tile, tile), bool), x0, y0)
        nxt = start + batch
        for row0, prob, _ in acc.release(positions[nxt][1] if nxt < len(positions) else height):
            out[row0:row0 + len(prob)] = prob
    np.testing.assert_allclose(out, field, atol=2e-6)
