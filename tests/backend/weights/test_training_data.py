"""Training imagery from weights metadata, and the scale warning worded from it."""

from __future__ import annotations

import pytest

from changeclip.errors import InputError
from changeclip.weights.official import summarise_meta
from changeclip.weights.training_data import (
    TrainingData,
    check_gsd,
    dataset_from_data_root,
    scale_warning,
    training_data,
)


@pytest.mark.parametrize(("data_root", "name", "gsd"), [
    ("'/home/u/data/LEVIR-CD/cut_data'", "LEVIR-CD", 0.5),
    ("os.environ.get('CDPATH') + '/LEVIR_CD_PLUS/cut_data'", "LEVIR-CD+", 0.5),
    ("'/data/WHUCD/cut_data'", "WHU-CD", 0.3),
    ("'/data/SYSU-CD'", "SYSU-CD", 0.5),
    ("'/data/ChangeDetectionDataset/Real/subset'", "CDD", None),
])
def test_official_config_data_root_names_the_dataset(data_root: str, name: str, gsd: float | None) -> None:
    cfg_text = f"dataset_type = 'LEVIRCDDataset'\ndata_root = {data_root}\nmodel = dict(type='ChangeCLIP')\n"
    meta = summarise_meta({"cfg": cfg_text, "iter": 17000})
    found = training_data(meta)
    assert found == TrainingData(name, gsd, "official config data_root")


def test_unknown_or_missing_training_data_is_none() -> None:
    assert training_data({}) is None
    assert training_data({"source": "seeded", "random": True}) is None
    assert training_data({"data_root": "'/data/my_own_set'"}) is None
    assert dataset_from_data_root("/data/xyz") is None


def test_native_metadata_wins_over_the_config_text() -> None:
    meta = {"train_dataset": "my drone set", "train_gsd_m": 0.05, "data_root": "'/d/LEVIR-CD/cut_data'"}
    assert training_data(meta) == TrainingData("my drone set", 0.05, "weights metadata")
    assert training_data({"train_gsd_m": 2}) == TrainingData(None, 2.0, "weights metadata")
    # a hand-edited bad value is unknown, never zero or negative
    assert training_data({"train_dataset": "x", "train_gsd_m": -1}) == TrainingData("x", None, "weights metadata")


@pytest.mark.parametrize("bad", ["abc", 0, -0.5, float("nan"), float("inf"), None])
def test_check_gsd_refuses_non_positive_and_non_numbers(bad: object) -> None:
    with pytest.raises(InputError, match="metres per pixel"):
        check_gsd(bad, "--train-gsd")


LEVIR = TrainingData("LEVIR-CD", 0.5, "official config data_root")


@pytest.mark.parametrize("scene", [0.3, 0.5, 0.9, 0.26])
def test_no_warning_within_a_factor_of_two(scene: float) -> None:
    assert scale_warning(scene, LEVIR, scene) is None


def test_no_warning_without_a_training_gsd() -> None:
    assert scale_warning(10.0, None, 10.0) is None
    assert scale_warning(10.0, TrainingData("CDD", None, "official config data_root"), 10.0) is None


def test_coarse_scene_warning_says_how_much_and_what_to_do() -> None:
    text = scale_warning(1.5, LEVIR, 1.5)
    assert text is not None
    assert "3.0x coarser" in text and "LEVIR-CD at 0.5 m/px" in text
    assert "--grid custom" in text and "--resolution 0.5" in text and "Output grid 'custom'" in text
    # far too coarse: only other weights help, no 20x upsampling advice
    text = scale_warning(10.0, LEVIR, 10.0)
    assert text is not None and "20.0x coarser" in text and "weights trained near 10 m/px" in text
    assert "--grid custom" not in text


def test_fine_scene_warning_suggests_a_coarser_grid_in_crs_units() -> None:
    # 0.1 m drone imagery in a CRS whose unit is the US survey foot (0.328 ft per 0.1 m)
    text = scale_warning(0.1, LEVIR, 0.328)
    assert text is not None and "5.0x finer" in text
    assert "--target-crs CRS --resolution 1.6" in text and "Resolution 1.6)" in text
