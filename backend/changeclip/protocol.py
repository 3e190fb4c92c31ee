"""The plugin <-> backend contract, in one place.

This module is the single source of truth for everything the QGIS plugin and the
backend must agree on: the parameters of a detection job (names, types, defaults,
allowed values and their validation), the job states, the progress and result
fields, the server's endpoint paths and the handshake line of ``changeclip serve``.

It is **standard library only** on purpose: the QGIS plugin (which runs inside
QGIS's own Python, without torch or the backend installed) uses the very same file
(``changeclip_qgis/core/protocol.py`` is a link to it, copied into the plugin zip),
and the backend's command line, pipeline and HTTP schemas are built from it.
Bump :data:`PROTOCOL_VERSION` on any incompatible change.

Three kinds of job share the server's queue (:data:`JOB_KINDS`): ``detect``
(:class:`DetectParams`), ``dataset`` (:class:`DatasetParams`, ``changeclip dataset
from-vectors``) and ``train`` (:class:`TrainParams`, ``changeclip train``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

PROTOCOL_VERSION = 3
"""1: detection jobs only. 2: detection's ``min_pixels`` and describe fields. 3: job kinds
``dataset`` and ``train`` (``kind`` in the job body and in :class:`JobInfo`), training fields in
:class:`JobProgress` and the job event log (:data:`PATH_JOB_EVENTS`). A detection body of an
earlier version is still valid, but an older client cannot read version-3 progress, hence the bump."""

JOB_KINDS = ("detect", "dataset", "train")
"""What a job runs: a change detection, a training-data folder, or a training run."""

# --- choices -----------------------------------------------------------------------

ENGINES = ("changeclip", "irmad")
"""``changeclip``: the ChangeCLIP network (needs weights). ``irmad``: iteratively
reweighted multivariate alteration detection, unsupervised, no weights."""

VARIANTS = ("auto", "rn50", "vit-b-16")
"""ChangeCLIP image-encoder variant; ``auto`` detects it from the weights file."""

PROMPT_MODES = ("auto", "none", "words")
"""``auto``: CLIP tagger per tile (faithful to the official model), plus the user's
words if given; ``none``: constant prompts, no tags, no words; ``words``: the user's
words only, no tagger."""

GRIDS = ("before", "after", "custom")
"""Which grid the outputs are on: the *before* raster's, the *after* raster's, or a
``custom`` grid given by ``target_crs`` and ``resolution``."""

DEVICES_HELP = "auto, cpu, cuda or cuda:N"
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
"""``auto``: fp32 on CPU, bf16 autocast on CUDA where supported (else fp16). ``int8``: a
statically quantised graph calibrated on the run's own rasters (CPU runtimes only; never
chosen by ``auto``)."""

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
"""What runs the network: ``auto`` (GPU: torch; CPU: the fastest measured runtime),
``torch`` (PyTorch), ``onnxruntime`` or ``openvino`` (the exported ONNX graph, CPU only)."""

DEFAULT_MIN_POLYGON_PIXELS = 4
"""Change polygons smaller than this many output pixels are dropped by default (a 2x2 block:
single-pixel specks are noise; on the NAIP sample at 5 m this keeps 479 of 1,451 polygons and
96 % of the changed area). The dock, Processing and the CLI share this default; 0 keeps all."""

PROBABILITY_DTYPES = ("uint8", "float32")
"""``uint8``: change probability in percent (0-100, 255 = nodata); ``float32``: 0-1,
nodata -1."""

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled", "lost")
FINAL_JOB_STATES = ("succeeded", "failed", "cancelled", "lost")
"""``lost``: the server stopped (killed, crashed, or a job that would not stop) while the job
was queued or running; its ``error`` says when and what to do. Only a server with a job
journal reports it, for jobs of an earlier run (see ``docs/backend-service.md``)."""

STAGES = ("queued", "preparing", "loading_model", "scaling", "fitting", "calibrating", "tiles",
          "polygons", "describing", "finalising", "done")
"""Pipeline stages reported in progress, in order (``fitting`` is irmad's global fit,
``calibrating`` the int8 calibration on sample tiles, ``describing`` the optional CLIP
description of the polygons)."""

DATASET_STAGES = ("queued", "preparing", "tiles", "done")
"""Stages of a ``dataset`` job (``tiles``: cutting tiles, ``done``/``total`` count them)."""

TRAIN_STAGES = ("queued", "preparing", "training", "validating", "done")
"""Stages of a ``train`` job (``training``: ``done``/``total`` are iterations)."""

TRAIN_VARIANTS = ("rn50", "vit-b-16", "tiny-rn50", "tiny-vit")
"""Networks ``train`` builds; the two ``tiny-*`` ones exist for tests and demos only."""
TRAIN_PROMPT_MODES = ("none", "words", "auto")
FREEZE_CHOICES = ("none", "backbone", "text", "backbone+text")
TRAIN_LOSSES = ("ce", "ce+dice")
SELECT_CHOICES = ("f1", "iou")
TRAIN_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
""":class:`TrainParams` choices (the same as ``changeclip train``'s options)."""

# --- output file names inside the output folder -------------------------------------

MASK_NAME = "change_mask.tif"
PROBABILITY_NAME = "change_probability.tif"
POLYGONS_NAME = "change_polygons.gpkg"
SUMMARY_NAME = "summary.json"
MATCHING_POLYGONS_NAME = "change_polygons_matching.gpkg"
MATCHING_MASK_NAME = "change_mask_matching.tif"
"""With ``keep_matching``: the polygons that match the query, and a change mask of only their pixels."""
DEFAULT_QUERY_THRESHOLD = 0.3

DATASET_MANIFEST_NAME = "dataset.json"
"""The manifest of a training-data folder (``docs/training-data.md``)."""
RUN_BEST_NAME = "best.safetensors"
RUN_LAST_NAME = "last.safetensors"
RUN_STATE_NAME = "state.pt"
RUN_METRICS_NAME = "metrics.jsonl"
RUN_CONFIG_NAME = "config.json"
"""Files of a training run folder: the best and last weights, the resumable state, one JSON
line per log step and validation, and the run's options."""

MASK_CHANGE = 1
MASK_NO_CHANGE = 0
MASK_NODATA = 255

# --- HTTP API -------------------------------------------------------------------------

API_PREFIX = "/v1"
PATH_LIVE = "/livez"                       # GET, no token: {"status": "ok"}
PATH_STATUS = API_PREFIX + "/status"       # GET: version, devices, models, queue
PATH_JOBS = API_PREFIX + "/jobs"           # GET: list; POST: submit DetectParams -> JobInfo
PATH_JOB = API_PREFIX + "/jobs/{job_id}"   # GET: JobInfo
PATH_JOB_CANCEL = API_PREFIX + "/jobs/{job_id}/cancel"   # POST
PATH_JOB_RESULT = API_PREFIX + "/jobs/{job_id}/result"   # GET: result (409 until succeeded)
PATH_JOB_EVENTS = API_PREFIX + "/jobs/{job_id}/events"   # GET ?since=N: the job's events after N
PATH_SHUTDOWN = API_PREFIX + "/shutdown"   # POST
PATH_OPENAPI = "/openapi.json"
# The header's name (its value is "Bearer <token>"), not a secret:
TOKEN_HEADER = "Authorization"  # nosec B105

HANDSHAKE_KEYS = ("event", "url", "port", "token_file", "pid", "version", "protocol_version")
"""``changeclip serve`` prints exactly one JSON line with these keys (event == "ready")
to stdout once it accepts connections. The token itself is only in ``token_file``."""

# --- job parameters -----------------------------------------------------------------


class ParamError(ValueError):
    """A job parameter is invalid. ``field`` names it; the message says how to fix it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


_P = TypeVar("_P", bound="_JobParams")


class _JobParams:
    """What every job kind's parameters share: ``REQUIRED`` fields, (de)serialisation, ``validate``."""

    REQUIRED: ClassVar[tuple[str, ...]] = ()
    """The fields a job body must name (the others have defaults)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of all fields."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[_P], data: dict[str, Any]) -> _P:
        """Build from a dict, rejecting unknown keys and naming missing ones; then :meth:`validate`."""
        if not isinstance(data, dict):
            raise ParamError("body", "expected a JSON object of job parameters")
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ParamError(unknown[0], f"unknown parameter; known ones: {', '.join(sorted(known))}")
        missing = [n for n in cls.REQUIRED if n not in data]
        if missing:
            raise ParamError(missing[0], "is required")
        params = cls(**data)
        params.validate()
        return params

    def validate(self) -> None:
        """Check types and allowed values; raise :class:`ParamError` naming the fix."""
        raise NotImplementedError


@dataclass
class DetectParams(_JobParams):
    """Every option of one change-detection run (CLI, server job and plugin alike).

    Paths are plain strings (local files on the backend's machine). ``None`` means
    "the engine's default" where documented.
    """

    before: str
    after: str
    output_dir: str
    engine: str = "changeclip"
    weights: str | None = None
    variant: str = "auto"
    prompt: str = ""
    prompt_mode: str = "auto"
    tagger_weights: str | None = None
    official_test_prompts: bool = False
    bands: list[int] = field(default_factory=lambda: [1, 2, 3])
    value_range: list[list[float]] | None = None
    grid: str = "before"
    target_crs: str | None = None
    resolution: float | None = None
    tile: int = 256
    overlap: int = 64
    device: str = "auto"
    precision: str = "auto"
    runtime: str = "auto"
    batch_size: int = 8
    threshold: float | None = None
    probability_dtype: str = "uint8"
    polygons: bool = False
    min_area: float = 0.0
    min_pixels: int = DEFAULT_MIN_POLYGON_PIXELS
    overwrite: bool = False
    mask_path: str | None = None
    probability_path: str | None = None
    polygons_path: str | None = None
    describe: bool = False
    query: str = ""
    query_threshold: float = DEFAULT_QUERY_THRESHOLD
    keep_matching: bool = False
    vocabulary: str | None = None
    describe_weights: str | None = None
    describe_model: str | None = None

    REQUIRED = ("before", "after", "output_dir")

    # -- validation (types and values; file checks are the backend's) ---------------

    def validate(self) -> None:  # noqa: C901 - one flat list of rules reads best
        """Check types and allowed values; raise :class:`ParamError` naming the fix."""
        for name in ("before", "after", "output_dir"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ParamError(name, "must be a non-empty path string")
        for name in ("weights", "tagger_weights", "target_crs", "mask_path",
                     "probability_path", "polygons_path", "vocabulary", "describe_weights", "describe_model"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ParamError(name, "must be a non-empty string or null")
        _choice("engine", self.engine, ENGINES)
        _choice("variant", self.variant, VARIANTS)
        _choice("prompt_mode", self.prompt_mode, PROMPT_MODES)
        _choice("grid", self.grid, GRIDS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("runtime", self.runtime, RUNTIMES)
        if self.precision == "int8" and self.runtime == "torch":
            raise ParamError("precision", "int8 needs runtime onnxruntime or openvino (or auto), not torch")
        _choice("probability_dtype", self.probability_dtype, PROBABILITY_DTYPES)
        if not isinstance(self.prompt, str):
            raise ParamError("prompt", "must be a string")
        if self.prompt_mode == "words" and not self.prompt.strip():
            raise ParamError("prompt", "prompt mode 'words' needs prompt words, e.g. 'building, road'")
        if self.prompt_mode == "none" and self.prompt.strip():
            raise ParamError("prompt", "prompt words were given but prompt mode is 'none'; "
                             "use prompt mode 'words' or 'auto', or leave the prompt empty")
        for name in ("official_test_prompts", "polygons", "overwrite", "describe", "keep_matching"):
            if not isinstance(getattr(self, name), bool):
                raise ParamError(name, "must be true or false")
        if (not isinstance(self.bands, list) or not self.bands
                or not all(_is_int(b) for b in self.bands)):
            raise ParamError("bands", "must be a list of 1-based band numbers, e.g. [1, 2, 3]")
        if any(b < 1 for b in self.bands):
            raise ParamError("bands", f"band numbers start at 1, got {self.bands}")
        if self.engine == "changeclip" and len(self.bands) != 3:
            raise ParamError("bands", f"the changeclip engine needs exactly 3 bands (R,G,B), got {self.bands}")
        if self.value_range is not None:
            _check_value_range(self.value_range, len(self.bands))
        if self.grid == "custom":
            if not self.target_crs:
                raise ParamError("target_crs", "grid 'custom' needs a target CRS, e.g. 'EPSG:32633'")
            if not _is_number(self.resolution) or not self.resolution > 0:
                raise ParamError("resolution", "grid 'custom' needs a positive resolution in CRS units")
        elif self.target_crs is not None:
            raise ParamError("target_crs", f"a target CRS only applies to grid 'custom' but grid is '{self.grid}'; "
                             "set grid to 'custom' (--grid custom) with a resolution, or leave target_crs out")
        elif self.resolution is not None and (not _is_number(self.resolution) or not self.resolution > 0):
            raise ParamError("resolution", "must be a positive number")
        if not _is_int(self.tile) or self.tile < 64 or self.tile % 32:
            raise ParamError("tile", f"tile size must be a multiple of 32 and at least 64, got {self.tile!r};"
                             f" try {_nearest32(self.tile)}")
        if not _is_int(self.overlap) or self.overlap < 0 or self.overlap * 2 >= self.tile:
            raise ParamError("overlap", f"overlap must be between 0 and less than half the tile "
                             f"({self.tile // 2}), got {self.overlap!r}")
        if not isinstance(self.device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ParamError("device", f"must be {DEVICES_HELP}, got {self.device!r}")
        if not _is_int(self.batch_size) or not 1 <= self.batch_size <= 1024:
            raise ParamError("batch_size", f"must be an integer from 1 to 1024, got {self.batch_size!r}")
        if self.threshold is not None and (not _is_number(self.threshold) or not 0 < self.threshold < 1):
            raise ParamError("threshold", f"must be a number strictly between 0 and 1, got {self.threshold!r}")
        if not _is_number(self.min_area) or self.min_area < 0:
            raise ParamError("min_area", f"must be a number >= 0 (square metres), got {self.min_area!r}")
        if not _is_int(self.min_pixels) or self.min_pixels < 0:
            raise ParamError("min_pixels", f"must be a whole number of output pixels >= 0, got {self.min_pixels!r}")
        self._validate_describe()

    def _validate_describe(self) -> None:
        """Rules of the describe options (CLIP words for every change polygon)."""
        if not isinstance(self.query, str):
            raise ParamError("query", "must be a string")
        if self.describe and not self.polygons:
            raise ParamError("describe", "describing needs change polygons: turn polygons on (--polygons; in "
                             "QGIS the change polygons output)")
        if self.describe and len(self.bands) < 3:
            raise ParamError("describe", f"describing shows CLIP an RGB image: map at least 3 bands (R,G,B first), "
                             f"got {self.bands}")
        if self.query.strip() and not self.describe:
            raise ParamError("query", "a query is scored on the polygons' descriptions: turn describe on "
                             "(--describe) or leave the query empty")
        if self.keep_matching and not self.query.strip():
            raise ParamError("keep_matching", "keeping the matching polygons needs a query (--query TEXT)")
        if not _is_number(self.query_threshold) or not 0 < self.query_threshold < 1:
            raise ParamError("query_threshold", "must be a number strictly between 0 and 1, got "
                             f"{self.query_threshold!r}")

    # -- output paths --------------------------------------------------------------

    def output_paths(self) -> dict[str, str | None]:
        """Final output paths: explicit ones, else names inside ``output_dir``."""
        import os.path

        def pick(explicit: str | None, name: str) -> str:
            return explicit if explicit else os.path.join(self.output_dir, name)

        return {
            "mask": pick(self.mask_path, MASK_NAME),
            "probability": pick(self.probability_path, PROBABILITY_NAME),
            "polygons": pick(self.polygons_path, POLYGONS_NAME) if self.polygons else None,
            "summary": os.path.join(self.output_dir, SUMMARY_NAME),
            "polygons_matching": (os.path.join(self.output_dir, MATCHING_POLYGONS_NAME)
                                  if self.keep_matching else None),
            "mask_matching": os.path.join(self.output_dir, MATCHING_MASK_NAME) if self.keep_matching else None,
        }


def param_fields() -> list[dict[str, Any]]:
    """Describe the job parameters (name, default, choices) for UIs and docs."""
    choices = {"engine": ENGINES, "variant": VARIANTS, "prompt_mode": PROMPT_MODES, "grid": GRIDS,
               "precision": PRECISIONS, "runtime": RUNTIMES, "probability_dtype": PROBABILITY_DTYPES}
    out = []
    for f in dataclasses.fields(DetectParams):
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        out.append({"name": f.name, "default": default, "choices": list(choices.get(f.name, ())),
                    "required": f.name in DetectParams.REQUIRED})
    return out


def _path(name: str, value: Any, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise ParamError(name, "must be a non-empty path string" + (" or null" if optional else ""))


def _optional_positive(name: str, value: Any, integer: bool) -> None:
    if value is None:
        return
    ok = _is_int(value) if integer else _is_number(value)
    if not ok or value <= 0:
        raise ParamError(name, f"must be a positive {'whole ' if integer else ''}number or null, got {value!r}")


@dataclass
class DatasetParams(_JobParams):
    """A ``dataset`` job: ``changeclip dataset from-vectors`` (``docs/training-data.md``).

    ``changes`` (and ``aoi``) are OGR polygon layers in any format and CRS; ``output_dir``
    is the dataset folder to create.
    """

    before: str
    after: str
    changes: str
    output_dir: str
    layer: str | None = None
    where: str | None = None
    aoi: str | None = None
    aoi_layer: str | None = None
    bands: list[int] = field(default_factory=lambda: [1, 2, 3])
    value_range: list[list[float]] | None = None
    grid: str = "before"
    target_crs: str | None = None
    resolution: float | None = None
    tile: int = 256
    stride: int = 192
    val_fraction: float = 0.15
    val_block_size: float | None = None
    keep_empty: float = 1.0
    all_touched: bool = False
    seed: int = 0
    train_dataset: str | None = None
    overwrite: bool = False

    REQUIRED = ("before", "after", "changes", "output_dir")

    def validate(self) -> None:  # noqa: C901 - one flat list of rules reads best
        """Check types and allowed values; raise :class:`ParamError` naming the fix."""
        for name in self.REQUIRED:
            _path(name, getattr(self, name))
        for name in ("aoi", "layer", "where", "aoi_layer", "target_crs", "train_dataset"):
            _path(name, getattr(self, name), optional=True)
        if (not isinstance(self.bands, list) or len(self.bands) != 3
                or not all(_is_int(b) and b >= 1 for b in self.bands)):
            raise ParamError("bands", f"needs three 1-based band numbers used as R,G,B, e.g. [1, 2, 3]; "
                             f"got {self.bands!r}")
        if self.value_range is not None:
            _check_value_range(self.value_range, 3)
        _choice("grid", self.grid, GRIDS)
        if self.grid == "custom" and (not self.target_crs or not _is_number(self.resolution)
                                      or not self.resolution > 0):
            raise ParamError("target_crs", "grid 'custom' needs a target CRS and a positive resolution")
        _optional_positive("resolution", self.resolution, integer=False)
        if not _is_int(self.tile) or self.tile < 64 or self.tile % 32:
            raise ParamError("tile", f"tile size must be a multiple of 32 and at least 64, got {self.tile!r};"
                             f" try {_nearest32(self.tile)}")
        if not _is_int(self.stride) or not 1 <= self.stride <= self.tile:
            raise ParamError("stride", f"must be a whole number from 1 to the tile size ({self.tile}), "
                             f"got {self.stride!r}")
        if not _is_number(self.val_fraction) or not 0 < self.val_fraction < 1:
            raise ParamError("val_fraction", f"must be strictly between 0 and 1, got {self.val_fraction!r}")
        _optional_positive("val_block_size", self.val_block_size, integer=False)
        if not _is_number(self.keep_empty) or not 0 <= self.keep_empty <= 1:
            raise ParamError("keep_empty", f"must be between 0 and 1, got {self.keep_empty!r}")
        for name in ("all_touched", "overwrite"):
            if not isinstance(getattr(self, name), bool):
                raise ParamError(name, "must be true or false")
        if not _is_int(self.seed) or self.seed < 0:
            raise ParamError("seed", f"must be a whole number >= 0, got {self.seed!r}")

    def output_paths(self) -> dict[str, str | None]:
        """The folder the job creates."""
        return {"dataset": self.output_dir}


@dataclass
class TrainParams(_JobParams):
    """A ``train`` job: the options of ``changeclip train`` (``docs/training.md``), one field each.

    ``None`` means the recipe's default for the variant. With ``resume`` the run continues
    from ``run_dir``'s checkpoint; ``datasets``, ``variant`` and ``init`` may then be left empty
    (they are read from the run).
    """

    datasets: list[str]
    run_dir: str
    variant: str = ""
    init: str = ""
    iters: int | None = None
    epochs: float | None = None
    batch_size: int | None = None
    accumulate: int | None = None
    lr: float | None = None
    weight_decay: float = 0.01
    warmup: int | None = None
    crop: int = 256
    precision: str = "auto"
    device: str = "auto"
    prompt_mode: str = "none"
    prompt: str = ""
    tagger_weights: str | None = None
    freeze: str = "none"
    encoder_lr_mult: float = 1.0
    loss: str = "ce"
    class_weights: list[float] | None = None
    val_every: int | None = None
    patience: int | None = None
    select: str = "f1"
    seed: int = 0
    workers: int = 2
    augment: bool = True
    log_every: int = 10
    resume: bool = False
    overwrite: bool = False

    REQUIRED = ("datasets", "run_dir")

    @property
    def output_dir(self) -> str:
        """The run folder (the name every job kind's output folder goes by)."""
        return self.run_dir

    def validate(self) -> None:  # noqa: C901 - one flat list of rules reads best
        """Check types and allowed values; raise :class:`ParamError` naming the fix."""
        if not isinstance(self.datasets, list) or not all(isinstance(d, str) and d.strip() for d in self.datasets):
            raise ParamError("datasets", "must be a list of dataset folder paths")
        _path("run_dir", self.run_dir)
        for name in ("resume", "overwrite", "augment"):
            if not isinstance(getattr(self, name), bool):
                raise ParamError(name, "must be true or false")
        if not self.resume:
            for name in ("datasets", "variant", "init"):
                if not getattr(self, name):
                    raise ParamError(name, "is required unless resume is true (a resumed run reads it from run_dir)")
        if self.variant:
            _choice("variant", self.variant, TRAIN_VARIANTS)
        if not isinstance(self.init, str):
            raise ParamError("init", "must be clip:FILE, clip:openai, weights:FILE or scratch")
        if self.init and not (self.init == "scratch" or re.fullmatch(r"(clip|weights):.+", self.init)):
            raise ParamError("init", f"must be clip:FILE, clip:openai, weights:FILE or scratch; got {self.init!r}")
        if self.iters is not None and self.epochs is not None:
            raise ParamError("epochs", "give iters or epochs, not both")
        for name in ("iters", "batch_size", "accumulate", "val_every", "patience", "warmup"):
            _optional_positive(name, getattr(self, name), integer=True)
        for name in ("epochs", "lr"):
            _optional_positive(name, getattr(self, name), integer=False)
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            raise ParamError("weight_decay", f"must be a number >= 0, got {self.weight_decay!r}")
        if not _is_number(self.encoder_lr_mult) or self.encoder_lr_mult < 0:
            raise ParamError("encoder_lr_mult", f"must be a number >= 0, got {self.encoder_lr_mult!r}")
        if not _is_int(self.crop) or self.crop < 64 or self.crop % 32:
            raise ParamError("crop", f"must be a multiple of 32 and at least 64, got {self.crop!r}")
        _choice("precision", self.precision, TRAIN_PRECISIONS)  # int8 is an inference-only precision
        if not isinstance(self.device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ParamError("device", f"must be {DEVICES_HELP}, got {self.device!r}")
        _choice("prompt_mode", self.prompt_mode, TRAIN_PROMPT_MODES)
        if not isinstance(self.prompt, str):
            raise ParamError("prompt", "must be a string")
        if self.prompt_mode == "words" and not self.prompt.strip():
            raise ParamError("prompt", "prompt mode 'words' needs prompt words, e.g. 'building, road'")
        _path("tagger_weights", self.tagger_weights, optional=True)
        if self.prompt_mode == "auto" and not self.tagger_weights:
            raise ParamError("tagger_weights", "prompt mode 'auto' needs a CLIP ViT-B/16 tagger weights file")
        _choice("freeze", self.freeze, FREEZE_CHOICES)
        _choice("loss", self.loss, TRAIN_LOSSES)
        _choice("select", self.select, SELECT_CHOICES)
        if self.class_weights is not None and (
                not isinstance(self.class_weights, list) or len(self.class_weights) != 2
                or not all(_is_number(w) and w > 0 for w in self.class_weights)):
            raise ParamError("class_weights", f"must be two positive numbers [no change, change], "
                             f"got {self.class_weights!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ParamError("seed", f"must be a whole number >= 0, got {self.seed!r}")
        if not _is_int(self.workers) or not 0 <= self.workers <= 64:
            raise ParamError("workers", f"must be a whole number from 0 to 64, got {self.workers!r}")
        if not _is_int(self.log_every) or self.log_every < 1:
            raise ParamError("log_every", f"must be a whole number >= 1, got {self.log_every!r}")

    def output_paths(self) -> dict[str, str | None]:
        """The run folder and the weights files it will hold."""
        import os.path

        return {"run_dir": self.run_dir, "best": os.path.join(self.run_dir, RUN_BEST_NAME),
                "last": os.path.join(self.run_dir, RUN_LAST_NAME)}


JobParams = DetectParams | DatasetParams | TrainParams
"""The parameters of any job kind."""

PARAMS_BY_KIND: dict[str, Any] = {"detect": DetectParams, "dataset": DatasetParams, "train": TrainParams}


def job_kind(params: Any) -> str:
    """The kind (``detect``, ``dataset``, ``train``) of a params object."""
    for kind, cls in PARAMS_BY_KIND.items():
        if isinstance(params, cls):
            return kind
    raise TypeError(f"not job parameters: {type(params).__name__}")


def job_body(params: Any) -> dict[str, Any]:
    """The ``POST /v1/jobs`` body of ``params`` (``kind`` added for non-detect jobs, so a
    detection body stays what version 1 sent)."""
    kind = job_kind(params)
    body = params.to_dict()
    return body if kind == "detect" else {"kind": kind, **body}


# --- job status / result ------------------------------------------------------------


@dataclass
class JobProgress:
    """Progress of one job as reported by ``GET /jobs/{id}``.

    The training fields are ``None`` for other kinds: ``iteration``/``iterations`` (steps done
    and of the whole run), ``loss`` (mean training loss of the last log step), ``val`` (the last
    validation: ``iteration``, ``precision``, ``recall``, ``f1``, ``iou`` of the change class),
    ``best`` (the best validation so far, same keys), ``device``. ``events`` counts the job's
    events so far (read them with :data:`PATH_JOB_EVENTS`).
    """

    stage: str = "queued"
    done: int = 0
    total: int = 0
    fraction: float = 0.0
    eta_s: float | None = None
    message: str = ""
    iteration: int | None = None
    iterations: int | None = None
    loss: float | None = None
    val: dict[str, Any] | None = None
    best: dict[str, Any] | None = None
    device: str | None = None
    events: int = 0


@dataclass
class JobInfo:
    """One job as the server reports it (``kind``: one of :data:`JOB_KINDS`)."""

    job_id: str
    state: str
    params: dict[str, Any]
    progress: JobProgress
    device: str
    created: float
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    kind: str = "detect"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobInfo:
        """Rebuild from the server's JSON (keys this version does not know are ignored)."""
        data = dict(data)
        progress_keys = {f.name for f in dataclasses.fields(JobProgress)}
        data["progress"] = JobProgress(**{k: v for k, v in (data.get("progress") or {}).items()
                                          if k in progress_keys})
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


SUMMARY_KEYS = ("engine", "model", "device", "prompt_mode", "prompt", "grid", "outputs",
                "changed_area_m2", "changed_fraction", "valid_area_m2", "tiles", "timings_s",
                "threshold", "backend_version")
"""Top-level keys every ``summary.json`` (and job result's ``summary``) has."""


# --- helpers ------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))


def _nearest32(v: Any) -> int:
    try:
        return max(64, int(round(float(v) / 32.0)) * 32)
    except (TypeError, ValueError, OverflowError):
        return 256


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ParamError(name, f"must be one of {', '.join(allowed)}; got {value!r}")


_VALUE_LIMIT = 1e30
"""Largest magnitude of a ``value_range`` bound (imagery is scaled in 32-bit floats)."""
_RELATIVE_SPAN = 1e-6
"""Smallest ``max - min`` of a ``value_range`` pair relative to its larger bound (float32 resolution)."""
_MIN_SPAN = 1e-30
"""Smallest ``max - min`` of a ``value_range`` pair at all (a 32-bit float must hold it)."""


def _check_value_range(value_range: Any, n_bands: int) -> None:
    ok = isinstance(value_range, list) and all(
        isinstance(r, list) and len(r) == 2 and all(_is_number(x) for x in r) and r[0] < r[1]
        for r in value_range)
    if not ok or len(value_range) not in (1, n_bands):
        raise ParamError("value_range", "must be one [min, max] pair for all bands or one per band "
                         f"({n_bands}), each with min < max, e.g. [[0, 3000]]")
    for low, high in value_range:
        if max(abs(low), abs(high)) > _VALUE_LIMIT:
            raise ParamError("value_range", f"[{low!r}, {high!r}] is beyond what imagery holds (bounds must be "
                             f"within +-{_VALUE_LIMIT:g}); give the range of the raster's values, e.g. [[0, 3000]]")
        if high - low < max(_MIN_SPAN, _RELATIVE_SPAN * max(abs(low), abs(high))):
            raise ParamError("value_range", f"[{low!r}, {high!r}] is too narrow to scale the imagery (max - min "
                             f"must be at least {_MIN_SPAN:g} and {_RELATIVE_SPAN:g} of the larger bound); give the range of the "
                             "raster's values, e.g. [[0, 3000]]")


def parse_bands(text: str) -> list[int]:
    """Parse a band list such as ``"3,2,1"``; raise :class:`ParamError` if malformed."""
    try:
        bands = [int(p) for p in text.replace(" ", "").split(",") if p]
    except ValueError:
        raise ParamError("bands", f"expected comma-separated band numbers like 3,2,1; got {text!r}") from None
    if not bands:
        raise ParamError("bands", "expected at least one band number")
    return bands


def parse_value_range(text: str) -> list[list[float]]:
    """Parse ``"0:3000"`` or ``"0:3000,0:2800,0:2500"`` into [[min, max], ...]."""
    out = []
    for part in text.replace(" ", "").split(","):
        try:
            lo, hi = part.split(":")
            out.append([float(lo), float(hi)])
        except ValueError:
            raise ParamError("value_range", f"expected MIN:MAX[,MIN:MAX...], got {text!r}") from None
    return out
