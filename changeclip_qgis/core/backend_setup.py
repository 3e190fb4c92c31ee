"""Create the backend's virtual environment from QGIS's own Python and pip-install the backend.

The venv is made with ``--system-site-packages`` so it shares QGIS's GDAL bindings and numpy;
torch, open_clip and the backend (shipped inside the plugin zip under ``backend/``) go into
the venv, never into QGIS's interpreter. With a folder of wheels, everything installs offline.

Before anything is created or downloaded: :func:`find_qgis_python` finds the interpreter QGIS
really runs on (from ``sys`` prefixes and platform layouts, never from PATH), and
:func:`check_interpreter` runs it once to see that it imports GDAL. :func:`choose_torch` picks
the PyTorch build (the CPU wheels where there is no NVIDIA GPU) and says its download size.
"""

from __future__ import annotations

import json
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


@dataclass(frozen=True)
class PythonRuntime:
    """What the running process says about its Python (``sys``), as plain values tests can fake.

    Inside QGIS ``executable`` is often not a Python at all (``/usr/bin/qgis``, ``qgis-bin.exe``,
    ``QGIS.app/Contents/MacOS/QGIS``): Python is embedded, and only the prefixes say where its
    installation is.
    """

    executable: str
    base_executable: str
    prefix: str
    exec_prefix: str
    base_prefix: str
    base_exec_prefix: str
    version: tuple[int, int]
    platform: str

    @classmethod
    def current(cls) -> PythonRuntime:
        """The running process's values."""
        return cls(executable=sys.executable or "", base_executable=getattr(sys, "_base_executable", "") or "",
                   prefix=sys.prefix, exec_prefix=sys.exec_prefix, base_prefix=sys.base_prefix,
                   base_exec_prefix=sys.base_exec_prefix, version=(sys.version_info[0], sys.version_info[1]),
                   platform=sys.platform)


@dataclass(frozen=True)
class InterpreterChoice:
    """The interpreter the backend's venv is made from, and why that one (shown in the dialog and Diagnostics)."""

    python: str
    reason: str


def _is_interpreter(path: Path) -> bool:
    """A real interpreter binary (or a link to one), not a shell-script shim (pyenv, asdf, conda wrappers)."""
    try:
        if not path.is_file():
            return False
        with path.open("rb") as fh:
            return fh.read(2) != b"#!"
    except OSError:
        return False


def _python_names(runtime: PythonRuntime) -> list[str]:
    major, minor = runtime.version
    if runtime.platform == "win32":
        return ["python.exe", f"python{major}.exe"]
    return [f"python{major}.{minor}", f"python{major}", "python"]


def _looks_like_python(path: str, runtime: PythonRuntime) -> bool:
    name = Path(path).name.lower() if path else ""
    return name in {n.lower() for n in _python_names(runtime)}


def _unique(items: list[str]) -> list[str]:
    return [item for i, item in enumerate(items) if item and item not in items[:i]]


def qgis_python_candidates(runtime: PythonRuntime) -> list[InterpreterChoice]:
    """Every place QGIS's own interpreter may be, best first (existing or not).

    Order: the running executable when it is a Python (plain Python, not inside a venv);
    ``sys._base_executable``; the interpreter inside ``sys.exec_prefix``/``sys.prefix`` (and
    their base prefixes), by platform layout: ``<prefix>/bin/python3.x`` on Linux and macOS,
    ``<prefix>\\python.exe`` on Windows (OSGeo4W and the standalone installers put Python in
    ``<root>\\apps\\Python3x``); then layouts found from the QGIS binary itself: ``qgis-bin.exe``'s
    ``..\\apps\\Python<major><minor>\\python.exe`` on Windows, and ``QGIS.app/Contents/MacOS/bin/python3``
    or ``Contents/Frameworks/Python.framework/Versions/3.x/bin/python3`` on macOS. PATH is never
    searched: the first ``python3`` on PATH is often a pyenv/conda shim, not QGIS's Python.
    """
    major, minor = runtime.version
    names = _python_names(runtime)
    found: list[InterpreterChoice] = []
    in_venv = runtime.prefix != runtime.base_prefix
    if _looks_like_python(runtime.executable, runtime) and not in_venv:
        found.append(InterpreterChoice(runtime.executable, "the running program (sys.executable) is Python itself"))
    if _looks_like_python(runtime.base_executable, runtime):
        found.append(InterpreterChoice(runtime.base_executable, "sys._base_executable: the interpreter this QGIS process runs on"))
    for label, prefix in (("sys.exec_prefix", runtime.exec_prefix), ("sys.prefix", runtime.prefix),
                          ("sys.base_exec_prefix", runtime.base_exec_prefix),
                          ("sys.base_prefix", runtime.base_prefix)):
        if not prefix:
            continue
        folders = [Path(prefix)] if runtime.platform == "win32" else [Path(prefix) / "bin"]
        for folder in folders:
            for name in names:
                found.append(InterpreterChoice(str(folder / name), f"{name} in {label} ({prefix}), where the "
                                               "Python embedded in QGIS is installed"))
    exe = Path(runtime.executable) if runtime.executable else None
    if exe is not None and runtime.platform == "win32":
        root = exe.parent.parent  # <root>\bin\qgis-bin.exe
        found.append(InterpreterChoice(str(root / "apps" / f"Python{major}{minor}" / "python.exe"),
                                       f"apps\\Python{major}{minor}\\python.exe of the QGIS installation {root} "
                                       "(OSGeo4W or standalone installer layout)"))
    if exe is not None and runtime.platform == "darwin":
        bundles = [p for p in (exe, *exe.parents, Path(runtime.prefix), *Path(runtime.prefix).parents)
                   if p.name == "Contents" and p.parent.suffix == ".app"]
        for contents in _unique([str(b) for b in bundles]):
            for sub in (("MacOS", "bin"), ("Frameworks", "Python.framework", "Versions", f"{major}.{minor}", "bin")):
                for name in names:
                    found.append(InterpreterChoice(str(Path(contents, *sub, name)),
                                                   f"{'/'.join(sub)}/{name} inside the QGIS app bundle "
                                                   f"{Path(contents).parent}"))
    return [c for i, c in enumerate(found) if c.python not in [f.python for f in found[:i]]]


def find_qgis_python(runtime: PythonRuntime | None = None) -> InterpreterChoice:
    """QGIS's own Python interpreter, and why (see :func:`qgis_python_candidates`).

    Raises:
        ConfigError: none of the candidates is an interpreter; the message lists where it looked.
    """
    runtime = runtime or PythonRuntime.current()
    candidates = qgis_python_candidates(runtime)
    for candidate in candidates:
        if _is_interpreter(Path(candidate.python)):
            return candidate
    looked = ", ".join(c.python for c in candidates[:8]) or "(nowhere: sys.prefix is empty)"
    raise ConfigError(f"cannot find the Python interpreter QGIS runs on (QGIS is {runtime.executable}; looked "
                      f"at {looked}); choose it in 'Python to build from' (e.g. /usr/bin/python3 on Linux, "
                      "<QGIS folder>\\apps\\Python3x\\python.exe on Windows, QGIS.app/Contents/MacOS/bin/python3 "
                      "on macOS)")


def qgis_python() -> str:
    """The Python interpreter QGIS runs on (``sys.executable`` is the QGIS binary on some platforms)."""
    return find_qgis_python().python


PROBE_TIMEOUT_S = 60
_PROBE_SCRIPT = (
    "import json, sys\n"
    "found = {'version': '%d.%d.%d' % sys.version_info[:3], 'executable': sys.executable}\n"
    "for key, code in (('gdal', 'from osgeo import gdal; v = gdal.__version__'),\n"
    "                  ('qgis', 'from qgis.core import Qgis; v = Qgis.QGIS_VERSION'),\n"
    "                  ('numpy', 'import numpy; v = numpy.__version__'),\n"
    "                  ('venv', 'import venv, ensurepip; v = \"ok\"')):\n"
    "    try:\n"
    "        scope = {}\n"
    "        exec(code, scope)\n"
    "        found[key] = str(scope['v'])\n"
    "    except Exception as exc:\n"
    "        found[key + '_error'] = '%s: %s' % (type(exc).__name__, exc)\n"
    "print(json.dumps(found))\n"
)


@dataclass(frozen=True)
class InterpreterCheck:
    """What an interpreter imports, found by running it (before anything is downloaded).

    Attributes:
        python: the interpreter checked.
        version: its Python version ("" when it did not run).
        gdal, qgis, numpy: the versions it imports ("" when it cannot).
        errors: why an import failed, by name (``gdal``, ``qgis``, ``numpy``, ``venv``, ``run``).
    """

    python: str
    version: str = ""
    gdal: str = ""
    qgis: str = ""
    numpy: str = ""
    errors: dict[str, str] | None = None

    def problem(self, reason: str = "") -> str | None:
        """Why a backend venv cannot be built from this interpreter (a message naming it and the fix), or None."""
        errors = self.errors or {}
        chosen = f"{self.python}" + (f" ({reason})" if reason else "")
        fix = ("choose QGIS's own Python in 'Python to build from' (e.g. /usr/bin/python3 on Debian/Ubuntu, "
               "<QGIS folder>\\apps\\Python3x\\python.exe on Windows, QGIS.app/Contents/MacOS/bin/python3 on macOS)")
        if "run" in errors:
            return f"The Python interpreter {chosen} cannot be run: {errors['run']}. Fix: {fix}"
        if not self.gdal:
            return (f"The Python interpreter {chosen} cannot import osgeo.gdal ({errors.get('gdal', 'unknown error')})"
                    f": the backend needs QGIS's GDAL bindings, shared from the interpreter it is built from. "
                    f"Fix: {fix}, or install GDAL's Python bindings for it (python3-gdal on Debian/Ubuntu). "
                    "Nothing was downloaded.")
        if "venv" in errors:
            return (f"The Python interpreter {chosen} cannot create virtual environments ({errors['venv']}). "
                    "Fix: install its venv module (python3-venv on Debian/Ubuntu), or choose another "
                    "interpreter. Nothing was downloaded.")
        return None

    def summary(self) -> str:
        """One line for the dialog and Diagnostics, e.g. ``Python 3.11.2 · GDAL 3.6.2 · QGIS 3.22.16 · numpy 1.24.2``."""
        errors = self.errors or {}
        if "run" in errors:
            return f"does not run: {errors['run']}"
        parts = [f"Python {self.version}"]
        for label, value, key in (("GDAL", self.gdal, "gdal"), ("QGIS", self.qgis, "qgis"),
                                  ("numpy", self.numpy, "numpy")):
            parts.append(f"{label} {value}" if value else f"no {label} ({errors.get(key, '?')})")
        return " · ".join(parts)


def check_interpreter(python: str, timeout_s: float = PROBE_TIMEOUT_S) -> InterpreterCheck:
    """Run ``python`` once to see whether it imports GDAL (required), qgis.core and numpy, and has venv.

    The environment is the one the set-up steps get (QGIS's own PYTHONPATH/GDAL/PROJ settings
    removed), so the answer is what the set-up and the backend will see.
    """
    try:
        # Justification: the chosen interpreter with a fixed script, argument list, no shell.
        done = subprocess.run([python, "-c", _PROBE_SCRIPT], capture_output=True, text=True,  # nosec B603
                              timeout=timeout_s, env=clean_env(), check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return InterpreterCheck(python, errors={"run": str(exc)})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    try:
        found = json.loads(lines[-1]) if lines else None
    except ValueError:
        found = None
    if done.returncode != 0 or not isinstance(found, dict):
        tail = (done.stderr or done.stdout).strip().splitlines()
        return InterpreterCheck(python, errors={"run": f"exit code {done.returncode}: "
                                                f"{tail[-1] if tail else 'no output'}"})
    errors = {key[:-len("_error")]: str(value) for key, value in found.items() if key.endswith("_error")}
    return InterpreterCheck(python, version=str(found.get("version", "")), gdal=str(found.get("gdal", "")),
                            qgis=str(found.get("qgis", "")), numpy=str(found.get("numpy", "")), errors=errors)


# -- which PyTorch build ---------------------------------------------------------------------------

CPU_INDEX_URL = "https://download.pytorch.org/whl/cpu"
"""PyTorch's CPU-only wheel index (Linux and Windows): no CUDA libraries."""
WINDOWS_CUDA_INDEX_URL = "https://download.pytorch.org/whl/cu128"
"""PyPI's Windows wheels are CPU-only; CUDA builds come from this index (NVIDIA driver 570 or newer)."""

DOWNLOAD_GB = {
    "cpu": 0.3,            # torch + torchvision CPU wheels from the CPU index (Linux, Windows)
    "macos": 0.1,          # PyPI's macOS wheels (CPU and Apple's MPS, no CUDA)
    "cuda-linux": 5.5,     # PyPI's Linux wheels with the NVIDIA CUDA/cuDNN/NCCL libraries they depend on
    "cuda-windows": 3.0,   # the CUDA 12.8 wheels for Windows
    "custom": 0.0,         # an index URL chosen by the user: size unknown
    "offline": 0.0,        # a wheels folder: nothing is downloaded
    "backend": 0.1,        # open_clip, timm, safetensors, fastapi, uvicorn, … (added to every online choice)
}
"""Approximate download sizes in GB, per PyTorch choice: the one place the dialog's estimates come from."""


@dataclass(frozen=True)
class TorchChoice:
    """Which PyTorch build the set-up installs, and what the user is told before it starts.

    Attributes:
        kind: a key of :data:`DOWNLOAD_GB`.
        index_url: the ``--index-url`` for torch/torchvision ("" = PyPI's default wheels).
        reason: why this build (the GPU found or not, the platform, the user's choice).
    """

    kind: str
    index_url: str
    reason: str

    @property
    def download_gb(self) -> float:
        """Approximate total download (PyTorch and the backend's other packages)."""
        if self.kind == "offline":
            return 0.0
        return DOWNLOAD_GB[self.kind] + DOWNLOAD_GB["backend"]

    def describe(self) -> str:
        """What will be downloaded, for the dialog, e.g. ``CPU build of PyTorch … about 0.4 GB to download``."""
        if self.kind == "offline":
            return f"PyTorch from the wheels folder: nothing is downloaded ({self.reason})"
        if self.kind == "custom":
            return f"PyTorch from {self.index_url} ({self.reason}); download size depends on that index"
        what = {"cpu": "the CPU build of PyTorch", "macos": "PyTorch for macOS (CPU/MPS)",
                "cuda-linux": "PyTorch with CUDA (GPU) libraries", "cuda-windows": "PyTorch with CUDA 12.8 (GPU)"}
        return f"{what[self.kind]}, about {self.download_gb:.1f} GB to download ({self.reason})"


def detect_nvidia_gpu(timeout_s: float = 20) -> str:
    """The NVIDIA GPUs ``nvidia-smi -L`` lists ("" when there is no NVIDIA driver or GPU)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return ""
    try:
        # Justification: nvidia-smi from PATH with a fixed argument, no shell.
        done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=timeout_s,  # nosec B603
                              check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    gpus = [line.strip() for line in done.stdout.splitlines() if line.strip().startswith("GPU ")]
    return "; ".join(gpus) if done.returncode == 0 else ""


def choose_torch(platform: str, nvidia_gpus: str, index_url: str = "", offline: bool = False) -> TorchChoice:
    """The PyTorch build to install.

    Args:
        platform: ``sys.platform`` (``linux``, ``win32``, ``darwin``).
        nvidia_gpus: what :func:`detect_nvidia_gpu` found ("" = no NVIDIA GPU).
        index_url: the user's PyTorch index URL ("" = decide here).
        offline: a wheels folder is used (nothing is downloaded).
    """
    if offline:
        return TorchChoice("offline", "", "offline install")
    if index_url:
        return TorchChoice("custom", index_url, "the PyTorch index URL you gave")
    if platform == "darwin":
        return TorchChoice("macos", "", "macOS wheels have no CUDA")
    if not nvidia_gpus:
        return TorchChoice("cpu", CPU_INDEX_URL, "no NVIDIA GPU found, so the multi-GB CUDA build would be useless")
    if platform == "win32":
        return TorchChoice("cuda-windows", WINDOWS_CUDA_INDEX_URL, f"NVIDIA GPU found: {nvidia_gpus}")
    return TorchChoice("cuda-linux", "", f"NVIDIA GPU found: {nvidia_gpus}")


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
                check_imports: bool = True, numpy_version: str | None = None) -> list[SetupStep]:
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
        numpy_version: the numpy of ``python`` (see :func:`check_interpreter`), pinned in every pip
            call so GDAL's bindings keep the numpy they were built for (None = QGIS's own numpy).

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
    numpy_version = _qgis_numpy_version() if numpy_version is None else numpy_version
    numpy_pin = [f"numpy=={numpy_version}"] if numpy_version else []
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
