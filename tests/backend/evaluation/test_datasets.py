"""LEVIR-layout discovery and prediction/reference pairing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from evalhelpers import write_image

from changeclip.errors import InputError
from changeclip.evaluation.datasets import discover_levir, pair_predictions

Z = np.zeros((4, 4), np.uint8)


def make_levir(root: Path, names: list[str], skip: dict[str, str] | None = None) -> Path:
    for sub in ("A", "B", "label"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for n in names:
            if (skip or {}).get(n) != sub:
                write_image(root / sub / f"{n}.png", Z)
    return root


def test_discover_matches_names(tmp_path: Path) -> None:
    root = make_levir(tmp_path / "ds", ["b", "a"])
    (root / "A" / "notes.txt").write_text("not an image")
    trips = discover_levir(root)
    assert [t.name for t in trips] == ["a", "b"]
    assert trips[0].label == root / "label" / "a.png"


def test_missing_counterparts_are_named(tmp_path: Path) -> None:
    root = make_levir(tmp_path / "ds", ["a", "b", "c"], skip={"b": "label", "c": "B"})
    with pytest.raises(InputError) as err:
        discover_levir(root)
    msg = str(err.value)
    assert "no counterpart in label/: b" in msg and "no counterpart in B/: c" in msg


def test_not_a_levir_folder_hints_at_split(tmp_path: Path) -> None:
    make_levir(tmp_path / "LEVIR" / "test", ["a"])
    with pytest.raises(InputError, match="point at one split"):
        discover_levir(tmp_path / "LEVIR")
    with pytest.raises(InputError, match="does not exist"):
        discover_levir(tmp_path / "nope")


def test_duplicate_stems_rejected(tmp_path: Path) -> None:
    root = make_levir(tmp_path / "ds", ["a"])
    write_image(root / "A" / "a.tif", Z)
    with pytest.raises(InputError, match="two images named 'a'"):
        discover_levir(root)


def test_pair_predictions(tmp_path: Path) -> None:
    write_image(tmp_path / "pred" / "x.tif", Z)
    write_image(tmp_path / "pred" / "y.tif", Z)
    write_image(tmp_path / "ref" / "x.png", Z)
    write_image(tmp_path / "ref" / "y.png", Z)
    pairs = pair_predictions(tmp_path / "pred", tmp_path / "ref")
    assert [(n, p.name, r.name) for n, p, r in pairs] == [("x", "x.tif", "x.png"), ("y", "y.tif", "y.png")]
    assert len(pair_predictions(tmp_path / "pred" / "x.tif", tmp_path / "ref" / "y.png")) == 1
    write_image(tmp_path / "ref" / "z.png", Z)
    with pytest.raises(InputError, match="1 references have no prediction.*: z"):
        pair_predictions(tmp_path / "pred", tmp_path / "ref")
    with pytest.raises(InputError, match="two files or two folders"):
        pair_predictions(tmp_path / "pred" / "x.tif", tmp_path / "ref")


def test_levir_folder_as_reference(tmp_path: Path) -> None:
    root = make_levir(tmp_path / "ds", ["a"])
    write_image(tmp_path / "pred" / "a.png", Z)
    assert pair_predictions(tmp_path / "pred", root)[0][2] == root / "label" / "a.png"
