"""Training and fine-tuning ChangeCLIP (``changeclip train``).

Modules: ``config.py`` (the options and the official recipe per variant), ``data.py`` (dataset
folders, the official joint augmentations, the distributed batch plan), ``recipe.py`` (parameter
groups, AdamW, warm-up + poly schedule, loss), ``prompting.py`` (prompts and cached tags),
``start.py`` (``--init``), ``checkpoint.py`` (the run folder, atomic files, resume),
``distributed.py`` (torchrun + DDP), ``loop.py`` (the trainer, :func:`train`).
"""

from __future__ import annotations

from changeclip.training.config import TrainConfig
from changeclip.training.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
