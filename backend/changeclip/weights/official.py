"""Official ChangeCLIP checkpoints (mmengine ``.pth``, e.g. ``best_mIoU_iter_17000.pth``).

The released files (Baidu Netdisk only, spec §3.2) are ``torch.save`` pickles of
``{"meta": {..., "cfg": <config text>}, "state_dict": OrderedDict, "message_hub": ...}``.
They are read with :mod:`changeclip.weights.safe_unpickle` (nothing in them is executed),
``module.`` prefixes are stripped, and the network variant is detected from the keys and
shapes, cross-checked with the embedded config text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from changeclip.errors import ModelError
from changeclip.model.config import ChangeCLIPConfig
from changeclip.weights.checks import match_preset
from changeclip.weights.safe_unpickle import Placeholder, safe_torch_load

log = logging.getLogger(__name__)

_CFG_BACKBONES = {"CLIPResNetWithAttention": "rn50", "CLIPVisionTransformer": "vit"}
_META_SCALARS = ("epoch", "iter", "seed", "experiment_name", "time", "mmengine_version", "mmengine", "config")


def backbone_from_cfg_text(text: str) -> str | None:
    """``rn50``/``vit`` from an mmengine config text (its ``backbone=dict(type=...)``), else None."""
    found = {fam for name, fam in _CFG_BACKBONES.items() if re.search(rf"type\s*=\s*['\"]{name}['\"]", text)}
    return found.pop() if len(found) == 1 else None


def _plain(value: Any, depth: int = 0) -> Any:
    """A JSON-compatible copy of a meta value (placeholders and arrays summarised)."""
    if depth > 4:
        return str(value)[:200]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, depth + 1) for v in value[:64]]
    if isinstance(value, Placeholder):
        return f"<{value.pickled_name}>"
    if isinstance(value, torch.Tensor | np.ndarray):
        return f"<array {tuple(value.shape)}>"
    return str(value)[:200]


def summarise_meta(meta: Any) -> dict[str, Any]:
    """The useful, JSON-compatible part of an mmengine ``meta`` dict.

    Keeps epoch/iter/seed/experiment name/time/mmengine version, the dataset classes and the
    full config text (``cfg``) and, when found in it, the training ``data_root``.
    """
    if not isinstance(meta, Mapping):
        return {}
    out: dict[str, Any] = {k: _plain(meta[k]) for k in _META_SCALARS if k in meta}
    ds = meta.get("dataset_meta")
    if isinstance(ds, Mapping) and "classes" in ds:
        out["classes"] = _plain(ds["classes"])
    cfg = meta.get("cfg")
    if isinstance(cfg, str):
        out["cfg"] = cfg
        root = re.search(r"data_root\s*=\s*([^\n]+)", cfg)
        if root:
            out["data_root"] = root.group(1).strip()[:200]
    return out


def split_checkpoint(obj: Any, source: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """State dict (``module.`` stripped, tensors only) and summarised meta of a loaded checkpoint.

    Args:
        obj: What :func:`safe_torch_load` returned: an mmengine container or a bare state dict.
        source: File name for messages.

    Raises:
        ModelError: no state dict in it.
    """
    meta: Any = {}
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        meta = obj.get("meta") or {}
        raw = obj["state_dict"]
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        raw = obj
    else:
        keys = list(obj)[:8] if isinstance(obj, Mapping) else []
        raise ModelError(f"{source} holds no ChangeCLIP state dict (found {type(obj).__name__} with keys {keys})")
    state: dict[str, torch.Tensor] = {}
    skipped = []
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            skipped.append(key)
            continue
        state[key[len("module."):] if key.startswith("module.") else key] = value
    if skipped:
        log.warning("%s: ignored %d non-tensor state entries (%s)", source, len(skipped), ", ".join(skipped[:5]))
    return state, summarise_meta(meta)


def _state_dict_of(obj: Any) -> Any:
    """The tensors :func:`split_checkpoint` will keep (copied out of the mapped file by the loader)."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        return obj["state_dict"]
    return obj


def load_official(path: str | Path, variant: str = "auto") -> tuple[ChangeCLIPConfig, dict[str, torch.Tensor],
                                                                      dict[str, Any]]:
    """Load an official mmengine checkpoint safely and identify its network.

    Args:
        path: The ``.pth`` file.
        variant: ``auto``, ``rn50``, ``vit-b-16`` (or a TINY preset name).

    Returns:
        ``(cfg, state_dict, meta)``: the matching preset, the state dict (official key names,
        tensors on the CPU as stored) and the summarised meta (``cfg`` text included).

    Raises:
        ModelError: unreadable/corrupt file, forbidden pickle content, another model's
            checkpoint, or a variant mismatch.
    """
    source = Path(path).name
    state, meta = split_checkpoint(safe_torch_load(path, own=_state_dict_of), source)
    hint = backbone_from_cfg_text(meta.get("cfg", "")) if meta.get("cfg") else None
    cfg = match_preset(state, variant, source, hint_backbone=hint)
    log.info("%s: official checkpoint, %s network, %d tensors", source, cfg.name, len(state))
    return cfg, state, meta
