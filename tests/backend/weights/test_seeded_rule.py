"""The parity kit's seeded-weights rule (shared/parity/README.md), checked key by key."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from changeclip.model import PRESETS, build_model
from changeclip.weights.seeded import seeded_input, seeded_state_dict

CFG = PRESETS["tiny-vit"]


@pytest.fixture(scope="module")
def sd() -> dict[str, torch.Tensor]:
    return seeded_state_dict(CFG, seed=0)


def _stream(key: str, seed: int = 0) -> np.random.RandomState:
    return np.random.RandomState((seed + zlib.crc32(key.encode("utf-8"))) % 2**32)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("backbone.fpn1.2.running_var", lambda s, shape: 0.5 + s.random_sample(shape)),
        ("backbone.fpn1.2.running_mean", lambda s, shape: 0.1 * s.standard_normal(shape)),
        ("backbone.ln_pre.weight", lambda s, shape: 1 + 0.1 * s.standard_normal(shape)),
        ("backbone.transformer.resblocks.0.attn.in_proj_bias", lambda s, shape: 0.02 * s.standard_normal(shape)),
        ("backbone.conv1.weight", lambda s, shape: s.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))),
        ("text_encoder.token_embedding.weight", lambda s, shape: s.standard_normal(shape) / np.sqrt(shape[1])),
        ("gamma", lambda s, shape: 0.02 * s.standard_normal(shape)),
        ("contexts2", lambda s, shape: 0.02 * s.standard_normal(shape)),
        ("backbone.class_embedding", lambda s, shape: 0.02 * s.standard_normal(shape)),
        (
            "decode_head.layer1.up.layer.blocks.0.attn.relative_position_bias_table",
            lambda s, shape: 0.02 * s.standard_normal(shape),
        ),
    ],
)
def test_rule_per_key(sd: dict[str, torch.Tensor], key: str, expected) -> None:
    shape = tuple(sd[key].shape)
    want = np.asarray(expected(_stream(key), shape)).astype(np.float32)
    assert sd[key].dtype == torch.float32
    np.testing.assert_array_equal(sd[key].numpy(), want)


def test_integer_buffers_keep_built_values(sd: dict[str, torch.Tensor]) -> None:
    built = build_model(CFG).state_dict()
    ints = [k for k, v in built.items() if not v.is_floating_point()]
    assert any(k.endswith("relative_position_index") for k in ints)
    assert any(k.endswith("num_batches_tracked") for k in ints)
    for key in ints:
        assert sd[key].dtype == built[key].dtype, key
        assert torch.equal(sd[key], built[key]), key


def test_keys_follow_state_dict_order_and_seed_changes_values(sd: dict[str, torch.Tensor]) -> None:
    assert list(sd) == list(build_model(CFG, device="meta").state_dict())
    other = seeded_state_dict(CFG, seed=1)
    assert not torch.equal(sd["contexts2"], other["contexts2"])
    again = seeded_state_dict(CFG, seed=0)
    assert all(torch.equal(sd[k], again[k]) for k in sd)


def test_seeded_input_is_the_kit_input(parity_dir: Path) -> None:
    ref = np.load(parity_dir / "tiny_rn50_s0_64.npz")["input"]
    x = seeded_input(64)
    assert x.dtype == torch.float32 and tuple(x.shape) == (1, 6, 64, 64)
    np.testing.assert_array_equal(x.numpy(), ref)
    assert tuple(seeded_input((32, 96), batch=2).shape) == (2, 6, 32, 96)
