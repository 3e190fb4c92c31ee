"""Deterministic "seeded" weights and inputs: the parity kit's rule (shared/parity/README.md).

Every floating-point tensor of the state dict is drawn from NumPy's legacy ``RandomState`` (a
stream frozen by NumPy policy), one stream per key, seeded with
``(seed + crc32(key as UTF-8)) % 2**32``; draws are float64, C order, then cast to float32. The
first matching rule applies:

1. integer tensors (``num_batches_tracked``, ``relative_position_index``) keep their built values;
2. ``*running_var`` -> ``0.5 + random_sample(shape)``;
3. ``*running_mean`` -> ``0.1 * standard_normal(shape)``;
4. 1-D ``*weight`` -> ``1 + 0.1 * standard_normal(shape)``;
5. 1-D ``*bias`` -> ``0.02 * standard_normal(shape)``;
6. >= 2-D ``*weight`` -> ``standard_normal(shape) / sqrt(prod(shape[1:]))``;
7. anything else -> ``0.02 * standard_normal(shape)``.

The official implementation, run with these weights on :func:`seeded_input`, produced the kit's
reference outputs, so our network must reproduce them.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from changeclip.errors import ModelError
from changeclip.model.config import ChangeCLIPConfig
from changeclip.model.swin import relative_position_index


def _rng(key: str, seed: int) -> np.random.RandomState:
    return np.random.RandomState((seed + zlib.crc32(key.encode("utf-8"))) % 2**32)


def seeded_tensor(key: str, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """The float32 value the rule assigns to a floating-point tensor called ``key``.

    Args:
        key: Full state-dict key.
        shape: Tensor shape.
        seed: Global seed (0 for the parity kit).

    Returns:
        float32 CPU tensor of ``shape``.
    """
    rs = _rng(key, seed)
    if key.endswith("running_var"):
        arr = 0.5 + rs.random_sample(shape)
    elif key.endswith("running_mean"):
        arr = 0.1 * rs.standard_normal(shape)
    elif len(shape) == 1 and key.endswith("weight"):
        arr = 1.0 + 0.1 * rs.standard_normal(shape)
    elif len(shape) == 1 and key.endswith("bias"):
        arr = 0.02 * rs.standard_normal(shape)
    elif len(shape) >= 2 and key.endswith("weight"):
        arr = rs.standard_normal(shape) / np.sqrt(float(np.prod(shape[1:])))
    else:
        arr = 0.02 * rs.standard_normal(shape)
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _built_integer(key: str, ref: torch.Tensor, cfg: ChangeCLIPConfig) -> torch.Tensor:
    """Built value of an integer buffer (the network is made on the meta device, without values)."""
    if key.endswith("num_batches_tracked"):
        return torch.zeros(ref.shape, dtype=ref.dtype)
    if key.endswith("relative_position_index"):
        value = relative_position_index(cfg.swin_window).to(ref.dtype)
        if tuple(value.shape) != tuple(ref.shape):
            raise ModelError(f"{key}: built index {tuple(value.shape)} does not match {tuple(ref.shape)}")
        return value
    raise ModelError(f"seeded weights: no rule for the integer tensor {key!r}")


def seeded_state_dict(cfg: ChangeCLIPConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A full state dict for ``cfg`` filled by the parity kit's rule.

    Args:
        cfg: Network configuration (any preset).
        seed: Global seed; 0 reproduces the kit's references.

    Returns:
        Every key of the network's state dict, in state-dict order, on CPU: float32 tensors drawn
        by the rule, integer buffers with their built values.
    """
    from changeclip.model import build_model  # local import: model imports nothing from weights

    skeleton = build_model(cfg, device="meta").state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, ref in skeleton.items():
        if ref.is_floating_point():
            out[key] = seeded_tensor(key, tuple(ref.shape), seed)
        else:
            out[key] = _built_integer(key, ref, cfg)
    return out


def seeded_input(size: int | tuple[int, int], seed: int = 0, batch: int = 1) -> torch.Tensor:
    """The kit's input: ``RandomState(seed + 1).standard_normal((batch, 6, H, W))`` as float32.

    Args:
        size: Side S (square) or (H, W).
        seed: Global seed (0 for the kit).
        batch: Batch size (the kit uses 1).

    Returns:
        (batch, 6, H, W) float32, already "normalised" (fed straight to the network).
    """
    h, w = (size, size) if isinstance(size, int) else size
    arr = np.random.RandomState(seed + 1).standard_normal((batch, 6, h, w)).astype(np.float32)
    return torch.from_numpy(arr)
