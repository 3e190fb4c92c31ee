"""Drives the real QGIS desktop from inside, as a user would click (run by QGIS as PYQGIS_STARTUP).

QGIS runs this file when its Python starts, before the project is read, so the timers set up
here also run inside the modal dialogs QGIS may open while loading (a user clicks those away:
the datum-transformation prompt is closed, anything else modal is closed and reported). The
steps, each bounded by the overall deadline:

1. wait for the main window, the project's two rasters and the started plugin;
2. open the dock through the plugin's toolbar/menu action; record Before, After and the
   backend line; press Connect and wait for the backend's device line;
3. choose the IR-MAD engine, press Run, wait for "Done" (or an error);
4. record the layer tree (groups, layer names, visibility) and the canvas's layer order, let the
   canvas render, save a screenshot of the main window;
5. write the JSON report and quit QGIS through its own Exit action.

Environment: ``SMOKE_REPORT`` (JSON path), ``SMOKE_SCREENSHOT`` (PNG path), ``SMOKE_DEADLINE_S``.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from typing import Any

from qgis.core import Qgis, QgsApplication, QgsLayerTreeGroup, QgsLayerTreeLayer, QgsProject
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QAction, QApplication, QDialog, QDockWidget, QMessageBox

REPORT_PATH = os.environ["SMOKE_REPORT"]
SCREENSHOT_PATH = os.environ["SMOKE_SCREENSHOT"]
STARTED = time.monotonic()
DEADLINE = STARTED + float(os.environ.get("SMOKE_DEADLINE_S", "150"))
TOGGLE_ACTION = "changeclip_changeclipchangedetection"
DATUM_DIALOG = "QgsDatumTransformDialog"

report: dict[str, Any] = {"steps": [], "dialogs_closed": [], "messages": [], "error": None}
state: dict[str, Any] = {"step": "wait_ready", "since": time.monotonic()}


def _log_message(message: str, tag: str, level: Any) -> None:
    if tag in ("Python error", "ChangeCLIP") and level in (Qgis.Warning, Qgis.Critical):
        report["messages"].append(f"[{tag}] {message[:2000]}")


QgsApplication.messageLog().messageReceived.connect(_log_message)


def _close_modal_dialogs() -> None:
    """Click away modal dialogs, as a user would (the datum prompt on a fresh profile, above all).

    Every one is reported. A question (QMessageBox) gets its affirmative button, so that a
    question while quitting cannot keep QGIS open; other dialogs are accepted (the datum prompt:
    QGIS's preselected transformation) or rejected.
    """
    for widget in QApplication.topLevelWidgets():
        if not (isinstance(widget, QDialog) and widget.isVisible() and widget.isModal()):
            continue
        name = widget.metaObject().className()
        text = widget.text() if isinstance(widget, QMessageBox) else ""
        report["dialogs_closed"].append({"class": name, "title": widget.windowTitle(), "text": text[:500],
                                         "step": state["step"]})
        if isinstance(widget, QMessageBox):
            yes = [b for b in widget.buttons() if widget.buttonRole(b) in (QMessageBox.YesRole, QMessageBox.AcceptRole)]
            if yes:
                yes[0].click()
            else:
                widget.reject()
        elif name == DATUM_DIALOG:
            widget.accept()
        else:
            widget.reject()
        if state["step"] == "quitting":  # the report was written already: add what QGIS asked on exit
            _write_report()


def _tree(group: QgsLayerTreeGroup) -> list[dict[str, Any]]:
    out = []
    for node in group.children():
        if isinstance(node, QgsLayerTreeGroup):
            out.append({"group": node.name(), "visible": node.isVisible(), "children": _tree(node)})
        elif isinstance(node, QgsLayerTreeLayer):
            out.append({"layer": node.name(), "visible": node.isVisible()})
    return out


def _write_report() -> None:
    part = REPORT_PATH + ".part"
    with open(part, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2, ensure_ascii=False)
    os.replace(part, REPORT_PATH)


def _finish(error: str | None = None) -> None:
    report["error"] = error
    report["seconds"] = round(time.monotonic() - STARTED, 1)
    _write_report()
    state["step"] = "quitting"
    QgsProject.instance().setDirty(False)  # no "save changes?" question on exit
    from qgis.utils import iface

    if iface is not None:  # from the event loop, not inside this tick: the timer must keep watching dialogs
        QTimer.singleShot(0, iface.actionExit().trigger)
    else:
        QApplication.instance().exit(3)


def _go(step: str) -> None:
    report["steps"].append(step)
    state["step"], state["since"] = step, time.monotonic()


def _dock() -> Any:
    from qgis.utils import iface

    return iface.mainWindow().findChild(QDockWidget, "ChangeClipDock")


def _tick() -> None:  # noqa: C901 - one flat state machine reads best
    try:
        _close_modal_dialogs()
        step = state["step"]
        if step == "quitting":
            return
        if time.monotonic() > DEADLINE:
            _finish(f"deadline reached in step '{step}'")
            return
        from qgis.utils import active_plugins, iface

        if step == "wait_ready":
            ready = (iface is not None and iface.mainWindow().isVisible()
                     and len(QgsProject.instance().mapLayers()) >= 2 and "changeclip_qgis" in active_plugins)
            if ready:
                report["active_plugins"] = sorted(active_plugins)
                report["project_layers"] = sorted(lyr.name() for lyr in QgsProject.instance().mapLayers().values())
                _go("open_dock")
        elif step == "open_dock":
            actions = [a for a in iface.mainWindow().findChildren(QAction) if a.objectName() == TOGGLE_ACTION]
            report["toggle_actions"] = len(actions)
            if not actions:
                _finish("the plugin's dock action was not found")
                return
            actions[0].trigger()  # what the toolbar button and the Raster menu entry do
            _go("dock_shown")
        elif step == "dock_shown":
            dock = _dock()
            if dock is not None and dock.isVisible():
                report["before"] = dock.before_combo.currentLayer().name() if dock.before_combo.currentLayer() else None
                report["after"] = dock.after_combo.currentLayer().name() if dock.after_combo.currentLayer() else None
                report["backend_line_initial"] = dock.backend_label.text()
                dock.check_button.click()
                _go("connecting")
        elif step == "connecting":
            text = _dock().backend_label.text()
            if "connecting" not in text:
                report["backend_line"] = text
                dock = _dock()
                dock.engine_combo.setCurrentIndex(dock.engine_combo.findData("irmad"))
                dock.run_button.click()
                _go("running")
        elif step == "running":
            dock = _dock()
            stage = dock.stage_label.text()
            if stage.startswith(("Done", "Error", "Cancelled")) or (dock.run_button.isEnabled()
                                                                      and time.monotonic() - state["since"] > 5):
                report["stage"] = stage
                report["summary_line"] = dock.summary_label.text()
                report["layer_tree"] = _tree(QgsProject.instance().layerTreeRoot())
                iface.mapCanvas().zoomToFullExtent()
                iface.mapCanvas().refreshAllLayers()
                _go("rendering")
        elif step == "rendering":
            canvas = iface.mapCanvas()
            if not canvas.isDrawing() and time.monotonic() - state["since"] > 2:
                # read once the canvas has settled: the layer tree's bridge hands the new layers to
                # the canvas on a deferred (queued) call, not in the same event as the dock's "Done"
                report["canvas_layers"] = [lyr.name() for lyr in canvas.layers()]
                os.makedirs(os.path.dirname(SCREENSHOT_PATH), exist_ok=True)
                report["screenshot"] = iface.mainWindow().grab().save(SCREENSHOT_PATH)
                _finish()
    except Exception:  # noqa: BLE001 - report it and quit instead of hanging QGIS
        _finish(traceback.format_exc())


TIMER = QTimer()
TIMER.setInterval(200)
TIMER.timeout.connect(_tick)
TIMER.start()
