"""Starting the backend: a clear message and diagnostics when it cannot start."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.qgis


def test_python_without_backend_gives_clear_message_and_diagnostics(qgis_app: object, tmp_path) -> None:
    from changeclip_qgis.core import diagnostics
    from changeclip_qgis.core.backend_launcher import BackendLauncher, clean_env, serve_command
    from changeclip_qgis.core.errors import BackendUnavailable
    from changeclip_qgis.core.settings import BackendConfig

    launcher = BackendLauncher()
    config = BackendConfig(python="/usr/bin/python3", url="", token_file="", weights_dir=str(tmp_path),
                           start_timeout_s=60)
    with pytest.raises(BackendUnavailable, match="does not have the changeclip backend installed") as info:
        launcher.ensure(config)
    assert "No module named changeclip" in info.value.stderr_tail
    assert launcher.current() is None
    report = diagnostics.collect(launcher, config)
    for needle in ("## Versions", "QGIS", "/usr/bin/python3", "No module named changeclip", "## GPU",
                   "serve --host 127.0.0.1 --port 0"):
        assert needle in report
    assert serve_command("py")[:4] == ["py", "-m", "changeclip", "serve"]
    assert serve_command("py", parent_pid=4711) == ["py", "-m", "changeclip", "serve", "--host", "127.0.0.1",
                                                    "--port", "0", "--parent-pid", "4711"]
    env = clean_env({"PYTHONPATH": "/x", "GDAL_DATA": "/y", "PROJ_LIB": "/z", "HOME": "/h", "QGIS_PREFIX_PATH": "/q"})
    assert env["HOME"] == "/h" and not {"PYTHONPATH", "GDAL_DATA", "PROJ_LIB", "QGIS_PREFIX_PATH"} & set(env)


def test_unreachable_url(qgis_app: object) -> None:
    from changeclip_qgis.core.backend_launcher import BackendLauncher
    from changeclip_qgis.core.errors import BackendUnavailable
    from changeclip_qgis.core.settings import BackendConfig

    config = BackendConfig(python="", url="http://127.0.0.1:9", token_file="", weights_dir="")
    with pytest.raises(BackendUnavailable, match="no backend answers at http://127.0.0.1:9"):
        BackendLauncher().ensure(config)


KILLED_PARENT = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
from changeclip_qgis.core.backend_launcher import BackendLauncher
from changeclip_qgis.core.settings import BackendConfig
backend = BackendLauncher().ensure(BackendConfig(python=sys.argv[2], url="", token_file="", weights_dir=""))
print(backend.process.pid, flush=True)
time.sleep(600)
"""


def test_backend_stops_when_its_parent_dies(repo_root, tmp_path, backend_python: str) -> None:  # noqa: ANN001
    """If QGIS is killed (no unload, no atexit), the backend it started stops by itself."""
    import os
    import signal
    import subprocess
    import sys
    import time

    parent = subprocess.Popen([sys.executable, "-c", KILLED_PARENT, str(repo_root), backend_python],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline()
        assert line.strip().isdigit(), parent.stderr.read()
        backend_pid = int(line)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _alive(backend_pid):
            time.sleep(0.5)
        assert not _alive(backend_pid), "the orphaned backend must stop itself"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=30)
        parent.stdout.close()
        parent.stderr.close()


def _alive(pid: int) -> bool:
    from pathlib import Path

    stat = Path(f"/proc/{pid}/stat")
    if not stat.exists():
        return False
    return stat.read_text().split(")")[-1].split()[0] != "Z"  # a zombie has exited
