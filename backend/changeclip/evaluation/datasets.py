"""Finding evaluation inputs on disk: LEVIR-CD layout folders and prediction/reference pairs.

Files are matched by **name without extension** (``test_2.png`` in ``A/`` matches
``test_2.png`` in ``B/`` and ``label/``; a prediction ``test_2.tif`` matches a reference
``test_2.png``). Any missing counterpart is an error that names the files, never a
silent partial score.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from changeclip.errors import InputError

IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
"""File extensions taken as images/masks (case-insensitive)."""

LAYOUTS = (("A", "B", "label"), ("time1", "time2", "label"))
"""Accepted (before, after, label) sub-folder names: LEVIR-CD and SYSU-CD style."""

_SHOW = 5


@dataclass(frozen=True)
class Triplet:
    """One labelled bitemporal pair: before image, after image, reference mask."""

    name: str
    before: Path
    after: Path
    label: Path


def _images_by_stem(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            if p.stem in out:
                raise InputError(f"{folder} holds two images named {p.stem!r} ({out[p.stem].name}, {p.name}); "
                                 "keep one so files can be matched by name")
            out[p.stem] = p
    return out


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOW])
    return shown + (f" and {len(names) - _SHOW} more" if len(names) > _SHOW else "")


def discover_levir(root: str | Path) -> list[Triplet]:
    """List the triplets of a dataset folder in LEVIR-CD layout (``A/``, ``B/``, ``label/``).

    SYSU-CD's ``time1/``, ``time2/``, ``label/`` is accepted too.

    Returns:
        Triplets sorted by name.

    Raises:
        InputError: not a folder, sub-folders missing, no images, or unmatched names.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset folder {root} does not exist or is not a folder")
    for layout in LAYOUTS:
        if (root / layout[0]).is_dir() or (root / layout[1]).is_dir():
            a_name, b_name, l_name = layout
            break
    else:
        subs = sorted(p.name for p in root.iterdir() if p.is_dir())
        hint = ""
        if any((root / s / "A").is_dir() for s in subs):
            hint = f"; it looks like a parent folder: point at one split, e.g. {root / subs[0]}"
        raise InputError(f"{root} is not in LEVIR-CD layout: it needs sub-folders A/, B/ and label/ "
                         f"(found: {', '.join(subs) or 'no sub-folders'}){hint}")
    folders = {}
    for role, sub in (("before", a_name), ("after", b_name), ("label", l_name)):
        path = root / sub
        if not path.is_dir():
            raise InputError(f"{root} has no {sub}/ folder ({role} images); LEVIR-CD layout needs "
                             f"{a_name}/, {b_name}/ and {l_name}/")
        folders[role] = _images_by_stem(path)
    a, b, lab = folders["before"], folders["after"], folders["label"]
    if not a:
        raise InputError(f"{root / a_name} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    problems = []
    for sub, other in ((b_name, b), (l_name, lab)):
        problems += _unmatched(a, other, f"in {a_name}/ have no counterpart in {sub}/",
                               f"in {sub}/ have no counterpart in {a_name}/")
    if problems:
        raise InputError(f"dataset {root}: files do not match by name — " + "; ".join(problems))
    return [Triplet(n, a[n], b[n], lab[n]) for n in sorted(a)]


def _unmatched(first: dict, second: dict, only_first: str, only_second: str) -> list[str]:
    """Messages for names found on one side only, e.g. ``"3 in A/ have no counterpart in B/: …"``."""
    problems = []
    for names, text in ((sorted(set(first) - set(second)), only_first),
                        (sorted(set(second) - set(first)), only_second)):
        if names:
            problems.append(f"{len(names)} {text}: {_names(names)}")
    return problems


def pair_predictions(pred: str | Path, ref: str | Path) -> list[tuple[str, Path, Path]]:
    """Pair prediction masks with reference masks.

    Args:
        pred: a mask file, or a folder of them.
        ref: a mask file, or a folder of them (or a LEVIR-layout folder: its ``label/`` is used).

    Returns:
        (name, prediction path, reference path), sorted by name.

    Raises:
        InputError: missing paths, a file given against a folder, or unmatched names.
    """
    pred, ref = Path(pred), Path(ref)
    for what, p in (("prediction", pred), ("reference", ref)):
        if not p.exists():
            raise InputError(f"{what} path {p} does not exist")
    if pred.is_file() and ref.is_file():
        return [(pred.stem, pred, ref)]
    if pred.is_file() != ref.is_file():
        raise InputError(f"give two files or two folders: --pred {pred} is a "
                         f"{'file' if pred.is_file() else 'folder'}, --ref {ref} is a "
                         f"{'file' if ref.is_file() else 'folder'}")
    if (ref / "label").is_dir() and not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in ref.iterdir()):
        ref = ref / "label"
    preds, refs = _images_by_stem(pred), _images_by_stem(ref)
    if not refs:
        raise InputError(f"reference folder {ref} holds no masks ({', '.join(IMAGE_EXTENSIONS)})")
    problems = _unmatched(refs, preds, f"references have no prediction in {pred}",
                          f"predictions have no reference in {ref}")
    if problems:
        raise InputError("predictions and references do not match by name — " + "; ".join(problems))
    return [(n, preds[n], refs[n]) for n in sorted(refs)]
