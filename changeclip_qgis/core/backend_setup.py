"""Create the backend's virtual environment from QGIS's own Python and pip-install the backend.

The venv is made with ``--system-site-packages`` so it shares QGIS's GDAL bindings and numpy;
torch, open_clip and the backend (shipped inside the plugin zip under ``backend/``) go into
the venv, never into QGIS's interpreter. With a folder of wheels, everything installs offline.
"""

from __future__ import annotations

import os
import queue
import re
import shutil

# Justification: venv creation and pip, argument lists only, no shell.
import subprocess  # nosec B404
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .backend_launcher import clean_env
from .errors import ConfigError
from .settings import venv_python

TORCH_PACKAGES = ("torch", "torchvision")


@dataclass(frozen=True)
class SetupStep:
    """One command of the set-up, with what to show while it runs."""

    title: str
    command: list[str]


def qgis_python() -> str:
    """The Python interpreter QGIS runs on (``sys.executable`` is the QGIS binary on some platforms)."""
    exe = Path(sys.executable)
    if exe.name.lower().startswith("python") and exe.is_file():
        return str(exe)
    candidates = [Path(sys.exec_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}",
                  Path(sys.exec_prefix) / "bin" / "python3", Path(sys.exec_prefix) / "python.exe",
                  Path(sys.exec_prefix) / "python3.exe"]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(f"python{sys.version_info[0]}.{sys.version_info[1]}") or shutil.which("python3")
    if found:
        return found
    raise ConfigError("cannot find QGIS's Python interpreter; set the backend Python in the ChangeCLIP "
                      "settings to an interpreter where you installed the backend yourself")


def _qgis_numpy_version() -> str:
    """The numpy version QGIS's Python has ("" if none): the backend venv must keep it."""
    try:
        import numpy
    except ImportError:
        return ""
    return str(numpy.__version__)


def _pins(requirements: Path | None) -> dict[str, str]:
    pins: dict[str, str] = {}
    if requirements is None or not requirements.is_file():
        return pins
    for line in requirements.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def setup_steps(venv_dir: Path, backend_dir: Path, *, python: str | None = None,
                wheels_dir: Path | None = None, torch_index_url: str = "",
                extra_pip_args: list[str] | None = None, install_torch: bool = True,
                check_imports: bool = True) -> list[SetupStep]:
    """The commands that set up the backend.

    Args:
        venv_dir: folder of the new virtual environment.
        backend_dir: the backend project (``<plugin>/backend``) with ``pyproject.toml``.
        python: the interpreter to create the venv from (default: QGIS's).
        wheels_dir: a folder of wheels for offline machines (then nothing is downloaded).
        torch_index_url: a PyTorch wheel index, e.g. ``https://download.pytorch.org/whl/cu128``
            for a CUDA 12.8 driver ("" = PyPI's default wheels).
        extra_pip_args: more pip arguments (tests pass ``--no-deps`` etc.).
        install_torch: install torch/torchvision first (False when the base Python already has them).
        check_imports: finish by importing torch and open_clip in the venv.

    Raises:
        ConfigError: the backend project is missing.
    """
    if not (backend_dir / "pyproject.toml").is_file():
        raise ConfigError(f"the backend project is missing from {backend_dir}; reinstall the plugin from its zip")
    python = python or qgis_python()
    vpy = str(venv_python(venv_dir))
    pip = [vpy, "-m", "pip", "install", "--disable-pip-version-check"]
    if wheels_dir is not None:
        if not wheels_dir.is_dir():
            raise ConfigError(f"wheels folder {wheels_dir} does not exist")
        pip += ["--no-index", "--find-links", str(wheels_dir)]
    pip += list(extra_pip_args or [])
    # the pins: <plugin>/backend/requirements.txt in the zip, <repo>/requirements.txt in a checkout
    requirements = backend_dir / "requirements.txt"
    if not requirements.is_file():
        requirements = backend_dir.parent / "requirements.txt"
    pins = _pins(requirements)
    steps = [SetupStep("Creating the virtual environment (shares QGIS's GDAL)",
                       [python, "-m", "venv", "--system-site-packages", str(venv_dir)])]
    # keep QGIS's own numpy (GDAL's bindings are compiled against it): pin it in every pip call
    numpy_pin = [f"numpy=={_qgis_numpy_version()}"] if _qgis_numpy_version() else []
    torch_specs = [f"{name}=={pins[name]}" if name in pins else name for name in TORCH_PACKAGES] + numpy_pin
    torch_cmd = pip + torch_specs
    if torch_index_url and wheels_dir is None:
        torch_cmd += ["--index-url", torch_index_url]
    if install_torch:
        steps.append(SetupStep("Installing PyTorch (large download)", torch_cmd))
    backend_cmd = list(pip)
    if requirements.is_file():
        backend_cmd += ["-c", str(requirements)]
    steps.append(SetupStep("Installing the ChangeCLIP backend and open_clip",
                           backend_cmd + [str(backend_dir)] + numpy_pin))
    steps.append(SetupStep("Checking the backend", [vpy, "-m", "changeclip", "--version"]))
    if check_imports:
        steps.append(SetupStep("Checking torch, open_clip and GDAL",
                               [vpy, "-c", "import torch, open_clip; from osgeo import gdal; "
                                "print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu',"
                                " '| GDAL', gdal.__version__)"]))
    return steps


def run_steps(steps: list[SetupStep], on_line: Callable[[str], None],
              is_cancelled: Callable[[], bool] = lambda: False,
              on_step: Callable[[int, SetupStep], None] | None = None) -> None:
    """Run ``steps`` in order, streaming their output lines to ``on_line``.

    Raises:
        ConfigError: a step failed (message names it and its last output line) or was cancelled.
    """
    env = clean_env()
    env["PIP_NO_INPUT"] = "1"
    for index, step in enumerate(steps):
        if on_step is not None:
            on_step(index, step)
        on_line(f"$ {' '.join(step.command)}")
        try:
            # Justification: argument list built by setup_steps(), no shell.
            proc = subprocess.Popen(step.command, stdout=subprocess.PIPE,  # nosec B603
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    cwd=os.path.expanduser("~"))
        except OSError as exc:
            raise ConfigError(f"{step.title} failed: cannot run {step.command[0]}: {exc.strerror}") from None
        with proc:  # closes the pipe whatever happens
            code, last = _follow(proc, on_line, is_cancelled)
        if code is None:
            raise ConfigError("set-up cancelled; run it again to finish")
        if code != 0:
            raise ConfigError(f"{step.title} failed (exit code {code}): {last}")


def _follow(proc: subprocess.Popen, on_line: Callable[[str], None],
            is_cancelled: Callable[[], bool]) -> tuple[int | None, str]:
    """Stream ``proc``'s output to ``on_line`` while polling ``is_cancelled`` (also when it is silent).

    Returns:
        The exit code (None if cancelled; the process is then stopped) and the last output line.
    """
    if proc.stdout is None:  # cannot happen with stdout=PIPE
        raise ConfigError("no output pipe")
    lines: queue.Queue[bytes | None] = queue.Queue()

    def read() -> None:
        for raw in iter(proc.stdout.readline, b""):
            lines.put(raw)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True, name="changeclip-setup-output")
    reader.start()
    last = ""
    while True:
        if is_cancelled():
            proc.terminate()
            proc.wait(timeout=30)
            reader.join(timeout=5)
            return None, last
        try:
            raw = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        if raw is None:
            break
        line = raw.decode("utf-8", "replace").rstrip()
        if line:
            last = line
            on_line(line)
    reader.join(timeout=5)
    return proc.wait(), last
