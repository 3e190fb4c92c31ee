"""Inputs are read-only to every path of ours (issue 14, item 7).

Detection runs through the command line, a real job server and Processing (``qgis_process`` with
the staged plugin, and ``processing.run`` in QGIS) on inputs in a folder of their own; afterwards
that folder must be byte-identical: the same names (no ``.aux.xml`` statistics sidecar, no
``.ovr``, no index) and the same sha256 of every file.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.qgis, pytest.mark.server]

QGIS_PROCESS = "/usr/bin/qgis_process.bin"  # Debian 12's /usr/bin/qgis_process wrapper is broken


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture()
def inputs(tmp_path: Path, geotiff: Callable[..., Path]) -> Path:
    """A folder holding only a before/after pair: 3-band uint16 (QGIS stretches these with statistics)."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    rng = np.random.default_rng(3)
    base = rng.integers(600, 1200, size=(3, 96, 96)).astype(np.uint16)
    after = base.copy()
    after[:, 30:60, 30:60] = 3000
    geotiff(folder / "before.tif", base)
    geotiff(folder / "after.tif", after)
    return folder


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHANGECLIP_")}
    env.update(QT_QPA_PLATFORM="offscreen", HF_HUB_OFFLINE="1", **extra)
    return env


def test_cli_server_and_qgis_process_leave_inputs_untouched(inputs: Path, tmp_path: Path,
                                                             staged_plugin: Path) -> None:
    before, after = str(inputs / "before.tif"), str(inputs / "after.tif")
    original = _snapshot(inputs)
    assert sorted(original) == ["after.tif", "before.tif"]

    cli = subprocess.run([sys.executable, "-m", "changeclip", "detect", before, after, "-o", str(tmp_path / "cli"),
                          "--engine", "irmad", "--polygons"], capture_output=True, text=True, timeout=600,
                         env=_env(), check=False)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert _snapshot(inputs) == original, "changeclip detect wrote beside the inputs"

    from changeclip.client import ChangeClipClient, read_token
    from changeclip.protocol import DetectParams

    server = subprocess.Popen([sys.executable, "-m", "changeclip", "serve", "--port", "0"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env=_env())
    try:
        assert server.stdout is not None
        handshake = json.loads(server.stdout.readline())
        assert handshake["url"].startswith("http://127.0.0.1:")
        client = ChangeClipClient(handshake["url"], read_token(handshake["token_file"]), timeout_s=60)
        job = client.submit(DetectParams(before=before, after=after, output_dir=str(tmp_path / "server"),
                                         engine="irmad", polygons=True))
        info = client.wait(job.job_id, poll_s=0.1, timeout_s=300)
        assert info.state == "succeeded", info.error
        client.shutdown()
        server.wait(60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(60)
        if server.stdout is not None:
            server.stdout.close()
    assert _snapshot(inputs) == original, "a server job wrote beside the inputs"

    profile = tmp_path / "profile"
    ini = profile / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text("[PythonPlugins]\nchangeclip_qgis=true\n", encoding="utf-8")
    out = tmp_path / "qgis_process"
    done = subprocess.run([QGIS_PROCESS, "--json", "run", "changeclip:detectchanges", "--", f"BEFORE={before}",
                           f"AFTER={after}", "ENGINE=irmad", "PROMPT_MODE=none", f"CHANGE_MASK={out / 'mask.tif'}",
                           f"CHANGE_PROBABILITY={out / 'prob.tif'}", f"CHANGE_POLYGONS={out / 'polygons.gpkg'}"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False,
                          env=_env(QGIS_PLUGINPATH=str(staged_plugin), QGIS_CUSTOM_CONFIG_PATH=str(profile),
                                   CHANGECLIP_BACKEND_PYTHON=sys.executable))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (out / "mask.tif").is_file()
    assert _snapshot(inputs) == original, "qgis_process wrote beside the inputs"


def test_processing_run_leaves_inputs_untouched(provider: object, backend_env: None, inputs: Path,
                                                tmp_path: Path) -> None:
    import gc

    import processing
    from qgis.core import QgsProcessingContext

    original = _snapshot(inputs)
    context = QgsProcessingContext()
    results = processing.run("changeclip:detectchanges",
                             {"BEFORE": str(inputs / "before.tif"), "AFTER": str(inputs / "after.tif"),
                              "ENGINE": "irmad", "PROMPT_MODE": "none",
                              "CHANGE_MASK": str(tmp_path / "out" / "mask.tif"),
                              "CHANGE_PROBABILITY": str(tmp_path / "out" / "prob.tif")}, context=context)
    assert Path(results["CHANGE_MASK"]).is_file()
    del context  # closes the input layers Processing loaded (GDAL writes sidecars when a dataset closes)
    gc.collect()
    assert _snapshot(inputs) == original
