"""``dataset from-folder``: LEVIR-CD and SYSU-CD layouts, the official 1024² cut, label normalisation,
and bad label sets refused with the file named and nothing written."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from dshelpers import read, write_image

from changeclip.cli import main
from changeclip.datasets.from_folder import FolderDatasetOptions, cut_plan, make_dataset
from changeclip.datasets.manifest import read_manifest
from changeclip.errors import InputError

DATA = Path("/work/shared/data")
LEVIR = DATA / "LEVIR-CD" / "justchenhao_BIT_CD"
SYSU = DATA / "SYSU-CD" / "zmoka-zht_BiFA"
needs_data = pytest.mark.skipif(not LEVIR.is_dir() or not SYSU.is_dir(), reason="shared sample data not present")


def _make(src: Path, out: Path, **kw: object) -> None:
    make_dataset(FolderDatasetOptions(source=str(src), output=str(out), **kw))  # type: ignore[arg-type]


@needs_data
def test_levir_sample_flat_folder(tmp_path: Path) -> None:
    _make(LEVIR, tmp_path / "ds", gsd=0.5, train_dataset="LEVIR-CD")
    m = read_manifest(tmp_path / "ds")
    assert m.kind == "from-folder" and m.image_format == "png" and m.crs_wkt is None and m.gsd_m == 0.5
    names = sorted(p.stem for p in (LEVIR / "A").glob("*.png"))
    tiles = m.splits["train"].tiles + m.splits["val"].tiles
    assert sorted(tiles) == names, "256² images are kept whole, one tile each"
    assert len(m.splits["val"].tiles) == round(0.15 * 11) == m.options["val_made_from_train"]
    assert m.options["source_label_encoding"]["label_encoding"] == "0/255"
    for split, info in m.splits.items():
        total = {"0": 0, "1": 0, "255": 0}
        for t in info.tiles:
            a, b, lab = (read(p) for p in m.tile_paths(split, t))
            np.testing.assert_array_equal(a, read(LEVIR / "A" / f"{t}.png"))
            np.testing.assert_array_equal(b, read(LEVIR / "B" / f"{t}.png"))
            np.testing.assert_array_equal(lab, (read(LEVIR / "label" / f"{t}.png") == 255).astype(np.uint8))
            for k in total:
                total[k] += int((lab == int(k)).sum())
        assert info.pixels == total
    assert m.sources[0]["role"] == "folder" and len(m.sources[0]["sha256"]) == 64
    # deterministic: the same seed gives the same val images, another seed other ones
    _make(LEVIR, tmp_path / "again")
    assert read_manifest(tmp_path / "again").splits["val"].tiles == m.splits["val"].tiles
    _make(LEVIR, tmp_path / "other", seed=5)
    assert read_manifest(tmp_path / "other").splits["val"].tiles != m.splits["val"].tiles


@needs_data
def test_sysu_layout_with_splits_and_01_labels(tmp_path: Path) -> None:
    """SYSU-CD layout (time1/time2/label under train/val/test) with 0/1 labels."""
    src = tmp_path / "SYSU-CD"
    ids = sorted(p.stem.split("_")[-1] for p in (SYSU / "A").glob("*.png"))
    splits = {"train": ids[:2], "val": ids[2:3], "test": ids[3:]}
    rng = np.random.default_rng(0)
    labels = {}
    for split, names in splits.items():
        for i in names:
            for sub, folder in (("time1", "A"), ("time2", "B")):
                (src / split / sub).mkdir(parents=True, exist_ok=True)
                shutil.copy(SYSU / folder / f"sysu_{folder}_{i}.png", src / split / sub / f"{i}.png")
            labels[i] = (rng.random((256, 256)) < 0.2).astype(np.uint8)
            write_image(src / split / "label" / f"{i}.png", labels[i])
    _make(src, tmp_path / "ds")
    m = read_manifest(tmp_path / "ds")
    assert {s: sorted(i.tiles) for s, i in m.splits.items()} == splits
    assert m.options["source_label_encoding"]["label_encoding"] == "0/1" and m.options["val_made_from_train"] == 0
    for split, names in splits.items():
        for i in names:
            np.testing.assert_array_equal(read(m.tile_paths(split, i)[2]), labels[i])
            np.testing.assert_array_equal(read(m.tile_paths(split, i)[0]), read(SYSU / "A" / f"sysu_A_{i}.png"))


def test_official_levir_cut_of_1024_images(tmp_path: Path) -> None:
    """1024² -> mirror padding to 1216, 6 x 6 tiles of 256 at stride 192, named <name>_<col>_<row>."""
    assert cut_plan(1024, 256, 192) == (96, [0, 192, 384, 576, 768, 960])
    rng = np.random.default_rng(1)
    img_a = rng.integers(0, 256, (3, 1024, 1024), dtype=np.uint8)
    img_b = rng.integers(0, 256, (3, 1024, 1024), dtype=np.uint8)
    label = np.zeros((1024, 1024), np.uint8)
    label[300:700, 100:400] = 255
    for sub, arr in (("A", img_a), ("B", img_b), ("label", label)):
        write_image(tmp_path / "src" / "train" / sub / "train_1.png", arr)
        write_image(tmp_path / "src" / "val" / sub / "val_1.png", arr[..., :256, :256])
    _make(tmp_path / "src", tmp_path / "ds")
    m = read_manifest(tmp_path / "ds")
    assert len(m.splits["train"].tiles) == 36 and m.splits["val"].tiles == ["val_1"]
    assert {f"train_1_{c}_{r}" for c in range(1, 7) for r in range(1, 7)} == set(m.splits["train"].tiles)
    # tile (col 2, row 3) starts at padded (192, 384) = image (96, 288): fully inside the image
    a, _, lab = (read(p) for p in m.tile_paths("train", "train_1_2_3"))
    np.testing.assert_array_equal(a, img_a[:, 288:544, 96:352])
    np.testing.assert_array_equal(lab, (label[288:544, 96:352] == 255).astype(np.uint8))
    # tile (1, 1) covers the 96 px mirror margin: image mirrored, label ignored there
    a, _, lab = (read(p) for p in m.tile_paths("train", "train_1_1_1"))
    assert (lab[:96, :] == 255).all() and (lab[:, :96] == 255).all() and (lab[96:, 96:] != 255).all()
    np.testing.assert_array_equal(a[:, 96:, 96:], img_a[:, :160, :160])
    np.testing.assert_array_equal(a[:, 95, 96:], img_a[:, 0, :160])  # mirrored edge row


def _levir_copy(tmp_path: Path, n: int = 3) -> Path:
    src = tmp_path / "src"
    rng = np.random.default_rng(2)
    for i in range(n):
        for sub in ("A", "B"):
            write_image(src / sub / f"p{i}.png", rng.integers(0, 256, (3, 64, 64), dtype=np.uint8))
        write_image(src / "label" / f"p{i}.png", (rng.random((64, 64)) < 0.3).astype(np.uint8) * 255)
    return src


def _refused(tmp_path: Path, src: Path, match: str, **kw: object) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(InputError, match=match):
        _make(src, tmp_path / "ds", **{"tile": 64, "stride": 48, **kw})
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "a refused run must write nothing"


def test_bad_label_sets_are_refused_naming_the_file(tmp_path: Path) -> None:
    src = _levir_copy(tmp_path)
    for i in range(3):
        write_image(src / "label" / f"p{i}.png", np.zeros((64, 64), np.uint8))
    _refused(tmp_path, src, "all 3 labels of .* are 0")
    odd = np.zeros((64, 64), np.uint8)
    odd[:10, :10] = 128
    odd[20:30, 20:30] = 255
    write_image(src / "label" / "p1.png", odd)
    _refused(tmp_path, src, r"label values fit no encoding.*p1\.png has \[0, 128, 255\].*--label-encoding any>0")
    _make(src, tmp_path / "ok", tile=64, stride=48, label_encoding="any>0")
    lab = read(read_manifest(tmp_path / "ok").tile_paths(
        next(s for s, i in read_manifest(tmp_path / "ok").splits.items() if "p1" in i.tiles), "p1")[2])
    np.testing.assert_array_equal(lab, (odd > 0).astype(np.uint8))
    shutil.rmtree(tmp_path / "ok")
    write_image(src / "label" / "p1.png", np.zeros((60, 64), np.uint8))
    _refused(tmp_path, src, r"label .*p1\.png is 64 x 60 px but its images are 64 x 64")
    write_image(src / "label" / "p1.png", odd)
    write_image(src / "B" / "p2.png", np.zeros((3, 64, 32), np.uint8))
    _refused(tmp_path, src, r"after image .*p2\.png is 32 x 64 px")


def test_a_mix_of_0_255_and_0_1_labels_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``auto`` reads one encoding for the set: 0/1 files beside 0/255 files would lose one kind's changes."""
    src = _levir_copy(tmp_path)
    mask = np.zeros((64, 64), np.uint8)
    mask[8:24, 8:40] = 1
    write_image(src / "label" / "p1.png", mask)
    _refused(tmp_path, src, r"labels mix two encodings: 2 file\(s\) mark change with 255 .* and 1 with 1 "
                            r"\(e\.g\. .*p1\.png\).*--label-encoding any>0")
    _make(src, tmp_path / "ok", tile=64, stride=48, label_encoding="any>0")
    m = read_manifest(tmp_path / "ok")
    split = next(s for s, i in m.splits.items() if "p1" in i.tiles)
    np.testing.assert_array_equal(read(m.tile_paths(split, "p1")[2]), mask)
    # a file with 0, 1 and 255 makes 255 "ignore": the 0/255 files are read so, and a warning says it
    mask[40:50, 40:50] = 255
    write_image(src / "label" / "p1.png", mask)
    with caplog.at_level("WARNING"):
        _make(src, tmp_path / "sparse", tile=64, stride=48)
    assert "2 label file(s) hold only 0 and 255" in caplog.text and "contribute no change pixel" in caplog.text
    assert read_manifest(tmp_path / "sparse").options["source_label_encoding"]["label_encoding"] == "0/1"


def test_layout_and_output_errors(tmp_path: Path) -> None:
    src = _levir_copy(tmp_path, n=1)
    _refused(tmp_path, src, "1 image pair\\(s\\) and no val/ split")
    _refused(tmp_path, tmp_path / "missing", "does not exist")
    (tmp_path / "x" / "val" / "A").mkdir(parents=True)
    _refused(tmp_path, tmp_path / "x", "no train/ split")
    src = _levir_copy(tmp_path / "more")
    (tmp_path / "ds").mkdir()
    _refused(tmp_path, src, "already exists; pass --overwrite")
    _refused(tmp_path, src, "--stride must be between", stride=100)


def test_cli_from_folder_prints_histogram(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _levir_copy(tmp_path)
    out = tmp_path / "ds"
    assert main(["dataset", "from-folder", str(src), "-o", str(out), "--tile", "64", "--stride", "48"]) == 0
    text = capsys.readouterr().out
    assert "no change (0)" in text and "change (1)" in text and "ignored (255)" in text
    assert main(["dataset", "from-folder", str(src), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["dataset", "from-folder", str(src), "-o", str(out), "--overwrite", "--tile", "256"]) == 0
    assert read_manifest(out).options["stride"] == 192
    assert main(["dataset", "info", str(src)]) == 2
    assert "is not a ChangeCLIP dataset folder" in capsys.readouterr().err
