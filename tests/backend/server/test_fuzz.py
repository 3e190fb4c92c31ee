"""Schema fuzzing of every endpoint of a live server with schemathesis (bounded, seeded)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from changeclip import protocol

from .conftest import LiveServer

pytestmark = pytest.mark.server

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def test_schemathesis_finds_no_server_error(server_process: LiveServer, tmp_path: Path) -> None:
    """Every check (5xx, status codes, response schemas, ignored auth, Allow headers, ...) except
    positive_data_acceptance: schema-valid paths that do not exist on disk are a 400 by design.
    The shutdown endpoint is left out (it would end the run); test_process covers it."""
    assert SCHEMATHESIS.exists(), f"schemathesis not installed next to {sys.executable}"
    cmd = [str(SCHEMATHESIS), "run", server_process.url + protocol.PATH_OPENAPI,
           "-H", f"Authorization: Bearer {server_process.token}",
           "--max-examples", "10", "--seed", "20261126", "--checks", "all",
           "--exclude-checks", "positive_data_acceptance", "--exclude-path", protocol.PATH_SHUTDOWN,
           "--generation-database", "none", "--no-color", "--request-timeout", "30", "--workers", "1"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "0 operations" not in proc.stdout
    # the server survived, is healthy, and logged no internal error
    assert server_process.proc.poll() is None
    assert server_process.client.status()["status"] == "ok"
    log = (tmp_path / "server.stderr.log").read_text()
    assert "internal error" not in log and "Traceback" not in log, log[-4000:]
