"""Training and fine-tuning ChangeCLIP (``changeclip train``).

Modules: ``config.py`` (the options and the official recipe per variant), ``data.py`` (dataset
folders, the official joint augmentations, the distributed batch plan), ``recipe.py`` (parameter
groups, AdamW, warm-up + poly schedule, loss), ``prompting.py`` (prompts and cached tags),
``start.py`` (``--init``), ``checkpoint.py`` (the run folder, atomic files, resume),
``distributed.py`` (torchrun + DDP), ``loop.py`` (the trainer, :func:`train`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrainConfig", "TrainResult", "train"]


def __getattr__(name: str) -> Any:
    """Import lazily: ``changeclip --help`` and every other command import this package's
    ``config`` through the CLI, and must not pay for torch (seconds) to do so."""
    if name == "TrainConfig":
        from changeclip.training.config import TrainConfig

        return TrainConfig
    if name in ("TrainResult", "train"):
        from changeclip.training import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'changeclip.training' has no attribute {name!r}")
