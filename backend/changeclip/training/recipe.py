"""The optimisation recipe: parameter groups, AdamW, the learning-rate schedule and the loss.

* Parameter groups (spec §2.2): no weight decay for names containing ``norm``,
  ``relative_position_bias_table`` or ``absolute_pos_embed``; everything else decays. The
  image encoder (``backbone.*``) may get a smaller learning rate (``--encoder-lr-mult``, e.g.
  0.1 as open-cd's BAN recipe does for a CLIP backbone); frozen parameters get no group.
* Schedule: linear warm-up from a factor of 1e-6 to 1 over ``warmup`` iterations, then a
  linear decay (mmengine PolyLR, power 1, eta_min 0) that reaches 0 exactly after the last
  iteration. The factor is a pure function of the iteration, so a resumed run continues the
  same curve (the official ``open`` branch ended the decay at 20k whatever the run length:
  spec §2.2 "Important history").
* Loss: cross-entropy with 255 ignored (official), optional class weights, optional + soft
  Dice of the change class over the labelled pixels.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from changeclip.training.config import BETAS, NO_DECAY_KEYS, WARMUP_START_FACTOR

IGNORE_INDEX = 255

FREEZE_PREFIXES = {"none": (), "backbone": ("backbone.",), "text": ("text_encoder.",),
                   "backbone+text": ("backbone.", "text_encoder.")}
"""``--freeze`` choice -> parameter-name prefixes that are not trained."""


def frozen_prefixes(freeze: str) -> tuple[str, ...]:
    """The parameter-name prefixes ``--freeze`` leaves untrained."""
    return FREEZE_PREFIXES[freeze]


def apply_freeze(model: nn.Module, freeze: str) -> list[str]:
    """Set ``requires_grad`` False on the frozen parts; returns the frozen module names.

    Frozen modules are also kept in eval mode by :func:`set_train_mode` (BatchNorm statistics and
    stochastic depth stay fixed, as "frozen" means for torchgeo's ``freeze_backbone``).
    """
    prefixes = frozen_prefixes(freeze)
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(prefixes))
    return [p.rstrip(".") for p in prefixes]


def set_train_mode(model: nn.Module, freeze: str) -> None:
    """Train mode for the trained parts, eval mode for the frozen ones."""
    model.train()
    for prefix in frozen_prefixes(freeze):
        sub = model.get_submodule(prefix.rstrip("."))
        sub.eval()


def param_groups(model: nn.Module, lr: float, weight_decay: float,
                 encoder_lr_mult: float = 1.0) -> list[dict[str, Any]]:
    """AdamW parameter groups of the trainable parameters.

    Returns:
        Up to four groups (decay / no decay x encoder / rest); each carries ``name`` and
        ``initial_lr`` (the base learning rate the schedule multiplies).
    """
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = any(key in name for key in NO_DECAY_KEYS)
        encoder = name.startswith("backbone.")
        buckets.setdefault((encoder, no_decay), []).append(p)
    groups = []
    for (encoder, no_decay), params in sorted(buckets.items()):
        group_lr = lr * (encoder_lr_mult if encoder else 1.0)
        groups.append({"params": params, "lr": group_lr, "initial_lr": group_lr,
                       "weight_decay": 0.0 if no_decay else weight_decay,
                       "name": f"{'encoder' if encoder else 'rest'}{'/no-decay' if no_decay else ''}"})
    return groups


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, encoder_lr_mult: float = 1.0,
                    fused: bool = False) -> torch.optim.AdamW:
    """AdamW (betas 0.9, 0.999) over :func:`param_groups`."""
    kwargs: dict[str, Any] = {"fused": True} if fused else {}
    return torch.optim.AdamW(param_groups(model, lr, weight_decay, encoder_lr_mult), lr=lr, betas=BETAS,
                             weight_decay=weight_decay, **kwargs)


def lr_factor(step: int, iters: int, warmup: int) -> float:
    """Multiplier of the base learning rate for optimizer step ``step`` (0-based) of ``iters``.

    Warm-up (step < warmup): ``1e-6 + (1 - 1e-6) * step / warmup`` (mmengine LinearLR).
    Decay (step >= warmup): ``1 - (step - warmup) / (iters - warmup)`` (PolyLR, power 1,
    eta_min 0), which would be 0 at ``step == iters``, one step after the last.
    """
    if warmup > 0 and step < warmup:
        return WARMUP_START_FACTOR + (1.0 - WARMUP_START_FACTOR) * step / warmup
    return max(0.0, 1.0 - (step - warmup) / max(1, iters - warmup))


class WarmupPolySchedule:
    """Sets every group's ``lr`` to ``initial_lr * lr_factor(step)``; state = the step.

    Args:
        optimizer: optimizer whose groups carry ``initial_lr``.
        iters: total optimizer steps.
        warmup: warm-up steps.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, iters: int, warmup: int) -> None:
        self.optimizer = optimizer
        self.iters = int(iters)
        self.warmup = int(warmup)
        self.step_index = 0

    def apply(self, step: int) -> float:
        """Set the learning rates for ``step``; returns the factor."""
        self.step_index = int(step)
        factor = lr_factor(step, self.iters, self.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return factor

    def state_dict(self) -> dict[str, int]:
        """What a resume needs (the schedule itself is a pure function of the step)."""
        return {"step": self.step_index, "iters": self.iters, "warmup": self.warmup}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict`."""
        self.step_index = int(state["step"])
        self.iters = int(state["iters"])
        self.warmup = int(state["warmup"])


def dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX,
              eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss of the change class over the labelled pixels of the batch (one global ratio)."""
    valid = target != ignore_index
    prob = logits.float().softmax(dim=1)[:, 1]
    truth = (target == 1) & valid
    p = prob * valid
    inter = (p * truth).sum()
    return 1.0 - (2.0 * inter + eps) / (p.sum() + truth.sum() + eps)


class SegmentationLoss(nn.Module):
    """CE with 255 ignored (+ optional class weights), optionally + Dice of the change class.

    Args:
        kind: ``ce`` or ``ce+dice``.
        class_weights: CE weights of (no change, change), or None.
    """

    def __init__(self, kind: str = "ce", class_weights: Iterable[float] | None = None) -> None:
        super().__init__()
        self.kind = kind
        weight = torch.tensor(list(class_weights), dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss of (B, 2, H, W) logits against (B, H, W) int64 labels (0, 1, 255)."""
        if not bool((target != IGNORE_INDEX).any()):
            # a micro-batch whose pixels are all ignored: zero loss that still touches the graph
            return logits.sum() * 0.0
        loss = F.cross_entropy(logits.float(), target, weight=self.weight, ignore_index=IGNORE_INDEX)
        if self.kind == "ce+dice":
            loss = loss + dice_loss(logits, target)
        return loss
