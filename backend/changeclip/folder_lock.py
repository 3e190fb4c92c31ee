"""One writer per output folder: an exclusive OS file lock, and stale temporary files removed under it.

A run takes :class:`FolderLocks` on every folder it writes into (the output folder, and the
folder of each explicit output file) before it writes anything, and holds them until it has
published or removed its files. The lock is ``fcntl.flock`` on a hidden ``.changeclip.lock``
file in the folder: the operating system releases it when the process exits, however it exits
(``kill -9`` included), so a lock is never left behind by a dead run. A second run (another
``changeclip detect``, another job of the same server, a job of another server) that wants a
locked folder stops at once with :class:`FolderBusy`, naming the process that holds it.

Holding the lock is also what proves that hidden temporary files of our own naming in that
folder (``.NAME.XXXXXXXX.part.EXT``, ``.NAME.XXXXXXXX.tmp.EXT`` and GDAL/SQLite side files of
those, see :data:`STALE_TEMP`) belong to no live run: :meth:`FolderLocks.remove_stale` deletes
them (e.g. the ``.part`` files of a run killed with ``kill -9``). Backups of earlier outputs
(``.NAME.XXXXXXXX.bak.EXT``, made while publishing) are never removed automatically.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import stat
import sys
from collections.abc import Iterable

from changeclip.errors import InputError

log = logging.getLogger(__name__)

LOCK_NAME = ".changeclip.lock"
"""The lock file in each output folder (removed again when the run releases it)."""

STALE_TEMP = re.compile(r"^\..+\.[0-9a-f]{8}\.(?:part|tmp)(?:\.[A-Za-z0-9]+)?"
                        r"(?:\.fid\.tif|\.aux\.xml|-journal|-wal|-shm)?$")
"""Names of our temporary files (:class:`changeclip.raster.outputs.TempFiles`) and their side files."""

_ATTEMPTS = 20


class FolderBusy(InputError):
    """Another run holds the lock of an output folder."""


class FolderLocks:
    """Exclusive locks on a set of folders, taken together (in a fixed order) and released together.

    Args:
        folders: Existing folders; duplicates are locked once.
    """

    def __init__(self, folders: Iterable[str]) -> None:
        self.folders = sorted({os.path.realpath(f) for f in folders})
        self._held: list[tuple[str, int]] = []

    def acquire(self) -> FolderLocks:
        """Lock every folder, or none.

        Raises:
            FolderBusy: A folder is locked by another run (the message names its process).
            InputError: A lock file cannot be created (e.g. a read-only folder).
        """
        try:
            for folder in self.folders:
                self._held.append((folder, _lock(folder)))
        except BaseException:
            self.release()
            raise
        return self

    def remove_stale(self) -> list[str]:
        """Delete stale temporary files of our naming in the locked folders; return their paths."""
        removed = []
        for folder, _fd in self._held:
            try:
                names = os.listdir(folder)
            except OSError:
                continue
            for name in names:
                if not STALE_TEMP.match(name):
                    continue
                path = os.path.join(folder, name)
                try:
                    if not stat.S_ISREG(os.lstat(path).st_mode):
                        continue
                    os.remove(path)
                except OSError as exc:
                    log.warning("could not remove the stale temporary file %s: %s", path, exc)
                    continue
                removed.append(path)
        if removed:
            log.info("removed %d stale temporary file(s) of an earlier, interrupted run: %s", len(removed),
                     ", ".join(os.path.basename(p) for p in removed))
        return removed

    def release(self) -> None:
        """Remove the lock files and release the locks (a no-op for folders not held)."""
        while self._held:
            folder, fd = self._held.pop()
            path = os.path.join(folder, LOCK_NAME)
            if sys.platform != "win32":
                try:  # still holding the lock: nobody else can have this file locked now
                    os.remove(path)
                except OSError:
                    pass
            os.close(fd)

    def __enter__(self) -> FolderLocks:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock(folder: str) -> int:
    """Lock ``folder``; return the open lock file's descriptor.

    The lock file is removed on release, so after locking the descriptor is checked to still
    be the file at the path (a run releasing at the same moment may have just removed it).
    """
    path = os.path.join(folder, LOCK_NAME)
    for _ in range(_ATTEMPTS):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0),
                         0o644)
        except OSError as exc:
            raise InputError(f"cannot lock the output folder {folder!r}: creating {LOCK_NAME} failed "
                             f"({exc.strerror}); choose a folder you can write to") from None
        try:
            locked = _try_lock(fd)
        except OSError as exc:  # e.g. a network file system without locks: say so, never write unlocked
            os.close(fd)
            raise InputError(f"cannot lock the output folder {folder!r} ({exc.strerror or exc}); choose a folder "
                             "on a local disk") from None
        if not locked:
            holder = _read_holder(fd)
            os.close(fd)
            raise FolderBusy(f"the output folder {folder!r} is in use by another ChangeCLIP run{holder}; wait "
                             "for it to finish, or choose another output folder")
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
            return fd
        os.close(fd)  # it was removed (or replaced) by the run that released it: lock the new one
    raise InputError(f"cannot lock the output folder {folder!r}: its lock file keeps changing; try again")


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":  # pragma: no cover - checked on Linux only
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_holder(fd: int) -> str:
    """`` (process PID on HOST)`` from the lock file, or "" when it says nothing."""
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    except (OSError, AttributeError):
        return ""
    if len(text) >= 2 and text[0].isdigit():
        return f" (process {text[0]} on {text[1]})"
    return ""
