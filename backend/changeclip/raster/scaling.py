"""One fixed radiometric scaling per band, shared by both dates.

Engines take pixel values in 0..255. The mapping from a raster's own units is linear per band,
``(v - low) / (high - low) * 255``, with the *same* ``low``/``high`` for the before and the
after image and for every tile: a per-tile or per-date stretch would invent change. The range
is, in order of precedence: the user's ``value_range``; ``0..255`` when every mapped band of both
rasters is 8-bit (the imagery networks are trained on); otherwise the 2nd and 98th percentiles
of a nodata-free sample of both dates together (pixels valid in both).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from changeclip.errors import InputError
from changeclip.raster.align import Window
from changeclip.raster.io import GridReader

LOW_PERCENTILE = 2.0
HIGH_PERCENTILE = 98.0


@dataclass(frozen=True)
class BandScaling:
    """Per-band linear scaling to 0..255.

    Attributes:
        low: ``(C,)`` value mapped to 0, in the raster's units.
        high: ``(C,)`` value mapped to 255.
        source: ``"user"``, ``"8-bit"`` or ``"percentile"``.
    """

    low: np.ndarray
    high: np.ndarray
    source: str

    def apply(self, data: np.ndarray, clip: bool = True) -> np.ndarray:
        """Scale ``(..., C, H, W)`` float data to 0..255 (clipped unless ``clip`` is False)."""
        shape = (-1,) + (1,) * 2
        lo = self.low.reshape(shape).astype(np.float32)
        span = (self.high - self.low).reshape(shape).astype(np.float32)
        out = (data - lo) * (np.float32(255.0) / span)
        if clip:
            np.clip(out, 0.0, 255.0, out=out)
        return out.astype(np.float32, copy=False)

    def apply_pixels(self, pixels: np.ndarray, clip: bool = True) -> np.ndarray:
        """Scale a ``(P, C)`` pixel sample to 0..255: ``(P, C)`` float32."""
        return self.apply(np.ascontiguousarray(pixels.T)[:, :, None], clip)[:, :, 0].T.copy()

    def to_dict(self) -> dict[str, object]:
        """JSON-able description (for summary.json)."""
        return {"source": self.source, "low": [float(v) for v in self.low],
                "high": [float(v) for v in self.high]}


def user_scaling(value_range: Sequence[Sequence[float]], n_bands: int) -> BandScaling:
    """The scaling from a user's ``[[min, max], ...]`` (one pair for all bands, or one per band)."""
    pairs = list(value_range) * n_bands if len(value_range) == 1 else list(value_range)
    low = np.array([p[0] for p in pairs], dtype=np.float64)
    high = np.array([p[1] for p in pairs], dtype=np.float64)
    return BandScaling(low, high, "user")


def eight_bit_scaling(n_bands: int) -> BandScaling:
    """The identity scaling 0..255 for 8-bit imagery."""
    return BandScaling(np.zeros(n_bands), np.full(n_bands, 255.0), "8-bit")


def percentile_scaling(before: np.ndarray, after: np.ndarray, low_pct: float = LOW_PERCENTILE,
                       high_pct: float = HIGH_PERCENTILE) -> BandScaling:
    """Percentile range per band over both dates' samples together.

    Args:
        before, after: ``(P, C)`` samples of pixels valid in both dates.
    """
    both = np.concatenate([before, after], axis=0).astype(np.float64)
    low = np.percentile(both, low_pct, axis=0)
    high = np.percentile(both, high_pct, axis=0)
    flat = high <= low  # a constant band: keep it at 0 instead of dividing by zero
    high = np.where(flat, low + 1.0, high)
    return BandScaling(low, high, "percentile")


def sample_windows(window: Window, win: int = 64, per_axis: int = 16) -> list[Window]:
    """Up to ``per_axis²`` sample windows spread evenly over ``window`` (all of it if small).

    A window narrower than ``win * per_axis`` is covered completely, so small rasters are
    sampled exhaustively; large ones cost a fixed number of reads whatever their size.
    """
    def starts(length: int) -> list[tuple[int, int]]:
        n = math.ceil(length / win)
        if n <= per_axis:
            return [(s, min(win, length - s)) for s in range(0, length, win)]
        pos = np.linspace(0, length - win, per_axis).round().astype(int)
        return [(int(p), win) for p in pos]

    return [Window(window.xoff + x, window.yoff + y, w, h)
            for y, h in starts(window.height) for x, w in starts(window.width)]


def collect_sample(before: GridReader, after: GridReader, window: Window,
                   max_pixels: int = 262_144, seed: int = 0) -> tuple[np.ndarray, np.ndarray, bool]:
    """Pixels valid in both dates from sample windows of the processed window.

    Args:
        before, after: Readers on the reference grid.
        window: The processed window.
        max_pixels: Cap on the returned sample size (random subset, seeded).
        seed: Seed of that subset.

    Returns:
        ``(before_sample (P, C) float32, after_sample (P, C) float32, exhaustive)`` in raster
        units; ``exhaustive`` is True when every pixel of the window was looked at.

    Raises:
        InputError: No pixel of the intersection is valid in both dates.
    """
    windows = sample_windows(window)
    exhaustive = sum(w.width * w.height for w in windows) == window.width * window.height
    b, a = _read_valid_pixels(before, after, windows)
    if len(b) < 1024 and not exhaustive:
        # sparse data can hide between the sample windows: look at every pixel once
        rows = [Window(window.xoff, y, window.width, min(256, window.yoff + window.height - y))
                for y in range(window.yoff, window.yoff + window.height, 256)]
        b, a = _read_valid_pixels(before, after, rows, cap=max_pixels)
        exhaustive = True
    if len(b) == 0:
        raise InputError("no pixel of the overlapping area is valid in both rasters (all nodata, masked "
                         "or transparent); check the nodata values and masks, or choose rasters that "
                         "overlap where both have data")
    if len(b) > max_pixels:
        pick = np.random.default_rng(seed).choice(len(b), size=max_pixels, replace=False)
        pick.sort()
        b, a = b[pick], a[pick]
    return b, a, exhaustive


def _read_valid_pixels(before: GridReader, after: GridReader, windows: list[Window],
                       cap: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    parts_b: list[np.ndarray] = []
    parts_a: list[np.ndarray] = []
    total = 0
    rng = np.random.default_rng(1)
    for w in windows:
        valid = before.read_valid(w.xoff, w.yoff, w.width, w.height)
        valid &= after.read_valid(w.xoff, w.yoff, w.width, w.height)
        if not valid.any():
            continue
        db, vb = before.read(w.xoff, w.yoff, w.width, w.height, valid)
        da, va = after.read(w.xoff, w.yoff, w.width, w.height, valid)
        ok = vb & va
        pb, pa = db[:, ok].T, da[:, ok].T
        if cap is not None and len(pb) > cap // 16:
            keep = rng.choice(len(pb), size=cap // 16, replace=False)
            pb, pa = pb[keep], pa[keep]
        parts_b.append(pb)
        parts_a.append(pa)
        total += len(pb)
    n_bands = len(before.bands)
    if not parts_b:
        return np.empty((0, n_bands), np.float32), np.empty((0, n_bands), np.float32)
    return np.concatenate(parts_b), np.concatenate(parts_a)


def choose_scaling(value_range: Sequence[Sequence[float]] | None, eight_bit: bool, sample_before: np.ndarray,
                   sample_after: np.ndarray) -> BandScaling:
    """The run's scaling, by the precedence in the module docstring (user range, 8-bit, percentiles).

    Args:
        value_range: The user's ``[[min, max], ...]`` or None.
        eight_bit: Every mapped band of both rasters is unsigned 8-bit.
        sample_before, sample_after: ``(P, C)`` samples of pixels valid in both dates (see
            :func:`collect_sample`); only used for the percentile range.
    """
    if value_range is not None:
        return user_scaling(value_range, sample_before.shape[1])
    if eight_bit:
        return eight_bit_scaling(sample_before.shape[1])
    return percentile_scaling(sample_before, sample_after)
