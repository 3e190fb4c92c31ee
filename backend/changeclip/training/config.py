"""What a training run does: :class:`TrainConfig` and the official recipe per variant.

The defaults reproduce the official ChangeCLIP recipe (spec §2.2, configs ``changeclip_levir``
and ``changeclip_levir_vit``): AdamW (0.9, 0.999), weight decay 0.01 except on norms and
positional tables, learning rate 1e-4, a linear warm-up over 1500 iterations from a factor of
1e-6, then a linear (poly power 1) decay that reaches 0 at the end of the run, cross-entropy
with 255 ignored, 256 px crops, 20 (RN50) / 12 (ViT) tiles per GPU on 2 GPUs, i.e. an
effective batch of 40 / 24, 30k / 40k iterations, validation every 1000 iterations.

A config is the protocol's :class:`~changeclip.protocol.TrainParams` (plain data, JSON-able via
``to_dict``); :func:`resolve_schedule` fills the ``None`` fields from :data:`RECIPES` and the data,
and :func:`check_options` checks every value.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from changeclip.errors import InputError
from changeclip.protocol import (
    FREEZE_CHOICES,
    SELECT_CHOICES,
    TRAIN_LOSSES,
    TRAIN_PRECISIONS,
    TRAIN_PROMPT_MODES,
    TRAIN_VARIANTS,
    TrainParams,
)

VARIANTS = TRAIN_VARIANTS
PRECISIONS = TRAIN_PRECISIONS
PROMPT_MODES = TRAIN_PROMPT_MODES
LOSSES = TRAIN_LOSSES
SELECT = SELECT_CHOICES
SIZE_MULTIPLE = 32


@dataclass(frozen=True)
class Recipe:
    """The official per-variant defaults (spec §2.2; TINY variants are for tests and demos).

    Attributes:
        lr: base learning rate.
        batch_size: tiles per GPU (per process).
        effective_batch: tiles per optimizer step in the official runs (2 GPUs x batch).
        iters: optimizer steps (= the iteration the poly decay ends at).
        warmup: linear warm-up iterations.
        val_every: validation interval in iterations.
        source: where the numbers come from.
    """

    lr: float
    batch_size: int
    effective_batch: int
    iters: int
    warmup: int
    val_every: int
    source: str


RECIPES: dict[str, Recipe] = {
    "rn50": Recipe(1e-4, 20, 40, 30_000, 1500, 1000, "official configs/0cd_ce/changeclip_levir.py (release)"),
    "vit-b-16": Recipe(1e-4, 12, 24, 40_000, 1500, 1000,
                       "official configs/0cd_ce/changeclip_levir_vit.py (release)"),
    "tiny-rn50": Recipe(1e-4, 4, 4, 1000, 100, 100, "TINY test network: not an official recipe"),
    "tiny-vit": Recipe(1e-4, 4, 4, 1000, 100, 100, "TINY test network: not an official recipe"),
}
"""Per-variant defaults; the two TINY networks exist for tests and demos only."""

WEIGHT_DECAY = 0.01
BETAS = (0.9, 0.999)
WARMUP_START_FACTOR = 1e-6
NO_DECAY_KEYS = ("norm", "relative_position_bias_table", "absolute_pos_embed")
"""Parameter names containing one of these get no weight decay (official ``paramwise_cfg``).
CLIP's ``ln_*`` and the ResNet ``bn*`` parameters do not match and are decayed, as officially."""


TrainConfig = TrainParams
"""Every option of one training run: the ``train`` job's :class:`~changeclip.protocol.TrainParams`,
one field per option of ``changeclip train`` (the command line, a server job and the plugin build the
same object). ``None`` means "the default of the recipe or the data" and is filled by
:func:`resolve_schedule`; :func:`check_options` checks it with the command line's wording."""


def _positive(value: float | None, what: str, integer: bool = False) -> None:
    if value is None:
        return
    if integer and (not isinstance(value, int) or isinstance(value, bool)):
        raise InputError(f"{what} must be a whole number, got {value!r}")
    if not math.isfinite(float(value)) or value <= 0:
        raise InputError(f"{what} must be positive, got {value!r}")


def check_options(cfg: TrainConfig) -> None:
    """Check every value that needs no data (choices, ranges, combinations).

    Raises:
        InputError: the first bad value, named with the option that sets it.
    """
    if cfg.variant not in VARIANTS:
        raise InputError(f"--variant must be one of {', '.join(VARIANTS)}, got {cfg.variant!r}")
    if not cfg.datasets:
        raise InputError("give at least one DATASET_DIR (made by 'changeclip dataset')")
    if cfg.iters is not None and cfg.epochs is not None:
        raise InputError("give --iters or --epochs, not both")
    _positive(cfg.iters, "--iters", integer=True)
    _positive(cfg.epochs, "--epochs")
    _positive(cfg.batch_size, "--batch-size", integer=True)
    _positive(cfg.accumulate, "--accumulate", integer=True)
    _positive(cfg.lr, "--lr")
    _positive(cfg.val_every, "--val-every", integer=True)
    _positive(cfg.patience, "--patience", integer=True)
    _positive(cfg.log_every, "log interval", integer=True)
    _positive(cfg.encoder_lr_mult, "--encoder-lr-mult")
    if cfg.warmup is not None and (not isinstance(cfg.warmup, int) or cfg.warmup < 0):
        raise InputError(f"--warmup must be a whole number >= 0, got {cfg.warmup!r}")
    if not math.isfinite(cfg.weight_decay) or cfg.weight_decay < 0:
        raise InputError(f"--weight-decay must be >= 0, got {cfg.weight_decay!r}")
    if cfg.crop <= 0 or cfg.crop % SIZE_MULTIPLE:
        raise InputError(f"--crop must be a positive multiple of {SIZE_MULTIPLE} px (e.g. 256), got {cfg.crop}")
    if cfg.precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    if cfg.prompt_mode not in PROMPT_MODES:
        raise InputError(f"--prompt-mode must be one of {', '.join(PROMPT_MODES)}, got {cfg.prompt_mode!r}")
    words = " ".join((cfg.prompt or "").split())
    if cfg.prompt_mode == "none" and words:
        raise InputError("--prompt was given but --prompt-mode is 'none'; use --prompt-mode words or auto")
    if cfg.prompt_mode == "words" and not words:
        raise InputError("--prompt-mode words needs --prompt 'WORDS', e.g. --prompt 'building, road'")
    if cfg.prompt_mode == "auto" and not cfg.tagger_weights:
        raise InputError("--prompt-mode auto needs the CLIP tagger: pass --tagger-weights FILE (OpenAI CLIP "
                         "ViT-B/16), or use --prompt-mode none or words")
    if cfg.freeze not in FREEZE_CHOICES:
        raise InputError(f"--freeze must be one of {', '.join(FREEZE_CHOICES)}, got {cfg.freeze!r}")
    if cfg.loss not in LOSSES:
        raise InputError(f"--loss must be one of {', '.join(LOSSES)}, got {cfg.loss!r}")
    if cfg.class_weights is not None:
        cw = cfg.class_weights
        if len(cw) != 2 or not all(math.isfinite(w) and w > 0 for w in cw):
            raise InputError(f"--class-weights needs two positive numbers (no change, change), e.g. 1,5; got {cw!r}")
    if cfg.select not in SELECT:
        raise InputError(f"--select must be f1 or iou, got {cfg.select!r}")
    if not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise InputError(f"--seed must be a whole number >= 0, got {cfg.seed!r}")
    if not isinstance(cfg.workers, int) or cfg.workers < 0:
        raise InputError(f"--workers must be a whole number >= 0, got {cfg.workers!r}")
    if cfg.resume and cfg.overwrite:
        raise InputError("--resume continues RUN_DIR and --overwrite replaces it: give one of them")
    if not cfg.init or not (cfg.init == "scratch" or cfg.init.startswith(("clip:", "weights:"))):
        raise InputError(f"--init must be clip:FILE, clip:openai, weights:FILE or scratch, got {cfg.init!r}")
    if cfg.init in ("clip:", "weights:"):
        raise InputError(f"--init {cfg.init} needs a file name after the colon, e.g. {cfg.init}model.safetensors")


@dataclass(frozen=True)
class Schedule:
    """The numbers a run actually uses (config + recipe + data), recorded in config.json.

    Attributes:
        iters: optimizer steps.
        batch_size: tiles per process per micro-batch.
        accumulate: micro-batches per optimizer step and process.
        world_size: processes (GPUs).
        global_batch: tiles per optimizer step (batch_size x accumulate x world_size).
        lr: base learning rate.
        warmup: warm-up iterations.
        val_every: validation interval.
        train_tiles: tiles in the training split(s).
        epochs: passes over the training tiles that ``iters`` makes.
    """

    iters: int
    batch_size: int
    accumulate: int
    world_size: int
    global_batch: int
    lr: float
    warmup: int
    val_every: int
    train_tiles: int
    epochs: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able copy."""
        return dataclasses.asdict(self)


def resolve_schedule(cfg: TrainConfig, train_tiles: int, world_size: int = 1) -> Schedule:
    """Fill the recipe defaults and the data-dependent numbers.

    Defaults: batch size and learning rate of the recipe; accumulation such that the effective
    batch is the official one (40 RN50 / 24 ViT) given the batch size and number of processes;
    ``--epochs E`` becomes ``ceil(E x tiles / global batch)`` iterations; the warm-up is the
    official 1500 iterations but at most a tenth of a shorter run (a 1500-iteration warm-up in a
    1000-iteration run would never reach the learning rate); validation every 1000 iterations but
    at least once per run.

    Raises:
        InputError: a global batch larger than the training set.
    """
    recipe = RECIPES[cfg.variant]
    batch = cfg.batch_size or recipe.batch_size
    accumulate = cfg.accumulate or max(1, math.ceil(recipe.effective_batch / (batch * world_size)))
    global_batch = batch * accumulate * world_size
    if batch * world_size > train_tiles:
        raise InputError(f"--batch-size {batch} x {world_size} process(es) needs {batch * world_size} tiles per "
                         f"step but the training split has only {train_tiles}; lower --batch-size or add data")
    if cfg.epochs is not None:
        iters = max(1, math.ceil(cfg.epochs * train_tiles / global_batch))
    else:
        iters = cfg.iters or recipe.iters
    warmup = cfg.warmup if cfg.warmup is not None else min(recipe.warmup, iters // 10)
    if warmup >= iters:
        raise InputError(f"--warmup {warmup} must be shorter than the run ({iters} iterations)")
    val_every = min(cfg.val_every or recipe.val_every, iters)
    return Schedule(iters=iters, batch_size=batch, accumulate=accumulate, world_size=world_size,
                    global_batch=global_batch, lr=cfg.lr or recipe.lr, warmup=warmup, val_every=val_every,
                    train_tiles=train_tiles, epochs=iters * global_batch / train_tiles)
