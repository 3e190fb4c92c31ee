"""Compare a state dict with the network a configuration builds; pick the matching preset.

Every loader (native, official, CLIP init) ends here, so "a checkpoint of another model"
is reported the same way everywhere: which keys are missing, which are unexpected, which
have other shapes (first few of each, plus counts).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from changeclip.errors import ModelError
from changeclip.model.config import PRESETS, ChangeCLIPConfig

VARIANT_BACKBONE = {"rn50": "rn50", "vit-b-16": "vit", "tiny-rn50": "rn50", "tiny-vit": "vit"}
"""Variant names accepted by the loaders -> the image-encoder family they require."""

RECOMPUTABLE_SUFFIXES = ("relative_position_index", "num_batches_tracked")
"""Keys a checkpoint may lack: the network rebuilds them (index tables, BN counters)."""

_FIRST = 5


@lru_cache(maxsize=8)
def expected_shapes(cfg: ChangeCLIPConfig) -> dict[str, tuple[int, ...]]:
    """State-dict key -> shape of the network ``cfg`` builds.

    The network is built on the meta device: shapes only, no memory and no random
    initialisation, so checking a file's keys and shapes takes milliseconds even for the
    full-size presets. Every preset builds there (tests/backend/weights checks it); a build
    that does not is a bug in the model code and is raised, not papered over.

    Args:
        cfg: Network configuration.

    Returns:
        Every persistent parameter and buffer with its shape.
    """
    from changeclip.model import build_model

    model = build_model(cfg, device="meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@dataclass
class StateDiff:
    """Differences between a state dict and a configuration's network."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the state dict loads strictly (recomputable keys aside)."""
        return not (self.missing or self.unexpected or self.shape)

    @property
    def size(self) -> int:
        """Number of differences (used to pick the closest preset)."""
        return len(self.missing) + len(self.unexpected) + len(self.shape)

    def describe(self) -> str:
        """Human summary: counts and the first few keys of each kind."""
        parts = []
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected),
                             ("with another shape", self.shape)):
            if items:
                more = f", ... ({len(items) - _FIRST} more)" if len(items) > _FIRST else ""
                parts.append(f"{len(items)} key(s) {label}: {', '.join(items[:_FIRST])}{more}")
        return "; ".join(parts) or "no differences"


def diff_state_dict(cfg: ChangeCLIPConfig, state_dict: Mapping[str, torch.Tensor]) -> StateDiff:
    """Compare ``state_dict`` with the network of ``cfg`` (keys and shapes)."""
    want = expected_shapes(cfg)
    diff = StateDiff()
    for key, shape in want.items():
        if key not in state_dict:
            if not key.endswith(RECOMPUTABLE_SUFFIXES):
                diff.missing.append(key)
        elif tuple(state_dict[key].shape) != shape:
            diff.shape.append(f"{key} {tuple(state_dict[key].shape)} vs {shape}")
    diff.unexpected = [k for k in state_dict if k not in want]
    return diff


def detect_backbone(keys: Iterable[str]) -> str | None:
    """``"rn50"``, ``"vit"`` or ``None`` from the backbone key names of a ChangeCLIP state dict."""
    keys = set(keys)
    if "backbone.attnpool.positional_embedding" in keys:
        return "rn50"
    if "backbone.class_embedding" in keys:
        return "vit"
    return None


def check_variant(variant: str) -> None:
    """Raise ModelError unless ``variant`` is ``auto`` or a known variant name."""
    if variant != "auto" and variant not in VARIANT_BACKBONE:
        raise ModelError(f"unknown variant {variant!r}; choose auto, {', '.join(VARIANT_BACKBONE)}")


def require_variant(cfg: ChangeCLIPConfig, variant: str, source: str) -> None:
    """Raise ModelError if the weights' configuration is not the requested variant.

    ``rn50``/``vit-b-16`` accept any network of that image-encoder family (TINY included);
    a TINY name must match exactly.
    """
    check_variant(variant)
    if variant == "auto":
        return
    names = {"rn50": "RN50", "vit": "ViT-B/16"}
    wrong_family = VARIANT_BACKBONE[variant] != cfg.backbone
    wrong_tiny = variant.startswith("tiny-") and cfg.name != variant
    if wrong_family or wrong_tiny:
        raise ModelError(
            f"{source} holds the {names[cfg.backbone]} network ({cfg.name}), but variant {variant!r} was "
            f"requested; use --variant auto or --variant {'rn50' if cfg.backbone == 'rn50' else 'vit-b-16'}"
        )


def match_preset(state_dict: Mapping[str, torch.Tensor], variant: str, source: str,
                 hint_backbone: str | None = None) -> ChangeCLIPConfig:
    """The preset whose network the state dict loads into.

    Args:
        state_dict: ChangeCLIP state dict (official key names).
        variant: ``auto`` or a variant name; restricts the candidates.
        source: File name for messages.
        hint_backbone: Backbone family read elsewhere (e.g. the mmengine config text).

    Returns:
        The matching preset.

    Raises:
        ModelError: another model's checkpoint (keys/shapes listed), or a variant mismatch.
    """
    check_variant(variant)
    found = detect_backbone(state_dict)
    if found and hint_backbone and found != hint_backbone:
        raise ModelError(f"{source}: its embedded config says a {hint_backbone} backbone but its weights are "
                         f"{found}; the file is inconsistent")
    family = found or hint_backbone
    if variant != "auto" and family and VARIANT_BACKBONE[variant] != family:
        names = {"rn50": "RN50", "vit": "ViT-B/16"}
        raise ModelError(f"{source} holds the {names[family]} variant, but variant {variant!r} was requested; "
                         f"use --variant auto or --variant {'rn50' if family == 'rn50' else 'vit-b-16'}")
    if variant != "auto":
        candidates = [n for n in PRESETS if VARIANT_BACKBONE[n] == VARIANT_BACKBONE[variant]]
        candidates.sort(key=lambda n: n != variant)
    else:
        candidates = [n for n in PRESETS if family is None or VARIANT_BACKBONE[n] == family]
    diffs = {name: diff_state_dict(PRESETS[name], state_dict) for name in candidates}
    for name in candidates:
        if diffs[name].ok:
            return PRESETS[name]
    closest = min(candidates, key=lambda n: diffs[n].size)
    raise ModelError(
        f"{source} is not a ChangeCLIP checkpoint of a known shape (compared with the closest network, "
        f"{closest!r}: {diffs[closest].describe()}). Is it a checkpoint of another model?"
    )
