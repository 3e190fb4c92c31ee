"""``changeclip serve`` as a real process: handshake, token file, auth, stopping."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from changeclip import protocol
from changeclip.client import AuthenticationError, ChangeClipClient, ServerUnavailable

from .conftest import LiveServer, start_server_process, stop_server_process, wait_for

pytestmark = pytest.mark.server


def test_handshake_line_and_private_token_file(server_process: LiveServer) -> None:
    hs = server_process.handshake
    assert set(protocol.HANDSHAKE_KEYS) <= set(hs)
    assert hs["event"] == "ready" and hs["protocol_version"] == protocol.PROTOCOL_VERSION
    assert hs["url"] == f"http://127.0.0.1:{hs['port']}" and hs["port"] > 0
    assert hs["pid"] == server_process.proc.pid
    token_file = Path(hs["token_file"])
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    assert server_process.token not in json.dumps(hs)
    assert server_process.client.live()
    st = server_process.client.status()
    assert st["pid"] == hs["pid"] and st["devices"][0]["id"] == "cpu" and st["default_device"] == "cpu"
    assert isinstance(st["cuda_available"], bool) and st["queue_length"] == 0


def test_tokenless_and_wrong_token_calls_are_refused(server_process: LiveServer) -> None:
    url = server_process.url
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for headers in ({}, {"Authorization": "Bearer " + "x" * 43}, {"Authorization": server_process.token}):
        for path in (protocol.PATH_STATUS, protocol.PATH_OPENAPI, protocol.PATH_JOBS):
            with pytest.raises(urllib.error.HTTPError) as info:
                opener.open(urllib.request.Request(url + path, headers=headers), timeout=30)
            assert info.value.code == 401
    with pytest.raises(AuthenticationError):
        ChangeClipClient(url, "y" * 43).jobs()
    assert server_process.client.openapi()["info"]["title"] == "ChangeCLIP backend"


def test_stdout_has_only_the_handshake_and_shutdown_is_clean(tmp_path: Path) -> None:
    server = start_server_process(tmp_path)
    token_file = Path(server.handshake["token_file"])
    server.client.status()
    assert "shutting down" in server.client.shutdown()
    out, _ = server.proc.communicate(timeout=60)
    assert server.proc.returncode == 0
    assert out == ""  # nothing after the handshake line
    assert not token_file.exists() and not token_file.parent.exists()
    with pytest.raises(ServerUnavailable):
        server.client.status()


def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    server = start_server_process(tmp_path)
    token_file = Path(server.handshake["token_file"])
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(60) == 0
    assert not token_file.exists()


def test_parent_pid_stops_the_server_when_that_process_dies(tmp_path: Path) -> None:
    """``--parent-pid``: killing the launcher (no shutdown call) stops the server cleanly."""
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        server = start_server_process(tmp_path, "--parent-pid", str(parent.pid))
        try:
            token_file = Path(server.handshake["token_file"])
            assert server.client.status()["queue_length"] == 0
            with pytest.raises(subprocess.TimeoutExpired):
                server.proc.wait(2)  # the parent is alive: the server stays up
            parent.kill()
            parent.wait(30)
            assert server.proc.wait(30) == 0
            assert not token_file.exists() and not token_file.parent.exists()
            assert "is gone; shutting down" in (tmp_path / "server.stderr.log").read_text()
        finally:
            stop_server_process(server)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(30)


def test_parent_watch_treats_a_zombie_as_gone() -> None:
    from changeclip.server.parent_watch import ParentWatch

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        watch = ParentWatch(child.pid, interval_s=0.05)
        assert not watch.parent_gone()
        child.kill()
        wait_for(watch.parent_gone, 30, "the killed (not yet reaped) child to count as gone")
    finally:
        child.kill()
        child.wait(30)
    assert watch.parent_gone()


def test_given_token_file_is_used_and_kept(tmp_path: Path) -> None:
    token_file = tmp_path / "my.token"
    token_file.write_text("a-token-chosen-by-the-launcher-0123456789\n")
    os.chmod(token_file, 0o600)
    server = start_server_process(tmp_path, "--token-file", str(token_file))
    try:
        assert server.handshake["token_file"] == str(token_file)
        assert server.token == "a-token-chosen-by-the-launcher-0123456789"
        assert server.client.status()["queue_length"] == 0
    finally:
        stop_server_process(server)
    assert token_file.exists()


@pytest.mark.parametrize("args,words", [
    (["--token-file", "/no/such/dir/tok"], "does not exist"),
    (["--device", "tpu"], "--device"),
    (["--max-models", "0"], "--max-models"),
    (["--host", "256.0.0.1"], "cannot"),
    (["--device", "cuda:63"], "cuda:63"),
    (["--parent-pid", "0"], "--parent-pid"),  # no machine has 64 GPUs; without CUDA: "not available"
])
def test_bad_serve_options_exit_2_with_message(tmp_path: Path, args: list[str], words: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "changeclip", "serve", "--port", "0", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert words in proc.stderr


def test_port_in_use_is_reported(server_process: LiveServer) -> None:
    proc = subprocess.run([sys.executable, "-m", "changeclip", "serve", "--port", str(server_process.handshake["port"])],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "another --port" in proc.stderr
    wait_for(server_process.client.live, 5, "first server still alive")
