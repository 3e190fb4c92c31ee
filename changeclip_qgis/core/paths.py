"""Where the plugin's files are: resources, styles, icons and the bundled backend project."""

from __future__ import annotations

from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parents[1]
"""The ``changeclip_qgis`` package folder (in the repo or in the installed plugin)."""


def resources_dir() -> Path:
    """``<plugin>/resources`` when packaged, ``<repo>/resources`` in a source checkout."""
    packaged = PLUGIN_DIR / "resources"
    if packaged.is_dir():
        return packaged
    return PLUGIN_DIR.parent / "resources"


def style_path(name: str) -> Path:
    """Path of a QML style in ``resources/styles`` (``name`` without ``.qml``)."""
    return resources_dir() / "styles" / f"{name}.qml"


def icon_path(name: str = "changeclip") -> Path:
    """Path of an SVG icon in ``resources/icons``."""
    return resources_dir() / "icons" / f"{name}.svg"


def bundled_backend_dir() -> Path | None:
    """The backend project shipped with the plugin (for "Set up backend…"), if present.

    ``<plugin>/backend`` in the zip; ``<repo>/backend`` in a source checkout.
    """
    for candidate in (PLUGIN_DIR / "backend", PLUGIN_DIR.parent / "backend"):
        if (candidate / "pyproject.toml").is_file():
            return candidate
    return None
