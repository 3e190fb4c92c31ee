"""--init: where a run starts (no training here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from changeclip.errors import ModelError
from changeclip.model.config import PRESETS
from changeclip.training.start import load_start, seeded_init
from changeclip.weights.native import load_native


def test_clip_file_fills_the_towers_and_seeds_the_rest(tmp_path: Path) -> None:
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    clip = CLIP(64, CLIPVisionCfg(layers=4, width=64, patch_size=16, image_size=224, head_width=32),
                CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=2), quick_gelu=True)
    path = tmp_path / "ViT-tiny.pt"
    torch.save(clip.state_dict(), path)
    start = load_start(f"clip:{path}", "tiny-vit", seed=3)
    assert start.description["init"] == "clip" and start.description["counts"]["copied"] > 10
    assert torch.equal(start.state_dict["backbone.conv1.weight"], clip.state_dict()["visual.conv1.weight"])
    seeded = seeded_init(PRESETS["tiny-vit"], 3)  # what the parts CLIP lacks start from
    assert torch.equal(start.state_dict["decode_head.conv_seg.weight"], seeded["decode_head.conv_seg.weight"])
    with pytest.raises(ModelError, match="needs a rn50 CLIP"):
        load_start(f"clip:{path}", "tiny-rn50", seed=3)


def test_weights_file_and_scratch(tiny_weights) -> None:
    path = tiny_weights("tiny-rn50")
    start = load_start(f"weights:{path}", "tiny-rn50", seed=0)
    _, state, _ = load_native(path)
    assert all(torch.equal(start.state_dict[k], v) for k, v in state.items())
    assert start.description["random"] is True and len(start.description["sha256"]) == 64
    with pytest.raises(ModelError, match="tiny-rn50 network but --variant is rn50"):
        load_start(f"weights:{path}", "rn50", seed=0)
    a, b = load_start("scratch", "tiny-rn50", seed=1), load_start("scratch", "tiny-rn50", seed=1)
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    c = load_start("scratch", "tiny-rn50", seed=2)
    assert not torch.equal(a.state_dict["decode_head.conv_seg.weight"], c.state_dict["decode_head.conv_seg.weight"])
