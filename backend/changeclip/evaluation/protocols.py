"""How a whole test image is turned into a change map: the three evaluation protocols.

All three work on a *score function* that maps a batch of windows to a per-pixel
change score, and a decision threshold on that score:

* ChangeCLIP: the score is the logit margin ``l_change − l_no_change``; ``> 0`` is
  exactly the argmax of the two logits, and averaging margins over overlapping windows
  is exactly averaging the logits and taking the argmax (mmseg's slide mode).
* irmad (no logits): the score is the change probability and the threshold the
  engine's (or ``--threshold``); reports say so.

Protocols (spec §2.4, §4.3):

``tiles``
    The image is predicted whole when it is at most one tile and its sides are
    multiples of 32 (the 256² tiles of WHU/CDD/SYSU, mmseg ``whole`` mode); larger
    images are cut into non-overlapping tiles (edges mirror-padded, then cropped).
``levir-merge``
    The official LEVIR-CD protocol: mirror-pad by ``stride/2`` on every side (plus
    whatever the bottom/right needs to fit the grid; 1024 → 1216), 256 tiles at stride
    192 (overlap 64, 36 tiles for 1024²), per-tile binary masks, merged with the **AND**
    rule (a pixel is change only if every tile covering it says change — our reading of
    ``merge_data.py``'s mean-then-floor on 0/1 masks), padding cropped.
``levir-slide``
    The ``*_test.py`` configs: 256 windows at stride 128 over the unpadded image (last
    window flush with the border, as mmseg places it), scores averaged, then thresholded.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from changeclip.errors import InputError

PROTOCOLS = ("tiles", "levir-merge", "levir-slide")

ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(before (N,C,h,w) float32, after (N,C,h,w) float32) -> (N,h,w) float32 change score."""


def _mirror(img: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Mirror-pad a (C, H, W) array (reflect without repeating the edge pixel)."""
    if not (top or bottom or left or right):
        return img
    mode = "reflect" if min(img.shape[1:]) > 1 else "edge"
    return np.pad(img, ((0, 0), (top, bottom), (left, right)), mode=mode)


def _run_windows(before: np.ndarray, after: np.ndarray, windows: list[tuple[int, int]], size: tuple[int, int],
                 score_fn: ScoreFn, batch_size: int) -> list[np.ndarray]:
    """Score the windows (top, left) of height/width ``size`` in batches."""
    h, w = size
    out: list[np.ndarray] = []
    for i in range(0, len(windows), batch_size):
        chunk = windows[i:i + batch_size]
        xa = np.stack([before[:, y:y + h, x:x + w] for y, x in chunk]).astype(np.float32, copy=False)
        xb = np.stack([after[:, y:y + h, x:x + w] for y, x in chunk]).astype(np.float32, copy=False)
        scores = np.asarray(score_fn(xa, xb), dtype=np.float32)
        if scores.shape != (len(chunk), h, w):
            raise InputError(f"the engine returned scores of shape {scores.shape}, expected {(len(chunk), h, w)}")
        out.extend(scores)
    return out


def _check(before: np.ndarray, after: np.ndarray, tile: int) -> None:
    if before.ndim != 3 or before.shape != after.shape:
        raise InputError(f"before {before.shape} and after {after.shape} must be (C, H, W) arrays of one shape")
    if tile < 32 or tile % 32:
        raise InputError(f"tile size must be a positive multiple of 32, got {tile}")


def predict_tiles(before: np.ndarray, after: np.ndarray, score_fn: ScoreFn, threshold: float,
                  tile: int = 256, batch_size: int = 8) -> np.ndarray:
    """``tiles`` protocol: whole image if it fits one tile, else non-overlapping tiles.

    Args:
        before, after: (C, H, W) float32 images.
        score_fn: see :data:`ScoreFn`.
        threshold: change where score > threshold.
        tile: tile side in pixels (multiple of 32).
        batch_size: windows per call of ``score_fn``.

    Returns:
        (H, W) bool change map.
    """
    _check(before, after, tile)
    _, h, w = before.shape
    if h <= tile and w <= tile and h % 32 == 0 and w % 32 == 0:
        return _run_windows(before, after, [(0, 0)], (h, w), score_fn, 1)[0] > threshold
    ph, pw = -(-h // tile) * tile, -(-w // tile) * tile
    a = _mirror(before, 0, ph - h, 0, pw - w)
    b = _mirror(after, 0, ph - h, 0, pw - w)
    windows = [(y, x) for y in range(0, ph, tile) for x in range(0, pw, tile)]
    scores = _run_windows(a, b, windows, (tile, tile), score_fn, batch_size)
    full = np.zeros((ph, pw), dtype=bool)
    for (y, x), s in zip(windows, scores, strict=True):
        full[y:y + tile, x:x + tile] = s > threshold
    return full[:h, :w]


def levir_merge_layout(h: int, w: int, tile: int = 256, overlap: int = 64) -> tuple[tuple[int, int, int, int],
                                                                                   list[tuple[int, int]]]:
    """Padding (top, bottom, left, right) and tile origins of the ``levir-merge`` protocol.

    1024×1024 gives padding (96, 96, 96, 96), a 1216² canvas and 6×6 tiles.
    """
    stride = tile - overlap
    half = stride // 2

    def axis(n: int) -> tuple[int, int, list[int]]:
        need = n + 2 * half
        count = max(1, -(-(need - tile) // stride) + 1)
        total = tile + (count - 1) * stride
        return half, total - n - half, [i * stride for i in range(count)]

    top, bottom, ys = axis(h)
    left, right, xs = axis(w)
    return (top, bottom, left, right), [(y, x) for y in ys for x in xs]


def predict_levir_merge(before: np.ndarray, after: np.ndarray, score_fn: ScoreFn, threshold: float,
                        tile: int = 256, overlap: int = 64, batch_size: int = 8) -> np.ndarray:
    """``levir-merge`` protocol (official LEVIR-CD tile-and-merge with the AND rule).

    Returns:
        (H, W) bool change map.
    """
    _check(before, after, tile)
    if not 0 <= overlap < tile or (tile - overlap) % 2:
        raise InputError(f"overlap must be in [0, tile) with an even stride, got tile {tile} overlap {overlap}")
    _, h, w = before.shape
    (top, bottom, left, right), windows = levir_merge_layout(h, w, tile, overlap)
    a = _mirror(before, top, bottom, left, right)
    b = _mirror(after, top, bottom, left, right)
    votes = np.zeros(a.shape[1:], dtype=np.int32)
    cover = np.zeros(a.shape[1:], dtype=np.int32)
    for (y, x), s in zip(windows, _run_windows(a, b, windows, (tile, tile), score_fn, batch_size), strict=True):
        votes[y:y + tile, x:x + tile] += s > threshold
        cover[y:y + tile, x:x + tile] += 1
    merged = (votes == cover) & (cover > 0)
    return merged[top:top + h, left:left + w]


def slide_windows(h: int, w: int, crop: int = 256, stride: int = 128) -> list[tuple[int, int]]:
    """Window origins of mmseg's slide mode (last window flush with the border)."""

    def axis(n: int) -> list[int]:
        grids = max(n - crop + stride - 1, 0) // stride + 1
        return sorted({max(min(i * stride + crop, n) - crop, 0) for i in range(grids)})

    return [(y, x) for y in axis(h) for x in axis(w)]


def predict_levir_slide(before: np.ndarray, after: np.ndarray, score_fn: ScoreFn, threshold: float,
                        tile: int = 256, stride: int = 128, batch_size: int = 8) -> np.ndarray:
    """``levir-slide`` protocol: windows ``tile`` at ``stride``, scores averaged.

    Images smaller than a tile in one direction use one window of the full side there
    (which must then be a multiple of 32 for ChangeCLIP).

    Returns:
        (H, W) bool change map.
    """
    _check(before, after, tile)
    _, h, w = before.shape
    wh, ww = min(tile, h), min(tile, w)
    windows = slide_windows(h, w, tile, stride)
    acc = np.zeros((h, w), dtype=np.float64)
    cnt = np.zeros((h, w), dtype=np.int32)
    for (y, x), s in zip(windows, _run_windows(before, after, windows, (wh, ww), score_fn, batch_size), strict=True):
        acc[y:y + wh, x:x + ww] += s
        cnt[y:y + wh, x:x + ww] += 1
    return acc / cnt > threshold


def predict(protocol: str, before: np.ndarray, after: np.ndarray, score_fn: ScoreFn, threshold: float,
            tile: int = 256, batch_size: int = 8) -> np.ndarray:
    """Dispatch to one protocol by name (see :data:`PROTOCOLS`)."""
    if protocol == "tiles":
        return predict_tiles(before, after, score_fn, threshold, tile, batch_size)
    if protocol == "levir-merge":
        return predict_levir_merge(before, after, score_fn, threshold, tile, tile // 4, batch_size)
    if protocol == "levir-slide":
        return predict_levir_slide(before, after, score_fn, threshold, tile, tile // 2, batch_size)
    raise InputError(f"protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
