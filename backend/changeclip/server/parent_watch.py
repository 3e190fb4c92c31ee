"""Stop the server when the process that started it is gone (``changeclip serve --parent-pid``).

A launcher such as the QGIS plugin passes its own pid. If it is killed or crashes, it cannot
stop the server it started; the watch notices within about a second and asks the server to
shut down the normal way (jobs cancelled, partial outputs and the private token folder
removed, exit status 0).

A pid can be reused by a new process once the old one is gone, so the watch remembers the
parent's creation time when it starts and treats a process with the same pid but another
creation time as a different process, i.e. the parent as gone. A zombie (killed but not yet
reaped by its own parent) counts as gone too.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import psutil

from changeclip.errors import InputError

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.0


class ParentWatch:
    """Watches one process and calls back once when it is gone.

    Args:
        pid: the process to watch.
        interval_s: seconds between two checks.

    Raises:
        InputError: ``pid`` is not a positive integer, is this process, or no such process
            exists now.
    """

    def __init__(self, pid: int, interval_s: float = POLL_INTERVAL_S) -> None:
        if pid <= 0:
            raise InputError(f"--parent-pid must be a positive process id, got {pid}")
        if pid == os.getpid():
            raise InputError(f"--parent-pid {pid} is this server's own pid; pass the pid of the process "
                             "that started it")
        try:
            self._process = psutil.Process(pid)  # remembers the creation time: is_running() checks it
            if self._process.status() == psutil.STATUS_ZOMBIE:
                raise psutil.NoSuchProcess(pid)
        except psutil.NoSuchProcess:
            raise InputError(f"--parent-pid {pid}: no such process is running; pass the pid of the "
                             "process that starts the server (or leave the option out)") from None
        self.pid = pid
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def parent_gone(self) -> bool:
        """True once the watched process has exited (or its pid now belongs to another process)."""
        try:
            if not self._process.is_running():  # False too when the pid was reused
                return True
            return self._process.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
        except psutil.AccessDenied:  # it exists; we may not inspect it further
            return False

    def start(self, on_gone: Callable[[], None]) -> None:
        """Check every ``interval_s`` in a daemon thread; call ``on_gone()`` once when the parent is gone."""

        def watch() -> None:
            while not self._stop.wait(self._interval_s):
                if self.parent_gone():
                    log.warning("the process that started this server (pid %d) is gone; shutting down", self.pid)
                    on_gone()
                    return

        self._thread = threading.Thread(target=watch, daemon=True, name="changeclip-parent-watch")
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (the server is stopping anyway)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
