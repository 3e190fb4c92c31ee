"""SIGINT and SIGTERM during a command-line run, turned into a clean cancellation.

While :class:`Interrupts` is active, the first SIGINT (Ctrl-C) or SIGTERM only sets a flag;
the pipeline polls it as its ``is_cancelled`` callback (before every tile batch, inside GDAL's
polygonizing and COG conversion, before the final renames), removes its temporary files and
raises :class:`~changeclip.errors.JobCancelled` (exit code 130) naming the signal. A second
signal stops at once with ``KeyboardInterrupt`` (the pipeline still removes what it wrote).
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

_SIGNALS = ("SIGINT", "SIGTERM")


class Interrupts:
    """A context manager that installs the handlers (main thread only) and restores the old ones."""

    def __init__(self, stream: Any = None) -> None:
        self._event = threading.Event()
        self._previous: dict[int, Any] = {}
        self._stream = stream
        self.received: str | None = None
        """The name of the first signal received (``"SIGTERM"``), or None."""

    def is_set(self) -> bool:
        """True once a signal was received (the pipeline's ``is_cancelled``)."""
        return self._event.is_set()

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for name in _SIGNALS:
                num = getattr(signal, name, None)
                if num is not None:
                    self._previous[num] = signal.signal(num, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for num, handler in self._previous.items():
            signal.signal(num, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._event.is_set():
            raise KeyboardInterrupt
        self.received = name
        self._event.set()
        stream = self._stream or sys.stderr
        try:
            stream.write(f"\n{name} received: stopping and removing partial outputs (again to stop at once)\n")
            stream.flush()
        except (OSError, ValueError, RuntimeError):  # RuntimeError: a reentrant write to the stream
            pass
