"""Fixtures of the server tests: a scripted runner, an in-process server, a real server process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from changeclip.client import ChangeClipClient, read_token
from changeclip.errors import JobCancelled
from changeclip.protocol import DetectParams


@dataclass
class ScriptedRunner:
    """A deterministic stand-in for ``run_detection``.

    Behaviour is chosen by the output folder's name: ``fail*`` raises ValueError,
    ``oops*`` raises an InputError-like ChangeClipError; ``block*`` runs batches until
    cancelled or until :attr:`release` is set; anything else runs ``batches`` batches.
    It writes ``change_mask.tif`` under a temporary name and renames it at the end,
    and removes the temporary file when cancelled, like the real pipeline.
    """

    batches: int = 3
    release: threading.Event = field(default_factory=threading.Event)
    started: list[str] = field(default_factory=list)
    running_now: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    max_parallel: int = 0
    _parallel: int = 0

    def __call__(self, params: DetectParams, progress: Any, is_cancelled: Any) -> dict[str, Any]:
        from changeclip.errors import InputError

        name = Path(params.output_dir).name
        with self.lock:
            self.started.append(name)
            self._parallel += 1
            self.max_parallel = max(self.max_parallel, self._parallel)
        try:
            progress("preparing", 0, 0)
            if name.startswith("fail"):
                raise ValueError("scripted crash")
            if name.startswith("oops"):
                raise InputError("scripted input problem: fix the input")
            out = Path(params.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            tmp = out / ".change_mask.tif.partial"
            tmp.write_bytes(b"partial")
            self.running_now.set()
            total = 10**6 if name.startswith("block") else self.batches
            done = 0
            while done < total:
                if is_cancelled():
                    tmp.unlink()
                    raise JobCancelled("cancelled; partial outputs removed")
                if name.startswith("block") and self.release.is_set():
                    break
                time.sleep(0.02)
                done += 1
                progress("tiles", done, total if total < 10**6 else 0)
            final = out / "change_mask.tif"
            tmp.rename(final)
            progress("finalising", 0, 0)
            return {"engine": params.engine, "outputs": {"mask": str(final)}, "tiles": done}
        finally:
            with self.lock:
                self._parallel -= 1


def wait_for(predicate: Any, timeout_s: float = 30.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


@dataclass
class LiveServer:
    """A server started for a test: its handshake and a client with the right token."""

    handshake: dict[str, Any]
    client: ChangeClipClient
    token: str
    proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return str(self.handshake["url"])


@pytest.fixture
def inprocess_server() -> Iterator[tuple[LiveServer, ScriptedRunner]]:
    """The real app with a :class:`ScriptedRunner`, served by uvicorn in a thread."""
    import uvicorn

    from changeclip.server.app import create_app
    from changeclip.server.process import bind_socket
    from changeclip.server.settings import ServerSettings

    class FakeSystem:
        def resolve_device(self, device: str) -> str:
            if device == "cuda:7":
                from changeclip.errors import InputError
                raise InputError("device cuda:7 does not exist here; use cpu")
            return "cpu" if device == "auto" else device

        def devices(self) -> list[dict[str, Any]]:
            return [{"device": "cpu", "name": "test CPU", "memory_total_bytes": 1}]

        def cuda_available(self) -> bool:
            return False

        def loaded_models(self, cache: Any) -> list[dict[str, Any]]:
            return []

    runner = ScriptedRunner()
    token = "t" * 20 + "-inprocess-token"
    app = create_app(ServerSettings(token=token, shutdown_timeout_s=10), runner=runner,
                     system=FakeSystem())  # type: ignore[arg-type]
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
    app.state.request_shutdown = lambda: setattr(server, "should_exit", True)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30, "in-process server start")
    url = f"http://127.0.0.1:{port}"
    live = LiveServer(handshake={"url": url, "port": port, "token_file": None}, client=ChangeClipClient(url, token),
                      token=token)
    try:
        yield live, runner
    finally:
        runner.release.set()
        server.should_exit = True
        thread.join(30)


def start_server_process(tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> LiveServer:
    """Start ``changeclip serve --port 0`` as a child process and read its handshake line."""
    cmd = [sys.executable, "-m", "changeclip", "serve", "--port", "0", *extra]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "QT_QPA_PLATFORM": "offscreen", **(env or {})}
    stderr = open(tmp_path / "server.stderr.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=full_env)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line:
        proc.wait(30)
        stderr.close()
        pytest.fail(f"server printed no handshake (exit {proc.returncode}); stderr:\n"
                    f"{(tmp_path / 'server.stderr.log').read_text()}")
    handshake = json.loads(line)
    token = read_token(handshake["token_file"])
    client = ChangeClipClient(handshake["url"], token, timeout_s=60)
    return LiveServer(handshake=handshake, client=client, token=token, proc=proc)


def stop_server_process(server: LiveServer) -> None:
    """Stop the process (shutdown endpoint, then terminate/kill if it lingers)."""
    proc = server.proc
    if proc is None or proc.poll() is not None:
        return
    try:
        server.client.shutdown()
    except Exception:  # noqa: BLE001 - best effort; terminate below
        proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[LiveServer]:
    """A real ``changeclip serve`` process on an ephemeral port."""
    server = start_server_process(tmp_path)
    try:
        yield server
    finally:
        stop_server_process(server)


def write_geotiff(path: Path, array: Any) -> Path:
    """A (bands, H, W) uint8 GeoTIFF in UTM 33N with 1 m pixels."""
    from osgeo import gdal, osr

    gdal.UseExceptions()
    bands, height, width = array.shape
    ds = gdal.GetDriverByName("GTiff").Create(str(path), width, height, bands, gdal.GDT_Byte)
    ds.SetGeoTransform((500000.0, 1.0, 0.0, 4500000.0, 0.0, -1.0))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds.SetProjection(srs.ExportToWkt())
    for i in range(bands):
        ds.GetRasterBand(i + 1).WriteArray(array[i])
    ds.FlushCache()
    ds = None
    return path


def make_pair(folder: Path, size: int, seed: int = 0) -> tuple[str, str]:
    """Before/after rasters of ``size`` px: noise, and a bright square (size/4, at size/4) only after."""
    import numpy as np

    rng = np.random.default_rng(seed)
    before = rng.integers(60, 120, (3, size, size)).astype(np.uint8)
    after = np.clip(before.astype(int) + rng.integers(-5, 6, before.shape), 0, 255).astype(np.uint8)
    q = size // 4
    after[:, q:2 * q, q:2 * q] = 230
    folder.mkdir(parents=True, exist_ok=True)
    b = write_geotiff(folder / f"before{size}.tif", before)
    a = write_geotiff(folder / f"after{size}.tif", after)
    return str(b), str(a)
