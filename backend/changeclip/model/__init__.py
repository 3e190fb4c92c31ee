"""The ChangeCLIP network (plain PyTorch, official state-dict names) and its configurations.

``build_model(cfg)`` gives a randomly initialised network in eval mode;
``build_model_from_state_dict(cfg, state_dict)`` skips the random initialisation (the network is
created on the meta device and the given tensors are assigned), which is much faster for the
full-size variants.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from changeclip.errors import ModelError
from changeclip.model.changeclip import ChangeCLIP, InputSizeError, check_input_size
from changeclip.model.config import IMAGENET_MEAN, IMAGENET_STD, PRESETS, ChangeCLIPConfig, get_preset

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRESETS",
    "ChangeCLIP",
    "ChangeCLIPConfig",
    "InputSizeError",
    "build_model",
    "build_model_from_state_dict",
    "check_input_size",
    "get_preset",
]


def build_model(cfg: ChangeCLIPConfig, device: str | torch.device | None = None) -> ChangeCLIP:
    """Build a ChangeCLIP network with random weights, in eval mode.

    Args:
        cfg: Network configuration (e.g. ``PRESETS["rn50"]``).
        device: Where to create it; ``"meta"`` gives a weightless skeleton (shapes only).

    Returns:
        The network in eval mode (BatchNorm uses running statistics, dropout off).
    """
    if device is None:
        model = ChangeCLIP(cfg)
    else:
        with torch.device(device):
            model = ChangeCLIP(cfg)
    return model.eval()


def build_model_from_state_dict(
    cfg: ChangeCLIPConfig, state_dict: Mapping[str, torch.Tensor], device: str | torch.device = "cpu"
) -> ChangeCLIP:
    """Build the network and load ``state_dict`` strictly, without a random initialisation first.

    Args:
        cfg: Network configuration matching the weights.
        state_dict: Every official key (see ``shared/parity/official_state_dict_keys.txt``).
        device: Device of the returned network.

    Returns:
        The network in eval mode.

    Raises:
        ModelError: missing or unexpected keys, or shape mismatches (the message lists a few).
    """
    model = build_model(cfg, device="meta")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k}: weights {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        raise ModelError(
            f"weights do not fit the {cfg.name!r} ChangeCLIP network: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(wrong)} of another shape (e.g. {wrong[:3]}); pick the matching variant"
        )
    tensors = {}
    for key, ref in expected.items():
        value = state_dict[key]
        dtype = ref.dtype if not ref.is_floating_point() else (value.dtype if value.is_floating_point() else ref.dtype)
        tensors[key] = value.to(device=device, dtype=dtype)
    model.load_state_dict(tensors, strict=True, assign=True)
    leftovers = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftovers:
        raise ModelError(f"internal error: tensors left uninitialised after loading: {leftovers[:5]}")
    return model.eval()
