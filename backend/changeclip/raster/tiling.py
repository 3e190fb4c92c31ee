"""Tile grid, edge padding and weighted blending of overlapping tile probabilities (pure numpy).

Tiles of ``tile`` px advance by ``tile - overlap``; the last tile of a row/column is moved back
to end exactly at the window's edge, so only a window smaller than one tile needs padding
(reflection). Overlapping probabilities are blended with a separable weight ``w(x) * w(y)``: 1 in
a tile's interior, a raised-cosine ramp across the ``overlap`` px at its borders, never below
``floor`` (> 0, so a pixel that only one tile covers keeps a well-defined value). Because the
grid is a Cartesian product, the sum of weights at a pixel is ``Sx(x) * Sy(y)``; the
accumulator only keeps the weighted sum of rows still being covered by tiles and releases
finished rows, so memory is ``O(tile * width)``, independent of the raster's height.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

WEIGHT_FLOOR = 1e-3


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles along one axis of ``length`` px.

    Returns:
        Increasing offsets; consecutive tiles overlap by at least ``overlap`` px and the last one
        ends at ``length`` (a single tile at 0 if ``length <= tile``).
    """
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def ramp_weights(tile: int, overlap: int, floor: float = WEIGHT_FLOOR) -> np.ndarray:
    """1-D blending weights ``(tile,)`` float64: raised-cosine ramps over ``overlap`` px at both ends."""
    w = np.ones(tile, dtype=np.float64)
    if overlap > 0:
        t = (np.arange(overlap, dtype=np.float64) + 0.5) / overlap
        ramp = floor + (1.0 - floor) * 0.5 * (1.0 - np.cos(np.pi * t))
        w[:overlap] = ramp
        w[tile - overlap:] = ramp[::-1]
    return w


def weight_sums(length: int, starts: list[int], weights: np.ndarray) -> np.ndarray:
    """Sum of the 1-D weights of every tile covering each of ``length`` positions: ``(length,)``."""
    total = np.zeros(length, dtype=np.float64)
    tile = len(weights)
    for s in starts:
        end = min(s + tile, length)
        total[s:end] += weights[: end - s]
    return total


def reflect_pad(arr: np.ndarray, pads: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    """Reflect-pad the last two axes of ``arr`` (``(..., h, w)``) by ``((top, bottom), (left, right))``.

    Pads wider than the array are reflected repeatedly; a 1-px axis is repeated instead.
    """
    h, w = arr.shape[-2:]
    lead = [(0, 0)] * (arr.ndim - 2)
    (top, bottom), (left, right) = pads
    out = np.pad(arr, lead + [(top, bottom), (0, 0)], mode="reflect" if h > 1 else "edge")
    return np.pad(out, lead + [(0, 0), (left, right)], mode="reflect" if w > 1 else "edge")


def pad_to_tile(arr: np.ndarray, tile: int) -> np.ndarray:
    """Reflect-pad the last two axes of ``arr`` (``(..., h, w)``) at the bottom/right to ``tile``."""
    h, w = arr.shape[-2:]
    if h == tile and w == tile:
        return arr
    pad = [(0, 0)] * (arr.ndim - 2) + [(0, tile - h), (0, tile - w)]
    mode = "reflect" if min(h, w) > 1 else "edge"
    return np.pad(arr, pad, mode=mode)


class BlendAccumulator:
    """Weighted blending of tile probabilities over a window, released row band by row band.

    Feed tiles in row-major order and :meth:`release` up to the start row of the next tile to
    come (with ``rows_ahead`` > 0 a batch of tiles may span several tile rows in between). Tiles that were skipped (entirely invalid) are simply not added: every pixel
    they cover is invalid, so the weight normalisation of valid pixels is unaffected.

    Args:
        width, height: Window size in pixels.
        tile, overlap: Tile size and overlap in pixels.
        rows_ahead: How many tile rows beyond the oldest unreleased one may be added before
            releasing (lets a batch span rows); the buffer holds ``tile + rows_ahead * stride`` rows.
    """

    def __init__(self, width: int, height: int, tile: int, overlap: int, rows_ahead: int = 0) -> None:
        self.width, self.height, self.tile = width, height, tile  # height: rows to release in the end
        self.xs = tile_starts(width, tile, overlap)
        self.ys = tile_starts(height, tile, overlap)
        w1 = ramp_weights(tile, overlap)
        self._w2d = np.outer(w1, w1).astype(np.float32)
        self._sx = weight_sums(width, self.xs, w1).astype(np.float32)
        self._sy = weight_sums(height, self.ys, w1).astype(np.float32)
        rows = min(tile + rows_ahead * (tile - overlap), height)  # rows above are released first
        self._sum = np.zeros((rows, width), dtype=np.float32)
        self._valid = np.zeros((rows, width), dtype=bool)
        self._top = 0  # window row held in buffer row 0

    def add(self, prob: np.ndarray, valid: np.ndarray, x0: int, y0: int) -> None:
        """Add one tile.

        Args:
            prob: ``(tile, tile)`` float32 change probability in 0..1.
            valid: ``(tile, tile)`` bool validity of the tile's pixels.
            x0, y0: The tile's top-left in window pixels (one of :attr:`xs` / :attr:`ys`).
        """
        h = min(self.tile, self.height - y0)
        w = min(self.tile, self.width - x0)
        r0 = y0 - self._top
        if r0 < 0 or r0 + h > self._sum.shape[0]:
            raise ValueError("tiles must be added in row order and released in between")
        self._sum[r0:r0 + h, x0:x0 + w] += prob[:h, :w] * self._w2d[:h, :w]
        self._valid[r0:r0 + h, x0:x0 + w] = valid[:h, :w]

    def release(self, until: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield finished rows ``[top, until)`` as ``(row0, prob (n, width), valid (n, width))``.

        ``prob`` is the blended probability (float32 0..1) and is meaningful where ``valid``.
        """
        n = until - self._top
        if n <= 0:
            return
        prob = self._sum[:n] / (self._sy[self._top:until, None] * self._sx[None, :])
        valid = self._valid[:n].copy()
        row0 = self._top
        keep = self._sum.shape[0] - n
        self._sum[:keep] = self._sum[n:]
        self._sum[keep:] = 0.0
        self._valid[:keep] = self._valid[n:]
        self._valid[keep:] = False
        self._top = until
        yield row0, prob, valid
