"""Parity with the official ChangeCLIP implementation (reference outputs in shared/parity).

The kit's weights are regenerated with the seeded rule, loaded with strict=True, and run on the
kit's input with the kit's prompts (B's foreground prompt built from A's tags: the official
test-time quirk). Bar: max|ours - ref| <= 1e-4 * max|ref| (fp32, CPU). On failure the message
names the first of the kit's intermediates ``inter/<module>#<call>[.i]`` that diverges, captured
on our side with forward hooks on the same module names.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import pytest
import torch
from torch import nn

from changeclip.model import PRESETS, ChangeCLIP, build_model_from_state_dict
from changeclip.weights.seeded import seeded_input, seeded_state_dict

REL_TOL = 1e-4
TAGS_A = [
    "building", "road", "tree", "bare land", "parking lot",
    "dense residential", "cars", "impermeable surface", "park",
]  # fmt: skip
TAGS_B = ["bare land", "farmland", "road", "meadow", "tree", "building", "desert", "river", "pond"]
BACKGROUND = "remote sensing image background objects"
FOREGROUND = "remote sensing image foreground objects"


def kit_tokens(official_test_prompts: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (1, 2, 64) for dates A and B as the references were made."""
    tokenizer = open_clip.get_tokenizer("RN50")

    def encode(tags: list[str]) -> torch.Tensor:
        fg = ", ".join([FOREGROUND, *tags])
        return tokenizer([BACKGROUND, fg], context_length=64)[None]

    return encode(TAGS_A), encode(TAGS_A if official_test_prompts else TAGS_B)


def _flatten(name: str, value: Any) -> dict[str, torch.Tensor]:
    if isinstance(value, (tuple, list)):
        out: dict[str, torch.Tensor] = {}
        for i, item in enumerate(value):
            out.update(_flatten(f"{name}.{i}", item))
        return out
    return {name: value.detach()}


def capture_intermediates(model: ChangeCLIP, names: set[str]) -> tuple[dict[str, torch.Tensor], list[Any]]:
    """Register hooks recording each named module's outputs as ``inter/<name>#<call>[.i]``."""
    captured: dict[str, torch.Tensor] = {}
    handles = []
    modules = dict(model.named_modules())
    missing = sorted(n for n in names if n not in modules)
    assert not missing, f"the kit names modules our network lacks: {missing}"
    for name in names:
        calls = [0]

        def hook(_m: nn.Module, _i: Any, out: Any, name: str = name, calls: list[int] = calls) -> None:
            captured.update(_flatten(f"inter/{name}#{calls[0]}", out))
            calls[0] += 1

        handles.append(modules[name].register_forward_hook(hook))
    return captured, handles


def _rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def check_parity(
    parity_dir: Path,
    variant: str,
    npz_name: str,
    size: int,
    perturb: Callable[[dict[str, torch.Tensor]], None] | None = None,
) -> float:
    """Run one reference; assert the bar; return the measured max relative error.

    ``perturb`` may edit the seeded state dict first (used to test the failure report).
    """
    ref = np.load(parity_dir / npz_name)
    cfg = PRESETS[variant]
    state_dict = seeded_state_dict(cfg, seed=0)
    if perturb is not None:
        perturb(state_dict)
    model = build_model_from_state_dict(cfg, state_dict)
    x = torch.from_numpy(ref["input"])
    assert tuple(x.shape) == (1, 6, size, size)
    np.testing.assert_array_equal(x.numpy(), seeded_input(size).numpy(), err_msg="kit input is not the seeded input")
    inter_keys = [k for k in ref.files if k.startswith("inter/")]
    module_names = {k[len("inter/") :].split("#")[0] for k in inter_keys}
    captured, handles = capture_intermediates(model, module_names)
    tokens_a, tokens_b = kit_tokens(official_test_prompts=True)
    try:
        with torch.inference_mode():
            logits = model.forward_tokens(x, tokens_a, tokens_b).numpy()
    finally:
        for h in handles:
            h.remove()
    assert logits.shape == ref["logits"].shape
    err = _rel_err(logits, ref["logits"])
    if err > REL_TOL:
        detail = "no intermediates in this reference"
        for key in inter_keys:  # the kit stores them in execution order
            if key not in captured:
                detail = f"first divergence: {key} was not produced by our network"
                break
            ours = captured[key].numpy()
            if ours.shape != ref[key].shape:
                detail = f"first divergence: {key} has shape {ours.shape}, reference {ref[key].shape}"
                break
            e = _rel_err(ours, ref[key])
            if e > REL_TOL:
                detail = f"first divergence: {key}, max rel diff {e:.3e} (abs {np.abs(ours - ref[key]).max():.3e})"
                break
        pytest.fail(f"{variant} logits differ from the official reference: max rel diff {err:.3e} > {REL_TOL}; {detail}")
    return err


@pytest.mark.parity
@pytest.mark.parametrize(("variant", "npz_name"), [("tiny-rn50", "tiny_rn50_s0_64.npz"), ("tiny-vit", "tiny_vit_s0_64.npz")])
def test_tiny_parity(parity_dir: Path, variant: str, npz_name: str) -> None:
    err = check_parity(parity_dir, variant, npz_name, 64)
    print(f"{variant}: max relative error {err:.2e}")


@pytest.mark.parity
@pytest.mark.parametrize(("variant", "npz_name"), [("tiny-rn50", "tiny_rn50_s0_64.npz"), ("tiny-vit", "tiny_vit_s0_64.npz")])
def test_tiny_intermediates_all_match(parity_dir: Path, variant: str, npz_name: str) -> None:
    """Every intermediate of the kit matches, not only the logits."""
    ref = np.load(parity_dir / npz_name)
    cfg = PRESETS[variant]
    model = build_model_from_state_dict(cfg, seeded_state_dict(cfg))
    keys = [k for k in ref.files if k.startswith("inter/")]
    assert len(keys) == 34
    captured, _ = capture_intermediates(model, {k[len("inter/") :].split("#")[0] for k in keys})
    tokens_a, tokens_b = kit_tokens()
    with torch.inference_mode():
        model.forward_tokens(torch.from_numpy(ref["input"]), tokens_a, tokens_b)
    bad = {k: _rel_err(captured[k].numpy(), ref[k]) for k in keys if _rel_err(captured[k].numpy(), ref[k]) > REL_TOL}
    assert not bad, f"intermediates off: {bad}"


@pytest.mark.parity
def test_failure_names_first_divergent_intermediate(parity_dir: Path) -> None:
    """A wrong neck weight is reported at the neck, not earlier (minus_conv) nor later."""

    def break_neck(sd: dict[str, torch.Tensor]) -> None:
        sd["neck.fpn_convs.0.conv.bias"] = sd["neck.fpn_convs.0.conv.bias"] + 1.0

    with pytest.raises(pytest.fail.Exception, match=r"first divergence: inter/neck#0\.0, max rel diff"):
        check_parity(parity_dir, "tiny-rn50", "tiny_rn50_s0_64.npz", 64, perturb=break_neck)


def test_b_tags_ignored_under_official_prompts() -> None:
    """Under the quirk, B's foreground prompt carries A's tags: both token sets are identical."""
    a, b = kit_tokens(official_test_prompts=True)
    assert torch.equal(a, b)
    a2, b2 = kit_tokens(official_test_prompts=False)
    assert torch.equal(a, a2) and not torch.equal(b2[:, 1], a2[:, 1]) and torch.equal(b2[:, 0], a2[:, 0])


@pytest.mark.slow
@pytest.mark.parity
@pytest.mark.parametrize(("variant", "npz_name"), [("rn50", "full_rn50_s0_256.npz"), ("vit-b-16", "full_vit_s0_256.npz")])
def test_full_size_parity(parity_dir: Path, variant: str, npz_name: str) -> None:
    err = check_parity(parity_dir, variant, npz_name, 256)
    print(f"{variant}: max relative error {err:.2e}")
