"""Initialise a ChangeCLIP network from OpenAI/open_clip CLIP weights (training start point).

As the official code does (spec §3.1): the CLIP image tower ``visual.*`` becomes
``backbone.*`` and the text tower (``transformer.*``, ``token_embedding``,
``positional_embedding``, ``text_projection``, ``ln_final``) becomes ``text_encoder.*``.
The stored positional grids are resized bilinearly (align_corners False) to the network's
stored grid: RN50 attention-pool 7x7 -> 16x16, ViT 14x14 -> 16x16 (spec §1.3-3). Keys the
network lacks (``logit_scale``, ...) are ignored; everything else keeps the network's own
initialisation (the ViT fpn adapters, context decoder, fusion, neck, decoder).

Only local files are read (no downloads).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from changeclip.errors import ModelError
from changeclip.model.config import PRESETS, ChangeCLIPConfig
from changeclip.model.tagger import read_clip_state_dict

log = logging.getLogger(__name__)

_TEXT_KEYS = ("token_embedding.", "positional_embedding", "text_projection", "ln_final.", "transformer.")


def resize_pos_embed(table: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize a (1 + g*g, C) positional table to (1 + grid*grid, C), bilinear, class row kept.

    Args:
        table: Positional table, first row the class/global token.
        grid: Target grid side.

    Returns:
        The resized table (same dtype).

    Raises:
        ModelError: the table is not 1 + a square number of rows.
    """
    n = table.shape[0] - 1
    side = round(n ** 0.5)
    if side * side != n:
        raise ModelError(f"positional table with {table.shape[0]} rows is not 1 + a square grid")
    if side == grid:
        return table.clone()
    spatial = table[1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    spatial = F.interpolate(spatial, size=(grid, grid), mode="bilinear", align_corners=False)
    spatial = spatial.permute(0, 2, 3, 1).reshape(grid * grid, -1).to(table.dtype)
    return torch.cat([table[:1], spatial], dim=0)


def clip_backbone(clip_sd: dict[str, torch.Tensor]) -> str:
    """``rn50`` or ``vit``: the image-tower family of a CLIP state dict."""
    return "vit" if "visual.proj" in clip_sd else "rn50"


def changeclip_state_from_clip(clip_path: str | Path | Mapping[str, torch.Tensor], cfg: ChangeCLIPConfig | None = None,
                               seed: int = 0) -> tuple[ChangeCLIPConfig, dict[str, torch.Tensor], dict[str, int]]:
    """A fresh ChangeCLIP state dict whose CLIP towers come from a CLIP checkpoint.

    Args:
        clip_path: OpenAI JIT archive (``RN50.pt``/``ViT-B-16.pt``) or open_clip state dict file, or
            an already loaded CLIP state dict (e.g. ``open_clip.create_model(..., pretrained="openai")``).
        cfg: Target network; default: ``rn50`` for a ResNet CLIP, ``vit-b-16`` for a ViT CLIP.
        seed: torch seed for the parts that keep the network's random initialisation.

    Returns:
        ``(cfg, state_dict, counts)`` with counts ``copied`` (tensors from CLIP), ``resized``
        (positional tables) and ``ignored`` (CLIP keys the network has no use for).

    Raises:
        ModelError: unreadable file, family mismatch or a CLIP tensor of the wrong shape.
    """
    from changeclip.model import build_model

    if isinstance(clip_path, Mapping):
        clip_sd, clip_path = dict(clip_path), "the CLIP state dict"
    else:
        clip_sd = read_clip_state_dict(clip_path)
    family = clip_backbone(clip_sd)
    if cfg is None:
        cfg = PRESETS["rn50" if family == "rn50" else "vit-b-16"]
    if cfg.backbone != family:
        raise ModelError(f"{Path(clip_path).name} is a {family} CLIP but the {cfg.name} network needs a "
                         f"{cfg.backbone} CLIP")
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        state = {k: v.detach().clone() for k, v in build_model(cfg).state_dict().items()}
    finally:
        torch.random.set_rng_state(rng_state)
    counts = {"copied": 0, "resized": 0, "ignored": 0}
    for key, value in clip_sd.items():
        if key.startswith("visual."):
            target = "backbone." + key[len("visual."):]
        elif key.startswith(_TEXT_KEYS):
            target = "text_encoder." + key
        else:
            counts["ignored"] += 1
            continue
        if target not in state:
            counts["ignored"] += 1
            continue
        value = value.float()
        if target in ("backbone.attnpool.positional_embedding", "backbone.positional_embedding"):
            if value.shape != state[target].shape:
                value = resize_pos_embed(value, cfg.pos_grid_size)
                counts["resized"] += 1
        if value.shape != state[target].shape:
            raise ModelError(f"CLIP tensor {key} has shape {tuple(value.shape)} but {target} of the {cfg.name} "
                             f"network is {tuple(state[target].shape)}; is it the right CLIP model?")
        state[target] = value.to(state[target].dtype)
        counts["copied"] += 1
    log.info("CLIP init of %s from %s: %s", cfg.name, Path(clip_path).name, counts)
    return cfg, state, counts
