"""Spatial blocks for the train/val split, and the tile positions inside each block.

The labelled area is cut into square blocks of ``block`` pixels (the last block of a row or
column absorbs a remainder narrower than one tile). Every block is tiled on its own: tiles of
``tile`` px advance by ``stride`` and the last one is moved back to end at the block's edge, so
**no tile crosses a block border**. Whole blocks then go to validation, chosen by a seeded
shuffle, until the validation tiles reach the requested share. Consequently no pixel of a
validation tile is in any training tile, whatever the stride: neighbouring tiles that share
pixels are always in the same block, hence the same split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from changeclip.raster.tiling import tile_starts


@dataclass(frozen=True)
class Block:
    """One block: its index ``(row, col)`` and pixel extent ``[x0, x1) x [y0, y1)`` in area pixels."""

    row: int
    col: int
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def key(self) -> str:
        """A stable name, e.g. ``b003_007``."""
        return f"b{self.row:03d}_{self.col:03d}"


def segments(length: int, block: int, tile: int) -> list[tuple[int, int]]:
    """Block edges along one axis: ``[(start, end), ...]`` covering ``0..length``.

    A last segment shorter than ``tile`` is merged into the previous one (so each segment
    holds at least one whole tile unless the axis itself is shorter than a tile).
    """
    edges = list(range(0, length, block)) + [length]
    segs = [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]
    if len(segs) > 1 and segs[-1][1] - segs[-1][0] < tile:
        segs[-2:] = [(segs[-2][0], segs[-1][1])]
    return segs


def blocks(width: int, height: int, block: int, tile: int) -> list[Block]:
    """Every block of a ``width`` x ``height`` area, row-major."""
    return [Block(r, c, x0, y0, x1, y1)
            for r, (y0, y1) in enumerate(segments(height, block, tile))
            for c, (x0, x1) in enumerate(segments(width, block, tile))]


def tiles_in_block(b: Block, tile: int, stride: int) -> list[tuple[int, int]]:
    """Top-left ``(x, y)`` of the tiles of one block (area pixels), row-major.

    A block narrower than a tile (only when the whole area is) gets one tile at its origin
    that reaches past its end (the caller pads it).
    """
    xs = [b.x0 + s for s in tile_starts(b.x1 - b.x0, tile, tile - stride)]
    ys = [b.y0 + s for s in tile_starts(b.y1 - b.y0, tile, tile - stride)]
    return [(x, y) for y in ys for x in xs]


def choose_val_blocks(tile_counts: dict[str, int], fraction: float, seed: int) -> set[str]:
    """Pick whole blocks for validation until they hold ``fraction`` of the tiles.

    Blocks are visited in a seeded random order; at least one block always stays in training.

    Args:
        tile_counts: Tiles per block key (blocks without tiles are ignored).
        fraction: Wanted share of tiles in validation, in (0, 1).
        seed: Seed of the order (same seed, same split).

    Returns:
        The keys of the validation blocks (empty when fewer than two blocks hold tiles).
    """
    keys = sorted(k for k, n in tile_counts.items() if n > 0)
    total = sum(tile_counts[k] for k in keys)
    order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    val: set[str] = set()
    count = 0
    for k in order:
        if count >= fraction * total or len(val) + 1 >= len(keys):
            break
        val.add(k)
        count += tile_counts[k]
    return val
