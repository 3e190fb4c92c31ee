"""Reliability of the output side, attacked as a careful tester would (issue 14, items 1, 2, 4, 5).

* what an output may replace: never a device node, FIFO, socket, folder, symbolic link, an input
  of the job (by path or by inode), a file in a system folder, or an unrelated file; the same
  checks for ``changeclip detect``, the pipeline and a real job server;
* outputs that collide with each other are refused before any work; the final renames are all
  or nothing, restoring the earlier results ``--overwrite`` was replacing;
* one writer per output folder (an OS lock, released by ``kill -9``), stale ``.part`` files of
  a killed run removed by the next run under the lock;
* SIGTERM and SIGINT at any stage are an interruption: exit 130, no traceback, nothing left.

Only small rasters, bounded loops and 127.0.0.1. Runs that must be caught mid-way are frozen
with SIGSTOP at a known progress event instead of relying on timing.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from geodata import change_pair

from changeclip.cli import main
from changeclip.client import ChangeClipClient, RequestRejected, read_token
from changeclip.commands import detect as detect_command
from changeclip.errors import InputError
from changeclip.folder_lock import LOCK_NAME, FolderLocks
from changeclip.pipeline import run_detection
from changeclip.protocol import MASK_NAME, PROBABILITY_NAME, SUMMARY_NAME, DetectParams
from changeclip.raster import outputs as outputs_module
from changeclip.raster.outputs import PublishError, TempFiles

ENV = dict(os.environ, QT_QPA_PLATFORM="offscreen", HF_HUB_OFFLINE="1")


def _snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (hidden ones too) with the sha256 of regular files."""
    out = {}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(folder))
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else oct(st.st_mode)
    return out


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.exists() else []


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    b, a, _ = change_pair(tmp_path_factory.mktemp("pair"), h=96, w=96)
    return b, a


@pytest.fixture(scope="module")
def big_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """2048² px: with 64 px tiles in batches of one, 1024 batches (a run that can be caught in its tiles)."""
    b, a, _ = change_pair(tmp_path_factory.mktemp("big"), h=2048, w=2048)
    return b, a


def _params(pair: tuple[str, str], out: Path, **kw: object) -> DetectParams:
    return DetectParams(before=pair[0], after=pair[1], output_dir=str(out), engine="irmad", tile=64, overlap=16,
                        **kw)  # type: ignore[arg-type]


# --- 1. what an output may replace ---------------------------------------------------------------------


def _make_special(kind: str, path: Path, pair: tuple[str, str]) -> None:
    if kind == "device":
        if os.geteuid() != 0:
            pytest.skip("creating a device node needs root")
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # the same device as /dev/null
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    elif kind == "folder":
        path.mkdir()
    elif kind == "symlink":
        elsewhere = path.parent / "elsewhere.tif"
        elsewhere.write_bytes(b"II*\x00 precious")
        path.symlink_to(elsewhere)
    elif kind == "hardlink-to-input":
        os.link(pair[0], path)
    elif kind == "not-ours":
        path.write_text("my notes, not a GeoTIFF\n")


SPECIAL = {"device": "is a device", "fifo": "is a FIFO", "socket": "is a socket", "folder": "is a folder",
           "symlink": "is a symbolic link", "hardlink-to-input": "is the before input",
           "not-ours": "is not a GeoTIFF written by ChangeCLIP"}


@pytest.mark.parametrize("kind", sorted(SPECIAL))
def test_detect_never_replaces_special_files(kind: str, tmp_path: Path, pair: tuple[str, str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = out / MASK_NAME
    _make_special(kind, target, pair)
    before = _snapshot(tmp_path)
    rc = main(["detect", pair[0], pair[1], "-o", str(out), "--engine", "irmad", "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert SPECIAL[kind] in err and MASK_NAME in err, err
    assert _snapshot(tmp_path) == before, "nothing may change before the refusal"


@pytest.mark.parametrize("kind", sorted(SPECIAL))
def test_pipeline_never_replaces_special_files_at_explicit_paths(kind: str, tmp_path: Path,
                                                                 pair: tuple[str, str]) -> None:
    target = tmp_path / "mask_here.tif"
    _make_special(kind, target, pair)
    before = _snapshot(tmp_path)
    with pytest.raises(InputError, match=f"mask_path: .*{SPECIAL[kind]}"):
        run_detection(_params(pair, tmp_path / "out", mask_path=str(target), overwrite=True))
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("field", ["mask_path", "probability_path"])
def test_an_input_is_never_an_output(field: str, tmp_path: Path, pair: tuple[str, str]) -> None:
    """Same path, a path through a folder symlink, and the input's external overviews (a TIFF GDAL reads)."""
    from osgeo import gdal

    link_dir = tmp_path / "link"
    link_dir.symlink_to(Path(pair[0]).parent)
    side = Path(pair[0] + ".ovr")
    ds = gdal.Open(pair[0])  # read-only: the overviews go to an external .ovr file
    ds.BuildOverviews("NEAREST", [2])
    ds = None
    assert side.is_file()
    try:
        for path, message in ((pair[0], "is the before input"), (str(link_dir / Path(pair[1]).name), "after input"),
                              (str(side), "a file GDAL reads for the before input")):
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            with pytest.raises(InputError, match=message):
                run_detection(_params(pair, tmp_path / "out", overwrite=True, **{field: path}))
            assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest
    finally:
        side.unlink()


def test_outputs_never_go_into_system_folders(tmp_path: Path, pair: tuple[str, str]) -> None:
    for path in ("/dev/changeclip-test-mask.tif", "/etc/changeclip-test-mask.tif", "/proc/changeclip.tif"):
        with pytest.raises(InputError, match="is inside the system folder"):
            run_detection(_params(pair, tmp_path / "out", mask_path=path, overwrite=True))
        assert not os.path.lexists(path)
    assert not (tmp_path / "out").exists()


# --- 2. colliding outputs, all-or-nothing publishing ---------------------------------------------------


@pytest.mark.parametrize("collision", ["mask=probability", "mask=summary", "polygons=probability"])
def test_colliding_outputs_are_refused_before_any_work(collision: str, tmp_path: Path,
                                                      pair: tuple[str, str]) -> None:
    out = tmp_path / "out"
    shared = str(tmp_path / "same.tif")
    kw: dict[str, object] = {
        "mask=probability": {"mask_path": shared, "probability_path": shared},
        "mask=summary": {"mask_path": str(out / SUMMARY_NAME)},
        "polygons=probability": {"polygons": True, "polygons_path": shared, "probability_path": shared},
    }[collision]
    with pytest.raises(InputError, match="is the same file as"):
        run_detection(_params(pair, out, **kw))
    assert not out.exists() and not Path(shared).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _fail_nth_replace(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Make the ``n``-th os.replace of raster.outputs (1-based, counting from now) fail like a full disk."""
    real = os.replace
    calls = [0]

    def replace(src: str, dst: str) -> None:
        calls[0] += 1
        if calls[0] == n:
            raise OSError(28, "No space left on device", dst)
        real(src, dst)

    monkeypatch.setattr(outputs_module.os, "replace", replace)


def test_publish_rolls_back_and_restores_earlier_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finals = [tmp_path / n for n in ("a.tif", "b.tif", "c.json")]
    finals[0].write_bytes(b"old a")
    finals[2].write_bytes(b"old c")
    temp = TempFiles()
    pairs = []
    for final in finals:
        t = temp.new(str(final))
        Path(t).write_bytes(b"new " + final.name.encode())
        pairs.append((t, str(final)))
    _fail_nth_replace(monkeypatch, 3)  # a and b are renamed, c fails
    with pytest.raises(PublishError, match="no output was written and any earlier outputs are as they were"):
        temp.publish(pairs)
    monkeypatch.undo()
    temp.cleanup()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "c.json"]
    assert finals[0].read_bytes() == b"old a" and finals[2].read_bytes() == b"old c"


def test_failed_publish_of_a_real_run_restores_the_earlier_results(tmp_path: Path, pair: tuple[str, str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    run_detection(_params(pair, out, polygons=True))
    earlier = _snapshot(out)
    assert set(earlier) == {MASK_NAME, PROBABILITY_NAME, "change_polygons.gpkg", SUMMARY_NAME}
    _fail_nth_replace(monkeypatch, 4)  # backups use links, so: mask, probability, polygons, then the summary fails
    with pytest.raises(InputError) as err:
        run_detection(_params(pair, out, polygons=True, overwrite=True, threshold=0.5))
    monkeypatch.undo()
    assert "No space left on device" in str(err.value)
    assert "no output was written and any earlier outputs are as they were" in str(err.value)
    assert _snapshot(out) == earlier, "the earlier results must be back, byte for byte, with nothing else"


# --- 4. one writer per folder; stale temporary files -----------------------------------------------------


def _start_detect(pair: tuple[str, str], out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "changeclip", "detect", pair[0], pair[1], "-o", str(out),
                             "--engine", "irmad", "--tile", "64", "--overlap", "0", "--batch-size", "1", "--json",
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def _wait_for_stage(proc: subprocess.Popen[str], stage: str, done_at_least: int = 1) -> None:
    """Read --json progress lines until ``stage`` reports ``done >= done_at_least`` (bounded by the run)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("event") == "progress" and event["stage"] == stage and event["done"] >= done_at_least:
            return
    pytest.fail(f"the run ended before stage {stage}: rc {proc.wait()}, {proc.stderr.read() if proc.stderr else ''}")


@pytest.fixture
def frozen_run(big_pair: tuple[str, str], tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """A ``changeclip detect`` caught in its tiles and frozen with SIGSTOP (killed at the end)."""
    out = tmp_path / "out"
    proc = _start_detect(big_pair, out)
    try:
        _wait_for_stage(proc, "tiles", 2)
        proc.send_signal(signal.SIGSTOP)
        yield proc, out
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(60)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_second_writer_is_refused_and_kill_9_releases_the_folder(frozen_run: tuple[subprocess.Popen[str], Path],
                                                                 big_pair: tuple[str, str],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    proc, out = frozen_run
    parts = [n for n in _hidden(out) if n.endswith(".part.tif")]
    assert len(parts) == 2, _hidden(out)
    rc = main(["detect", *big_pair, "-o", str(out), "--engine", "irmad", "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 2 and "is in use by another ChangeCLIP run" in err and f"process {proc.pid}" in err, err
    assert [n for n in _hidden(out) if n.endswith(".part.tif")] == parts, "the second run must not touch them"
    proc.kill()  # kill -9: the OS releases the lock; the .part files stay behind
    proc.wait(60)
    assert [n for n in _hidden(out) if n.endswith(".part.tif")] == parts
    rc = main(["detect", *big_pair, "-o", str(out), "--engine", "irmad", "--tile", "512"])
    assert rc == 0, capsys.readouterr().err
    assert _hidden(out) == [], "the next run removes the stale temporary files under the lock"
    assert {MASK_NAME, PROBABILITY_NAME, SUMMARY_NAME} <= {p.name for p in out.iterdir()}


def test_lock_is_exclusive_between_processes_and_released_by_kill_9(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom changeclip.folder_lock import FolderLocks\n"
                               f"FolderLocks([{str(tmp_path)!r}]).acquire()\nprint('locked', flush=True)\n"
                               "time.sleep(600)"], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match=f"in use by another ChangeCLIP run \\(process {holder.pid} on"):
            FolderLocks([str(tmp_path)]).acquire()
    finally:
        holder.kill()
        holder.wait(60)
        if holder.stdout is not None:
            holder.stdout.close()
    with FolderLocks([str(tmp_path)]):
        assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists(), "a released lock leaves no file behind"


def test_a_server_job_into_a_locked_folder_fails_clearly(tmp_path: Path, pair: tuple[str, str]) -> None:
    """Two writers through a real server: this test process holds the folder, the server's job is refused."""
    proc = subprocess.Popen([sys.executable, "-m", "changeclip", "serve", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=ENV)
    try:
        assert proc.stdout is not None
        handshake = json.loads(proc.stdout.readline())
        assert handshake["url"].startswith("http://127.0.0.1:")
        client = ChangeClipClient(handshake["url"], read_token(handshake["token_file"]), timeout_s=60)
        out = tmp_path / "out"
        out.mkdir()
        with FolderLocks([str(out)]):
            job = client.submit(_params(pair, out))
            info = client.wait(job.job_id, poll_s=0.1, timeout_s=120)
        assert info.state == "failed" and "is in use by another ChangeCLIP run" in (info.error or ""), info
        assert sorted(p.name for p in out.iterdir()) == []
        # and the kinds of item 1 are refused by the server at submit, before the job is queued
        node = tmp_path / "fifo.tif"
        os.mkfifo(node)
        with pytest.raises(RequestRejected, match="is a FIFO"):
            client.submit(_params(pair, tmp_path / "o2", mask_path=str(node), overwrite=True))
        assert stat.S_ISFIFO(node.lstat().st_mode)
        client.shutdown()
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(60)
        if proc.stdout is not None:
            proc.stdout.close()


# --- 5. signals ----------------------------------------------------------------------------------------------


def test_sigterm_during_tiles_is_an_interruption(frozen_run: tuple[subprocess.Popen[str], Path]) -> None:
    proc, out = frozen_run
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    rc = proc.wait(120)
    err = proc.stderr.read() if proc.stderr else ""
    assert rc == 130, err
    assert "interrupted by SIGTERM" in err and "Traceback" not in err and "writing the outputs failed" not in err
    assert not out.exists(), "the new folder and every .part file are removed"


@pytest.mark.parametrize("stage", ["polygons", "finalising"])
def test_sigint_during_gdal_stages_is_an_interruption(stage: str, tmp_path: Path, pair: tuple[str, str],
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """SIGINT (Ctrl-C) delivered while GDAL polygonizes or converts to COG, from inside its progress callback."""
    real_call = detect_command.ProgressPrinter.__call__
    sent = []

    def call(self: detect_command.ProgressPrinter, s: str, done: int, total: int) -> None:
        real_call(self, s, done, total)
        if s == stage and 0 < done and not sent:
            sent.append(s)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(detect_command.ProgressPrinter, "__call__", call)
    out = tmp_path / "out"
    rc = main(["detect", *pair, "-o", str(out), "--engine", "irmad", "--polygons"])
    err = capsys.readouterr().err
    assert sent == [stage]
    assert rc == 130, err
    assert "interrupted by SIGINT" in err and "writing the outputs failed" not in err and "Traceback" not in err
    assert not out.exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the handler is restored"
