"""Official mmengine checkpoints through the safe path, load_weights errors, CLIP initialisation."""

from __future__ import annotations

import sys
import types
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from changeclip.errors import ModelError
from changeclip.model import PRESETS, build_model_from_state_dict
from changeclip.model.prompts import build_prompts, tokenize
from changeclip.weights import load_weights
from changeclip.weights.native import load_native, save_weights
from changeclip.weights.seeded import seeded_input, seeded_state_dict

CFG_TEXT = {
    "tiny-rn50": "model = dict(type='ChangeCLIP', backbone=dict(type='CLIPResNetWithAttention', layers=[1,1,1,1]))\n"
                 "data_root = 'LEVIR-CD/cut_data'\n",
    "tiny-vit": "model = dict(type='ChangeCLIP', backbone=dict(type='CLIPVisionTransformer', width=64))\n",
}


@pytest.fixture
def fake_mmengine(monkeypatch: pytest.MonkeyPatch) -> type:
    """A ``MessageHub`` class that pickles as ``mmengine.logging.message_hub.MessageHub``."""

    class MessageHub:
        def __init__(self) -> None:
            self.runtime_info = {"iter": np.int64(17000), "epoch": 0}
            self.log_scalars = {"loss": np.arange(3.0)}

    MessageHub.__module__ = "mmengine.logging.message_hub"
    MessageHub.__qualname__ = "MessageHub"
    for name in ("mmengine", "mmengine.logging", "mmengine.logging.message_hub"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))  # restored after the test
    sys.modules["mmengine.logging.message_hub"].MessageHub = MessageHub
    return MessageHub


def write_official(path: Path, variant: str, hub: object, prefix: str = "", cfg_text: str | None = None) -> dict:
    """Save seeded TINY weights the way mmengine's Runner.save_checkpoint lays them out."""
    sd = seeded_state_dict(PRESETS[variant], seed=0)
    ck = {
        "meta": {"epoch": 0, "iter": 17000, "seed": 0, "experiment_name": "changeclip_levir",
                 "mmengine_version": "0.7.4", "cfg": CFG_TEXT[variant] if cfg_text is None else cfg_text,
                 "dataset_meta": {"classes": ("background", "building"), "palette": [[0, 0, 0], [255, 255, 255]],
                                  "label_map": None, "reduce_zero_label": False}},
        "state_dict": OrderedDict((prefix + k, v) for k, v in sd.items()),
        "message_hub": hub,
    }
    torch.save(ck, path)
    return sd


def _logits(model: torch.nn.Module, size: int = 64) -> torch.Tensor:
    a_tags = ["building", "road", "tree", "bare land", "parking lot", "dense residential", "cars",
              "impermeable surface", "park"]
    tokens = tokenize(list(build_prompts(a_tags)))[None]  # 1, 2, 64
    with torch.inference_mode():
        return model.forward_tokens(seeded_input(size), tokens, tokens)


@pytest.mark.parametrize("variant", ["tiny-rn50", "tiny-vit"])
def test_official_checkpoint_gives_identical_logits(tmp_path: Path, fake_mmengine: type, variant: str) -> None:
    path = tmp_path / "best_mIoU_iter_17000.pth"
    sd = write_official(path, variant, fake_mmengine(), prefix="module.")
    for key in [k for k in sys.modules if k.startswith("mmengine")]:
        sys.modules.pop(key)  # the loader must not need (or import) mmengine
    loaded = load_weights(path)
    assert loaded.source_format == "official" and loaded.cfg.name == variant
    assert set(loaded.state_dict) == set(sd)  # "module." stripped
    assert loaded.meta["iter"] == 17000 and loaded.meta["classes"] == ["background", "building"]
    assert "CLIP" in loaded.meta["cfg"]
    assert len(loaded.sha256) == 64
    direct = build_model_from_state_dict(PRESETS[variant], sd)
    via_file = build_model_from_state_dict(loaded.cfg, loaded.state_dict)
    ref, out = _logits(direct), _logits(via_file)
    assert out.shape == (1, 2, 64, 64) and torch.isfinite(out).all()
    assert torch.equal(ref, out), f"max diff {float((ref - out).abs().max())}"


def test_variant_requests_and_mismatch(tmp_path: Path, fake_mmengine: type) -> None:
    path = tmp_path / "rn.pth"
    write_official(path, "tiny-rn50", fake_mmengine())
    assert load_weights(path, "rn50").cfg.name == "tiny-rn50"  # the family is what the user names
    with pytest.raises(ModelError, match="RN50 variant, but variant 'vit-b-16' was requested"):
        load_weights(path, "vit-b-16")
    with pytest.raises(ModelError, match="unknown variant"):
        load_weights(path, "rn101")


def test_config_text_contradicting_weights(tmp_path: Path, fake_mmengine: type) -> None:
    path = tmp_path / "odd.pth"
    write_official(path, "tiny-rn50", fake_mmengine(), cfg_text=CFG_TEXT["tiny-vit"])
    with pytest.raises(ModelError, match="inconsistent"):
        load_weights(path)


def test_checkpoint_of_another_model(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    other = {f"layer{i}.conv.weight": torch.zeros(4, 4, 3, 3) for i in range(12)}
    torch.save({"meta": {}, "state_dict": other}, path)
    with pytest.raises(ModelError) as info:
        load_weights(path)
    msg = str(info.value)
    assert "another model" in msg and "12 key(s) unexpected" in msg and "layer0.conv.weight" in msg
    assert "missing" in msg and "more)" in msg  # counts + first few only
    sd = seeded_state_dict(PRESETS["tiny-rn50"])
    del sd["decode_head.conv_seg.weight"]
    sd["gamma"] = torch.zeros(7)
    torch.save({"state_dict": sd}, path)
    with pytest.raises(ModelError) as info:
        load_weights(path)
    msg = str(info.value)
    assert "1 key(s) missing: decode_head.conv_seg.weight" in msg and "gamma (7,) vs (64,)" in msg


def test_missing_corrupt_and_truncated_files(tmp_path: Path,
                                             tiny_weights: Callable[[str], Path]) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_weights(tmp_path / "nope.safetensors")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match="empty or truncated"):
        load_weights(empty)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"GIF89a" + bytes(100))
    with pytest.raises(ModelError, match="neither a safetensors file nor a PyTorch checkpoint") as refused:
        load_weights(junk)
    assert "b'" not in str(refused.value) and "\\x" not in str(refused.value), "no raw bytes in a user's message"
    assert "starts with binary data" in str(refused.value)
    page = tmp_path / "page.safetensors"
    page.write_bytes(b"<!DOCTYPE html><html>Not Found</html>")
    with pytest.raises(ModelError, match="starts with text"):
        load_weights(page)
    native = tiny_weights("tiny-rn50").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(native[: len(native) // 2])
    with pytest.raises(ModelError):
        load_weights(cut)
    pth = tmp_path / "ok.pth"
    torch.save({"state_dict": seeded_state_dict(PRESETS["tiny-vit"])}, pth)
    data = pth.read_bytes()
    cut2 = tmp_path / "cut.pth"
    cut2.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelError, match="truncated"):
        load_weights(cut2)


def test_native_loads_and_checks_variant(tiny_weights: Callable[[str], Path], tmp_path: Path) -> None:
    lw = load_weights(tiny_weights("tiny-vit"))
    assert lw.source_format == "native" and lw.cfg.name == "tiny-vit"
    with pytest.raises(ModelError, match="variant 'rn50' was requested"):
        load_weights(tiny_weights("tiny-vit"), "rn50")
    cfg, sd, _ = load_native(tiny_weights("tiny-vit"))
    sd.pop("gamma")
    bad = tmp_path / "bad.safetensors"
    save_weights(sd, cfg, bad, validate=False)
    with pytest.raises(ModelError, match="1 key\\(s\\) missing: gamma"):
        load_weights(bad)


@pytest.mark.parametrize("variant", ["tiny-rn50", "tiny-vit"])
def test_clip_init_copies_towers_and_resizes_grids(tmp_path: Path, variant: str) -> None:
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    from changeclip.weights.clip_init import changeclip_state_from_clip

    torch.manual_seed(0)
    if variant == "tiny-rn50":  # width 8 -> attention pool over 256 channels, 32 heads; 7x7 grid at 224
        vision = CLIPVisionCfg(layers=(1, 1, 1, 1), width=8, image_size=224, head_width=8)
        pos_key = "attnpool.positional_embedding"
    else:  # 14x14 grid at 224
        vision = CLIPVisionCfg(layers=4, width=64, patch_size=16, image_size=224, head_width=32)
        pos_key = "positional_embedding"
    clip = CLIP(64, vision, CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=2),
                quick_gelu=True)
    clip_sd = clip.state_dict()
    path = tmp_path / "clip.pt"
    torch.save(clip_sd, path)
    cfg, state, counts = changeclip_state_from_clip(path, PRESETS[variant])
    assert counts["resized"] == 1 and counts["copied"] > 10
    assert state[f"backbone.{pos_key}"].shape[0] == 16 * 16 + 1
    assert torch.equal(state[f"backbone.{pos_key}"][0], clip_sd[f"visual.{pos_key}"][0])
    assert torch.equal(state["backbone.conv1.weight"], clip_sd["visual.conv1.weight"])
    assert torch.equal(state["text_encoder.token_embedding.weight"], clip_sd["token_embedding.weight"])
    assert torch.equal(state["text_encoder.transformer.resblocks.1.mlp.c_fc.weight"],
                       clip_sd["transformer.resblocks.1.mlp.c_fc.weight"])
    model = build_model_from_state_dict(cfg, state)  # loads strictly and runs
    assert torch.isfinite(_logits(model)).all()
    with pytest.raises(ModelError, match="needs a"):
        changeclip_state_from_clip(path, PRESETS["tiny-vit" if variant == "tiny-rn50" else "tiny-rn50"])
