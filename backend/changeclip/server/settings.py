"""Settings of one ``changeclip serve`` process."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_HOST = "127.0.0.1"
MAX_BODY_BYTES = 1 << 20
"""Largest request body accepted (1 MiB); a job request is a few hundred bytes."""


@dataclass(frozen=True)
class ServerSettings:
    """What the app factory needs to know; built by ``changeclip serve`` or by tests.

    Attributes:
        token: the bearer token every request (except the liveness probe) must carry.
        default_device: device for jobs whose ``device`` is ``"auto"`` (``auto``, ``cpu``,
            ``cuda`` or ``cuda:N``; resolved once at start-up).
        max_models: most models kept loaded at once (LRU; bounded per device).
        max_model_memory_gb: bound on the memory the cached models may take per device,
            in GiB (``None``: only ``max_models`` bounds it).
        max_finished_jobs: finished jobs remembered for status/result queries; older
            ones are forgotten first.
        shutdown_timeout_s: how long shutting down waits for a running job to stop after
            it was cancelled, in seconds.
        state_dir: folder of the durable job journal (``jobs.sqlite3``); ``None``: no journal,
            jobs are only remembered in memory (``changeclip serve`` always gives one).
        stuck_job_grace_s: how long a cancelled job may take to stop before it is given up
            (marked cancelled, its thread abandoned) so that the queue and shutting down go on.
    """

    token: str
    default_device: str = "auto"
    max_models: int = 2
    max_model_memory_gb: float | None = None
    max_finished_jobs: int = 500
    shutdown_timeout_s: float = 60.0
    state_dir: str | None = None
    stuck_job_grace_s: float = 10.0

    def __post_init__(self) -> None:
        if len(self.token) < 16:
            raise ValueError("the server token must be at least 16 characters long")
        if self.max_models < 1:
            raise ValueError(f"max_models must be >= 1, got {self.max_models}")
        if self.max_model_memory_gb is not None and not self.max_model_memory_gb > 0:
            raise ValueError(f"max_model_memory_gb must be > 0, got {self.max_model_memory_gb}")
        if self.max_finished_jobs < 1:
            raise ValueError(f"max_finished_jobs must be >= 1, got {self.max_finished_jobs}")
        if not self.stuck_job_grace_s > 0:
            raise ValueError(f"stuck_job_grace_s must be > 0, got {self.stuck_job_grace_s}")

    def __repr__(self) -> str:  # never log the token
        return (f"ServerSettings(token=<hidden>, default_device={self.default_device!r}, "
                f"max_models={self.max_models}, max_model_memory_gb={self.max_model_memory_gb}, "
                f"max_finished_jobs={self.max_finished_jobs}, state_dir={self.state_dir!r}, "
                f"stuck_job_grace_s={self.stuck_job_grace_s})")
