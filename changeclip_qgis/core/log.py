"""Logging to QGIS's message log under the tag ``ChangeCLIP`` (and to Python logging)."""

from __future__ import annotations

import logging

TAG = "ChangeCLIP"
_logger = logging.getLogger("changeclip_qgis")


def log(message: str, level: str = "info") -> None:
    """Write ``message`` to the QGIS message log (tab "ChangeCLIP") and to Python logging.

    Args:
        message: the text.
        level: ``"info"``, ``"warning"`` or ``"critical"``.
    """
    py_level = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.ERROR}.get(level, logging.INFO)
    _logger.log(py_level, message)
    try:
        from qgis.core import Qgis, QgsMessageLog

        qgis_level = {"info": Qgis.MessageLevel.Info, "warning": Qgis.MessageLevel.Warning,
                      "critical": Qgis.MessageLevel.Critical}.get(level, Qgis.MessageLevel.Info)
        QgsMessageLog.logMessage(message, TAG, qgis_level)
    except ImportError:  # outside QGIS (pure unit tests)
        pass
