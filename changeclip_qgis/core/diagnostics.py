"""A copyable diagnostics report: versions, paths, configuration, backend stderr tail, GPU state.

Collecting it runs a few short subprocesses (the backend interpreter's version, ``nvidia-smi``),
so the dock calls :func:`collect` from a background task.
"""

from __future__ import annotations

import configparser
import os
import platform
import shutil

# Justification: short probes of the backend interpreter and nvidia-smi, argument lists, no shell.
import subprocess  # nosec B404
import sys
from typing import Any

from . import protocol
from .backend_launcher import LAUNCHER, BackendLauncher, clean_env, configuration_problem
from .errors import ChangeClipPluginError
from .paths import PLUGIN_DIR, bundled_backend_dir, resources_dir
from .settings import ENV, KEY_SETUP_PYTHON, KEY_SETUP_REASON, BackendConfig, default_venv_dir, get

PROBE_TIMEOUT_S = 30


def plugin_version() -> str:
    """The plugin's version from its metadata.txt (``?`` when unknown, e.g. in a source checkout)."""
    for candidate in (PLUGIN_DIR / "metadata.txt", PLUGIN_DIR.parent / "metadata.txt"):
        if candidate.is_file():
            parser = configparser.ConfigParser()
            try:
                parser.read(candidate, encoding="utf-8")
                return parser["general"]["version"]
            except (configparser.Error, KeyError):
                continue
    return "?"


def _probe(cmd: list[str], env: dict[str, str] | None = None) -> str:
    try:
        # Justification: fixed argument list (interpreter/nvidia-smi chosen by the user), no shell.
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,  # nosec B603
                              env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not run {cmd[0]}: {exc}"
    out = (done.stdout + done.stderr).strip()
    return out if done.returncode == 0 else f"exit code {done.returncode}: {out[-2000:]}"


def setup_interpreter_report() -> dict[str, str]:
    """Which interpreter "Set up backend…" builds (or built) the backend's venv from, and why."""
    from .backend_setup import check_interpreter, find_qgis_python

    report: dict[str, str] = {}
    last = get(KEY_SETUP_PYTHON)
    report["last set-up built from"] = (f"{last} ({get(KEY_SETUP_REASON) or 'reason not recorded'})"
                                        if last else "(no set-up run yet)")
    try:
        choice = find_qgis_python()
    except ChangeClipPluginError as exc:
        report["QGIS's Python"] = f"not found: {exc}"
        return report
    report["QGIS's Python"] = f"{choice.python} ({choice.reason})"
    report["it imports"] = check_interpreter(choice.python).summary()
    return report


def collect(launcher: BackendLauncher = LAUNCHER, config: BackendConfig | None = None) -> str:
    """Build the report text (safe off the main thread; never contains the token)."""
    config = config or BackendConfig.load()
    lines: list[str] = ["# ChangeCLIP diagnostics", ""]

    def section(title: str, items: dict[str, Any] | list[str]) -> None:
        lines.append(f"## {title}")
        if isinstance(items, dict):
            lines.extend(f"- {k}: {v}" for k, v in items.items())
        else:
            lines.extend(items)
        lines.append("")

    try:
        from qgis.core import Qgis
        from qgis.PyQt.QtCore import QT_VERSION_STR

        qgis_version, qt_version = Qgis.QGIS_VERSION, QT_VERSION_STR
    except ImportError:
        qgis_version = qt_version = "not available"
    section("Versions", {"plugin": plugin_version(), "protocol": protocol.PROTOCOL_VERSION,
                         "QGIS": qgis_version, "Qt": qt_version,
                         "QGIS Python": f"{platform.python_version()} ({sys.executable})",
                         "OS": platform.platform()})
    section("Configuration", {
        "backend": config.describe(), "backend Python": config.python or "(none)",
        "backend URL": config.url or "(none)", "token file": config.token_file or "(none)",
        "weights folder": config.weights_dir or "(none)",
        "start timeout (s)": config.start_timeout_s,
        "environment overrides": ", ".join(f"{v}={os.environ[v]}" for v in ENV.values()
                                           if os.environ.get(v)) or "(none)",
        "problem": configuration_problem(config) or "none found"})
    section("Paths", {"plugin": PLUGIN_DIR, "resources": resources_dir(),
                      "bundled backend": bundled_backend_dir() or "(not bundled)",
                      "default backend venv": default_venv_dir()})
    section("Set-up interpreter", setup_interpreter_report())
    if config.python and os.path.isfile(config.python):
        section("Backend interpreter", {
            "python": _probe([config.python, "--version"], clean_env()),
            "changeclip": _probe([config.python, "-m", "changeclip", "--version"], clean_env()),
            "torch": _probe([config.python, "-c", "import torch; print(torch.__version__, 'cuda' "
                             "if torch.cuda.is_available() else 'cpu')"], clean_env())})
    backend = launcher.current()
    if backend is not None:
        try:
            status = backend.client.status()
        except Exception as exc:  # noqa: BLE001 - a report, not an action
            status = {"error": str(exc)}
        section("Running backend", {"url": backend.url, "started by plugin": backend.owned,
                                    "pid": backend.process.pid if backend.process else "-",
                                    "status": status})
    else:
        section("Running backend", ["(none)"])
    section("Last start", {"command": " ".join(launcher.last_command) or "(none)",
                           "error": launcher.last_error or "(none)"})
    tail = launcher.stderr_tail()
    section("Backend stderr (last lines)", ["```", tail or "(empty)", "```"])
    smi = shutil.which("nvidia-smi")
    gpu = _probe([smi, "--query-gpu=index,name,driver_version,memory.used,memory.total,utilization.gpu",
                  "--format=csv"]) if smi else "nvidia-smi not found (no NVIDIA driver on this machine)"
    section("GPU", ["```", gpu, "```"])
    return "\n".join(lines)
