""""Set up backend…": the venv is made from QGIS's Python with system site packages and the bundled
backend is pip-installed into it (offline here: no torch download, nothing from PyPI)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.qgis


def test_setup_steps_online_layout(tmp_path: Path, repo_root: Path) -> None:
    from changeclip_qgis.core.backend_setup import setup_steps

    steps = setup_steps(tmp_path / "venv", repo_root / "backend", python="/usr/bin/python3",
                        torch_index_url="https://download.pytorch.org/whl/cu128")
    commands = [s.command for s in steps]
    assert commands[0] == ["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(tmp_path / "venv")]
    torch_cmd = commands[1]
    assert "torch==2.14.1" in torch_cmd and "torchvision==0.29.1" in torch_cmd
    assert torch_cmd[-2:] == ["--index-url", "https://download.pytorch.org/whl/cu128"]
    import numpy

    assert f"numpy=={numpy.__version__}" in torch_cmd, "QGIS's numpy must be kept"
    assert str(repo_root / "backend") in commands[2] and "-c" in commands[2]
    assert commands[2][-1] == f"numpy=={numpy.__version__}"
    offline = setup_steps(tmp_path / "venv", repo_root / "backend", python="/usr/bin/python3", wheels_dir=tmp_path)
    assert all("--no-index" in s.command for s in offline[1:3])


DEBIAN_WHEELS = Path("/usr/share/python-wheels")


def _offline_build_args(python: str) -> list[str]:
    """pip arguments that build the backend (setuptools, backend/pyproject.toml) with no download.

    Debian 12's python3-pip brings setuptools and wheel into the system Python: build there.
    Debian 13's python3-pip no longer does, but python3-venv brings a setuptools wheel
    (python3-setuptools-whl, in /usr/share/python-wheels) for pip's isolated build.
    """
    has_setuptools = subprocess.run([python, "-c", "import setuptools, wheel"], capture_output=True,
                                    check=False, timeout=60).returncode == 0
    if has_setuptools:
        return ["--no-build-isolation"]
    assert any(DEBIAN_WHEELS.glob("setuptools-*.whl")), (
        f"{python} cannot import setuptools and {DEBIAN_WHEELS} has no setuptools wheel: "
        "install python3-setuptools (or python3-setuptools-whl) to build the backend offline")
    return ["--find-links", str(DEBIAN_WHEELS)]


def test_setup_creates_working_backend_venv(staged_plugin: Path, tmp_path: Path) -> None:
    from changeclip_qgis.core.backend_setup import run_steps, setup_steps
    from changeclip_qgis.core.errors import ConfigError

    backend = staged_plugin / "changeclip_qgis" / "backend"
    venv = tmp_path / "backend-venv"
    steps = setup_steps(venv, backend, python="/usr/bin/python3", install_torch=False, check_imports=False,
                        extra_pip_args=["--no-deps", "--no-index", *_offline_build_args("/usr/bin/python3")])
    lines: list[str] = []
    titles: list[str] = []
    run_steps(steps, lines.append, on_step=lambda i, s: titles.append(s.title))
    assert titles[0].startswith("Creating the virtual environment") and titles[-1] == "Checking the backend"
    assert any(line.startswith("changeclip ") for line in lines), lines[-5:]
    cfg = (venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in cfg
    done = subprocess.run([str(venv / "bin" / "python"), "-c", "import changeclip, osgeo; print(changeclip.__file__)"],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0 and str(venv) in done.stdout, done.stderr
    with pytest.raises(ConfigError, match="exit code"):
        run_steps([steps[-1].__class__("Checking a missing module", [str(venv / "bin" / "python"), "-c",
                                                                     "import no_such_module"])], lines.append)


def test_cancel_stops_a_silent_step(tmp_path: Path) -> None:
    import sys

    from changeclip_qgis.core.backend_setup import SetupStep, run_steps
    from changeclip_qgis.core.errors import ConfigError

    flag = tmp_path / "started"
    step = SetupStep("A long silent step", [sys.executable, "-c",
                                            f"import pathlib, time; pathlib.Path({str(flag)!r}).touch(); time.sleep(300)"])
    lines: list[str] = []
    with pytest.raises(ConfigError, match="set-up cancelled"):
        run_steps([step], lines.append, is_cancelled=flag.exists)
    assert lines[0].startswith("$ ")
