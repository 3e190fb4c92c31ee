"""Real jobs through a real ``changeclip serve`` process and the real pipeline.

IR-MAD on small generated GeoTIFFs, and a tiny seeded ChangeCLIP (``tiny_weights``,
prompt mode none). Cancelling and ``kill -9`` use a 2048² IR-MAD job cut into 1024
one-tile batches, so that it is reliably caught in the middle of its tiles.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from osgeo import gdal

from changeclip import protocol
from changeclip.client import ChangeClipClient
from changeclip.pipeline import run_detection
from changeclip.protocol import DetectParams

from .conftest import LiveServer, make_pair, start_server_process, stop_server_process, wait_for

pytestmark = pytest.mark.server

BIG = 2048
"""Raster size of the long job (tile 64, batch 1: 1024 batches)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server process shared by the tests of this module."""
    srv = start_server_process(tmp_path_factory.mktemp("server"))
    try:
        yield srv
    finally:
        stop_server_process(srv)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[str, str]]:
    folder = tmp_path_factory.mktemp("rasters")
    return {size: make_pair(folder, size) for size in (64, 256, BIG)}


def _read(path: str) -> np.ndarray:
    ds = gdal.Open(path)
    try:
        return ds.ReadAsArray()
    finally:
        ds = None


def _irmad(data: dict[int, tuple[str, str]], out: Path, size: int = 256, **kw: Any) -> dict[str, Any]:
    before, after = data[size]
    return {"before": before, "after": after, "output_dir": str(out), "engine": "irmad", **kw}


def _long_job(data: dict[int, tuple[str, str]], out: Path) -> dict[str, Any]:
    return _irmad(data, out, size=BIG, tile=64, overlap=0, batch_size=1)


def _wait_mid_tiles(client: ChangeClipClient, job_id: str) -> None:
    def mid() -> bool:
        info = client.job(job_id)
        assert info.state in ("queued", "running"), f"job ended before it could be interrupted: {info}"
        return info.progress.stage == "tiles" and 0 < info.progress.done < info.progress.total

    wait_for(mid, 300, "the job to be in the middle of its tiles")


def test_irmad_job_outputs_equal_the_direct_pipeline(server: LiveServer, data: dict[int, tuple[str, str]],
                                                     tmp_path: Path) -> None:
    info = server.client.submit(_irmad(data, tmp_path / "served"))
    final = server.client.wait(info.job_id, poll_s=0.2, timeout_s=300)
    assert final.state == "succeeded", final.error
    assert final.progress.fraction == 1.0
    result = server.client.result(info.job_id)
    summary = result["summary"]
    assert set(protocol.SUMMARY_KEYS) <= set(summary)
    assert summary["engine"] == "irmad"
    assert result["outputs"]["mask"] == str(tmp_path / "served" / protocol.MASK_NAME)
    assert json.loads(Path(result["outputs"]["summary"]).read_text()) == summary
    mask = _read(result["outputs"]["mask"])
    assert mask.shape == (256, 256)
    assert mask[64:128, 64:128].all() and int(mask.sum()) == 64 * 64  # exactly the changed square
    direct = run_detection(DetectParams(**_irmad(data, tmp_path / "direct")))
    assert np.array_equal(_read(direct["outputs"]["mask"]), mask)
    assert np.array_equal(_read(direct["outputs"]["probability"]), _read(result["outputs"]["probability"]))
    assert summary["changed_area_m2"] == direct["changed_area_m2"] == 4096.0


def test_tiny_changeclip_job(server: LiveServer, data: dict[int, tuple[str, str]], tmp_path: Path,
                             tiny_weights: Any) -> None:
    weights = str(tiny_weights("tiny-rn50"))
    before, after = data[64]
    info = server.client.submit({"before": before, "after": after, "output_dir": str(tmp_path / "cc"),
                                 "engine": "changeclip", "weights": weights, "prompt_mode": "none",
                                 "tile": 64, "overlap": 0, "device": "cpu"})
    final = server.client.wait(info.job_id, poll_s=0.5, timeout_s=600)
    assert final.state == "succeeded", final.error
    summary = server.client.result(info.job_id)["summary"]
    assert set(protocol.SUMMARY_KEYS) <= set(summary)
    assert summary["engine"] == "changeclip" and summary["prompt_mode"] == "none"
    assert summary["model"]["variant"] == "tiny-rn50" and summary["model"]["weights"] == weights
    mask = _read(summary["outputs"]["mask"])
    prob = _read(summary["outputs"]["probability"])
    assert mask.shape == prob.shape == (64, 64)
    assert set(np.unique(mask)) <= {protocol.MASK_CHANGE, protocol.MASK_NO_CHANGE}
    assert prob.max() <= 100
    assert int(mask.sum()) == summary["changed_pixels"]
    models = server.client.status()["loaded_models"]
    assert any(weights in entry["key"] for entry in models), models


def test_cancel_mid_job_leaves_no_outputs(server: LiveServer, data: dict[int, tuple[str, str]],
                                          tmp_path: Path) -> None:
    out = tmp_path / "cancelled" / "deeper"
    info = server.client.submit(_long_job(data, out))
    _wait_mid_tiles(server.client, info.job_id)
    server.client.cancel(info.job_id)
    final = server.client.wait(info.job_id, poll_s=0.1, timeout_s=120)
    assert final.state == "cancelled", final
    assert final.progress.done < final.progress.total
    leftovers = [str(p) for p in (tmp_path / "cancelled").rglob("*")] if (tmp_path / "cancelled").exists() else []
    assert leftovers == [], leftovers
    assert server.client.status()["running"] == []


def test_two_clients_at_once_are_queued_and_both_complete(server: LiveServer, data: dict[int, tuple[str, str]],
                                                          tmp_path: Path) -> None:
    barrier = threading.Barrier(2)
    infos: dict[int, Any] = {}
    errors: list[BaseException] = []

    def client_thread(i: int) -> None:
        try:
            client = ChangeClipClient(server.url, server.token)
            barrier.wait(30)
            job = client.submit(_irmad(data, tmp_path / f"client{i}"))
            infos[i] = client.wait(job.job_id, poll_s=0.2, timeout_s=300)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors
    assert {i: infos[i].state for i in infos} == {0: "succeeded", 1: "succeeded"}
    first, second = sorted(infos.values(), key=lambda j: j.started)
    assert second.started >= first.finished  # one device queue: one after the other
    for i in range(2):
        assert (tmp_path / f"client{i}" / protocol.MASK_NAME).is_file()


def test_failing_job_leaves_server_healthy(server: LiveServer, data: dict[int, tuple[str, str]],
                                           tmp_path: Path) -> None:
    not_a_raster = tmp_path / "notes.tif"
    not_a_raster.write_text("this is not a raster")
    bad = server.client.submit(_irmad(data, tmp_path / "bad", before=str(not_a_raster)))
    final = server.client.wait(bad.job_id, poll_s=0.2, timeout_s=300)
    assert final.state == "failed"
    assert str(not_a_raster) in final.error
    assert not (tmp_path / "bad").exists()
    ok = server.client.submit(_irmad(data, tmp_path / "ok"))
    assert server.client.wait(ok.job_id, poll_s=0.2, timeout_s=300).state == "succeeded"


def test_cli_submit_status_cancel(server: LiveServer, data: dict[int, tuple[str, str]], tmp_path: Path) -> None:
    env = {**os.environ, "CHANGECLIP_BACKEND_URL": server.url, "CHANGECLIP_TOKEN_FILE": server.handshake["token_file"]}
    cli = [sys.executable, "-m", "changeclip"]
    before, after = data[256]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)

    done = run("submit", before, after, "-o", "rel-out", "--engine", "irmad", "--wait")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["outputs"]["mask"] == str(tmp_path / "rel-out" / protocol.MASK_NAME)  # made absolute
    status = run("status", result["job_id"])
    assert json.loads(status.stdout)["state"] == "succeeded"
    assert json.loads(run("status").stdout)["protocol_version"] == protocol.PROTOCOL_VERSION
    listed = json.loads(run("status", "--jobs").stdout)["jobs"]
    assert result["job_id"] in [j["job_id"] for j in listed]

    again = run("submit", before, after, "-o", "rel-out", "--engine", "irmad")
    assert again.returncode == 2 and "overwrite" in again.stderr

    big_b, big_a = data[BIG]
    queued = run("submit", big_b, big_a, "-o", "big-out", "--engine", "irmad", "--tile", "64", "--overlap", "0",
                 "--batch-size", "1")
    assert queued.returncode == 0, queued.stderr
    job_id = json.loads(queued.stdout)["job_id"]
    _wait_mid_tiles(server.client, job_id)
    cancelled = run("cancel", job_id, "--wait")
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["state"] == "cancelled"
    assert not (tmp_path / "big-out").exists()

    no_server = subprocess.run([*cli, "status"], capture_output=True, text=True, timeout=120,
                               env={k: v for k, v in env.items() if not k.startswith("CHANGECLIP_")})
    assert no_server.returncode == 2 and "--url" in no_server.stderr


def test_kill_9_mid_job_leaves_no_final_outputs(data: dict[int, tuple[str, str]], tmp_path: Path) -> None:
    srv = start_server_process(tmp_path)
    try:
        out = tmp_path / "killed"
        info = srv.client.submit(_long_job(data, out))
        _wait_mid_tiles(srv.client, info.job_id)
        os.kill(srv.proc.pid, signal.SIGKILL)
        assert srv.proc.wait(30) == -signal.SIGKILL
    finally:
        stop_server_process(srv)
    params = DetectParams(**_long_job(data, out))
    for kind, path in params.output_paths().items():
        assert path is None or not os.path.exists(path), f"{kind} output {path} exists after kill -9"


def test_sigterm_mid_job_cancels_and_removes_partial_outputs(data: dict[int, tuple[str, str]],
                                                             tmp_path: Path) -> None:
    srv = start_server_process(tmp_path)
    try:
        out = tmp_path / "terminated"
        info = srv.client.submit(_long_job(data, out))
        _wait_mid_tiles(srv.client, info.job_id)
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(120) == 0
    finally:
        stop_server_process(srv)
    assert not out.exists() or list(out.iterdir()) == []
    assert f"job {info.job_id} cancelled" in (tmp_path / "server.stderr.log").read_text()
