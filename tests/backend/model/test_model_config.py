"""ChangeCLIPConfig: presets, derived dimensions, JSON round trip, validation errors."""

from __future__ import annotations

import dataclasses
import json

import pytest

from changeclip.errors import ModelError
from changeclip.model.config import IMAGENET_MEAN, IMAGENET_STD, PRESETS, ChangeCLIPConfig, get_preset


def test_presets_are_the_official_and_tiny_variants() -> None:
    assert set(PRESETS) == {"rn50", "vit-b-16", "tiny-rn50", "tiny-vit"}
    rn50, vit = PRESETS["rn50"], PRESETS["vit-b-16"]
    assert (rn50.embed_dim, rn50.score_concat_index, rn50.pos_grid_size) == (1024, 3, 16)
    assert rn50.time_channels == (256, 512, 1024, 2050)
    assert rn50.neck_in_channels == (512, 1024, 2048, 4100)
    assert (vit.embed_dim, vit.score_concat_index, vit.pos_grid_size) == (512, 2, 16)
    assert vit.time_channels == (768, 768, 770, 768)
    assert vit.neck_in_channels == (1536, 1536, 1540, 1536)
    for cfg in PRESETS.values():
        assert (cfg.context_length, cfg.prompt_length, cfg.n_context_vectors) == (77, 64, 13)
        assert (cfg.se_in_channels, cfg.se_hidden_channels) == (768, 48)


def test_tiny_presets_match_the_parity_readme() -> None:
    t_rn, t_vit = PRESETS["tiny-rn50"], PRESETS["tiny-vit"]
    for cfg in (t_rn, t_vit):
        assert (cfg.text_width, cfg.text_heads, cfg.text_layers, cfg.embed_dim) == (32, 2, 2, 64)
        assert (cfg.ctx_width, cfg.ctx_heads, cfg.ctx_layers) == (32, 2, 1)
    assert (t_rn.rn_width, t_rn.rn_layers, t_rn.rn_heads, t_rn.pos_grid_size) == (8, (1, 1, 1, 1), 32, 16)
    assert t_rn.time_channels == (32, 64, 128, 258) and t_rn.neck_in_channels == (64, 128, 256, 516)
    assert (t_vit.vit_width, t_vit.vit_layers, t_vit.vit_heads, t_vit.vit_out_indices) == (64, 4, 2, (0, 1, 2, 3))
    assert t_vit.time_channels == (64, 64, 66, 64) and t_vit.neck_in_channels == (128, 128, 132, 128)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip(name: str) -> None:
    cfg = PRESETS[name]
    data = json.loads(json.dumps(cfg.to_dict()))
    assert ChangeCLIPConfig.from_dict(data) == cfg
    assert ChangeCLIPConfig.from_json(cfg.to_json()) == cfg
    assert hash(ChangeCLIPConfig.from_json(cfg.to_json())) == hash(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.embed_dim = 3  # type: ignore[misc]


def test_imagenet_constants() -> None:
    assert IMAGENET_MEAN == (123.675, 116.28, 103.53)
    assert IMAGENET_STD == (58.395, 57.12, 57.375)


def test_errors() -> None:
    with pytest.raises(ModelError, match="unknown ChangeCLIP configuration keys \\['colour'\\]"):
        ChangeCLIPConfig.from_dict({**PRESETS["rn50"].to_dict(), "colour": "red"})
    with pytest.raises(ModelError, match="lacks required keys"):
        ChangeCLIPConfig.from_dict({"name": "x"})
    with pytest.raises(ModelError, match="not valid JSON"):
        ChangeCLIPConfig.from_json("{")
    with pytest.raises(ModelError, match="backbone='resnet'"):
        ChangeCLIPConfig.from_dict({**PRESETS["rn50"].to_dict(), "backbone": "resnet"})
    with pytest.raises(ModelError, match="vit_out_indices"):
        dataclasses.replace(PRESETS["tiny-vit"], vit_out_indices=(0, 1, 2, 9))
    with pytest.raises(ModelError, match="unknown ChangeCLIP variant 'vit-l'"):
        get_preset("vit-l")
    assert get_preset("tiny-vit") is PRESETS["tiny-vit"]


def test_optional_fields_default_when_absent() -> None:
    """Configurations written before a field existed still load (the field takes its default)."""
    data = PRESETS["vit-b-16"].to_dict()
    for key in ("vit_drop_path_rate", "swin_drop_path_rate", "swin_window"):
        del data[key]
    assert ChangeCLIPConfig.from_dict(data) == PRESETS["vit-b-16"]
