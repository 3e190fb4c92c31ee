"""The server's durable job journal: the last known state of every job, across restarts.

A small SQLite file (``jobs.sqlite3`` in the server's state folder, see
:func:`default_state_dir`) holds one row per job: its :class:`~changeclip.protocol.JobInfo`
as JSON, written when the job is submitted, starts, enters a new stage and ends, and the
result summary of a succeeded job. So after the server is stopped or killed (even with
``kill -9``) and started again, every earlier job id still answers ``GET /v1/jobs/{id}``.

Jobs that an earlier server left ``queued`` or ``running`` cannot have finished: the next
server to open the journal marks them ``lost`` with the reason. Several servers may share
one state folder: each holds an exclusive OS lock on its own file in ``servers/`` for as long
as it runs (the OS releases it when the process dies, however it dies), and only the jobs of
servers whose lock can be taken, i.e. of servers that are gone, are marked lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from changeclip.errors import InputError
from changeclip.protocol import JobInfo

log = logging.getLogger(__name__)

ENV_STATE_DIR = "CHANGECLIP_STATE_DIR"
"""Environment variable naming the state folder (``--state-dir`` wins over it)."""
JOURNAL_NAME = "jobs.sqlite3"
MAX_ROWS = 10_000
"""Jobs kept in the journal; the least recently updated beyond this are dropped at start-up."""
_LIVE_STATES = ("queued", "running")
"""The job states that are not final (``protocol.JOB_STATES`` less ``protocol.FINAL_JOB_STATES``)."""


def default_state_dir() -> Path:
    """The state folder: ``$CHANGECLIP_STATE_DIR``, else the platform's per-user state folder.

    Linux and other Unix: ``$XDG_STATE_HOME/changeclip`` (``~/.local/state/changeclip``);
    macOS: ``~/Library/Application Support/changeclip``; Windows: ``%LOCALAPPDATA%\\changeclip``.
    """
    env = os.environ.get(ENV_STATE_DIR)
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "changeclip"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "changeclip"
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "changeclip"


class JobJournal:
    """The journal of one server process.

    Args:
        state_dir: the state folder (created, mode 0700, if missing).
        server_id: this server's id (a fresh random hex string per start).

    Raises:
        InputError: the folder or the journal cannot be created or opened (says which and why).
    """

    def __init__(self, state_dir: str | os.PathLike[str], server_id: str) -> None:
        self.state_dir = Path(state_dir).expanduser().absolute()
        self.path = self.state_dir / JOURNAL_NAME
        self.server_id = server_id
        self._lock = threading.Lock()
        self._alive: IO[bytes] | None = None
        self._db: sqlite3.Connection | None = None
        self.recovered: list[JobInfo] = []
        """Jobs of earlier servers that this one found unfinished and marked ``lost``."""
        try:
            (self.state_dir / "servers").mkdir(parents=True, exist_ok=True, mode=0o700)
            self._alive = _hold_lock(self._lock_path(server_id))
            db = self._db = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False,
                                            isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, server_id TEXT NOT NULL, "
                             "server_pid INTEGER NOT NULL, state TEXT NOT NULL, info TEXT NOT NULL, "
                             "result TEXT, updated REAL NOT NULL)")
            db.execute("CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, server_id)")
            self.recovered = self._mark_lost_of_gone_servers(db)
            _prune(db)
        except (OSError, sqlite3.Error) as exc:
            self.close()
            raise InputError(f"cannot use the job journal {self.path}: {exc}; give a writable folder with "
                             f"--state-dir (or ${ENV_STATE_DIR})") from exc

    # -- writing -----------------------------------------------------------------------

    def record(self, info: JobInfo, result: dict[str, Any] | None = None) -> None:
        """Store the job's current state (and the result of a succeeded job).

        A failing write (disk full, folder removed) is logged as an error and does not stop
        the job: the journal is a record of jobs, not a condition for running them.
        """
        data = json.dumps(dataclasses.asdict(info), allow_nan=False, default=str)
        blob = json.dumps(result, allow_nan=False, default=str) if result is not None else None
        try:
            with self._lock:
                if self._db is None:  # closed: the server is stopping; a straggling thread has nothing to add
                    log.warning("job %s: the journal is closed; state %s not recorded", info.job_id, info.state)
                    return
                self._db.execute("INSERT INTO jobs (job_id, server_id, server_pid, state, info, result, updated) "
                                 "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(job_id) DO UPDATE SET "
                                 "state=excluded.state, info=excluded.info, result=excluded.result, "
                                 "updated=excluded.updated",
                                 (info.job_id, self.server_id, os.getpid(), info.state, data, blob, time.time()))
        except (sqlite3.Error, ValueError) as exc:
            log.error("job %s: could not write the job journal %s (%s); after a restart this job's state "
                      "may be out of date", info.job_id, self.path, exc)

    # -- reading -----------------------------------------------------------------------

    def get(self, job_id: str) -> tuple[JobInfo, dict[str, Any] | None] | None:
        """The last recorded state of ``job_id`` and its result, or ``None`` if never recorded."""
        with self._lock:
            if self._db is None:
                return None
            row = self._db.execute("SELECT info, result FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        result = json.loads(row[1]) if row[1] else None
        return JobInfo.from_dict(json.loads(row[0])), result if isinstance(result, dict) else None

    # -- life cycle --------------------------------------------------------------------

    def close(self) -> None:
        """Close the database and release (and remove) this server's lock."""
        with self._lock:
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
                self._db = None
        if self._alive is not None:
            with contextlib.suppress(OSError):
                self._lock_path(self.server_id).unlink()
            self._alive.close()
            self._alive = None

    def _lock_path(self, server_id: str) -> Path:
        return self.state_dir / "servers" / f"{server_id}.lock"

    def _mark_lost_of_gone_servers(self, db: sqlite3.Connection) -> list[JobInfo]:
        """Mark ``lost`` every queued or running job of a server that no longer runs."""
        marks = ",".join("?" * len(_LIVE_STATES))
        owners = db.execute(f"SELECT DISTINCT server_id FROM jobs WHERE state IN ({marks}) "  # nosec B608
                            "AND server_id != ?", (*_LIVE_STATES, self.server_id)).fetchall()
        lost: list[JobInfo] = []
        for (owner,) in owners:
            probe = _try_lock(self._lock_path(owner))
            if probe is None:  # that server still runs: its jobs are its own business
                continue
            rows = db.execute(f"SELECT info, server_pid FROM jobs WHERE server_id = ? "  # nosec B608
                              f"AND state IN ({marks})", (owner, *_LIVE_STATES)).fetchall()
            for raw, pid in rows:
                info = JobInfo.from_dict(json.loads(raw))
                info = _as_lost(info, pid)
                self.record(info)
                lost.append(info)
                log.warning("job %s: %s", info.job_id, info.error)
            probe.close()
            with contextlib.suppress(OSError):
                self._lock_path(owner).unlink()
        return lost


def _prune(db: sqlite3.Connection) -> None:
    """Keep the :data:`MAX_ROWS` most recently updated jobs."""
    db.execute("DELETE FROM jobs WHERE job_id IN (SELECT job_id FROM jobs ORDER BY updated DESC LIMIT -1 OFFSET ?)",
               (MAX_ROWS,))


def lost_reason(state: str, stage: str, pid: int | None, what: str) -> str:
    """The ``error`` of a lost job: what happened, when, and what to do."""
    where = f"running (stage {stage})" if state == "running" else "waiting in the queue"
    server = f"the server (pid {pid})" if pid else "the server"
    return (f"lost: {server} {what} while this job was {where}; it did not finish and published no outputs "
            "(hidden temporary files it left in the output folder may be deleted); submit it again")


def _as_lost(info: JobInfo, pid: int | None) -> JobInfo:
    error = lost_reason(info.state, info.progress.stage, pid, "stopped (killed, crashed or shut down)")
    progress = dataclasses.replace(info.progress, eta_s=None, message=error)
    return dataclasses.replace(info, state="lost", error=error, finished=time.time(), progress=progress)


def _hold_lock(path: Path) -> IO[bytes]:
    """Open ``path`` and take an exclusive lock on it for as long as the file stays open."""
    handle = open(path, "a+b")  # noqa: SIM115 - held for the server's lifetime
    if not _lock(handle):
        handle.close()
        raise OSError(f"{path} is locked by another process")
    return handle


def _try_lock(path: Path) -> IO[bytes] | None:
    """The open, locked file if nobody holds ``path``'s lock (missing counts as free), else None."""
    try:
        handle = open(path, "a+b")  # noqa: SIM115 - closed by the caller
    except OSError:
        return None
    if _lock(handle):
        return handle
    handle.close()
    return None


def _lock(handle: IO[bytes]) -> bool:
    """Take an exclusive, non-blocking lock on ``handle``; False if another process holds it."""
    try:
        if sys.platform == "win32":
            import msvcrt

            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True

