"""README.md documents every command-line option and every Processing parameter.

"A user must be able to install, run, and understand every option from the README": this test
makes a new option without documentation fail CI instead of silently drifting.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from changeclip.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _options(parser: argparse.ArgumentParser, path: str) -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for action in parser._actions:  # argparse has no public API to walk sub-commands
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _options(sub, f"{path} {name}")
        elif action.dest != "help":
            longs = [o for o in action.option_strings if o.startswith("--")]
            if longs:
                found.append((path, longs))
    return found


def _documented(text: str) -> bool:
    return re.search(re.escape(text) + r"(?![\w-])", README) is not None


def test_every_command_line_option_is_in_the_readme() -> None:
    options = _options(build_parser(), "changeclip")
    assert len(options) > 50  # the walk really found the sub-commands
    missing = [f"{path} {'/'.join(longs)}" for path, longs in options if not any(map(_documented, longs))]
    assert not missing, f"document these options in README.md: {missing}"


def test_every_processing_parameter_is_in_the_readme() -> None:
    source = (ROOT / "changeclip_qgis" / "processing" / "detect_changes.py").read_text(encoding="utf-8")
    names = re.findall(r'^    [A-Z0-9_]+ = "([A-Z0-9_]+)"$', source, flags=re.MULTILINE)
    assert {"BEFORE", "AFTER", "OUTPUT_GRID", "CHANGE_MASK", "CHANGED_AREA_M2"} <= set(names)
    missing = [n for n in names if f"`{n}`" not in README and f"**`{n}`**" not in README]
    assert not missing, f"document these Processing parameters in README.md: {missing}"
