""""Set up backend…" builds from the interpreter QGIS really runs (never a PATH shim), checks that it
imports GDAL before anything is downloaded, and installs the CPU build of PyTorch where there is no
NVIDIA GPU. Interpreter layouts are fake directory trees; nothing is downloaded here."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.qgis

BINARY = b"\x7fELF fake interpreter"  # a binary, as a real interpreter is (not a '#!' script)


def _touch(path: Path, content: bytes = BINARY) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _runtime(executable: Path, prefix: Path, version: tuple[int, int], platform: str, base_executable: str = ""):  # noqa: ANN202
    from changeclip_qgis.core.backend_setup import PythonRuntime

    return PythonRuntime(executable=str(executable), base_executable=base_executable or str(executable),
                         prefix=str(prefix), exec_prefix=str(prefix), base_prefix=str(prefix),
                         base_exec_prefix=str(prefix), version=version, platform=platform)


@pytest.fixture()
def shim_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A pyenv-style shim first on PATH (what the old code picked): it must never be chosen."""
    shim = _touch(tmp_path / "pyenv" / "shims" / "python3", b"#!/usr/bin/env bash\nexec pyenv exec python3 \"$@\"\n")
    monkeypatch.setenv("PATH", f"{shim.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return shim


def test_linux_qgis_binary_uses_the_prefix_interpreter(tmp_path: Path, shim_on_path: Path) -> None:
    from changeclip_qgis.core.backend_setup import find_qgis_python

    usr = tmp_path / "usr"
    qgis = _touch(usr / "bin" / "qgis")
    python = _touch(usr / "bin" / "python3.11")
    _touch(usr / "bin" / "python3")
    choice = find_qgis_python(_runtime(qgis, usr, (3, 11), "linux"))
    assert choice.python == str(python)
    assert "sys.exec_prefix" in choice.reason and str(usr) in choice.reason
    # QGIS started through a shim-like script is not mistaken for Python either
    choice = find_qgis_python(_runtime(shim_on_path, usr, (3, 11), "linux", base_executable=str(shim_on_path)))
    assert choice.python == str(python)


def test_plain_python_and_base_executable(tmp_path: Path) -> None:
    from changeclip_qgis.core.backend_setup import PythonRuntime, find_qgis_python

    usr = tmp_path / "usr"
    python = _touch(usr / "bin" / "python3.11")
    assert find_qgis_python(_runtime(python, usr, (3, 11), "linux")).reason.startswith("the running program")
    venv = tmp_path / "venv"
    in_venv = PythonRuntime(executable=str(_touch(venv / "bin" / "python")), base_executable=str(python),
                            prefix=str(venv), exec_prefix=str(venv), base_prefix=str(usr), base_exec_prefix=str(usr),
                            version=(3, 11), platform="linux")
    choice = find_qgis_python(in_venv)  # a venv's python would hide QGIS's site-packages: take its base
    assert choice.python == str(python) and choice.reason.startswith("sys._base_executable")


@pytest.mark.parametrize("root_name, version", [("OSGeo4W", (3, 12)), ("QGIS 3.34.4", (3, 9))])
def test_windows_osgeo4w_and_standalone_layouts(tmp_path: Path, root_name: str, version: tuple[int, int]) -> None:
    from changeclip_qgis.core.backend_setup import find_qgis_python

    root = tmp_path / root_name
    qgis_bin = _touch(root / "bin" / "qgis-bin.exe")
    _touch(root / "bin" / "python3.exe", b"@echo off\r\n")  # OSGeo4W's wrappers in bin are not it either
    apps_python = root / "apps" / f"Python{version[0]}{version[1]}"
    python = _touch(apps_python / "python.exe")
    choice = find_qgis_python(_runtime(qgis_bin, apps_python, version, "win32"))
    assert choice.python == str(python) and "sys.exec_prefix" in choice.reason
    # with a prefix that says nothing useful, the layout next to qgis-bin.exe still finds it
    choice = find_qgis_python(_runtime(qgis_bin, tmp_path / "elsewhere", version, "win32"))
    assert choice.python == str(python) and "OSGeo4W or standalone" in choice.reason


def test_macos_app_bundle_layouts(tmp_path: Path) -> None:
    from changeclip_qgis.core.backend_setup import find_qgis_python

    contents = tmp_path / "Applications" / "QGIS.app" / "Contents"
    qgis = _touch(contents / "MacOS" / "QGIS")
    framework = contents / "Frameworks" / "Python.framework" / "Versions" / "3.11"
    in_framework = _touch(framework / "bin" / "python3.11")
    assert find_qgis_python(_runtime(qgis, framework, (3, 11), "darwin")).python == str(in_framework)
    in_macos_bin = _touch(contents / "MacOS" / "bin" / "python3")
    choice = find_qgis_python(_runtime(qgis, tmp_path / "unknown-prefix", (3, 11), "darwin"))
    assert choice.python == str(in_macos_bin) and "QGIS.app" in choice.reason
    in_macos_bin.unlink()
    choice = find_qgis_python(_runtime(qgis, tmp_path / "unknown-prefix", (3, 11), "darwin"))
    assert choice.python == str(in_framework) and "Frameworks/Python.framework" in choice.reason


def test_nothing_found_never_falls_back_to_path(tmp_path: Path, shim_on_path: Path) -> None:
    from changeclip_qgis.core.backend_setup import find_qgis_python
    from changeclip_qgis.core.errors import ConfigError

    qgis = _touch(tmp_path / "opt" / "qgis" / "bin" / "qgis")
    with pytest.raises(ConfigError, match="cannot find the Python interpreter QGIS runs on .*Python to build from"):
        find_qgis_python(_runtime(qgis, tmp_path / "opt" / "qgis", (3, 11), "linux"))


def test_interpreter_check_stops_before_any_download(tmp_path: Path) -> None:
    from changeclip_qgis.core.backend_setup import check_interpreter

    good = check_interpreter("/usr/bin/python3")  # Debian's: QGIS's own, with python3-gdal
    assert good.gdal and good.qgis and good.numpy and good.problem() is None
    assert good.summary().startswith("Python 3.") and f"GDAL {good.gdal}" in good.summary()
    # an interpreter without GDAL (here: Debian's Python with its site-packages switched off)
    no_gdal = _touch(tmp_path / "bin" / "python3", b"#!/bin/sh\nexec /usr/bin/python3 -S \"$@\"\n")
    check = check_interpreter(str(no_gdal))
    problem = check.problem("chosen by you")
    assert problem is not None and str(no_gdal) in problem and "osgeo.gdal" in problem
    assert "Python to build from" in problem and "python3-gdal" in problem and "Nothing was downloaded" in problem
    missing = check_interpreter(str(tmp_path / "nope" / "python"))
    assert "cannot be run" in (missing.problem() or "")


def test_torch_choice_and_exact_pip_commands(tmp_path: Path, repo_root: Path) -> None:
    from changeclip_qgis.core.backend_setup import CPU_INDEX_URL, DOWNLOAD_GB, choose_torch, setup_steps
    from changeclip_qgis.core.settings import venv_python

    gpu = "GPU 0: NVIDIA RTX A4000 (UUID: GPU-1234)"
    cpu = choose_torch("linux", "")
    assert (cpu.kind, cpu.index_url) == ("cpu", "https://download.pytorch.org/whl/cpu")
    assert "no NVIDIA GPU" in cpu.describe() and f"about {DOWNLOAD_GB['cpu'] + DOWNLOAD_GB['backend']:.1f} GB" \
        in cpu.describe()
    assert choose_torch("win32", "").index_url == CPU_INDEX_URL
    assert (choose_torch("darwin", "").kind, choose_torch("darwin", "").index_url) == ("macos", "")
    linux_gpu = choose_torch("linux", gpu)
    assert (linux_gpu.kind, linux_gpu.index_url) == ("cuda-linux", "") and "RTX A4000" in linux_gpu.describe()
    assert linux_gpu.download_gb > 5 > cpu.download_gb
    assert choose_torch("win32", gpu).index_url == "https://download.pytorch.org/whl/cu128"
    own = choose_torch("linux", "", "https://download.pytorch.org/whl/cu126")
    assert (own.kind, own.index_url) == ("custom", "https://download.pytorch.org/whl/cu126")
    assert choose_torch("linux", gpu, offline=True).describe().startswith("PyTorch from the wheels folder")

    venv = tmp_path / "venv"
    vpy = str(venv_python(venv))
    steps = setup_steps(venv, repo_root / "backend", python="/usr/bin/python3", torch_index_url=cpu.index_url,
                        numpy_version="1.24.2")
    pip = [vpy, "-m", "pip", "install", "--disable-pip-version-check"]
    assert steps[0].command == ["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)]
    assert steps[1].command == pip + ["torch==2.14.1", "torchvision==0.29.1", "numpy==1.24.2",
                                      "--index-url", "https://download.pytorch.org/whl/cpu"]
    assert steps[2].command == pip + ["-c", str(repo_root / "requirements.txt"), str(repo_root / "backend"),
                                      "numpy==1.24.2"]
    gpu_steps = setup_steps(venv, repo_root / "backend", python="/usr/bin/python3",
                            torch_index_url=linux_gpu.index_url, numpy_version="1.24.2")
    assert gpu_steps[1].command == pip + ["torch==2.14.1", "torchvision==0.29.1", "numpy==1.24.2"]


def test_dialog_names_the_interpreter_and_stops_without_gdal(qgis_app: object, pump, tmp_path: Path,  # noqa: ANN001
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from changeclip_qgis.core import settings
    from changeclip_qgis.gui.setup_dialog import SetupDialog

    dialog = SetupDialog(detect_gpu=False)
    pump(lambda: dialog.plan is not None, 120)
    from changeclip_qgis.core.backend_setup import find_qgis_python

    found = find_qgis_python()  # automatic: QGIS's own interpreter, its reason and what it imports
    assert dialog.python_label.text().startswith(f"{found.python}: {found.reason}\nPython 3.")
    assert "GDAL" in dialog.python_label.text()
    assert dialog.torch_label.text().startswith("the CPU build of PyTorch, about")
    no_gdal = _touch(tmp_path / "bin" / "python3", b"#!/bin/sh\nexec /usr/bin/python3 -S \"$@\"\n")
    dialog.python_widget.setFilePath(str(no_gdal))  # the user's override
    pump(lambda: dialog.plan_task is None and str(no_gdal) in dialog.python_label.text(), 120)
    assert "cannot import osgeo.gdal" in dialog.python_label.text()
    venv = tmp_path / "venv"
    dialog.venv_widget.setFilePath(str(venv))
    results: list[tuple[bool, str]] = []
    task = dialog.start()
    assert task is not None
    task.done.connect(lambda ok, error: results.append((ok, error)))
    pump(lambda: results, 120)
    ok, error = results[0]
    assert not ok and str(no_gdal) in error and "chosen by you" in error and "osgeo.gdal" in error
    assert not venv.exists() and not task.steps, "nothing may be created or downloaded"
    assert settings.get(settings.KEY_SETUP_PYTHON) == str(no_gdal)
    assert dialog.step_label.text().startswith("Failed: The Python interpreter")
    dialog.index_edit.setText("https://download.pytorch.org/whl/cu126")
    assert "cu126" in dialog.torch_label.text()


def test_diagnostics_say_which_interpreter_and_why(qgis_app: object) -> None:
    from changeclip_qgis.core import settings
    from changeclip_qgis.core.diagnostics import setup_interpreter_report

    settings.set_value(settings.KEY_SETUP_PYTHON, "/usr/bin/python3.11")
    settings.set_value(settings.KEY_SETUP_REASON, "sys._base_executable: the interpreter this QGIS process runs on")
    report = setup_interpreter_report()
    assert report["last set-up built from"] == ("/usr/bin/python3.11 (sys._base_executable: the interpreter this "
                                               "QGIS process runs on)")
    # this test process is a venv's python: QGIS-like, the set-up must build from its base interpreter
    assert report["QGIS's Python"] == f"{sys._base_executable} (sys._base_executable: the interpreter this QGIS " \
        "process runs on)"
    assert "GDAL" in report["it imports"]
