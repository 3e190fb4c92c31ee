"""Reliability of jobs under attack (issue 14, items 3, 5, 6, 8): blocking inputs, restarts,
misleading errors, waiting clients. Loopback only, small rasters, every loop bounded."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from changeclip import protocol
from changeclip.errors import InputError, JobCancelled
from changeclip.protocol import DetectParams, JobInfo, JobProgress, ParamError

from .conftest import LiveServer, make_pair, start_server_process, stop_server_process, wait_for
from .test_api import _raw

pytestmark = pytest.mark.server

CLI = [sys.executable, "-m", "changeclip"]


# --- helpers ---------------------------------------------------------------------------


def _fifo_vrt(folder: Path, raster: str, hidden: bool = True) -> tuple[Path, Path]:
    """A VRT of ``raster`` whose sources are a FIFO: it opens fine, and its first read blocks.

    ``hidden``: the FIFO is reached through GDAL's ``/vsisubfile/`` (which no file check can
    see through, like a hung network share), else named plainly (refused up front)."""
    from osgeo import gdal

    gdal.UseExceptions()
    fifo = folder / "pipe.tif"
    os.mkfifo(fifo)
    vrt = folder / "blocking.vrt"
    gdal.Translate(str(vrt), raster, format="VRT")
    source = f"/vsisubfile/0_100000000,{fifo}" if hidden else str(fifo)
    text = re.sub(r'<SourceFilename relativeToVRT="\d">[^<]*</SourceFilename>',
                  f'<SourceFilename relativeToVRT="0">{source}</SourceFilename>', vrt.read_text())
    vrt.write_text(text)
    return vrt, fifo


def _children(pid: int) -> set[int]:
    """The process ids whose parent is ``pid``."""
    found = set()
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if stat_file.read_text().rsplit(")", 1)[1].split()[1] == str(pid):
                found.add(int(stat_file.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _blocked_opening_a_fifo(pid: int) -> bool:
    """Whether a thread of process ``pid`` or of one of its children waits in the kernel for
    the other end of a FIFO (Linux: its wait channel is ``wait_for_partner``)."""
    for member in {pid, *_children(pid)}:
        for wchan in Path(f"/proc/{member}/task").glob("*/wchan"):
            with contextlib.suppress(OSError):
                if wchan.read_text().strip() == "wait_for_partner":
                    return True
    return False


def _unblock(fifo: Path) -> None:
    """Let whoever is blocked opening ``fifo`` go on (it reads end-of-file; GDAL may open it again)."""
    for _ in range(50):
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # ENXIO: nobody has it open for reading any more
            return
        time.sleep(0.05)


def _cli(*args: str | bytes, timeout: float = 180, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*CLI, *args], capture_output=True, timeout=timeout, env={**os.environ, **(env or {})})


def _interrupt_once_waiting(child: subprocess.Popen[bytes]) -> bytes:
    """Send SIGINT once ``submit --wait`` logged that it waits; return the stderr read so far."""
    seen = b""
    assert child.stderr is not None
    for _ in range(200):  # bounded: the first lines are the queued message
        line = child.stderr.readline()
        seen += line
        if not line or b" queued on " in line:
            break
    child.send_signal(signal.SIGINT)
    return seen


def _token_file(folder: Path, token: str) -> Path:
    path = folder / "token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


class DeafRunner:
    """A runner whose jobs ignore cancellation until :attr:`release` is set (a job that will
    not stop), or, for output folders named ``quick*``, finish at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.running = threading.Event()

    def __call__(self, params: DetectParams, progress: Any, is_cancelled: Any) -> dict[str, Any]:
        progress("preparing", 0, 1)
        if not Path(params.output_dir).name.startswith("quick"):
            self.running.set()
            self.release.wait(120)
            if is_cancelled():
                raise JobCancelled("cancelled")
        return {"outputs": {}}


@contextlib.contextmanager
def _serve_inprocess(runner: Any, **settings: Any) -> Iterator[LiveServer]:
    """The real app with ``runner``, served by uvicorn on 127.0.0.1 in a thread."""
    import uvicorn

    from changeclip.client import ChangeClipClient
    from changeclip.server.app import create_app
    from changeclip.server.process import bind_socket
    from changeclip.server.settings import ServerSettings

    class CpuOnly:
        def resolve_device(self, device: str) -> str:
            return "cpu"

    token = "r" * 24 + "-reliability"
    app = create_app(ServerSettings(token=token, **settings), runner=runner, system=CpuOnly())  # type: ignore[arg-type]
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30, "in-process server start")
    url = f"http://127.0.0.1:{port}"
    try:
        yield LiveServer(handshake={"url": url, "port": port, "token_file": None},
                         client=ChangeClipClient(url, token), token=token)
    finally:
        if hasattr(runner, "release"):
            runner.release.set()
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[str, str]:
    return make_pair(tmp_path / "data", 64)


# --- item 3: blocking inputs -------------------------------------------------------------


def test_detect_refuses_a_fifo_and_other_special_files_up_front(tmp_path: Path, pair: tuple[str, str]) -> None:
    """A FIFO input hung `detect` for good; now every non-regular input is refused, exit 2."""
    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    try:
        proc = _cli("detect", str(fifo), pair[1], "-o", str(tmp_path / "o"), "--engine", "irmad", timeout=120)
    finally:
        _unblock(fifo)
    assert proc.returncode == 2, proc.stderr.decode()
    assert "is not a regular file but a FIFO (named pipe)" in proc.stderr.decode()
    assert not (tmp_path / "o").exists()


def test_a_vrt_over_a_fifo_is_refused_up_front_too(tmp_path: Path, pair: tuple[str, str], inprocess_server: Any
                                                   ) -> None:
    """A VRT opens without touching its sources: a FIFO behind one hung `detect` at its first read
    (SIGINT could not stop it)."""
    vrt, fifo = _fifo_vrt(tmp_path, pair[0], hidden=False)
    try:
        proc = _cli("detect", str(vrt), pair[1], "-o", str(tmp_path / "o"), "--engine", "irmad", timeout=120)
        status, answer = _raw(inprocess_server[0], "POST", protocol.PATH_JOBS,
                              {"before": str(vrt), "after": pair[1], "output_dir": str(tmp_path / "o"),
                               "engine": "irmad"})
    finally:
        _unblock(fifo)
    assert proc.returncode == 2, proc.stderr.decode()
    assert f"is a VRT whose source '{fifo}' is not a regular file but a FIFO" in proc.stderr.decode()
    assert status == 400 and "is a VRT whose source" in answer["detail"]


def test_server_refuses_special_files_as_inputs_and_weights(inprocess_server: Any, tmp_path: Path,
                                                            pair: tuple[str, str]) -> None:
    server, _ = inprocess_server
    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    base = {"before": pair[0], "after": pair[1], "output_dir": str(tmp_path / "o"), "engine": "irmad"}
    cases = [({"before": str(fifo)}, "before", "a FIFO (named pipe)"),
             ({"after": "/dev/null"}, "after", "a character device"),
             ({"engine": "changeclip", "weights": "/dev/zero"}, "weights", "a character device")]
    for patch, field, kind in cases:
        status, answer = _raw(server, "POST", protocol.PATH_JOBS, {**base, **patch})
        assert status == 400, (patch, answer)
        assert answer["detail"].startswith(f"{field}: ") and f"is not a regular file but {kind}" in answer["detail"]
    assert server.client.jobs() == []


def test_a_blocking_input_neither_hangs_the_queue_nor_cancel_nor_shutdown(tmp_path: Path,
                                                                         pair: tuple[str, str]) -> None:
    """A VRT whose source is a FIFO (behind /vsisubfile/, so no check sees it) opens fine and
    blocks on its first read, holding GDAL's global lock: before the fix the job stayed 'running'
    forever, cancel never took effect, the next job never ran and shutdown waited 60 s. Its
    inputs are now first read by a child process that cancel kills."""
    vrt, fifo = _fifo_vrt(tmp_path, pair[0])
    server = start_server_process(tmp_path)
    client = server.client
    try:
        stuck = client.submit({"before": str(vrt), "after": pair[1], "output_dir": str(tmp_path / "stuck"),
                               "engine": "irmad", "device": "cpu"})
        behind = client.submit({"before": pair[0], "after": pair[1], "output_dir": str(tmp_path / "behind"),
                                "engine": "irmad", "device": "cpu"})
        assert server.proc is not None
        wait_for(lambda: _blocked_opening_a_fifo(server.proc.pid), 60, "the job to block on the FIFO")
        client.cancel(stuck.job_id)
        cancelled = client.wait(stuck.job_id, poll_s=0.2, timeout_s=60)
        assert cancelled.state == "cancelled" and "while its inputs were being opened" in str(cancelled.error)
        assert not (tmp_path / "stuck").exists()
        done = client.wait(behind.job_id, poll_s=0.2, timeout_s=120)
        assert done.state == "succeeded", done.error
        # stuck again, then shut down: the server exits (it waited 60 s for such a job before)
        client.submit({"before": str(vrt), "after": pair[1], "output_dir": str(tmp_path / "again"),
                       "engine": "irmad", "device": "cpu"})
        wait_for(lambda: _blocked_opening_a_fifo(server.proc.pid), 60, "the second job to block on the FIFO")
        client.shutdown()
        assert server.proc.wait(timeout=30) == 0
    finally:
        _unblock(fifo)
        stop_server_process(server)


# --- waiting clients: --timeout, Ctrl-C ---------------------------------------------------


def test_cancel_wait_and_submit_wait_stop_waiting_and_say_the_job_runs_on(tmp_path: Path,
                                                                         pair: tuple[str, str]) -> None:
    runner = DeafRunner()
    with _serve_inprocess(runner, stuck_job_grace_s=120) as server:
        env = {"CHANGECLIP_BACKEND_URL": server.url,
               "CHANGECLIP_TOKEN_FILE": str(_token_file(tmp_path, server.token))}
        args = [pair[0], pair[1], "--engine", "irmad"]
        # submit --wait --timeout: stops waiting, exit 4, the job goes on
        proc = _cli("submit", *args, "-o", str(tmp_path / "slow"), "--wait", "--timeout", "1", env=env)
        assert proc.returncode == 4, proc.stderr.decode()
        assert "stopped waiting after 1 s" in proc.stderr.decode()
        job_id = server.client.jobs()[0].job_id
        assert f"changeclip cancel {job_id} --wait" in proc.stderr.decode()
        assert server.client.job(job_id).state == "running"
        # cancel --wait --timeout on a job that does not stop: exit 4 instead of hanging
        proc = _cli("cancel", job_id, "--wait", "--timeout", "1", env=env)
        assert proc.returncode == 4, proc.stderr.decode()
        assert "has not stopped after 1 s" in proc.stderr.decode()
        assert json.loads(proc.stdout)["state"] == "running"
        runner.release.set()
        assert server.client.wait(job_id, poll_s=0.1, timeout_s=60).state == "cancelled"
        runner.release.clear()
        runner.running.clear()

        # submit --wait + Ctrl-C: says the job runs on (exit 4, not 130 as for a cancelled job)
        child = subprocess.Popen([*CLI, "submit", *args, "-o", str(tmp_path / "int"), "--wait"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env})
        try:
            assert runner.running.wait(120), "the job did not start"
            early = _interrupt_once_waiting(child)
            out, err = child.communicate(timeout=60)
            err = early + err
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.returncode == 4, err.decode()
        assert "interrupted: job" in err.decode() and "keeps running on the server" in err.decode()
        interrupted = [j for j in server.client.jobs() if j.params["output_dir"].endswith("int")][0]
        assert interrupted.state == "running"

        # --cancel-on-interrupt: Ctrl-C cancels it instead (exit 130)
        runner.release.set()
        server.client.wait(interrupted.job_id, poll_s=0.1, timeout_s=60)
        runner.release.clear()
        runner.running.clear()
        child = subprocess.Popen([*CLI, "submit", *args, "-o", str(tmp_path / "int2"), "--wait",
                                  "--cancel-on-interrupt"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env})
        try:
            assert runner.running.wait(120), "the job did not start"
            early = _interrupt_once_waiting(child)
            threading.Timer(1.0, runner.release.set).start()  # the deaf job stops once released
            out, err = child.communicate(timeout=60)
            err = early + err
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.returncode == 130, err.decode()
        assert "cancelling job" in err.decode()
        assert json.loads(out.splitlines()[-1])["state"] == "cancelled"


# --- item 5: the job journal ---------------------------------------------------------------


def test_after_kill_9_and_restart_every_job_answers_and_unfinished_ones_read_lost(
        tmp_path: Path, pair: tuple[str, str]) -> None:
    """Before the journal a restarted server answered 404 for every earlier job."""
    vrt, fifo = _fifo_vrt(tmp_path, pair[0])
    state = tmp_path / "state"
    first = start_server_process(tmp_path, "--state-dir", str(state))
    second: LiveServer | None = None
    try:
        c = first.client
        done = c.submit({"before": pair[0], "after": pair[1], "output_dir": str(tmp_path / "done"),
                         "engine": "irmad", "device": "cpu"})
        assert c.wait(done.job_id, poll_s=0.1, timeout_s=120).state == "succeeded"
        running = c.submit({"before": str(vrt), "after": pair[1], "output_dir": str(tmp_path / "running"),
                            "engine": "irmad", "device": "cpu"})
        queued = c.submit({"before": pair[0], "after": pair[1], "output_dir": str(tmp_path / "queued"),
                           "engine": "irmad", "device": "cpu"})
        assert first.proc is not None
        wait_for(lambda: _blocked_opening_a_fifo(first.proc.pid), 60, "the job to block on the FIFO")
        probes = _children(first.proc.pid)
        assert probes, "the blocked read should be in the server's input probe, a child process"
        first.proc.kill()
        first.proc.wait(30)
        # the probe dies with the server (Linux: PR_SET_PDEATHSIG), it is not left blocked forever
        wait_for(lambda: not any(_alive(p) for p in probes), 30, "the orphaned probe to die")

        second = start_server_process(tmp_path, "--state-dir", str(state))
        c2 = second.client
        assert c2.job(done.job_id).state == "succeeded"
        assert c2.result(done.job_id)["outputs"]["mask"] == str(tmp_path / "done" / protocol.MASK_NAME)
        lost_running, lost_queued = c2.job(running.job_id), c2.job(queued.job_id)
        assert lost_running.state == lost_queued.state == "lost"
        assert f"pid {first.handshake['pid']}" in lost_running.error
        assert "while this job was running (stage preparing)" in lost_running.error
        assert "while this job was waiting in the queue" in lost_queued.error
        assert "submit it again" in lost_queued.error
        assert {j.job_id for j in c2.jobs() if j.state == "lost"} == {running.job_id, queued.job_id}
        status, answer = _raw(second, "GET", protocol.PATH_JOB.format(job_id="0" * 32))
        assert status == 404
        # the command line says it too, and 'lost' is final: cancel leaves it as it is
        env = {"CHANGECLIP_BACKEND_URL": second.url, "CHANGECLIP_TOKEN_FILE": second.handshake["token_file"]}
        proc = _cli("status", running.job_id, env=env)
        assert proc.returncode == 0 and json.loads(proc.stdout)["state"] == "lost"
        assert c2.cancel(queued.job_id).state == "lost"
    finally:
        _unblock(fifo)
        stop_server_process(first)
        if second is not None:
            stop_server_process(second)


def test_journal_marks_lost_only_the_jobs_of_servers_that_are_gone(tmp_path: Path) -> None:
    """Two servers may share a state folder: a running one's jobs are never marked lost."""
    from changeclip.server.journal import JobJournal

    live = JobJournal(tmp_path, "live")
    job = JobInfo(job_id="a" * 32, state="queued", params={}, progress=JobProgress(), device="cpu", created=1.0)
    live.record(job)
    other = JobJournal(tmp_path, "other")
    assert other.recovered == [] and other.get(job.job_id)[0].state == "queued"  # type: ignore[index]
    live.close()  # the server stops without finishing its job (as kill -9 does: the OS drops the lock)
    later = JobJournal(tmp_path, "later")
    assert [j.job_id for j in later.recovered] == [job.job_id]
    assert later.get(job.job_id)[0].state == "lost"  # type: ignore[index]
    other.close()
    later.close()
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(InputError, match="cannot use the job journal"):
        JobJournal(tmp_path / "a-file" / "state", "x")


def test_state_dir_is_configurable_and_a_bad_one_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    proc = _cli("serve", "--port", "0", "--state-dir", str(blocker / "state"), timeout=60)
    assert proc.returncode == 2
    assert "cannot use the job journal" in proc.stderr.decode() and "--state-dir" in proc.stderr.decode()


# --- item 6: errors that mislead -----------------------------------------------------------


def test_non_finite_numbers_and_undecodable_bodies_are_422s_naming_the_field(inprocess_server: Any,
                                                                             tmp_path: Path,
                                                                             pair: tuple[str, str]) -> None:
    server, _ = inprocess_server
    base = f'{{"before": "{pair[0]}", "after": "{pair[1]}", "output_dir": "{tmp_path / "o"}", "engine": "irmad"'
    for extra, field in ((', "threshold": NaN', "threshold"), (', "min_area": 1e999', "min_area"),
                         (', "grid": "custom", "target_crs": "EPSG:32633", "resolution": -Infinity', "resolution"),
                         (', "mask_path": "/tmp/\\udcff.tif"', "mask_path"),
                         (', "target_crs": "EPSG:32633"', "target_crs")):
        status, answer = _raw(server, "POST", protocol.PATH_JOBS, (base + extra + "}").encode())
        assert status == 422, (extra, answer)
        assert answer["detail"][0]["loc"] == ["body", field], answer
    status, answer = _raw(server, "POST", protocol.PATH_JOBS, b'{"before": "/tmp/\xff\xfe.tif"}')
    assert status == 422 and answer["detail"][0]["type"] == "json_invalid"
    assert "not valid UTF-8 (byte 0xff at offset 17)" in answer["detail"][0]["msg"]


def test_target_crs_without_grid_custom_names_the_fix() -> None:
    with pytest.raises(ParamError, match="set grid to 'custom'") as info:
        DetectParams(before="/b.tif", after="/a.tif", output_dir="/o", target_crs="EPSG:32633").validate()
    assert info.value.field == "target_crs"


def test_weights_that_are_a_device_are_not_said_to_be_missing(tmp_path: Path, pair: tuple[str, str]) -> None:
    proc = _cli("detect", pair[0], pair[1], "-o", str(tmp_path / "o"), "--weights", "/dev/zero", timeout=120)
    assert proc.returncode == 3
    assert "is not a regular file but a character device" in proc.stderr.decode()
    assert "does not exist" not in proc.stderr.decode()


def test_path_bytes_that_are_not_utf8_get_a_clear_message(tmp_path: Path, pair: tuple[str, str]) -> None:
    odd = os.fsencode(str(tmp_path)) + b"/caf\xe9.tif"
    with open(odd, "wb") as handle:
        handle.write(Path(pair[1]).read_bytes())
    proc = _cli(b"detect", pair[0].encode(), odd, b"-o", os.fsencode(str(tmp_path / "o")), b"--engine", b"irmad",
                timeout=120)
    assert proc.returncode == 2, proc.stderr.decode()
    assert "contains bytes that are not valid UTF-8" in proc.stderr.decode()
    assert "not a string" not in proc.stderr.decode()


def test_an_absurd_value_range_is_a_clear_error(tmp_path: Path, pair: tuple[str, str]) -> None:
    import numpy as np

    from changeclip.engines.irmad import IRMADEngine
    from changeclip.pipeline import run_detection

    for value_range, words in (([[0, 1e-300]], "too narrow"), ([[-1e35, 1e35]], "beyond what imagery holds"),
                               ([[1.0, 1.0000000001]], "too narrow")):
        with pytest.raises(InputError, match=f"value_range: .*{words}"):
            run_detection(DetectParams(before=pair[0], after=pair[1], output_dir=str(tmp_path / "o"),
                                       engine="irmad", value_range=value_range))
    # and should non-finite values reach IR-MAD anyway, it says so instead of "LinAlgError"
    sample = np.random.default_rng(0).normal(size=(500, 3))
    sample[7, 1] = np.inf
    with pytest.raises(InputError, match="cannot estimate change statistics"):
        IRMADEngine().fit(sample, sample + 1.0)


def test_disk_full_says_no_space_left_on_device(tmp_path: Path) -> None:
    """On a real 1 MiB tmpfs (needs root to mount; skipped where it cannot be mounted)."""
    from changeclip.pipeline import run_detection

    before, after = make_pair(tmp_path / "data", 512)
    disk = tmp_path / "small-disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        with pytest.raises(InputError, match=r"^writing the outputs failed \(No space left on device") as info:
            run_detection(DetectParams(before=before, after=after, output_dir=str(disk / "out"), engine="irmad",
                                       probability_dtype="float32", polygons=True))
        assert "free some space" in str(info.value)
        assert list(disk.iterdir()) == []  # nothing left, the folder the run made removed again
    finally:
        gc.collect()  # GDAL handles of the failed run
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], check=False)  # busy: detach now, freed when released


def test_overwrite_leaves_no_output_of_an_earlier_run_beside_the_new_ones(tmp_path: Path,
                                                                         pair: tuple[str, str]) -> None:
    from changeclip.pipeline import run_detection

    out = tmp_path / "out"
    run_detection(DetectParams(before=pair[0], after=pair[1], output_dir=str(out), engine="irmad", polygons=True))
    (out / "notes.txt").write_text("mine")
    summary = run_detection(DetectParams(before=pair[0], after=pair[1], output_dir=str(out), engine="irmad",
                                         overwrite=True))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [protocol.MASK_NAME, protocol.PROBABILITY_NAME, protocol.SUMMARY_NAME, "notes.txt"])
    assert summary["outputs"]["polygons"] is None


# --- item 8: the schema states its constraints ---------------------------------------------


def test_openapi_schema_states_and_the_server_enforces_the_constraints(inprocess_server: Any, tmp_path: Path,
                                                                       pair: tuple[str, str]) -> None:
    """schemathesis found these only by trial; the schema now says them itself."""
    server, _ = inprocess_server
    schema = server.client.openapi()["components"]["schemas"]["DetectRequest"]["properties"]
    for name in ("before", "after", "output_dir"):
        assert schema[name]["pattern"].startswith("^(/"), name
    for name in ("weights", "tagger_weights", "mask_path", "probability_path", "polygons_path"):
        assert any("pattern" in alt for alt in schema[name]["anyOf"]), name
    assert schema["bands"]["items"]["minimum"] == 1 and schema["bands"]["minItems"] == 1
    assert schema["min_area"]["maximum"] == 1e15
    pairs = schema["value_range"]["anyOf"][0]["items"]
    assert pairs["minItems"] == pairs["maxItems"] == 2
    base = {"before": pair[0], "after": pair[1], "output_dir": str(tmp_path / "o"), "engine": "irmad"}
    for patch, loc in (({"bands": [0, 1, 2]}, ["body", "bands", 0]), ({"before": "rel.tif"}, ["body", "before"]),
                       ({"value_range": [[0, 1, 2]]}, ["body", "value_range", 0]),
                       ({"weights": "w.safetensors"}, ["body", "weights"])):
        status, answer = _raw(server, "POST", protocol.PATH_JOBS, {**base, **patch})
        assert status == 422 and answer["detail"][0]["loc"] == loc, (patch, answer)


def test_a_job_that_outlives_the_shutdown_is_journaled_lost(tmp_path: Path) -> None:
    from changeclip.server.jobs import JobManager
    from changeclip.server.journal import JobJournal

    runner = DeafRunner()
    journal = JobJournal(tmp_path, "stopping")
    manager = JobManager(runner, lambda device: "cpu", journal=journal, stuck_grace_s=120)
    try:
        job = manager.submit(DetectParams(before="/b.tif", after="/a.tif", output_dir=str(tmp_path / "o"),
                                          engine="irmad"))
        assert runner.running.wait(60)
        assert manager.shutdown(timeout_s=0.2) is False
        info = manager.get(job.job_id)
        assert info.state == "lost" and "shut down and the job did not stop in time" in str(info.error)
        assert "(stage preparing)" in str(info.error)
    finally:
        runner.release.set()
        journal.close()
    reopened = JobJournal(tmp_path, "next")
    assert reopened.get(job.job_id)[0].state == "lost"  # type: ignore[index]
    assert reopened.recovered == []  # already final: nothing left to mark
    reopened.close()


def test_a_cancelled_job_that_will_not_stop_is_given_up_and_the_queue_goes_on(tmp_path: Path) -> None:
    from changeclip.server.jobs import JobManager

    runner = DeafRunner()
    manager = JobManager(runner, lambda device: "cpu", stuck_grace_s=0.3)
    try:
        deaf = manager.submit(DetectParams(before="/b.tif", after="/a.tif", output_dir=str(tmp_path / "deaf"),
                                           engine="irmad"))
        quick = manager.submit(DetectParams(before="/b.tif", after="/a.tif", output_dir=str(tmp_path / "quick"),
                                            engine="irmad"))
        assert runner.running.wait(60)
        manager.cancel(deaf.job_id)
        wait_for(lambda: manager.get(quick.job_id).state == "succeeded", 60, "the job queued behind it")
        given_up = manager.get(deaf.job_id)
        assert given_up.state == "cancelled" and "did not stop within 0.3 s" in str(given_up.error)
        assert not runner.release.is_set()  # its thread is still stuck: the queue did not wait for it
    finally:
        runner.release.set()
        assert manager.shutdown(timeout_s=30)
    assert manager.get(deaf.job_id).state == "cancelled"  # the late end of the abandoned thread changes nothing
