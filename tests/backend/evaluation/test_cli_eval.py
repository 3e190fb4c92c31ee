"""``changeclip eval`` end to end through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from evalhelpers import write_image

from changeclip.cli import main


def run_eval(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["eval", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_pred_vs_ref_folders_global_matrix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # image 1: tp 1, fp 1, fn 0, tn 2;   image 2: tp 0, fp 0, fn 2, tn 2 (0/1 predictions vs 0/255 refs)
    write_image(tmp_path / "pred" / "one.tif", np.array([[1, 1], [0, 0]]))
    write_image(tmp_path / "ref" / "one.png", np.array([[255, 0], [0, 0]]))
    write_image(tmp_path / "pred" / "two.tif", np.array([[0, 0], [0, 0]]))
    write_image(tmp_path / "ref" / "two.png", np.array([[255, 255], [0, 0]]))
    out_json = tmp_path / "r" / "report.json"
    code, out, err = run_eval(["--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"),
                               "--json-out", str(out_json), "--per-image"], capsys)
    assert code == 0, err
    rep = json.loads(out_json.read_text())
    assert (rep["tp"], rep["fp"], rep["fn"], rep["tn"]) == (1, 1, 2, 4)
    assert rep["label_encoding"] == "0/255"
    assert rep["prediction"]["label_encoding"] == "0/1"
    assert rep["precision"] == pytest.approx(0.5) and rep["recall"] == pytest.approx(1 / 3)
    assert rep["iou"] == pytest.approx(0.25) and rep["oa"] == pytest.approx(5 / 8)
    assert [r["name"] for r in rep["per_image"]] == ["one", "two"]
    assert rep["per_image"][1]["precision"] is None  # nothing predicted: undefined, not 0
    assert "one" in out and "n/a" in out and "0/255" in out
    assert not list(out_json.parent.glob("*.part"))


def test_pred_nodata_and_ignore_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_image(tmp_path / "p.tif", np.array([[1, 255], [0, 1]]), nodata=255)
    write_image(tmp_path / "r.png", np.array([[1, 1], [7, 0]]))
    code, _, err = run_eval(["--pred", str(tmp_path / "p.tif"), "--ref", str(tmp_path / "r.png")], capsys)
    assert code == 2 and "--ignore-value" in err
    out_json = tmp_path / "rep.json"
    code, _, err = run_eval(["--pred", str(tmp_path / "p.tif"), "--ref", str(tmp_path / "r.png"),
                             "--ignore-value", "7", "--json-out", str(out_json)], capsys)
    assert code == 0, err
    rep = json.loads(out_json.read_text())
    assert (rep["tp"], rep["fp"], rep["fn"], rep["tn"]) == (1, 1, 0, 0)
    assert rep["pred_nodata_pixels"] == 1 and rep["ignored_pixels"] == 2


def test_sparse_reference_with_pred(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_image(tmp_path / "p.png", np.array([[255, 255, 0], [0, 0, 0]]))
    write_image(tmp_path / "ch.bmp", np.array([[255, 0, 0], [0, 0, 255]]))
    write_image(tmp_path / "un.bmp", np.array([[0, 255, 0], [255, 0, 0]]))
    out_json = tmp_path / "rep.json"
    code, _, err = run_eval(["--pred", str(tmp_path / "p.png"), "--ref-changed", str(tmp_path / "ch.bmp"),
                             "--ref-unchanged", str(tmp_path / "un.bmp"), "--json-out", str(out_json)], capsys)
    assert code == 0, err
    rep = json.loads(out_json.read_text())
    assert (rep["tp"], rep["fp"], rep["fn"], rep["tn"]) == (1, 1, 1, 1)
    assert rep["pixels"] == 4 and rep["ignored_pixels"] == 2


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_eval([], capsys)[0] == 2
    code, _, err = run_eval(["--pred", str(tmp_path)], capsys)
    assert code == 2 and "reference" in err
    code, _, err = run_eval([str(tmp_path), "--ref", "x"], capsys)
    assert code == 2 and "label/" in err
