"""``qgis_process run changeclip:detectchanges`` as a subprocess, with the staged plugin (what the
README shows), a temporary profile enabling it, and a real backend started by the plugin."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.qgis, pytest.mark.server]

QGIS_PROCESS = "/usr/bin/qgis_process.bin"  # Debian 12's /usr/bin/qgis_process wrapper is broken


def _env(staged_plugin: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    profile = tmp_path / "profile"
    ini = profile / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    ini.write_text("[PythonPlugins]\nchangeclip_qgis=true\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHANGECLIP_")}
    env.update(QT_QPA_PLATFORM="offscreen", QGIS_PLUGINPATH=str(staged_plugin),
               QGIS_CUSTOM_CONFIG_PATH=str(profile), **extra)
    return env


def _serve_pids() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in cmd and b"127.0.0.1" in cmd and any(b"changeclip" in part for part in cmd):
                pids.add(int(entry.name))
    return pids


def test_qgis_process_run(staged_plugin: Path, raster_pair: tuple[Path, Path], tmp_path: Path,
                          backend_python: str) -> None:
    before, after = raster_pair
    pids_before = _serve_pids()
    cmd = [QGIS_PROCESS, "--json", "run", "changeclip:detectchanges", "--",
           f"BEFORE={before}", f"AFTER={after}", "ENGINE=irmad", "PROMPT_MODE=none",
           f"CHANGE_MASK={tmp_path / 'mask.tif'}", f"CHANGE_PROBABILITY={tmp_path / 'prob.tif'}",
           f"CHANGE_POLYGONS={tmp_path / 'polygons.gpkg'}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False,
                          env=_env(staged_plugin, tmp_path, CHANGECLIP_BACKEND_PYTHON=backend_python))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(done.stdout)["results"]
    assert results["CHANGE_MASK"] == str(tmp_path / "mask.tif") and (tmp_path / "mask.tif").is_file()
    assert (tmp_path / "polygons.gpkg").is_file()
    assert results["CHANGED_AREA_M2"] > 0 and 0 < results["CHANGED_FRACTION"] < 1
    time.sleep(1.0)
    assert not (_serve_pids() - pids_before), "qgis_process must not leave a backend running"


def test_qgis_process_without_backend(staged_plugin: Path, raster_pair: tuple[Path, Path], tmp_path: Path) -> None:
    """The provider still loads (help works); a run explains what is missing."""
    env = _env(staged_plugin, tmp_path, CHANGECLIP_BACKEND_PYTHON=str(tmp_path / "nope" / "python"))
    helped = subprocess.run([QGIS_PROCESS, "help", "changeclip:detectchanges"], capture_output=True, text=True,
                            timeout=300, env=env, check=False)
    assert helped.returncode == 0 and "PROMPT_MODE" in helped.stdout, helped.stderr[-2000:]
    assert all(name in helped.stdout for name in ("OUTPUT_GRID", "TARGET_CRS", "RESOLUTION")), helped.stdout
    before, after = raster_pair
    done = subprocess.run([QGIS_PROCESS, "run", "changeclip:detectchanges", "--", f"BEFORE={before}",
                           f"AFTER={after}", "ENGINE=irmad", "PROMPT_MODE=none",
                           f"CHANGE_MASK={tmp_path / 'm.tif'}", f"CHANGE_PROBABILITY={tmp_path / 'p.tif'}"],
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode != 0
    assert "does not exist" in done.stdout + done.stderr
