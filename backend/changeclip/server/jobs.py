"""The job manager: one FIFO queue and one worker thread per device.

A job runs the detection pipeline (an injectable ``runner`` with the signature of
:func:`changeclip.pipeline.run_detection` minus the cache) with a progress callback
and a cancellation flag the pipeline polls between batches. Whatever a job raises
fails that job only; the manager and its workers keep running.

Each job runs in a thread of its own, watched by its device's worker: a job that does not
stop within ``stuck_grace_s`` of being cancelled (blocked in a call that never returns) is
given up as ``cancelled``, so the queue and shutting down go on; the abandoned thread stops
at its next cancellation check, if it ever returns, and publishes nothing. (A read blocked
inside GDAL would hold GDAL's global lock and stall the next job anyway: the server's runner
first probes the inputs in a child process, see :mod:`changeclip.server.input_probe`.) With a :class:`~changeclip.server.journal.JobJournal` every state change is
recorded, and jobs of earlier server runs are answered from it.

Jobs of every kind (:data:`protocol.JOB_KINDS`: detect, dataset, train) share the same
per-device queue, so one device runs one job at a time whatever its kind; each kind has its
runner (``runners``). A runner may pass a fourth argument to its progress callback, an event
dict (training: ``start``, ``step``, ``val``, ``note``, ``checkpoint``, ``end``): the manager
keeps the job's events in order (:meth:`JobManager.events`) and folds them into its progress.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from changeclip import protocol
from changeclip.errors import ChangeClipError, JobCancelled
from changeclip.protocol import DetectParams, JobInfo, JobParams, JobProgress, job_kind
from changeclip.server.journal import JobJournal, lost_reason

log = logging.getLogger(__name__)

ProgressFn = Callable[..., None]
"""``progress(stage, done, total[, event])``."""
CancelFn = Callable[[], bool]


class Runner(Protocol):
    """Runs one detection; :func:`changeclip.pipeline.run_detection` with its cache bound."""

    def __call__(self, params: DetectParams, progress: ProgressFn, is_cancelled: CancelFn) -> dict[str, Any]:
        """Run ``params``; return the summary dict; raise JobCancelled when cancelled."""
        ...


class UnknownJob(KeyError):
    """No job with this id (never existed, or forgotten)."""


class JobConflict(RuntimeError):
    """The request conflicts with the job's state or with another job."""


# Overall-progress fraction at the start of each stage; "tiles" spans 0.10 .. 0.90.
_STAGE_START = {"queued": 0.0, "preparing": 0.01, "loading_model": 0.03, "scaling": 0.06,
                "fitting": 0.08, "calibrating": 0.09, "tiles": 0.10, "polygons": 0.90, "describing": 0.92,
                "finalising": 0.95, "done": 1.0}
_TILES_SPAN = 0.80


TRAIN_STOP_GRACE_S = 300.0
"""A cancelled training (or dataset) job is given up only after this long (see :meth:`JobManager._grace`)."""

MAX_EVENTS = 20_000
"""Events kept per job; older ones are dropped first (their sequence numbers stay counted)."""


def _normalised_outputs(params: JobParams) -> set[str]:
    """A job's final output paths, normalised so that equal paths compare equal."""
    return {os.path.normcase(os.path.abspath(p)) for p in params.output_paths().values() if p}


@dataclass
class Job:
    """One job and its live state; mutate only under :attr:`JobManager._lock`."""

    job_id: str
    params: JobParams
    device: str
    created: float
    state: str = "queued"
    progress: JobProgress = field(default_factory=JobProgress)
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    tiles_started: float | None = None
    cancel_requested: float | None = None
    kind: str = "detect"
    events: list[dict[str, Any]] = field(default_factory=list)
    events_dropped: int = 0

    def info(self) -> JobInfo:
        """A snapshot as the protocol's :class:`JobInfo`."""
        return JobInfo(job_id=self.job_id, state=self.state, params=self.params.to_dict(),
                       progress=replace(self.progress), device=self.device, created=self.created,
                       started=self.started, finished=self.finished, error=self.error, kind=self.kind)


class JobManager:
    """Queues jobs per device and runs them one at a time per device, first in first out.

    Args:
        runner: runs one job (see :class:`Runner`).
        resolve_device: maps a job's device string (``auto``, ``cpu``, ``cuda:N``) to the
            concrete device whose queue runs it; raises ``ChangeClipError`` for a device
            that does not exist.
        max_finished: finished jobs remembered; the oldest finished ones are forgotten.
        journal: where every state change is recorded, and earlier runs' jobs are looked up
            (``None``: jobs are only kept in memory).
        stuck_grace_s: how long a cancelled job may take to stop before it is given up.
        runners: the runner of each other job kind (``dataset``, ``train``); ``runner`` runs
            ``detect`` jobs.
    """

    def __init__(self, runner: Runner, resolve_device: Callable[[str], str], max_finished: int = 500,
                 journal: JobJournal | None = None, stuck_grace_s: float = 10.0,
                 runners: dict[str, Runner] | None = None) -> None:
        self._runner = runner
        self._runners = dict(runners or {})
        self._resolve_device = resolve_device
        self._max_finished = max_finished
        self._journal = journal
        self._stuck_grace_s = stuck_grace_s
        self._recovered: OrderedDict[str, JobInfo] = OrderedDict(
            (info.job_id, info) for info in (journal.recovered if journal is not None else []))
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._queues: dict[str, queue.Queue[Job | None]] = {}
        self._workers: dict[str, threading.Thread] = {}
        self._closed = False

    # -- public API --------------------------------------------------------------------

    def submit(self, params: JobParams) -> JobInfo:
        """Queue a job of any kind; return its info (state ``queued``; its progress message says
        which jobs run or wait before it on the same device).

        Raises:
            ChangeClipError: the device cannot be used (from ``resolve_device``).
            JobConflict: the server is shutting down, or a queued/running job writes the
                same output folder or file.
        """
        kind = job_kind(params)
        device = self._resolve_device(getattr(params, "device", "auto"))
        if hasattr(params, "device"):
            params = replace(params, device=device)
        job = Job(job_id=uuid.uuid4().hex, params=params, device=device, created=time.time(), kind=kind)
        with self._lock:
            if self._closed:
                raise JobConflict("the server is shutting down; no new jobs are accepted")
            clash = self._output_clash(params)
            if clash is not None:
                raise JobConflict(f"job {clash.job_id} ({clash.state}) already writes to {clash.params.output_dir}; "
                                  "wait for it, cancel it, or choose another output folder")
            ahead = self._ahead_of(device)
            if ahead:
                job.progress.message = ahead
            self._jobs[job.job_id] = job
            self._record(job)
            self._queue_for(device).put(job)
            self._forget_old()
            log.info("job %s (%s) queued on %s%s", job.job_id, kind, device, f"; {ahead}" if ahead else "")
            return job.info()

    def events(self, job_id: str, since: int = 0) -> tuple[list[dict[str, Any]], int]:
        """The job's events with a sequence number above ``since``, and the number of events so far
        (none for a job of an earlier server run: only the journal's state survives a restart).

        Raises :class:`UnknownJob`.
        """
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                start = max(0, since - job.events_dropped)
                return [dict(e) for e in job.events[start:]], job.events_dropped + len(job.events)
        self._journaled(job_id)  # a job of an earlier run: known, but its events were not kept
        return [], 0

    def get(self, job_id: str) -> JobInfo:
        """Info of one job (from the journal for jobs this run no longer or never held).

        Raises :class:`UnknownJob`."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                return job.info()
        return self._journaled(job_id)[0]

    def result(self, job_id: str) -> dict[str, Any]:
        """The summary of a succeeded job.

        Raises:
            UnknownJob: no such job.
            JobConflict: the job has not succeeded (message says its state).
        """
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                state, error, result = job.state, job.error, job.result
        if job is None:
            info, result = self._journaled(job_id)
            state, error = info.state, info.error
        if state != "succeeded" or result is None:
            hint = f": {error}" if error else ""
            raise JobConflict(f"job {job_id} is {state}{hint}; a result exists only once it has succeeded")
        return dict(result)

    def list(self) -> list[JobInfo]:
        """All remembered jobs, oldest first: those found lost at start-up, then this run's."""
        with self._lock:
            return list(self._recovered.values()) + [job.info() for job in self._jobs.values()]

    def cancel(self, job_id: str) -> JobInfo:
        """Cancel a job: a queued one at once, a running one at its next batch.

        Cancelling a finished job (or one of an earlier run, from the journal) changes
        nothing: its info is returned as is. Raises :class:`UnknownJob`.
        """
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                self._cancel_locked(job)
                return job.info()
        return self._journaled(job_id)[0]

    def queue_lengths(self) -> dict[str, int]:
        """Jobs waiting (not running) per device."""
        with self._lock:
            counts = {device: 0 for device in self._queues}
            for job in self._jobs.values():
                if job.state == "queued" and not job.cancel_event.is_set():
                    counts[job.device] = counts.get(job.device, 0) + 1
            return counts

    def running(self) -> list[str]:
        """Ids of the running jobs."""
        with self._lock:
            return [job.job_id for job in self._jobs.values() if job.state == "running"]

    def count(self) -> int:
        """Number of remembered jobs."""
        with self._lock:
            return len(self._jobs)

    def close(self) -> None:
        """Refuse new jobs and cancel every queued and running job (does not wait)."""
        with self._lock:
            self._closed = True
            for job in self._jobs.values():
                self._cancel_locked(job)

    def shutdown(self, timeout_s: float = 60.0) -> bool:
        """:meth:`close`, then stop the workers, waiting for running jobs to stop.

        Args:
            timeout_s: how long to wait for running jobs to stop (they stop at their next
                batch and remove their partial outputs).

        Returns:
            True if every worker stopped in time.
        """
        self.close()
        with self._lock:
            for q in self._queues.values():
                q.put(None)
            workers = list(self._workers.values())
        deadline = time.monotonic() + timeout_s
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        stopped = not any(w.is_alive() for w in workers)
        if not stopped:
            log.error("a running job did not stop within %.0f s of being cancelled", timeout_s)
        with self._lock:
            for job in self._jobs.values():
                if job.state not in protocol.FINAL_JOB_STATES:
                    self._finish(job, "lost", error=lost_reason(job.state, job.progress.stage, os.getpid(),
                                                                "shut down and the job did not stop in time"))
        return stopped

    # -- internals ---------------------------------------------------------------------

    def _journaled(self, job_id: str) -> tuple[JobInfo, dict[str, Any] | None]:
        """A job of an earlier run (or one forgotten by this one) from the journal."""
        found = self._journal.get(job_id) if self._journal is not None else None
        if found is None:
            raise UnknownJob(job_id)
        return found

    def _record(self, job: Job) -> None:
        """Write the job's state to the journal, if there is one (call under the lock)."""
        if self._journal is not None:
            self._journal.record(job.info(), job.result if job.state == "succeeded" else None)

    def _cancel_locked(self, job: Job) -> None:
        if job.state in protocol.FINAL_JOB_STATES:
            return
        job.cancel_event.set()
        if job.cancel_requested is None:
            job.cancel_requested = time.monotonic()
        if job.state == "queued":
            self._finish(job, "cancelled", error="cancelled before it started")
        else:
            job.progress.message = "cancelling"
        log.info("job %s: cancel requested", job.job_id)

    def _ahead_of(self, device: str) -> str:
        """Which jobs run or wait on ``device`` (empty when none): a new job queues behind them."""
        busy = [j for j in self._jobs.values() if j.device == device and j.state in ("queued", "running")
                and not j.cancel_event.is_set()]
        if not busy:
            return ""
        running = [j for j in busy if j.state == "running"]
        what = (f"{running[0].kind} job {running[0].job_id} is running" if running else "none running yet")
        return (f"queued: {len(busy)} job(s) ahead on {device} ({what}); one job runs at a time per device, "
                "this one starts when they end")

    def _output_clash(self, params: JobParams) -> Job | None:
        mine = _normalised_outputs(params)
        for other in self._jobs.values():
            if other.state in protocol.FINAL_JOB_STATES:
                continue
            theirs = _normalised_outputs(other.params)
            if mine & theirs:
                return other
        return None

    def _queue_for(self, device: str) -> queue.Queue[Job | None]:
        q = self._queues.get(device)
        if q is None:
            q = self._queues[device] = queue.Queue()
            worker = threading.Thread(target=self._work, args=(device, q), name=f"changeclip-jobs-{device}",
                                      daemon=True)
            self._workers[device] = worker
            worker.start()
        return q

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.state in protocol.FINAL_JOB_STATES]
        for job in finished[: max(0, len(finished) - self._max_finished)]:
            del self._jobs[job.job_id]

    def _finish(self, job: Job, state: str, error: str | None = None,
                result: dict[str, Any] | None = None) -> None:
        job.state = state
        job.error = error
        job.result = result
        job.finished = time.time()
        job.progress.eta_s = None
        if state == "succeeded":
            job.progress.stage, job.progress.fraction, job.progress.message = "done", 1.0, ""
        else:
            job.progress.message = error or state
        self._record(job)

    def _work(self, device: str, q: queue.Queue[Job | None]) -> None:
        while True:
            job = q.get()
            if job is None:
                return
            with self._lock:
                if job.state != "queued" or job.cancel_event.is_set():
                    continue
                job.state = "running"
                job.started = time.time()
                job.progress.message = ""
                job.progress.stage = "preparing"
                job.progress.fraction = _STAGE_START["preparing"]
                self._record(job)
            self._watch(job)

    def _watch(self, job: Job) -> None:
        """Run ``job`` in a thread of its own; give it up if it does not stop once cancelled."""
        thread = threading.Thread(target=self._run, args=(job,), name=f"changeclip-job-{job.job_id[:8]}",
                                  daemon=True)
        thread.start()
        while True:
            thread.join(0.1)
            if not thread.is_alive():
                return
            with self._lock:
                requested = job.cancel_requested
                if requested is None or time.monotonic() - requested < self._grace(job):
                    continue
                stage = job.progress.stage
                self._finish(job, "cancelled", error=(
                    f"cancelled, but the job did not stop within {self._grace(job):g} s (stuck in stage "
                    f"{stage}, e.g. in a call that never returns); it was "
                    "given up so that the queue goes on, and publishes no outputs if it ever resumes"))
                self._forget_old()
            log.error("job %s did not stop within %.0f s of being cancelled (stage %s); given up",
                      job.job_id, self._grace(job), stage)
            return

    def _grace(self, job: Job) -> float:
        """How long ``job`` may take to stop once cancelled: a training job first finishes its
        iteration and saves a resumable checkpoint, which can take far longer than a batch."""
        return self._stuck_grace_s if job.kind == "detect" else max(self._stuck_grace_s, TRAIN_STOP_GRACE_S)

    def _run(self, job: Job) -> None:
        log.info("job %s (%s) started on %s", job.job_id, job.kind, job.device)
        state, error, result = "failed", None, None
        runner = self._runner if job.kind == "detect" else self._runners.get(job.kind)
        try:
            if runner is None:
                raise ChangeClipError(f"this server cannot run {job.kind} jobs")
            result = runner(job.params, lambda s, d, t, e=None: self._progress(job, s, d, t, e),
                            job.cancel_event.is_set)
            state = "succeeded"
            if not isinstance(result, dict):
                state, error, result = "failed", f"internal error: the pipeline returned {type(result).__name__}", None
        except JobCancelled as exc:
            state, error = "cancelled", str(exc) or "cancelled"
        except ChangeClipError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a job's failure must never take the server down
            log.exception("job %s crashed", job.job_id)
            error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            if job.state in protocol.FINAL_JOB_STATES:  # given up by _watch while it was stuck
                log.info("abandoned job %s ended late (%s)", job.job_id, state)
                return
            self._finish(job, state, error=error, result=result)
            self._forget_old()
        log.info("job %s %s%s", job.job_id, state, f": {error}" if error else "")

    def _progress(self, job: Job, stage: str, done: int, total: int, event: dict[str, Any] | None = None) -> None:
        now = time.time()
        with self._lock:
            if job.state != "running":
                return
            p = job.progress
            if event is not None:
                self._event(job, stage, done, total, event)
                return
            if stage in _STAGE_START and stage != p.stage:
                p.stage = stage
                self._record(job)
            p.done, p.total = int(done), int(total)
            start = _STAGE_START.get(stage, p.fraction)
            if stage == "tiles":
                if job.tiles_started is None:
                    job.tiles_started = now
                within = done / total if total > 0 else 0.0
                fraction = start + _TILES_SPAN * min(1.0, max(0.0, within))
                elapsed = now - job.tiles_started
                p.eta_s = (elapsed / done * (total - done)) if done > 0 and total >= done else None
            else:
                fraction = start
                p.eta_s = None
            p.fraction = round(max(p.fraction, min(1.0, fraction)), 4)
            if not job.cancel_event.is_set():
                p.message = ""

    def _event(self, job: Job, stage: str, done: int, total: int, event: dict[str, Any]) -> None:
        """Record one runner event and fold it into the job's progress (call under the lock)."""
        p = job.progress
        seq = job.events_dropped + len(job.events) + 1
        job.events.append({"seq": seq, **event})
        if len(job.events) > MAX_EVENTS:
            drop = len(job.events) - MAX_EVENTS
            del job.events[:drop]
            job.events_dropped += drop
        p.events = seq
        if stage != p.stage:
            p.stage = stage
            self._record(job)
        p.done, p.total = int(done), int(total)
        if total > 0:
            p.fraction = round(max(p.fraction, min(1.0, done / total)), 4)
        kind = event.get("event")
        if kind == "start":
            p.iteration, p.iterations, p.device = event.get("iteration"), event.get("iters"), event.get("device")
        elif kind == "step":
            p.iteration, p.iterations = event.get("iteration"), event.get("iters")
            p.loss = event.get("loss")
            eta = event.get("eta_s")
            p.eta_s = float(eta) if isinstance(eta, (int, float)) else None
        elif kind == "val":
            metrics = {k: event.get(k) for k in ("iteration", "precision", "recall", "f1", "iou")}
            p.val = metrics
            if event.get("best"):
                p.best = metrics
        if kind == "note":
            p.message = str(event.get("message", ""))
        elif not job.cancel_event.is_set() and kind in ("step", "val", "start"):
            p.message = ""
