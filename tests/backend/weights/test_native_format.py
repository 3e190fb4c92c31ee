"""Our native weights format: safetensors + configuration JSON in the header."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from changeclip.errors import ModelError
from changeclip.model import PRESETS
from changeclip.weights.native import load_native, read_native_header, save_weights
from changeclip.weights.seeded import seeded_state_dict


def test_round_trip(tmp_path: Path) -> None:
    cfg = PRESETS["tiny-rn50"]
    sd = seeded_state_dict(cfg)
    path = save_weights(sd, cfg, tmp_path / "w.safetensors", meta={"source": "unit test", "n": 3})
    assert path == tmp_path / "w.safetensors"
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary left behind
    cfg2, sd2, meta = load_native(path)
    assert cfg2 == cfg
    assert meta == {"source": "unit test", "n": 3}
    assert set(sd2) == set(sd)
    for key, value in sd.items():
        assert sd2[key].dtype == value.dtype, key
        assert torch.equal(sd2[key], value), key
    header = read_native_header(path)
    assert header["format"] == "changeclip-native" and header["format_version"] == "1"
    assert json.loads(header["config"])["backbone"] == "rn50"


def test_tiny_weights_fixture(tiny_weights) -> None:
    path = tiny_weights("tiny-vit")
    assert path.is_file() and tiny_weights("tiny-vit") == path
    cfg, sd, meta = load_native(path)
    assert cfg.name == "tiny-vit" and meta["seed"] == 0
    assert torch.equal(sd["gamma"], seeded_state_dict(cfg)["gamma"])
    with pytest.raises(ValueError, match="unknown variant"):
        tiny_weights("rn50")


def test_refuses_state_dict_of_another_config(tmp_path: Path) -> None:
    sd = seeded_state_dict(PRESETS["tiny-rn50"])
    with pytest.raises(ModelError, match="does not fit the 'tiny-vit'"):
        save_weights(sd, PRESETS["tiny-vit"], tmp_path / "w.safetensors")
    assert not list(tmp_path.iterdir())


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_native(tmp_path / "nope.safetensors")


def test_not_a_safetensors_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(ModelError, match="not a readable .safetensors file"):
        load_native(bad)


def test_wrong_format_tag(tmp_path: Path) -> None:
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other), metadata={"format": "pt"})
    with pytest.raises(ModelError, match="not ChangeCLIP native weights"):
        load_native(other)


def test_newer_format_version(tmp_path: Path) -> None:
    newer = tmp_path / "newer.safetensors"
    meta = {"format": "changeclip-native", "format_version": "2", "config": PRESETS["tiny-vit"].to_json()}
    save_file({"x": torch.zeros(2)}, str(newer), metadata=meta)
    with pytest.raises(ModelError, match="format version '2'"):
        load_native(newer)


def test_bad_embedded_config(tmp_path: Path) -> None:
    broken = tmp_path / "broken.safetensors"
    meta = {"format": "changeclip-native", "format_version": "1", "config": '{"name": "x"}'}
    save_file({"x": torch.zeros(2)}, str(broken), metadata=meta)
    with pytest.raises(ModelError, match="embedded configuration is invalid"):
        load_native(broken)


def test_missing_folder(tmp_path: Path) -> None:
    cfg = PRESETS["tiny-vit"]
    with pytest.raises(ModelError, match="does not exist"):
        save_weights(seeded_state_dict(cfg), cfg, tmp_path / "no" / "w.safetensors")
