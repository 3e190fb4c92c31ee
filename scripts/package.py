"""Build the installable QGIS plugin: a staged folder and the zip for "Install from ZIP".

The staged folder ``<stage>/changeclip_qgis/`` holds:

- the plugin's Python files (symbolic links such as ``core/protocol.py`` are dereferenced),
- ``metadata.txt`` and ``LICENSE`` from the repository root,
- ``resources/`` icons and styles (never the sample imagery),
- ``backend/``: the backend project (pyproject, ``changeclip`` package, requirements.txt),
  which the plugin's "Set up backend…" action pip-installs into the backend's venv.

Usage::

    python scripts/package.py                 # dist/changeclip_qgis-<version>.zip
    python scripts/package.py --stage DIR     # only stage DIR/changeclip_qgis (tests use this)
"""

from __future__ import annotations

import argparse
import configparser
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "changeclip_qgis"
RESOURCE_DIRS = ("icons", "styles", "help", "models")
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache", "tests", "sample"}
SKIP_SUFFIXES = {".pyc", ".pyo", ".tif", ".tiff", ".npz", ".pth", ".pt", ".safetensors"}


def plugin_version() -> str:
    """The version in metadata.txt (the one source of the plugin's version)."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "metadata.txt", encoding="utf-8")
    return parser["general"]["version"]


def _copy_tree(src: Path, dst: Path) -> None:
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts):
            continue
        if path.is_dir() or path.suffix in SKIP_SUFFIXES:
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)  # follows symlinks: the file's content is copied


def stage(stage_dir: Path) -> Path:
    """Create ``stage_dir/changeclip_qgis`` (replacing an older one) and return it."""
    dest = stage_dir / PLUGIN
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    _copy_tree(ROOT / PLUGIN, dest)
    shutil.copyfile(ROOT / "metadata.txt", dest / "metadata.txt")
    shutil.copyfile(ROOT / "LICENSE", dest / "LICENSE")
    for name in RESOURCE_DIRS:
        if (ROOT / "resources" / name).is_dir():
            _copy_tree(ROOT / "resources" / name, dest / "resources" / name)
    backend = dest / "backend"
    _copy_tree(ROOT / "backend" / "changeclip", backend / "changeclip")
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / "backend" / name, backend / name)
    shutil.copyfile(ROOT / "requirements.txt", backend / "requirements.txt")
    _check(dest)
    return dest


def _check(dest: Path) -> None:
    required = ["__init__.py", "metadata.txt", "LICENSE", "resources/icons/changeclip.svg",
                "backend/pyproject.toml", "backend/changeclip/protocol.py", "core/protocol.py"]
    missing = [r for r in required if not (dest / r).is_file()]
    if missing:
        raise SystemExit(f"package: the staged plugin lacks {', '.join(missing)}")
    links = [p for p in dest.rglob("*") if p.is_symlink()]
    if links:
        raise SystemExit(f"package: symbolic links left in the staged plugin: {links}")


def build_zip(out_dir: Path) -> Path:
    """Stage into a temporary folder and write ``out_dir/changeclip_qgis-<version>.zip``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{PLUGIN}-{plugin_version()}.zip"
    with tempfile.TemporaryDirectory() as tmp:
        dest = stage(Path(tmp))
        part = final.with_suffix(".zip.part")
        with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(dest.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(dest.parent).as_posix())
        os.replace(part, final)
    return final


def main(argv: list[str] | None = None) -> int:
    """Command line of this script."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", type=Path, help="only stage the plugin folder into this directory")
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="where the zip goes (default dist/)")
    args = parser.parse_args(argv)
    if args.stage:
        print(stage(args.stage.resolve()))
    else:
        print(build_zip(args.out.resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
