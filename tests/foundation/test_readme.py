"""The user documentation documents every command-line option and every Processing parameter.

"A user must be able to install, run, and understand every option from the README": the README is
the front door and links the reference pages under ``docs/``; an option counts as documented when
README.md or one of those pages names it. This test makes a new option without documentation fail
CI instead of silently drifting.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from changeclip.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README = "\n".join(p.read_text(encoding="utf-8") for p in DOC_FILES)
"""README.md and the reference pages it links (docs/*.md), as one text."""


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
    assert not missing, f"document these options in README.md or a docs/*.md page: {missing}"


def test_every_processing_parameter_is_in_the_readme() -> None:
    names: list[str] = []
    for module in sorted((ROOT / "changeclip_qgis" / "processing").glob("*.py")):
        source = module.read_text(encoding="utf-8")
        names += re.findall(r'^    [A-Z0-9_]+ = "([A-Z0-9_]+)"$', source, flags=re.MULTILINE)
    assert {"BEFORE", "AFTER", "OUTPUT_GRID", "CHANGE_MASK", "CHANGED_AREA_M2"} <= set(names)
    missing = [n for n in names if f"`{n}`" not in README and f"**`{n}`**" not in README]
    assert not missing, f"document these Processing parameters in README.md or a docs/*.md page: {missing}"
