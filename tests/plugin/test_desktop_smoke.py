"""The real QGIS desktop, as a new user sees it (issue #13): under Xvfb, a fresh profile with the
packaged plugin installed and enabled, a project with the two sample rasters; the dock is opened
through the plugin's action and runs IR-MAD. The offscreen widget tests cannot see the start-up
order of QGIS (the dock is built before the project's layers load), this test does.

The steps run inside QGIS (``desktop_smoke_driver.py``, started as PYQGIS_STARTUP) and are reported
as JSON; every wait is bounded and QGIS is killed on timeout. A screenshot goes to
``build/desktop_smoke.png``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.qgis, pytest.mark.server, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
QGIS = "/usr/bin/qgis"
XVFB = "/usr/bin/Xvfb"
DRIVER = Path(__file__).with_name("desktop_smoke_driver.py")
QGIS_TIMEOUT_S = 240
DRIVER_DEADLINE_S = 180
RUN = "naip_2015 → naip_2020 [IR-MAD]"


@pytest.fixture()
def display() -> Iterator[str]:
    """A private X display (Xvfb picks a free number and reports it)."""
    for tool in (QGIS, XVFB):
        if not os.access(tool, os.X_OK):
            pytest.fail(f"{tool} is missing: run 'make setup' (it installs Debian's qgis and xvfb packages)")
    proc = subprocess.Popen([XVFB, "-displayfd", "1", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        number = proc.stdout.readline().strip()
        assert number.isdigit(), f"Xvfb did not report a display (exit {proc.poll()})"
        yield f":{number}"
    finally:
        proc.stdout.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _install_packaged_plugin(profiles: Path, dist: Path) -> Path:
    """Build the zip as ``make package`` does and unzip it into the default profile, enabled."""
    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "package.py"), "--out", str(dist)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    (plugin_zip,) = dist.glob("changeclip_qgis-*.zip")
    profile = profiles / "profiles" / "default"
    plugins = profile / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(plugin_zip) as zf:
        zf.extractall(plugins)
    (profile / "QGIS").mkdir(parents=True)
    (profile / "QGIS" / "QGIS3.ini").write_text("[PythonPlugins]\nchangeclip_qgis=true\n", encoding="utf-8")
    return plugins / "changeclip_qgis"


def _write_project(path: Path) -> None:
    """A project as a user saves it: the two sample rasters, 2020 loaded first (on top), shown in
    Web Mercator (so QGIS may ask which NAD83 -> WGS84 transformation to use)."""
    from qgis.core import QgsCoordinateReferenceSystem, QgsProject, QgsRasterLayer

    project = QgsProject()
    for year in (2020, 2015):
        layer = QgsRasterLayer(str(REPO_ROOT / "resources" / "sample" / f"naip_{year}.tif"), f"naip_{year}")
        assert layer.isValid()
        project.addMapLayer(layer)
    project.setCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    assert project.write(str(path)), project.error()


def _backend_children(qgis_pid: int) -> list[int]:
    """Backends started for this QGIS (they carry ``--parent-pid <pid>``) that are still alive."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in cmd and b"--parent-pid" in cmd and str(qgis_pid).encode() in cmd:
            found.append(int(entry.name))
    return found


def test_real_qgis_desktop_first_run(qgis_app: object, display: str, backend_python: str, tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    _install_packaged_plugin(profiles, tmp_path / "dist")
    project_file = tmp_path / "project" / "naip.qgs"
    project_file.parent.mkdir()
    _write_project(project_file)
    report_path = tmp_path / "report.json"
    screenshot = REPO_ROOT / "build" / "desktop_smoke.png"
    screenshot.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VIRTUAL_ENV", "PYTHON", "QGIS_", "QT_QPA"))}
    env.update(DISPLAY=display, QT_QPA_PLATFORM="xcb", PATH="/usr/bin:/bin", HOME=str(tmp_path / "home"),
               XDG_RUNTIME_DIR=str(tmp_path / "xdg"), TMPDIR=str(tmp_path / "tmp"), PYQGIS_STARTUP=str(DRIVER), SMOKE_REPORT=str(report_path),
               SMOKE_SCREENSHOT=str(screenshot), SMOKE_DEADLINE_S=str(DRIVER_DEADLINE_S),
               CHANGECLIP_BACKEND_PYTHON=backend_python)
    # TMPDIR: QGIS treats layers under its temporary folder as scratch layers and asks about them on
    # exit; a user's outputs live in the project's folder, which here is under /tmp
    for folder in ("home", "xdg", "tmp"):
        (tmp_path / folder).mkdir(mode=0o700)
    log = tmp_path / "qgis.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([QGIS, "--profiles-path", str(profiles), "--nologo", "--noversioncheck",
                                 "--project", str(project_file)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=tmp_path, start_new_session=True)
        try:
            code = proc.wait(timeout=QGIS_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            pytest.fail(f"QGIS did not finish within {QGIS_TIMEOUT_S} s (killed); report "
                        f"{report_path.read_text() if report_path.exists() else 'none'}; log tail:\n"
                        f"{log.read_text(errors='replace')[-3000:]}")
    tail = log.read_text(errors="replace")[-3000:]
    assert report_path.is_file(), f"QGIS exited ({code}) without a report; log tail:\n{tail}"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    context = f"report: {json.dumps(report, indent=1, ensure_ascii=False)[:6000]}\nlog tail:\n{tail}"
    assert report["error"] is None, context
    assert code == 0, f"QGIS exit code {code}; {context}"
    assert "changeclip_qgis" in report["active_plugins"], context
    assert report["toggle_actions"] == 1, context

    # Before and After: two different rasters, the older one first (the dock is built before the layers load)
    assert (report["before"], report["after"]) == ("naip_2015", "naip_2020"), context
    # the backend line names the configured interpreter, then where the backend computes
    assert backend_python in report["backend_line_initial"] and "not connected" in report["backend_line_initial"]
    line = report["backend_line"]
    assert line.startswith("Backend ") and ("CPU" in line or "cuda" in line), context

    # the IR-MAD run through the dock, and the loading rule
    assert report["stage"].startswith("Done"), context
    assert "% of the valid area" in report["summary_line"] or "Changed area" in report["summary_line"], context
    tree = report["layer_tree"]
    assert tree[0] == {"group": f"ChangeCLIP: {RUN}", "visible": True, "children": [
        {"layer": f"change polygons — {RUN}", "visible": True},
        {"layer": f"change mask — {RUN}", "visible": True},
        {"layer": f"change probability — {RUN}", "visible": False}]}, context
    assert [n.get("layer") for n in tree[1:]] == ["naip_2015", "naip_2020"], context
    canvas = report["canvas_layers"]
    assert canvas[:2] == [f"change polygons — {RUN}", f"change mask — {RUN}"], context
    assert f"change probability — {RUN}" not in canvas and set(canvas[2:]) == {"naip_2015", "naip_2020"}, context
    unexpected = [d for d in report["dialogs_closed"] if d["class"] != "QgsDatumTransformDialog"]
    assert not unexpected, context
    assert not report["messages"], context
    assert report["screenshot"] and screenshot.is_file() and screenshot.stat().st_size > 10_000

    # closed cleanly: the backend QGIS started is gone with it
    deadline = time.monotonic() + 15
    while _backend_children(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _backend_children(proc.pid), "the backend outlived QGIS"
    shutil.rmtree(profiles, ignore_errors=True)
