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
