"""``make package``: the zip QGIS's "Install from ZIP" accepts, and what it must (not) hold."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

SYSTEM_PYTHON = "/usr/bin/python3"
REQUIRED_METADATA = ("name", "description", "about", "version", "author", "email", "qgisMinimumVersion",
                     "qgisMaximumVersion", "supportsQt6", "hasProcessingProvider", "tags", "homepage",
                     "tracker", "repository", "icon", "experimental")


@pytest.fixture(scope="module")
def plugin_zip(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, str(repo_root / "scripts" / "package.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    zips = list(out.glob("changeclip_qgis-*.zip"))
    assert len(zips) == 1, zips
    return zips[0]


def test_zip_layout_and_metadata(plugin_zip: Path, repo_root: Path) -> None:
    with zipfile.ZipFile(plugin_zip) as zf:
        names = zf.namelist()
        meta_text = zf.read("changeclip_qgis/metadata.txt").decode("utf-8")
    assert all(n.startswith("changeclip_qgis/") for n in names), "everything must sit in one plugin folder"
    for required in ("changeclip_qgis/__init__.py", "changeclip_qgis/metadata.txt",
                     "changeclip_qgis/resources/icons/changeclip.svg",
                     "changeclip_qgis/core/protocol.py", "changeclip_qgis/backend/pyproject.toml",
                     "changeclip_qgis/backend/changeclip/protocol.py"):
        assert required in names, f"{required} missing from the zip"
    assert any(n.startswith("changeclip_qgis/resources/styles/") and n.endswith(".qml") for n in names)
    forbidden = [n for n in names if "/tests/" in n or "__pycache__" in n or n.endswith((".pyc", ".tif", ".npz"))
                 or "/sample/" in n]
    assert not forbidden, f"the zip must not ship tests, caches or imagery: {forbidden[:5]}"
    parser = configparser.ConfigParser()
    parser.read_string(meta_text)
    general = parser["general"]
    missing = [k for k in REQUIRED_METADATA if not general.get(k, "").strip()]
    assert not missing, f"metadata.txt lacks {missing}"
    assert general["qgisMinimumVersion"] == "3.22"
    assert general["hasProcessingProvider"] == "yes"
    assert plugin_zip.name == f"changeclip_qgis-{general['version']}.zip"
    icon = general["icon"]
    assert f"changeclip_qgis/{icon}" in names, f"metadata icon {icon} is not in the zip"


LOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from unittest import mock
    sys.path.insert(0, "/usr/share/qgis/python/plugins")
    from qgis.core import QgsApplication
    app = QgsApplication([], True)
    app.initQgis()
    from processing.core.Processing import Processing
    Processing.initialize()
    from qgis.PyQt.QtWidgets import QMainWindow
    from qgis.gui import QgisInterface, QgsMapCanvas
    import qgis.utils as qu
    window = QMainWindow()
    iface = mock.MagicMock(spec=QgisInterface)
    iface.mainWindow.return_value = window
    iface.mapCanvas.return_value = QgsMapCanvas(window)
    qu.iface = iface
    plugins_dir = sys.argv[1]
    qu.plugin_paths = [plugins_dir]
    sys.path.insert(0, plugins_dir)
    qu.updateAvailablePlugins()
    report = {"available": "changeclip_qgis" in qu.available_plugins}
    report["loaded"] = qu.loadPlugin("changeclip_qgis")
    report["started"] = qu.startPlugin("changeclip_qgis")
    reg = QgsApplication.processingRegistry()
    report["provider"] = reg.providerById("changeclip") is not None
    report["algorithm"] = reg.algorithmById("changeclip:detectchanges") is not None
    report["heavy_modules"] = sorted(m for m in sys.modules
                                     if m.split(".")[0] in ("torch", "open_clip", "changeclip", "safetensors"))
    report["unloaded"] = qu.unloadPlugin("changeclip_qgis")
    report["provider_after_unload"] = reg.providerById("changeclip") is not None
    print("REPORT " + json.dumps(report))
    app.exitQgis()
    """
)


@pytest.mark.qgis
def test_zip_installs_loads_and_unloads_in_qgis(plugin_zip: Path, tmp_path: Path) -> None:
    """Unzip into a temporary profile's plugin folder; QGIS's own Python loads and unloads it."""
    profile = tmp_path / "profile"
    plugins_dir = profile / "profiles" / "default" / "python" / "plugins"
    plugins_dir.mkdir(parents=True)
    with zipfile.ZipFile(plugin_zip) as zf:
        zf.extractall(plugins_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env.update(QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=str(profile),
               PATH="/usr/bin:/bin")
    proc = subprocess.run([SYSTEM_PYTHON, "-c", LOAD_SCRIPT, str(plugins_dir)], capture_output=True,
                          text=True, timeout=300, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, f"QGIS load script failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = json.loads(lines[-1][len("REPORT "):])
    assert report == {"available": True, "loaded": True, "started": True, "provider": True, "algorithm": True,
                      "heavy_modules": [], "unloaded": True, "provider_after_unload": False}, report
