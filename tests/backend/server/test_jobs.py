"""JobManager: FIFO per device, cancellation, failures, progress/ETA, shutdown (scripted runner)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from changeclip.errors import ChangeClipError, InputError, JobCancelled
from changeclip.protocol import DetectParams
from changeclip.server.jobs import JobConflict, JobManager, UnknownJob

from .conftest import ScriptedRunner, wait_for


def _params(tmp_path: Path, name: str, device: str = "auto") -> DetectParams:
    return DetectParams(before=str(tmp_path / "b.tif"), after=str(tmp_path / "a.tif"),
                        output_dir=str(tmp_path / name), engine="irmad", device=device)


def _resolve(device: str) -> str:
    if device == "cuda:9":
        raise InputError("no cuda:9 here")
    return "cpu" if device == "auto" else device


@pytest.fixture
def manager_and_runner() -> Any:
    runner = ScriptedRunner()
    manager = JobManager(runner, _resolve, max_finished=50)
    yield manager, runner
    runner.release.set()
    assert manager.shutdown(30)


def _wait_final(manager: JobManager, job_id: str) -> Any:
    wait_for(lambda: manager.get(job_id).state in ("succeeded", "failed", "cancelled"), 60, f"job {job_id}")
    return manager.get(job_id)


def test_fifo_one_at_a_time_per_device(manager_and_runner: Any, tmp_path: Path) -> None:
    manager, runner = manager_and_runner
    ids = [manager.submit(_params(tmp_path, f"job{i}")).job_id for i in range(4)]
    for job_id in ids:
        assert _wait_final(manager, job_id).state == "succeeded"
    assert runner.started == [f"job{i}" for i in range(4)]
    assert runner.max_parallel == 1
    assert [j.job_id for j in manager.list()] == ids


def test_devices_have_their_own_queues(manager_and_runner: Any, tmp_path: Path) -> None:
    manager, runner = manager_and_runner
    blocker = manager.submit(_params(tmp_path, "block-cpu", device="cpu"))
    wait_for(runner.running_now.is_set, what="blocker running")
    other = manager.submit(_params(tmp_path, "other", device="cuda:1"))  # resolver lets it through
    assert _wait_final(manager, other.job_id).state == "succeeded"   # not stuck behind the cpu job
    assert manager.get(blocker.job_id).state == "running"
    runner.release.set()
    assert _wait_final(manager, blocker.job_id).state == "succeeded"


def test_unknown_device_is_refused_at_submit(manager_and_runner: Any, tmp_path: Path) -> None:
    manager, _ = manager_and_runner
    with pytest.raises(ChangeClipError, match="cuda:9"):
        manager.submit(_params(tmp_path, "x", device="cuda:9"))
    assert manager.list() == []


def test_cancel_queued_job_never_runs(manager_and_runner: Any, tmp_path: Path) -> None:
    manager, runner = manager_and_runner
    blocker = manager.submit(_params(tmp_path, "block"))
    wait_for(runner.running_now.is_set, what="blocker running")
    queued = manager.submit(_params(tmp_path, "queued"))
    assert manager.queue_lengths() == {"cpu": 1}
    info = manager.cancel(queued.job_id)
    assert info.state == "cancelled" and info.finished is not None
    assert manager.queue_lengths() == {"cpu": 0}
    runner.release.set()
    assert _wait_final(manager, blocker.job_id).state == "succeeded"
    assert "queued" not in runner.started


def test_cancel_running_job_stops_at_next_batch(manager_and_runner: Any, tmp_path: Path) -> None:
    manager, runner = manager_and_runner
    job = manager.submit(_params(tmp_path, "block"))
    wait_for(lambda: manager.get(job.job_id).progress.done >= 2, what="a few batches")
    manager.cancel(job.job_id)
    final = _wait_final(manager, job.job_id)
    assert final.state == "cancelled"
    assert "partial outputs removed" in final.error
    assert list((tmp_path / "block").iterdir()) == []
    with pytest.raises(JobConflict, match="cancelled"):
        manager.result(job.job_id)
    # cancelling again (a final job) changes nothing
    assert manager.cancel(job.job_id).state == "cancelled"


def test_failures_fail_only_their_job(manager_and_runner: Any, tmp_path: Path) -> None:
    manager, _ = manager_and_runner
    crash = manager.submit(_params(tmp_path, "fail"))
    oops = manager.submit(_params(tmp_path, "oops"))
    ok = manager.submit(_params(tmp_path, "fine"))
    assert _wait_final(manager, crash.job_id).error == "ValueError: scripted crash"
    assert _wait_final(manager, oops.job_id).error == "scripted input problem: fix the input"
    final = _wait_final(manager, ok.job_id)
    assert final.state == "succeeded"
    assert manager.result(ok.job_id)["tiles"] == 3


def test_progress_fraction_and_eta(tmp_path: Path) -> None:
    gate = threading.Event()
    seen: list[Any] = []

    def runner(params: DetectParams, progress: Any, is_cancelled: Any) -> dict[str, Any]:
        progress("loading_model", 0, 0)
        for done in range(1, 5):
            time.sleep(0.05)
            progress("tiles", done, 4)
            if done == 2:
                seen.append("half")
                gate.wait(30)
        return {"outputs": {}}

    manager = JobManager(runner, _resolve)
    job = manager.submit(_params(tmp_path, "p"))
    wait_for(lambda: seen, what="half way")
    mid = manager.get(job.job_id).progress
    assert (mid.stage, mid.done, mid.total) == ("tiles", 2, 4)
    assert mid.fraction == pytest.approx(0.10 + 0.80 * 0.5)
    assert mid.eta_s is not None and mid.eta_s > 0
    gate.set()
    final = _wait_final(manager, job.job_id)
    assert final.progress.fraction == 1.0 and final.progress.eta_s is None and final.progress.stage == "done"
    assert final.started is not None and final.finished is not None and final.finished >= final.started
    manager.shutdown(10)


def test_same_outputs_conflict_until_finished(manager_and_runner: Any, tmp_path: Path) -> None:
    manager, runner = manager_and_runner
    first = manager.submit(_params(tmp_path, "block"))
    with pytest.raises(JobConflict, match=first.job_id):
        manager.submit(_params(tmp_path, "block"))
    with pytest.raises(JobConflict, match=first.job_id):  # the same folder spelt differently
        manager.submit(_params(tmp_path, "x/../block/"))
    runner.release.set()
    _wait_final(manager, first.job_id)
    second = manager.submit(_params(tmp_path, "block"))  # allowed once the first is final
    assert _wait_final(manager, second.job_id).state == "succeeded"


def test_unknown_job(manager_and_runner: Any) -> None:
    manager, _ = manager_and_runner
    for call in (manager.get, manager.cancel, manager.result):
        with pytest.raises(UnknownJob):
            call("f" * 32)


def test_old_finished_jobs_are_forgotten(tmp_path: Path) -> None:
    manager = JobManager(lambda p, progress, c: {"outputs": {}}, _resolve, max_finished=2)
    ids = []
    for i in range(4):
        ids.append(manager.submit(_params(tmp_path, f"j{i}")).job_id)
        _wait_final(manager, ids[-1])
    manager.submit(_params(tmp_path, "last"))
    remembered = [j.job_id for j in manager.list()]
    assert ids[0] not in remembered and ids[-1] in remembered
    assert len([j for j in manager.list() if j.state == "succeeded"]) <= 2
    manager.shutdown(10)


def test_shutdown_cancels_everything_and_refuses_new_jobs(tmp_path: Path) -> None:
    runner = ScriptedRunner()
    manager = JobManager(runner, _resolve)
    running = manager.submit(_params(tmp_path, "block"))
    queued = manager.submit(_params(tmp_path, "later"))
    wait_for(runner.running_now.is_set, what="running")
    assert manager.shutdown(30)
    assert manager.get(running.job_id).state == "cancelled"
    assert manager.get(queued.job_id).state == "cancelled"
    assert not (tmp_path / "block" / "change_mask.tif").exists()
    with pytest.raises(JobConflict, match="shutting down"):
        manager.submit(_params(tmp_path, "new"))


def test_runner_returning_garbage_fails_the_job(tmp_path: Path) -> None:
    manager = JobManager(lambda p, progress, c: None, _resolve)  # type: ignore[arg-type,return-value]
    job = manager.submit(_params(tmp_path, "g"))
    assert "internal error" in _wait_final(manager, job.job_id).error
    manager.shutdown(10)


def test_job_cancelled_raised_without_request_is_cancelled_state(tmp_path: Path) -> None:
    def runner(params: DetectParams, progress: Any, is_cancelled: Any) -> dict[str, Any]:
        raise JobCancelled("stopped")

    manager = JobManager(runner, _resolve)
    job = manager.submit(_params(tmp_path, "c"))
    assert _wait_final(manager, job.job_id).state == "cancelled"
    manager.shutdown(10)
