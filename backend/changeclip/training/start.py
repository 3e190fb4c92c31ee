"""Where a run's network starts (``--init``).

* ``weights:FILE``: any ChangeCLIP weights :func:`changeclip.weights.load_weights` reads (native
  ``.safetensors`` or the authors' ``.pth``), checked against ``--variant``: fine-tuning, the
  recommended start.
* ``clip:FILE``: OpenAI CLIP weights (``RN50.pt``/``ViT-B-16.pt`` or an open_clip state dict)
  in the image and text towers, as the official code initialises (spec §3.1; the code of
  ``changeclip weights from-clip``); the other parts start from the seeded initialisation.
* ``clip:openai``: the same from open_clip's ``pretrained="openai"`` download; refused at once
  when the machine is offline (``HF_HUB_OFFLINE`` set, or the hub unreachable).
* ``scratch``: the network's own seeded random initialisation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from changeclip.errors import ModelError
from changeclip.model import build_model
from changeclip.model.config import PRESETS, ChangeCLIPConfig

log = logging.getLogger(__name__)

OPENAI_CLIP_NAMES = {"rn50": "RN50", "vit-b-16": "ViT-B-16"}


@dataclass
class StartWeights:
    """The network a run starts from.

    Attributes:
        cfg: network configuration of ``--variant``.
        state_dict: its tensors (official key names, CPU).
        description: what ``--init`` loaded, for config.json and the weights metadata.
    """

    cfg: ChangeCLIPConfig
    state_dict: dict[str, torch.Tensor]
    description: dict[str, Any] = field(default_factory=dict)


def seeded_init(cfg: ChangeCLIPConfig, seed: int) -> dict[str, torch.Tensor]:
    """The network's random initialisation under ``torch.manual_seed(seed)`` (global RNG restored)."""
    saved = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return {k: v.detach().clone() for k, v in build_model(cfg).state_dict().items()}
    finally:
        torch.random.set_rng_state(saved)


def _openai_clip_state(variant: str) -> dict[str, torch.Tensor]:
    from changeclip.model.tagger import _hub_unreachable, _offline

    name = OPENAI_CLIP_NAMES.get(variant)
    if name is None:
        raise ModelError(f"--init clip:openai exists for rn50 and vit-b-16 only (OpenAI released no CLIP of the "
                         f"{variant} size); use --init scratch or weights:FILE")
    advice = (f"download OpenAI's {name}.pt on a connected machine and pass --init clip:FILE, or fine-tune "
              "existing ChangeCLIP weights with --init weights:FILE")
    if _offline():
        raise ModelError(f"--init clip:openai needs to download CLIP {name} but downloads are disabled "
                         f"(HF_HUB_OFFLINE is set); {advice}")
    why = _hub_unreachable()
    if why is not None:
        raise ModelError(f"--init clip:openai cannot download CLIP {name} ({why}); {advice}")
    import open_clip

    try:
        model = open_clip.create_model(name, pretrained="openai")
    except Exception as exc:  # network and hub failures of every kind
        raise ModelError(f"--init clip:openai: downloading CLIP {name} failed ({exc}); {advice}") from exc
    return {k: v.detach().float() for k, v in model.state_dict().items()}


def check_start(init: str, variant: str) -> None:
    """Cheap checks of ``--init`` before any work: the file exists.

    Raises:
        ModelError: a missing file.
    """
    kind, _, value = init.partition(":")
    if kind in ("clip", "weights") and value != "openai":
        path = Path(value).expanduser()
        if not path.is_file():
            raise ModelError(f"--init {init}: {path} does not exist or is not a file")


def load_start(init: str, variant: str, seed: int) -> StartWeights:
    """The state dict ``--init`` means for ``--variant``.

    Raises:
        ModelError: missing/unreadable file, weights of another variant (named), an offline
            ``clip:openai``.
    """
    cfg = PRESETS[variant]
    kind, _, value = init.partition(":")
    if init == "scratch":
        return StartWeights(cfg, seeded_init(cfg, seed), {"init": "scratch", "seed": seed})
    if kind == "weights":
        from changeclip.weights import is_random, load_weights
        from changeclip.weights.checks import require_variant

        loaded = load_weights(value, variant)
        require_variant(loaded.cfg, variant, Path(value).name)
        if loaded.cfg != cfg:
            raise ModelError(f"{Path(value).name} holds a {loaded.cfg.name} network but --variant is {variant}; "
                             f"use --variant {loaded.cfg.name}")
        from changeclip.inference.predictor import _fill_recomputable

        state = _fill_recomputable(dict(loaded.state_dict), cfg)
        return StartWeights(cfg, state, {"init": "weights", "file": str(Path(value).resolve()),
                                         "sha256": loaded.sha256, "format": loaded.source_format,
                                         "random": is_random(loaded.meta)})
    if kind == "clip":
        from changeclip.weights.clip_init import changeclip_state_from_clip

        source: Any = _openai_clip_state(variant) if value == "openai" else value
        _, state, counts = changeclip_state_from_clip(source, cfg, seed=seed)
        desc = {"init": "clip", "file": "open_clip:openai" if value == "openai" else str(Path(value).resolve()),
                "counts": counts, "seed": seed}
        return StartWeights(cfg, state, desc)
    raise ModelError(f"--init must be clip:FILE, clip:openai, weights:FILE or scratch, got {init!r}")
