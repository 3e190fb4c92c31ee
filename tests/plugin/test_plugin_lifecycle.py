"""The plugin loads into (a mocked) QGIS interface and unloads cleanly; imports stay torch-free."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.qgis

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_init_gui_and_unload(qgis_app: object, mock_iface) -> None:  # noqa: ANN001
    from qgis.core import QgsApplication
    from qgis.PyQt.QtWidgets import QToolBar

    import changeclip_qgis

    iface = mock_iface
    plugin = changeclip_qgis.classFactory(iface)
    plugin.initGui()
    registry = QgsApplication.processingRegistry()
    assert registry.providerById("changeclip") is not None
    assert registry.algorithmById("changeclip:detectchanges") is not None
    assert plugin.dock is not None and not plugin.dock.isVisible()
    texts = [a.text() for a in plugin.actions]
    assert texts == ["ChangeCLIP change detection", "Set up backend…", "Settings…", "Diagnostics…"]
    assert iface.addPluginToRasterMenu.call_count == 4
    toolbars = iface.mainWindow().findChildren(QToolBar, "ChangeCLIPToolbar")
    assert len(toolbars) == 1 and plugin.toggle_action in toolbars[0].actions()
    iface.mainWindow().show()
    plugin.toggle_action.trigger()
    assert plugin.dock.isVisible() and plugin.toggle_action.isChecked()
    plugin.toggle_action.trigger()
    assert not plugin.dock.isVisible() and not plugin.toggle_action.isChecked()
    refreshed: list[object] = []
    plugin.dock.refresh_weights_info = lambda *args: refreshed.append(args)  # closing settings refreshes the dock
    plugin._open("settings")
    plugin._dialogs["settings"].reject()
    assert len(refreshed) == 1

    plugin.unload()
    assert registry.providerById("changeclip") is None
    assert plugin.dock is None and plugin.actions == [] and plugin.toolbar is None
    assert iface.removePluginRasterMenu.call_count == 4
    iface.removeDockWidget.assert_called_once()
    # a second load after unload works (plugin reload)
    plugin2 = changeclip_qgis.classFactory(iface)
    plugin2.initGui()
    assert registry.providerById("changeclip") is not None
    plugin2.unload()
    assert registry.providerById("changeclip") is None


def test_plugin_import_never_loads_torch_or_backend() -> None:
    """Inside QGIS's own Python (no venv) every plugin module imports without torch/changeclip."""
    code = (
        f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r})\n"
        "import changeclip_qgis, changeclip_qgis.plugin, changeclip_qgis.gui.dock, changeclip_qgis.gui.setup_dialog\n"
        "import changeclip_qgis.processing.detect_changes, changeclip_qgis.core.diagnostics\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'changeclip', 'open_clip')]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    done = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True, timeout=120,
                          env={"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin"}, check=False)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr


def test_unload_during_a_run(qgis_app: object, mock_iface, project, pump, backend_env: None,  # noqa: ANN001
                             raster_pair: tuple[Path, Path]) -> None:
    """Unloading while the dock runs a job cancels it, stops the backend and leaves nothing behind."""
    from qgis.core import QgsApplication, QgsRasterLayer

    import changeclip_qgis
    from changeclip_qgis.core.backend_launcher import LAUNCHER

    plugin = changeclip_qgis.classFactory(mock_iface)
    plugin.initGui()
    before, after = (QgsRasterLayer(str(p), p.stem) for p in raster_pair)
    project.addMapLayers([before, after])
    dock = plugin.dock
    dock.before_combo.setLayer(before)
    dock.after_combo.setLayer(after)
    dock.engine_combo.setCurrentIndex(dock.engine_combo.findData("irmad"))
    task = dock.start_run()
    assert task is not None
    pump(lambda: LAUNCHER.current() is not None or task.status() >= task.Complete, 300)
    plugin.unload()
    assert LAUNCHER.current() is None
    pump(lambda: not QgsApplication.taskManager().activeTasks(), 300)
    assert QgsApplication.processingRegistry().providerById("changeclip") is None


STAGED_LOAD = r"""
import os, sys
from unittest import mock
from qgis.core import QgsApplication
app = QgsApplication([], True)
app.initQgis()
from qgis.gui import QgisInterface, QgsMapCanvas, QgsMessageBar
from qgis.PyQt.QtWidgets import QMainWindow
import qgis.utils
window = QMainWindow()
iface = mock.Mock(spec=QgisInterface)
iface.mainWindow.return_value = window
iface.mapCanvas.return_value = QgsMapCanvas(window)
iface.messageBar.return_value = QgsMessageBar(window)
iface.addToolBar.side_effect = window.addToolBar
iface.addDockWidget.side_effect = window.addDockWidget
iface.removeDockWidget.side_effect = window.removeDockWidget
qgis.utils.iface = iface
qgis.utils.plugin_paths = [sys.argv[1]]
sys.path.insert(0, sys.argv[1])
qgis.utils.updateAvailablePlugins()
assert "changeclip_qgis" in qgis.utils.available_plugins, qgis.utils.available_plugins
assert qgis.utils.loadPlugin("changeclip_qgis")
assert qgis.utils.startPlugin("changeclip_qgis")
import changeclip_qgis
assert changeclip_qgis.__file__.startswith(sys.argv[1]), changeclip_qgis.__file__
reg = QgsApplication.processingRegistry()
assert reg.providerById("changeclip") is not None
from changeclip_qgis.core.paths import icon_path, style_path
assert str(icon_path()).startswith(sys.argv[1]) and icon_path().is_file() and style_path("change_mask").is_file()
assert qgis.utils.unloadPlugin("changeclip_qgis")
assert reg.providerById("changeclip") is None
bad = [m for m in sys.modules if m.split(".")[0] in ("torch", "changeclip", "open_clip")]
assert not bad, bad
print("staged plugin ok")
app.exitQgis()
"""


def test_staged_plugin_in_qgis_own_python(staged_plugin: Path, tmp_path: Path) -> None:
    """The installable folder loads and unloads through qgis.utils in /usr/bin/python3 (no venv, no torch)."""
    env = {"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "QGIS_CUSTOM_CONFIG_PATH": str(tmp_path / "profile")}
    done = subprocess.run(["/usr/bin/python3", "-c", STAGED_LOAD, str(staged_plugin)], capture_output=True,
                          text=True, timeout=300, env=env, check=False, cwd=tmp_path)
    assert done.returncode == 0 and "staged plugin ok" in done.stdout, done.stdout[-2000:] + done.stderr[-3000:]
