"""Engine-driven evaluation: irmad on the shared LEVIR-CD crops, ChangeCLIP (tiny weights) under
every protocol, and a georeferenced pair through the detection pipeline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from evalhelpers import write_image

from changeclip.cli import main
from changeclip.evaluation import protocols as P
from changeclip.evaluation.scorers import ChangeCLIPScorer


def test_irmad_on_levir_crops_tiles_protocol(data_dir: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    levir = data_dir / "LEVIR-CD" / "justchenhao_BIT_CD"
    out = tmp_path / "levir.json"
    code = main(["eval", str(levir), "--engine", "irmad", "--protocol", "tiles", "--json-out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    rep = json.loads(out.read_text())
    for key in ("precision", "recall", "f1", "iou", "oa", "kappa", "tp", "fp", "fn", "tn", "label_encoding"):
        assert key in rep
    assert rep["tp"] + rep["fp"] + rep["fn"] + rep["tn"] == 11 * 256 * 256
    assert rep["label_encoding"] == "0/255"
    # the labels hold 110,914 change pixels (SOURCES.md changed fractions); a 0/1 misreading would give 0
    assert rep["tp"] + rep["fn"] == 110914
    for key in ("precision", "recall", "f1", "iou", "oa"):
        assert 0.0 <= rep[key] <= 1.0
    assert rep["engine"]["name"] == "irmad" and rep["protocol"] == "tiles"
    assert "0/255" in printed.out


@pytest.fixture(scope="module")
def small_levir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 160x144 pairs (not multiples of the 64 px tile) with 0/1 labels."""
    root = tmp_path_factory.mktemp("small_levir")
    rng = np.random.default_rng(3)
    for name in ("p1", "p2"):
        a = rng.integers(0, 256, (3, 144, 160), dtype=np.uint8)
        b = a.copy()
        b[:, 20:60, 30:100] = 255 - b[:, 20:60, 30:100]
        lab = np.zeros((144, 160), np.uint8)
        lab[20:60, 30:100] = 1
        write_image(root / "A" / f"{name}.png", a)
        write_image(root / "B" / f"{name}.png", b)
        write_image(root / "label" / f"{name}.png", lab)
    return root


@pytest.mark.parametrize("protocol", P.PROTOCOLS)
def test_changeclip_tiny_every_protocol(tiny_weights, small_levir: Path, tmp_path: Path, protocol: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    code = main(["eval", str(small_levir), "--engine", "changeclip", "--weights", str(tiny_weights("tiny-rn50")),
                 "--prompt-mode", "none", "--device", "cpu", "--protocol", protocol, "--tile", "64",
                 "--batch-size", "16", "--json-out", str(out), "--per-image"])
    err = capsys.readouterr().err
    assert code == 0, err
    rep = json.loads(out.read_text())
    assert rep["label_encoding"] == "0/1"
    assert rep["tp"] + rep["fn"] == 2 * 40 * 70
    assert rep["pixels"] == 2 * 144 * 160
    assert len(rep["per_image"]) == 2
    assert rep["engine"]["decision"] == "argmax of logits"
    assert rep["engine"]["predictor"]["text_cache"]["misses"] == 2  # constant prompts encoded once


def test_changeclip_scorer_matches_predictor_argmax(tiny_weights) -> None:
    from changeclip.inference.predictor import ChangeCLIPPredictor, load_model

    pred = ChangeCLIPPredictor(load_model(tiny_weights("tiny-rn50"), device="cpu", precision="fp32"), "none")
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 255, (2, 3, 64, 64)).astype(np.float32)
    b = rng.uniform(0, 255, (2, 3, 64, 64)).astype(np.float32)
    scorer = ChangeCLIPScorer(pred)
    logits = pred.predict_logits(a, b)
    np.testing.assert_array_equal(scorer.score(a, b) > scorer.threshold, logits.argmax(1) == 1)
    t = ChangeCLIPScorer(pred, threshold=0.7)
    np.testing.assert_array_equal(t.score(a, b) > t.threshold, pred.predict_proba(a, b) > 0.7)


def test_georeferenced_pair_with_sparse_reference(data_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    tz = data_dir / "geotiff" / "ChenHongruixuan_ChangeDetectionRepository" / "Taizhou"
    out = tmp_path / "tz.json"
    code = main(["eval", "--before", str(tz / "2000TM"), "--after", str(tz / "2003TM"), "--engine", "irmad",
                 "--bands", "1,2,3,4,5,6", "--ref-changed", str(tz / "change.bmp"),
                 "--ref-unchanged", str(tz / "unchanged.bmp"), "--json-out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    rep = json.loads(out.read_text())
    assert rep["mode"] == "georeferenced-pair"
    assert rep["tp"] + rep["fp"] + rep["fn"] + rep["tn"] + rep["pred_nodata_pixels"] == 4227 + 17163
    assert rep["ignored_pixels"] == 400 * 400 - (4227 + 17163) + rep["pred_nodata_pixels"]
    assert any("no georeferencing" in n for n in rep["notes"])
    assert not list(tmp_path.glob("changeclip-eval-*"))


def test_georeferenced_reference_grid_mismatch(data_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    tz = data_dir / "geotiff" / "ChenHongruixuan_ChangeDetectionRepository" / "Taizhou"
    for name in ("2000TM", "2000TM.HDR", "2003TM", "2003TM.HDR"):
        shutil.copy(tz / name, tmp_path / name)
    write_image(tmp_path / "ref.png", np.zeros((10, 10), np.uint8))
    code = main(["eval", "--before", str(tmp_path / "2000TM"), "--after", str(tmp_path / "2003TM"),
                 "--engine", "irmad", "--ref", str(tmp_path / "ref.png")])
    err = capsys.readouterr().err
    assert code == 2 and "reference grid" in err


def test_georeferenced_pair_with_dense_reference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from changeclip.bench.end_to_end import write_synthetic_pair

    before, after = write_synthetic_pair(tmp_path, 128, seed=7)
    gt = (500000.0, 0.5, 0.0, 5000000.0, 0.0, -0.5)
    ref = np.zeros((128, 128), np.uint8)
    ref[10:40, 20:60] = 255
    write_image(tmp_path / "ref.tif", ref, geotransform=gt)
    out = tmp_path / "r.json"
    code = main(["eval", "--before", str(before), "--after", str(after), "--engine", "irmad",
                 "--ref", str(tmp_path / "ref.tif"), "--json-out", str(out), "--keep-outputs", str(tmp_path / "det")])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    rep = json.loads(out.read_text())
    assert rep["label_encoding"] == "0/255" and rep["notes"] == []
    assert rep["pred_nodata_pixels"] == 0 and rep["ignored_pixels"] == 0  # no nodata in the synthetic pair
    assert rep["tp"] + rep["fn"] == 30 * 40
    assert rep["pixels"] == 128 * 128
    assert (tmp_path / "det" / "change_mask.tif").is_file()
    write_image(tmp_path / "shifted.tif", ref, geotransform=(500001.0, *gt[1:]))
    code = main(["eval", "--before", str(before), "--after", str(after), "--engine", "irmad",
                 "--ref", str(tmp_path / "shifted.tif")])
    assert code == 2 and "geotransform" in capsys.readouterr().err
