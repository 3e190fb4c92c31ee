"""The command line starts fast: building the parser of every subcommand imports neither torch nor GDAL.

Every ``changeclip`` call (``status``, ``cancel --wait``, ``--help``) pays for what the parser
imports; torch alone costs seconds, which made a client's ``cancel`` arrive after the job it
was meant to stop had finished.
"""

from __future__ import annotations

import subprocess
import sys


def test_building_the_cli_imports_no_torch() -> None:
    code = ("import sys; from changeclip.cli import build_parser; build_parser(); "
            "heavy = sorted(m for m in ('torch', 'open_clip', 'osgeo') if m in sys.modules); print(heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == "[]", f"the CLI's parser imports {proc.stdout.strip()}"
