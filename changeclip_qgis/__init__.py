"""ChangeCLIP for QGIS: change detection between two dates of imagery (entry point only)."""

from __future__ import annotations


def classFactory(iface):  # noqa: ANN001, ANN201, N802 - QGIS's entry point name
    """Called by QGIS to create the plugin; imports stay cheap until then."""
    from .plugin import ChangeClipPlugin

    return ChangeClipPlugin(iface)
