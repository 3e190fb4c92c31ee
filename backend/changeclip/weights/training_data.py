"""What a weights file says about the imagery its network was trained on, and the scale check.

A change-detection network learns objects at the ground sampling distance (GSD, metres per
pixel) of its training set: the released ChangeCLIP checkpoints saw LEVIR-CD, LEVIR-CD+ and
SYSU-CD at 0.5 m and WHU-CD at 0.3 m. Run on 10 m imagery, a 0.5 m building model sees objects
20x smaller than anything it learned, and its map is unreliable without any error being raised.
This module finds the training GSD of a weights file and words the warning the pipeline gives
when a scene's pixels are far from it.

Where the training GSD comes from, first match wins:

1. native weights metadata ``train_gsd_m`` (and ``train_dataset``), written by
   ``changeclip weights convert --train-gsd M [--train-dataset NAME]`` or inferred at conversion;
2. an official checkpoint's embedded config text: its ``data_root`` names the dataset folder
   (``LEVIR-CD/cut_data``, ``WHUCD/cut_data`` ...), looked up in :data:`KNOWN_DATASETS`.

CDD (season-varying, 0.03-1 m) has no single GSD, so it names the dataset but gives no check.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from changeclip.errors import InputError

SCALE_WARNING_RATIO = 2.0
"""A scene whose pixels are this many times coarser or finer than the training GSD gets a warning."""
MAX_UPSAMPLING_ADVISED = 4.0
"""Up to this factor the warning suggests upsampling a coarse scene; beyond it only other weights help."""


@dataclass(frozen=True)
class KnownDataset:
    """A public training set: its name, GSD (None when it varies) and ``data_root`` folder pattern."""

    name: str
    gsd_m: float | None
    folder_pattern: str


KNOWN_DATASETS: tuple[KnownDataset, ...] = (
    # Order matters: LEVIR-CD+ folders also contain "LEVIR".
    KnownDataset("LEVIR-CD+", 0.5, r"LEVIR[-_]?CD[-_]?(PLUS|\+)"),
    KnownDataset("LEVIR-CD", 0.5, r"LEVIR[-_]?CD"),
    KnownDataset("WHU-CD", 0.3, r"WHU[-_]?CD"),
    KnownDataset("SYSU-CD", 0.5, r"SYSU[-_]?CD"),
    KnownDataset("CDD", None, r"ChangeDetectionDataset|\bCDD\b"),
)
"""The datasets of the official configurations (spec §2.2 and §4.2) with their public GSDs."""


@dataclass(frozen=True)
class TrainingData:
    """What is known of a network's training imagery.

    Attributes:
        dataset: Dataset name (``LEVIR-CD`` ...) or None when only the GSD is known.
        gsd_m: Ground sampling distance in metres per pixel, or None when unknown or varying.
        source: Where it was read: ``"weights metadata"`` or ``"official config data_root"``.
    """

    dataset: str | None
    gsd_m: float | None
    source: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``summary.json`` model description, ``weights info``)."""
        return {"dataset": self.dataset, "gsd_m": self.gsd_m, "source": self.source}

    def describe(self) -> str:
        """Human wording, e.g. ``LEVIR-CD at 0.5 m/px``."""
        gsd = f"{self.gsd_m:g} m/px" if self.gsd_m is not None else "an unknown or varying GSD"
        return f"{self.dataset} at {gsd}" if self.dataset else gsd


def known_dataset(name: str) -> KnownDataset | None:
    """The known dataset called ``name`` (case-insensitive, e.g. ``levir-cd``), or None."""
    wanted = name.strip().lower()
    return next((k for k in KNOWN_DATASETS if k.name.lower() == wanted), None)


def dataset_from_data_root(data_root: str) -> KnownDataset | None:
    """The known dataset a config's ``data_root`` value points at, or None."""
    for known in KNOWN_DATASETS:
        if re.search(known.folder_pattern, data_root, flags=re.IGNORECASE):
            return known
    return None


def check_gsd(value: Any, what: str = "training GSD") -> float:
    """``value`` as a positive, finite number of metres per pixel.

    Raises:
        InputError: not a number, not positive or not finite.
    """
    try:
        gsd = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number of metres per pixel, e.g. 0.5 (got {value!r})") from None
    if not math.isfinite(gsd) or gsd <= 0:
        raise InputError(f"{what} must be a positive number of metres per pixel, e.g. 0.5 (got {value!r})")
    return gsd


def training_data(meta: Mapping[str, Any]) -> TrainingData | None:
    """The training imagery recorded in (or inferable from) a weights file's metadata.

    Args:
        meta: ``LoadedWeights.meta``: native files' free metadata, or an official checkpoint's
            summarised meta (with ``data_root`` when its config text has one).

    Returns:
        None when nothing is known (seeded test weights, CLIP initialisations, bare state dicts).
    """
    if meta.get("train_gsd_m") is not None or meta.get("train_dataset"):
        gsd = meta.get("train_gsd_m")
        try:
            gsd_m = check_gsd(gsd) if gsd is not None else None
        except InputError:
            gsd_m = None  # a hand-edited file with a bad value: treated as unknown, never as 0
        dataset = meta.get("train_dataset")
        return TrainingData(str(dataset) if dataset else None, gsd_m, "weights metadata")
    root = meta.get("data_root")
    if isinstance(root, str):
        known = dataset_from_data_root(root)
        if known is not None:
            return TrainingData(known.name, known.gsd_m, "official config data_root")
    return None


def scale_warning(scene_gsd_m: float, training: TrainingData | None, grid_resolution: float,
                  ratio: float = SCALE_WARNING_RATIO, crs: str | None = None) -> str | None:
    """A warning when the scene's pixels are ``ratio`` times (or more) coarser or finer than the training GSD.

    Args:
        scene_gsd_m: Ground size of an output-grid pixel in metres (at the processed area's centre).
        training: What the weights say of their training data (None: no check).
        grid_resolution: The output grid's pixel size in its own CRS units (for the suggested
            custom resolution, which is given in those units).
        ratio: The factor from which a warning is given.
        crs: The output grid's CRS as ``EPSG:NNNN`` for the suggested custom grid (None: the
            text says "its CRS").

    Returns:
        The warning text, or None when the scales match or the training GSD is unknown.
    """
    if training is None or training.gsd_m is None or scene_gsd_m <= 0:
        return None
    factor = scene_gsd_m / training.gsd_m
    if 1 / ratio < factor < ratio:
        return None
    suggested = f"{grid_resolution / factor:.2g}"  # two digits: a round number, ample for a scale match
    custom = (f"put the outputs on a custom grid of about {suggested} CRS units per pixel (command line: "
              f"--grid custom --target-crs {crs or 'CRS'} --resolution {suggested}; QGIS: Output grid 'custom', "
              f"Target CRS {crs or 'of the rasters'}, Resolution {suggested})")
    if factor >= ratio:
        advice = f"use weights trained near {scene_gsd_m:.3g} m/px"
        if factor <= MAX_UPSAMPLING_ADVISED:
            advice += f", or {custom}: upsampling adds no detail but shows objects at the learned size"
        seen, effect = f"{factor:.1f}x coarser than", "objects look smaller than anything the network learned"
    else:
        advice = f"{custom}, or use weights trained near {scene_gsd_m:.3g} m/px"
        seen, effect = f"{1 / factor:.1f}x finer than", "objects look larger than anything the network learned"
    return (f"the output grid's pixels are about {scene_gsd_m:.3g} m on the ground, {seen} the "
            f"{training.describe()} the weights were trained on: {effect}, so expect missed and false "
            f"changes; {advice}")
