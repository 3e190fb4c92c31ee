"""Every bad input of ``changeclip train`` gives a clear error before any work and writes nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from levir_tiles import write_png

from changeclip.cli import main
from changeclip.datasets.manifest import read_manifest, write_manifest


def _train(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["train", *args])
    return code, capsys.readouterr().err


def _base(ds: Path, run: Path, *extra: str) -> list[str]:
    return [str(ds), "-o", str(run), "--variant", "tiny-rn50", "--init", "scratch", "--iters", "2", "--batch-size",
            "2", "--crop", "64", "--workers", "0", "--device", "cpu", *extra]


def _assert_nothing_written(run: Path) -> None:
    assert not run.exists(), f"{run} was created: {list(run.iterdir()) if run.is_dir() else 'a file'}"


@pytest.mark.parametrize("case", ["empty", "all-zero", "size", "values", "no-val", "batch", "crop"])
def test_bad_data_is_refused_before_any_work(case: str, make_dataset, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    extra: list[str] = []
    if case == "all-zero":
        ds = make_dataset(labels=lambda lab: np.zeros_like(lab))
        expected = "no change pixel"
    else:
        ds = make_dataset()
        m = read_manifest(ds)
        if case == "empty":
            m.splits["train"].tiles = []
            write_manifest(m)
            expected = "train split is empty"
        elif case == "size":
            tile = m.splits["train"].tiles[1]
            write_png(ds / "train" / "B" / f"{tile}.png", np.zeros((3, 48, 64), dtype=np.uint8))
            expected = f"{tile}.png is 64x48 px but its dataset's tiles are 64x64"
        elif case == "values":
            tile = m.splits["val"].tiles[0]
            write_png(ds / "val" / "label" / f"{tile}.png", np.full((64, 64), 7, dtype=np.uint8))
            expected = "holds values [7] besides 0 (no change), 1 (change) and 255"
        elif case == "no-val":
            m.splits["val"].tiles = []
            write_manifest(m)
            expected = "val split is empty"
        elif case == "batch":
            extra = ["--batch-size", "5"]
            expected = "needs 5 tiles per step but the training split has only 4"
        else:
            extra = ["--crop", "96"]
            expected = "--crop 96 is larger than the 64 px tiles"
    run = tmp_path / "run"
    args = _base(ds, run)
    if extra:
        i = args.index(extra[0])
        args[i:i + 2] = extra
    code, err = _train(capsys, *args)
    assert code == 2, err
    assert expected in err
    _assert_nothing_written(run)


def test_not_a_dataset_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "src").mkdir()
    code, err = _train(capsys, *_base(tmp_path / "src", tmp_path / "run"))
    assert code == 2 and "is not a ChangeCLIP dataset folder (no dataset.json)" in err
    assert "changeclip dataset from-folder" in err
    _assert_nothing_written(tmp_path / "run")


def test_run_dir_problems(make_dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = make_dataset()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    code, err = _train(capsys, *_base(ds, existing))
    assert code == 2 and "already exists and is not empty; pass --resume" in err and "--overwrite" in err
    assert [p.name for p in existing.iterdir()] == ["notes.txt"]

    code, err = _train(capsys, *_base(ds, existing, "--resume"))
    assert code == 2 and "holds no state.pt to resume from" in err

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, err = _train(capsys, *_base(ds, blocker / "run"))
    assert code == 2 and "is not a folder" in err
    assert blocker.read_text() == "x"

    code, err = _train(capsys, *_base(ds, tmp_path / "run", "--resume", "--overwrite"))
    assert code == 2 and "give one of them" in err
    _assert_nothing_written(tmp_path / "run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_unwritable_run_dir(make_dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = make_dataset()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, err = _train(capsys, *_base(ds, locked / "run"))
    finally:
        locked.chmod(0o700)
    assert code == 2 and "no write permission" in err
    _assert_nothing_written(locked / "run")


def test_init_problems(make_dataset, tmp_path: Path, tiny_weights, capsys: pytest.CaptureFixture[str]) -> None:
    ds = make_dataset()
    run = tmp_path / "run"
    args = _base(ds, run)
    i = args.index("--init")

    args[i + 1] = f"weights:{tiny_weights('tiny-vit')}"
    code, err = _train(capsys, *args)
    assert code == 3 and "holds the ViT-B/16 network (tiny-vit)" in err and "'tiny-rn50' was requested" in err
    _assert_nothing_written(run)

    args[i + 1] = f"weights:{tmp_path / 'missing.safetensors'}"
    code, err = _train(capsys, *args)
    assert code == 3 and "missing.safetensors does not exist" in err

    args[i + 1] = "clip:openai"
    code, err = _train(capsys, *args)
    assert code == 3 and "rn50 and vit-b-16 only" in err
    args[args.index("--variant") + 1] = "rn50"
    code, err = _train(capsys, *args)  # HF_HUB_OFFLINE=1 in the tests: refused at once, nothing downloaded
    assert code == 3 and "downloads are disabled (HF_HUB_OFFLINE is set)" in err and "clip:FILE" in err
    _assert_nothing_written(run)


@pytest.mark.parametrize(("extra", "expected"), [
    (["--prompt-mode", "auto"], "--prompt-mode auto needs the CLIP tagger"),
    (["--prompt", "roofs"], "--prompt was given but --prompt-mode is 'none'"),
    (["--crop", "48"], "--crop must be a positive multiple of 32"),
    (["--class-weights", "1"], "--class-weights needs two positive numbers"),
    (["--precision", "fp16"], "fp16 is not supported on the CPU"),
    (["--warmup", "5"], "--warmup 5 must be shorter than the run (2 iterations)"),
])
def test_bad_options(extra: list[str], expected: str, make_dataset, tmp_path: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    ds = make_dataset()
    code, err = _train(capsys, *_base(ds, tmp_path / "run"), *extra)
    assert code == 2 and expected in err, err
    _assert_nothing_written(tmp_path / "run")


def test_missing_required_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _train(capsys, str(tmp_path), "-o", str(tmp_path / "run"))
    assert code == 2 and "train needs --variant, --init" in err
    _assert_nothing_written(tmp_path / "run")


def test_config_json_is_not_written_on_a_late_error(make_dataset, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The last check (the start weights) runs before RUN_DIR is created."""
    ds = make_dataset()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    code, err = _train(capsys, *_base(ds, tmp_path / "run")[:-2], "--device", "cpu",
                       *["--init", f"weights:{bad}"])
    assert code == 3, err
    _assert_nothing_written(tmp_path / "run")
    assert json.loads((ds / "dataset.json").read_text())["format"] == "changeclip-dataset"
