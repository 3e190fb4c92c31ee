"""Key/shape checks: the expected shapes come from a meta-device build (no memory, no init)."""

from __future__ import annotations

import pytest
import torch

from changeclip.model import build_model
from changeclip.model.config import PRESETS
from changeclip.weights import checks


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_on_the_meta_device(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import changeclip.model

    devices = []

    def spy(cfg, device=None):  # noqa: ANN001, ANN202 - same signature as build_model
        devices.append(device)
        model = build_model(cfg, device=device)
        assert all(t.is_meta for t in model.state_dict().values())
        return model

    monkeypatch.setattr(changeclip.model, "build_model", spy)
    shapes = checks.expected_shapes.__wrapped__(PRESETS[name])  # bypass the cache: really build
    assert devices == ["meta"]
    assert shapes and all(isinstance(s, tuple) for s in shapes.values())


@pytest.mark.parametrize("name", ["tiny-rn50", "tiny-vit"])
def test_meta_shapes_equal_a_real_build(name: str) -> None:
    real = {k: tuple(v.shape) for k, v in build_model(PRESETS[name]).state_dict().items()}
    assert checks.expected_shapes(PRESETS[name]) == real


def test_diff_reports_missing_unexpected_and_reshaped_keys() -> None:
    cfg = PRESETS["tiny-rn50"]
    sd = {k: torch.empty(s, device="meta") for k, s in checks.expected_shapes(cfg).items()}
    assert checks.diff_state_dict(cfg, sd).ok
    first, second = list(sd)[:2]
    del sd[first]
    sd[second] = torch.empty(3, 3, 3, device="meta")
    sd["extra.weight"] = torch.empty(1, device="meta")
    diff = checks.diff_state_dict(cfg, sd)
    assert diff.missing == [first] and diff.unexpected == ["extra.weight"]
    assert len(diff.shape) == 1 and diff.shape[0].startswith(f"{second} (3, 3, 3) vs ")
