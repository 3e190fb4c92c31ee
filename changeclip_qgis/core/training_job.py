"""The parameters of a training job as the plugin builds them (Processing and the dock alike).

:func:`build_train_params` turns the user's choices into :class:`protocol.TrainParams`, checking
the dataset folders and the start weights on the way and filling the plugin's small-first-run
defaults: validation ten times per run, a loss point every fiftieth of the run, the training crop no larger than the dataset's tiles, and
data loading in the training process on machines with two cores or fewer.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from . import protocol
from .errors import ConfigError
from .params import resolve_weights

DEFAULT_CROP = 256
"""The official training crop; smaller dataset tiles lower it to their size."""
VALIDATIONS_PER_RUN = 10
"""Without VAL_EVERY a run validates (and checkpoints) this many times."""


@dataclass
class TrainingChoice:
    """What the user chose for one training run (``None``: the default)."""

    datasets: list[str]
    run_dir: str
    variant: str = "rn50"
    init: str = ""
    iterations: int | None = 500
    epochs: float | None = None
    batch_size: int | None = None
    lr: float | None = None
    freeze: str = "none"
    prompt_mode: str = "none"
    prompt: str = ""
    precision: str = "auto"
    device: str = "auto"
    val_every: int | None = None
    patience: int | None = None
    seed: int = 0
    resume: bool = False


def dataset_tile_size(folder: str) -> int:
    """The tile size of a dataset folder (from its ``dataset.json``).

    Raises:
        ConfigError: not a dataset folder.
    """
    manifest = os.path.join(folder, protocol.DATASET_MANIFEST_NAME)
    try:
        with open(manifest, encoding="utf-8") as fh:
            size = json.load(fh).get("tile_size")
    except FileNotFoundError:
        raise ConfigError(f"DATASETS: {folder} is not a training-data folder (no {protocol.DATASET_MANIFEST_NAME}); "
                          "make one with 'Create training data (ChangeCLIP)'") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"DATASETS: cannot read {manifest}: {exc}") from None
    if not isinstance(size, int) or size < 32:
        raise ConfigError(f"DATASETS: {manifest} has no valid tile_size")
    return size


def start_point(init: str, weights_dir: str) -> str:
    """The trainer's ``init`` for the user's INIT: a weights file (or empty: the settings' weights)
    fine-tunes; ``clip:FILE``, ``clip:openai`` and ``scratch`` are passed on.

    Raises:
        ConfigError: a file that does not exist, or no weights to start from.
    """
    init = init.strip()
    if init in ("scratch", "clip:openai"):
        return init
    if init.startswith("clip:"):
        path = os.path.abspath(os.path.expanduser(init[5:]))
        if not os.path.isfile(path):
            raise ConfigError(f"INIT: CLIP file {path} does not exist")
        return f"clip:{path}"
    if init.startswith("weights:"):
        init = init[len("weights:"):]
    try:
        path = resolve_weights(init, weights_dir, "changeclip")
    except ConfigError as exc:
        raise ConfigError(f"INIT: {exc}; or start from 'scratch' / 'clip:openai'") from None
    return f"weights:{path}"


def build_train_params(choice: TrainingChoice, weights_dir: str = "", tile_size: int | None = None
                       ) -> protocol.TrainParams:
    """The job parameters of ``choice``, checked.

    Args:
        choice: the user's choices.
        weights_dir: the settings' weights folder (the default start weights).
        tile_size: the datasets' tile size when they do not exist yet (else read from them).

    Raises:
        ConfigError: no dataset, a folder that is not a dataset, missing start weights, or an
            option the protocol refuses (the message names it).
    """
    datasets = [os.path.abspath(os.path.expanduser(d)) for d in choice.datasets if d]
    if not datasets:
        raise ConfigError("DATASETS: give at least one training-data folder")
    sizes = [tile_size] if tile_size else [dataset_tile_size(d) for d in datasets]
    crop = min([DEFAULT_CROP, *sizes])
    if not choice.run_dir:
        raise ConfigError("OUTPUT: give a run folder")
    val_every = choice.val_every
    if val_every is None and choice.iterations:
        val_every = max(1, choice.iterations // VALIDATIONS_PER_RUN)
    workers = 0 if (os.cpu_count() or 1) <= 2 else 2
    log_every = max(1, min(10, (choice.iterations or 500) // 50))  # about 50 points on the loss curve
    try:
        params = protocol.TrainParams(
            datasets=datasets, run_dir=os.path.abspath(os.path.expanduser(choice.run_dir)), variant=choice.variant,
            init=start_point(choice.init, weights_dir), iters=choice.iterations if not choice.epochs else None,
            epochs=choice.epochs or None, batch_size=choice.batch_size, lr=choice.lr, crop=crop,
            precision=choice.precision, device=choice.device, prompt_mode=choice.prompt_mode, prompt=choice.prompt,
            freeze=choice.freeze, val_every=val_every, patience=choice.patience, seed=choice.seed,
            workers=workers, log_every=log_every, resume=choice.resume, overwrite=not choice.resume)
        params.validate()
    except protocol.ParamError as exc:
        raise ConfigError(f"{exc.field.upper()}: {exc.message}") from None
    return params
