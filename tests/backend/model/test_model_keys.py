"""Our state-dict keys, shapes, kinds and order equal the official ones for every preset."""

from __future__ import annotations

from pathlib import Path

import pytest

from changeclip.model import PRESETS, build_model

SECTION_TO_PRESET = {
    "## RN50 variant": "rn50",
    "## ViT-B/16 variant": "vit-b-16",
    "## TINY RN50": "tiny-rn50",
    "## TINY ViT": "tiny-vit",
}
PARAM_TOTALS = {"rn50": 117_540_238, "vit-b-16": 170_746_670, "tiny-rn50": 10_368_810, "tiny-vit": 10_109_326}


def read_official_keys(path: Path) -> dict[str, list[tuple[str, tuple[int, ...], str]]]:
    """Parse official_state_dict_keys.txt into preset -> [(key, shape, kind)] in file order."""
    sections: dict[str, list[tuple[str, tuple[int, ...], str]]] = {}
    current: str | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            for prefix, preset in SECTION_TO_PRESET.items():
                if line.startswith(prefix):
                    current = preset
                    sections[current] = []
            continue
        if not line.strip() or line.startswith("#"):
            continue
        assert current is not None, f"key line before any section: {line!r}"
        key, shape, kind = line.split("\t")
        dims = tuple(int(d) for d in shape.strip("[]").split(",") if d.strip())
        sections[current].append((key, dims, kind))
    return sections


@pytest.fixture(scope="module")
def official(parity_dir: Path) -> dict[str, list[tuple[str, tuple[int, ...], str]]]:
    sections = read_official_keys(parity_dir / "official_state_dict_keys.txt")
    assert set(sections) == set(SECTION_TO_PRESET.values())
    return sections


@pytest.mark.parity
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_keys_shapes_kinds_and_order(official, preset: str) -> None:
    model = build_model(PRESETS[preset], device="meta")
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    theirs = [(k, s) for k, s, _ in official[preset]]
    only_ours = sorted(set(ours) - set(theirs))
    only_theirs = sorted(set(theirs) - set(ours))
    assert not only_ours and not only_theirs, f"{preset}: ours only {only_ours[:5]}, official only {only_theirs[:5]}"
    assert ours == theirs, f"{preset}: same keys but another order"
    params = dict(model.named_parameters())
    wrong_kind = [k for k, _, kind in official[preset] if (kind == "param") != (k in params)]
    assert not wrong_kind, f"{preset}: param/buffer kind differs for {wrong_kind[:5]}"
    assert sum(p.numel() for p in params.values()) == PARAM_TOTALS[preset]
