"""The plugin's machine-level settings (QgsSettings under ``changeclip/``) and their env overrides.

Environment variables win over the stored settings, so that ``qgis_process`` runs and CI can
point the plugin at a backend without touching a QGIS profile:

=============================  =====================================================
``CHANGECLIP_BACKEND_PYTHON``  interpreter that has the backend (``python -m changeclip``)
``CHANGECLIP_BACKEND_URL``     URL of a running ``changeclip serve`` (local or remote)
``CHANGECLIP_TOKEN_FILE``      file holding that server's token
``CHANGECLIP_WEIGHTS_DIR``     folder searched for weights files
=============================  =====================================================
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

PREFIX = "changeclip/"

KEY_PYTHON = "backend/python"
KEY_URL = "backend/url"
# Justification: a settings key name, not a secret.
KEY_TOKEN_FILE = "backend/token_file"  # nosec B105
KEY_WEIGHTS_DIR = "weights_dir"
KEY_START_TIMEOUT = "backend/start_timeout_s"
KEY_OUTPUT_BASE = "output_base_dir"
KEY_SETUP_PYTHON = "setup/python"  # the interpreter the last "Set up backend…" built from
KEY_SETUP_REASON = "setup/python_reason"  # and why that one (shown by Diagnostics)
KEY_DOCK_CHOICES = "dock/"  # + engine, prompt_mode, …: the dock's last-used choices

ENV = {
    KEY_PYTHON: "CHANGECLIP_BACKEND_PYTHON",
    KEY_URL: "CHANGECLIP_BACKEND_URL",
    KEY_TOKEN_FILE: "CHANGECLIP_TOKEN_FILE",
    KEY_WEIGHTS_DIR: "CHANGECLIP_WEIGHTS_DIR",
}

DEFAULT_START_TIMEOUT_S = 180.0


def _qsettings():  # noqa: ANN202 - QgsSettings, imported lazily
    from qgis.core import QgsSettings

    return QgsSettings()


def get(key: str, default: str = "") -> str:
    """A setting as a string: the env override if set, else QgsSettings, else ``default``."""
    env_name = ENV.get(key)
    if env_name and os.environ.get(env_name, "").strip():
        return os.environ[env_name].strip()
    value = _qsettings().value(PREFIX + key, default)
    return "" if value is None else str(value)


def set_value(key: str, value: str) -> None:
    """Store a setting in QgsSettings (an env override, if set, still wins when reading)."""
    _qsettings().setValue(PREFIX + key, value)


def overridden_by_env(key: str) -> str | None:
    """Name of the environment variable currently overriding ``key``, or None."""
    env_name = ENV.get(key)
    if env_name and os.environ.get(env_name, "").strip():
        return env_name
    return None


def default_venv_dir() -> Path:
    """Where "Set up backend…" creates the backend's virtual environment (in the QGIS profile)."""
    try:
        from qgis.core import QgsApplication

        base = Path(QgsApplication.qgisSettingsDirPath())
    except ImportError:
        base = Path.home() / ".changeclip"
    return base / "changeclip" / "backend-venv"


def venv_python(venv_dir: Path) -> Path:
    """The interpreter inside a virtual environment (Windows and POSIX layouts)."""
    if sys.platform == "win32":
        return venv_dir / "Scripts" / "python.exe"
    return venv_dir / "bin" / "python"


@dataclass(frozen=True)
class BackendConfig:
    """Where the backend is: a remote/running server (``url``) or an interpreter to start.

    Attributes:
        python: interpreter with the backend installed ("" when none is configured).
        url: base URL of an already running server ("" to start one locally).
        token_file: file with that server's token ("" if it needs none).
        weights_dir: folder of weights files ("" if unset).
        start_timeout_s: how long to wait for the handshake line of ``changeclip serve``.
    """

    python: str
    url: str
    token_file: str
    weights_dir: str
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S

    @classmethod
    def load(cls) -> BackendConfig:
        """Read settings + env overrides; fall back to the venv made by "Set up backend…"."""
        python = get(KEY_PYTHON)
        if not python:
            candidate = venv_python(default_venv_dir())
            if candidate.is_file():
                python = str(candidate)
        try:
            timeout = float(get(KEY_START_TIMEOUT, str(DEFAULT_START_TIMEOUT_S)))
        except ValueError:
            timeout = DEFAULT_START_TIMEOUT_S
        return cls(python=python, url=get(KEY_URL).rstrip("/"), token_file=get(KEY_TOKEN_FILE),
                   weights_dir=get(KEY_WEIGHTS_DIR), start_timeout_s=timeout)

    def describe(self) -> str:
        """One line saying where the backend is configured."""
        if self.url:
            return f"remote server {self.url}"
        if self.python:
            return f"local, started with {self.python}"
        return "not configured"
