"""Tile reads for the pipeline, overlapped with compute by a small pool of reader threads.

The pipeline computes batch ``i`` while the pool reads, scales and pads the tiles of batch
``i + 1``: GDAL releases the GIL while it decodes and warps, so on a GPU (and, less, on a CPU
whose cores the engine does not all use) the reads hide behind the network. At most two
batches are in memory at once (the one being computed and the one being read), so the memory
bound of a run grows by one batch of tiles, not with the raster.

GDAL datasets are not thread-safe: every reader thread opens its own datasets (and its own
warped VRT) on first use, through the ``open_readers`` factory; the main thread keeps using the
readers it already has. Tiles are returned in the order they were asked for, so results do not
depend on the number of threads (the prefetching run is bit-identical to a serial one).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType

import numpy as np

from changeclip.raster import align, io, scaling
from changeclip.raster.tiling import reflect_pad

FILL_VALUE = 127.5
"""Value both dates get where either is invalid (neutral grey: no change seen there)."""
DEFAULT_THREADS = min(4, os.cpu_count() or 1)
"""Reader threads of a run; 0 reads every tile on the calling thread (no overlap)."""

Tile = tuple[np.ndarray, np.ndarray, np.ndarray]
Position = tuple[int, int]
ReaderPair = tuple[io.GridReader, io.GridReader]


class TileSource:
    """Scaled, filled and padded tiles of both dates; safe to call from several threads.

    Args:
        window: The processed window on the reference grid.
        scaler: The run's radiometric scaling.
        clip: Whether scaled values are clipped to 0..255 (the engine's ``clip_input``).
        tile: Tile size in pixels.
        readers: ``(before, after)`` readers of the calling (main) thread.
        open_readers: Opens a new ``(before, after)`` pair with its own GDAL datasets; called
            once by every other thread that reads.
    """

    def __init__(self, window: align.Window, scaler: scaling.BandScaling, clip: bool, tile: int,
                 readers: ReaderPair, open_readers: Callable[[], ReaderPair]) -> None:
        self.window, self.scaler, self.clip, self.tile = window, scaler, clip, tile
        self._owner = threading.get_ident()
        self._main = readers
        self._open = open_readers
        self._local = threading.local()
        self._opened: list[ReaderPair] = []
        self._lock = threading.Lock()

    def _readers(self) -> ReaderPair:
        if threading.get_ident() == self._owner:
            return self._main
        pair = getattr(self._local, "pair", None)
        if pair is None:
            pair = self._local.pair = self._open()
            with self._lock:
                self._opened.append(pair)
        return pair

    def close(self) -> None:
        """Drop the datasets the reader threads opened (call once no thread reads any more)."""
        with self._lock:
            self._opened.clear()

    def read(self, x0: int, y0: int) -> Tile | None:
        """One tile of both dates, scaled, filled where invalid, reflect-padded beyond the window.

        Args:
            x0, y0: Top-left of the tile in window pixels; negative or reaching past the window's
                end where the tile covers the edge margin.

        Returns:
            ``(before (C, tile, tile), after (C, tile, tile), valid (tile, tile))`` float32,
            float32, bool; or None when no pixel of the tile is valid in both dates.
        """
        before, after = self._readers()
        win, tile = self.window, self.tile
        rx0, ry0 = max(0, x0), max(0, y0)
        rx1, ry1 = min(win.width, x0 + tile), min(win.height, y0 + tile)
        if rx1 <= rx0 or ry1 <= ry0:
            return None
        gx, gy, w, h = win.xoff + rx0, win.yoff + ry0, rx1 - rx0, ry1 - ry0
        valid = before.read_valid(gx, gy, w, h) & after.read_valid(gx, gy, w, h)
        if not valid.any():
            return None
        db, vb = before.read(gx, gy, w, h, valid)
        da, va = after.read(gx, gy, w, h, valid)
        valid = vb & va
        if not valid.any():
            return None
        sb, sa = self.scaler.apply(db, self.clip), self.scaler.apply(da, self.clip)
        sb[:, ~valid] = FILL_VALUE
        sa[:, ~valid] = FILL_VALUE
        pads = ((ry0 - y0, y0 + tile - ry1), (rx0 - x0, x0 + tile - rx1))
        if any(p for pair in pads for p in pair):
            sb, sa = reflect_pad(sb, pads), reflect_pad(sa, pads)
            valid = np.pad(valid, pads, mode="constant", constant_values=False)
        return sb, sa, valid


@dataclass
class Batch:
    """The tiles of one batch that have valid pixels, stacked for the engine.

    Attributes:
        positions: ``(x0, y0)`` of each kept tile, in the batch's order.
        before, after: ``(n, C, tile, tile)`` float32 (None when no tile was kept).
        valid: ``(n, tile, tile)`` bool (None when no tile was kept).
        skipped: Tiles of the batch without any pixel valid in both dates.
    """

    positions: list[Position]
    before: np.ndarray | None
    after: np.ndarray | None
    valid: np.ndarray | None
    skipped: int


class _Assembly:
    """Stacks a batch's tiles as they arrive: each reader thread copies its tile into its slot.

    The copies run in the reader threads, in parallel and overlapped with compute, instead of
    in one ``np.stack`` on the calling thread (which cost a quarter of that thread's time).
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._arrays: tuple[np.ndarray, ...] | None = None
        self._kept = [False] * size

    def put(self, k: int, tile: Tile | None) -> None:
        if tile is None:
            return
        with self._lock:
            if self._arrays is None:
                self._arrays = tuple(np.empty((self._size, *a.shape), a.dtype) for a in tile)
        for buffer, array in zip(self._arrays, tile, strict=True):
            buffer[k] = array
        self._kept[k] = True

    def batch(self, positions: Sequence[Position]) -> Batch:
        keep = [k for k, kept in enumerate(self._kept) if kept]
        if not keep or self._arrays is None:
            return Batch([], None, None, None, self._size)
        arrays = self._arrays if len(keep) == self._size else tuple(a[keep] for a in self._arrays)
        return Batch([positions[k] for k in keep], *arrays, skipped=self._size - len(keep))


class BatchReader:
    """Batches of tiles, the next one read by a thread pool while the caller works on the current.

    Use as a context manager: leaving it (normally, on an error or on cancellation) cancels the
    reads not yet started, waits for the running ones and releases the threads' datasets.

    Args:
        source: Where tiles come from.
        batches: Tile positions ``(x0, y0)`` of every batch, in processing order.
        threads: Reader threads; 0 reads each batch on the calling thread when asked for.
    """

    def __init__(self, source: TileSource, batches: Sequence[Sequence[Position]], threads: int) -> None:
        self.source = source
        self.batches = batches
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="changeclip-read") if threads > 0 else None
        self._pending: dict[int, tuple[_Assembly, list[Future[None]]]] = {}

    def __enter__(self) -> BatchReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading ahead: cancel queued reads, wait for running ones, drop thread datasets."""
        if self._pool is not None:
            for _, futures in self._pending.values():
                for f in futures:
                    f.cancel()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()
        self.source.close()

    def _read_into(self, assembly: _Assembly, k: int, x0: int, y0: int) -> None:
        assembly.put(k, self.source.read(x0, y0))

    def _submit(self, i: int) -> tuple[_Assembly, list[Future[None]]]:
        assert self._pool is not None
        assembly = _Assembly(len(self.batches[i]))
        return assembly, [self._pool.submit(self._read_into, assembly, k, x0, y0)
                          for k, (x0, y0) in enumerate(self.batches[i])]

    def get(self, i: int) -> Batch:
        """Batch ``i``: its tiles with valid pixels, stacked, in the batch's order.

        With threads, asking for batch ``i`` also starts reading batch ``i + 1``; at most these
        two are in flight. Errors of a read (GDAL's RuntimeError, InputError) are raised here.
        """
        if self._pool is None:
            assembly = _Assembly(len(self.batches[i]))
            for k, (x0, y0) in enumerate(self.batches[i]):
                self._read_into(assembly, k, x0, y0)
            return assembly.batch(self.batches[i])
        assembly, futures = self._pending.pop(i, None) or self._submit(i)
        for stale in [k for k in self._pending if k != i + 1]:  # batches skipped by the caller
            for f in self._pending.pop(stale)[1]:
                f.cancel()
        if i + 1 < len(self.batches) and i + 1 not in self._pending:
            self._pending[i + 1] = self._submit(i + 1)
        for f in futures:
            f.result()
        return assembly.batch(self.batches[i])
