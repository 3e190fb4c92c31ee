"""The ``changeclip`` command line: one thin subcommand module per verb.

Each module in :data:`COMMANDS` (under ``changeclip/commands/``) exposes
``register(subparsers)``, which adds its parser and sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from changeclip import __version__
from changeclip.errors import ChangeClipError

COMMANDS = (
    "detect",
    "eval",
    "dataset",
    "weights",
    "train",
    "serve",
    "jobs",
    "bench",
)
"""Subcommand modules, in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="changeclip",
        description="ChangeCLIP change detection between two dates of imagery.",
    )
    parser.add_argument("--version", action="version", version=f"changeclip {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"changeclip.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``changeclip`` console script."""
    from changeclip.commands.jobs import route_submit_kind

    parser = build_parser()
    args = parser.parse_args(route_submit_kind(list(sys.argv[1:] if argv is None else argv)))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ChangeClipError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
