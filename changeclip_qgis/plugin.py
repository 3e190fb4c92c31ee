"""The plugin object QGIS creates: toolbar button, menu entries, dock and Processing provider."""

from __future__ import annotations

from typing import Any

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon

from .compat import QAction
from .core.backend_launcher import LAUNCHER
from .core.paths import icon_path

MENU = "&ChangeCLIP"


class ChangeClipPlugin:
    """``initProcessing``/``initGui``/``unload`` for QGIS (and ``qgis_process``, which only calls
    ``initProcessing``).

    Args:
        iface: the QgisInterface QGIS passes to ``classFactory``.
    """

    def __init__(self, iface: Any) -> None:
        self.iface = iface
        self.provider = None
        self.dock = None
        self.toolbar = None
        self.actions: list[QAction] = []
        self._dialogs: dict[str, Any] = {}

    def initProcessing(self) -> None:  # noqa: N802 - QGIS API
        """Register the ``changeclip`` provider (it loads even without a backend)."""
        if self.provider is not None:
            return
        from .processing.provider import ChangeClipProvider

        self.provider = ChangeClipProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802 - QGIS API
        """Create the toolbar button, the Raster → ChangeCLIP menu and the (hidden) dock."""
        self.initProcessing()
        from .gui.dock import ChangeClipDock

        self.dock = ChangeClipDock(self.iface, self.iface.mainWindow())
        self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self.dock.hide()
        icon = QIcon(str(icon_path()))
        self.toggle_action = self._action(icon, "ChangeCLIP change detection", self._toggle_dock, toolbar=True)
        self.toggle_action.setCheckable(True)
        self.dock.visibilityChanged.connect(self.toggle_action.setChecked)
        self.setup_action = self._action(icon, "Set up backend…", lambda: self._open("setup"))
        self.settings_action = self._action(QIcon(), "Settings…", lambda: self._open("settings"))
        self.diagnostics_action = self._action(QIcon(), "Diagnostics…", lambda: self._open("diagnostics"))

    def _action(self, icon: QIcon, text: str, slot: Any, toolbar: bool = False) -> QAction:
        action = QAction(icon, text, self.iface.mainWindow())
        action.setObjectName("changeclip_" + "".join(c for c in text.lower() if c.isalnum()))
        action.triggered.connect(slot)
        self.iface.addPluginToRasterMenu(MENU, action)
        if toolbar:
            if self.toolbar is None:
                self.toolbar = self.iface.addToolBar("ChangeCLIP")
                self.toolbar.setObjectName("ChangeCLIPToolbar")
            self.toolbar.addAction(action)
        self.actions.append(action)
        return action

    def _toggle_dock(self) -> None:
        if self.dock is not None:
            self.dock.setVisible(not self.dock.isVisible())

    def _open(self, which: str) -> None:
        parent = self.iface.mainWindow()
        if which == "setup":
            from .gui.setup_dialog import SetupDialog as Dialog
        elif which == "settings":
            from .gui.settings_dialog import SettingsDialog as Dialog
        else:
            from .gui.diagnostics_dialog import DiagnosticsDialog as Dialog
        dialog = Dialog(parent)
        self._dialogs[which] = dialog
        if self.dock is not None and which != "diagnostics":  # the weights folder or the backend may have changed
            dialog.finished.connect(self.dock.refresh_weights_info)
            (dialog.accepted if which == "settings" else dialog.finished).connect(self.dock.refresh_backend_line)
        dialog.show()

    def unload(self) -> None:
        """Remove everything ``initGui``/``initProcessing`` added and stop the backend we started."""
        for action in self.actions:
            self.iface.removePluginRasterMenu(MENU, action)
            if self.toolbar is not None:
                self.toolbar.removeAction(action)
            action.deleteLater()
        self.actions = []
        if self.toolbar is not None:
            self.toolbar.deleteLater()
            self.toolbar = None
        if self.dock is not None:
            self.dock.shutdown()
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        for dialog in self._dialogs.values():
            dialog.close()
        self._dialogs.clear()
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        LAUNCHER.stop()
