"""``make setup`` is idempotent, and the backend's command line lists the subcommands that exist."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def _snapshot(venv: Path) -> dict[str, tuple[int, int]]:
    snap = {}
    for root, dirs, files in os.walk(venv):
        dirs[:] = [d for d in dirs if d != "__pycache__"]  # bytecode caches are written by any import
        for name in files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            snap[os.path.relpath(path, venv)] = (st.st_size, st.st_mtime_ns)
    return snap


def test_setup_twice_changes_nothing(repo_root: Path) -> None:
    """make test already ran setup once; another run must leave .venv byte-for-byte alone."""
    venv = repo_root / ".venv"
    before = _snapshot(venv)
    proc = subprocess.run(["bash", "scripts/setup.sh"], cwd=repo_root, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "installing" not in proc.stderr, f"second setup reinstalled packages:\n{proc.stderr}"
    after = _snapshot(venv)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"setup changed {len(changed)} files in .venv, e.g. {changed[:5]}"


def test_cli_help_lists_every_subcommand(repo_root: Path) -> None:
    exe = repo_root / ".venv" / "bin" / "changeclip"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    from changeclip import cli

    parser = cli.build_parser()
    verbs = set()
    for action in parser._subparsers._group_actions:  # noqa: SLF001 - argparse exposes no public listing
        verbs |= set(action.choices)
    assert verbs, "no subcommands registered"
    for verb in verbs:
        assert verb in proc.stdout, f"'{verb}' missing from changeclip --help"


def test_setup_installs_what_the_desktop_smoke_test_needs(repo_root: Path) -> None:
    """xvfb comes with QGIS from Debian's packages, and a machine without Xvfb gets it."""
    text = (repo_root / "scripts" / "setup.sh").read_text(encoding="utf-8")
    installs = [line for line in text.splitlines() if "apt-get install" in line and "$SUDO" in line]
    assert installs and all("xvfb" in line.split() and "qgis" in line.split() for line in installs), installs
    assert "[ -x /usr/bin/Xvfb ] || need_qgis=1" in text
