"""Blending and writing of finished tiles on one background thread, overlapped with compute.

The pipeline's main thread runs the engine batch after batch. Everything done with a batch's
result (adding the tiles into the blend buffer, releasing finished rows, thresholding them and
writing both output rasters) is handed to :class:`Writeback`, which runs it on a single writer
thread in submission order. On a GPU the network then computes batch ``i + 1`` while batch ``i``
is blended and written. With an engine that only waits (as a process waits for a GPU) at 300
pairs/s, on a 6000² px pair (tile 256/64, batch 32) on the 2-core development CPU, the tile stage
ran at 74-76 % of the engine's speed with this work in between batches and at 88-89 % with it
on the writer thread.

Order is kept (one thread, a FIFO queue), so outputs are identical to a serial run. At most
``depth`` results wait in the queue: memory stays bounded by a few batches of probabilities.
An error in the writer (disk full, a GDAL write error) is raised in the caller at its next
:meth:`Writeback.put` or at :meth:`Writeback.finish`, as the same exception object.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")
_STOP = object()


class Writeback(Generic[T]):
    """Runs ``work(item)`` for every item put, in order, on one background thread.

    Use as a context manager and call :meth:`finish` at the end of the normal path; leaving the
    block without it (an error, a cancellation) drops the items still queued and stops the thread.

    Args:
        work: What to do with each item (runs on the writer thread).
        depth: Items that may wait in the queue; :meth:`put` blocks beyond that.
        threaded: False runs ``work`` at once on the calling thread (no overlap; same results).
    """

    def __init__(self, work: Callable[[T], None], depth: int = 2, threaded: bool = True) -> None:
        self._work = work
        self._error: BaseException | None = None
        self._abort = False
        self._queue: queue.Queue[object] | None = queue.Queue(maxsize=depth) if threaded else None
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._loop, name="changeclip-write", daemon=True)
            self._thread.start()

    def __enter__(self) -> Writeback[T]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._thread is not None:  # left early: drop what is queued, stop the thread
            self._abort = True
            self._stop()

    def _loop(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is not None or self._abort:
                continue  # keep draining so that a blocked put() returns
            try:
                self._work(item)  # type: ignore[arg-type]
            except BaseException as exc:  # re-raised in the caller
                self._error = exc

    def _stop(self) -> None:
        assert self._queue is not None and self._thread is not None
        self._queue.put(_STOP)
        self._thread.join()
        self._thread = None

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, item: T) -> None:
        """Queue ``item`` (blocks while ``depth`` items wait); raises the writer's error if it failed."""
        self._raise()
        if self._queue is None:
            self._work(item)
            return
        self._queue.put(item)

    def finish(self) -> None:
        """Wait until every queued item is done; raises the writer's error if it failed."""
        if self._thread is not None:
            self._stop()
        self._raise()
