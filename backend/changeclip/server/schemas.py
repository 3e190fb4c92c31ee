"""Pydantic models of the HTTP edge, mirroring :mod:`changeclip.protocol`.

:class:`DetectRequest` has exactly the fields of :class:`protocol.DetectParams` with
the same defaults (a contract test pins this); it checks JSON types and simple
ranges, then :meth:`to_params` runs the protocol's own validation, so the rules live
in one place. :class:`DatasetRequest` and :class:`TrainRequest` do the same for
:class:`protocol.DatasetParams` and :class:`protocol.TrainParams` (the body of ``POST /v1/jobs``
is one of the three, told apart by ``kind``: see :mod:`changeclip.server.job_request`).
Everything else here only describes responses for the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from changeclip import protocol
from changeclip.protocol import DatasetParams, DetectParams, TrainParams


def _integral(value: Any) -> Any:
    """JSON Schema counts 256.0 as an integer: accept it as 256 (but never 256.5 or "256")."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_integral)]
"""A strict integer that also accepts integral JSON numbers such as ``8.0``."""

ABSOLUTE_PATH = r"^(/|[A-Za-z]:[\\/]|\\\\)"
"""An absolute path: POSIX ``/...``, Windows ``C:\\...`` or ``C:/...``, or UNC ``\\\\server\\...``
(the server's own file system decides the rest; a relative path is meaningless to it)."""

AbsolutePath = Annotated[str, Field(min_length=1, max_length=4096, pattern=ABSOLUTE_PATH)]
"""A path on the server's machine, absolute."""

Band = Annotated[int, Field(ge=1, le=65535), BeforeValidator(_integral)]
"""A 1-based band number (the bounds before the validator, so the JSON schema states them)."""


class DetectRequest(BaseModel):
    """Body of ``POST /v1/jobs``: the parameters of ``changeclip detect``.

    Paths are absolute paths on the server's machine.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    before: str = Field(min_length=1, max_length=4096, pattern=ABSOLUTE_PATH,
                        description="absolute path of the 'before' raster")
    after: str = Field(min_length=1, max_length=4096, pattern=ABSOLUTE_PATH,
                       description="absolute path of the 'after' raster")
    output_dir: str = Field(min_length=1, max_length=4096, pattern=ABSOLUTE_PATH,
                            description="absolute path of the output folder")
    engine: Literal[protocol.ENGINES] = "changeclip"  # type: ignore[valid-type]
    weights: AbsolutePath | None = Field(default=None, description="ChangeCLIP weights file (engine changeclip)")
    variant: Literal[protocol.VARIANTS] = "auto"  # type: ignore[valid-type]
    prompt: str = Field(default="", max_length=2000)
    prompt_mode: Literal[protocol.PROMPT_MODES] = "auto"  # type: ignore[valid-type]
    tagger_weights: AbsolutePath | None = None
    official_test_prompts: bool = False
    bands: list[Band] = Field(default_factory=lambda: [1, 2, 3], min_length=1, max_length=64)
    value_range: list[Annotated[list[float], Field(min_length=2, max_length=2)]] | None = Field(
        default=None, min_length=1, max_length=64, description="[min, max] pairs, finite numbers, min < max")
    grid: Literal[protocol.GRIDS] = "before"  # type: ignore[valid-type]
    target_crs: str | None = Field(default=None, min_length=1, max_length=10000)
    resolution: float | None = Field(default=None, gt=0, le=1e15, description="finite, in target-CRS units")
    tile: Int = Field(default=256, ge=64, le=8192, multiple_of=32)
    overlap: Int = Field(default=64, ge=0, le=4096)
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d{1,3})?)$")
    precision: Literal[protocol.PRECISIONS] = "auto"  # type: ignore[valid-type]
    runtime: Literal[protocol.RUNTIMES] = "auto"  # type: ignore[valid-type]
    batch_size: Int = Field(default=8, ge=1, le=1024)
    threshold: float | None = Field(default=None, gt=0, lt=1, description="finite number, 0 < threshold < 1")
    probability_dtype: Literal[protocol.PROBABILITY_DTYPES] = "uint8"  # type: ignore[valid-type]
    polygons: bool = False
    min_area: float = Field(default=0.0, ge=0, le=1e15, description="square metres, a finite number >= 0")
    min_pixels: Int = Field(default=protocol.DEFAULT_MIN_POLYGON_PIXELS, ge=0)
    overwrite: bool = False
    mask_path: AbsolutePath | None = None
    probability_path: AbsolutePath | None = None
    polygons_path: AbsolutePath | None = None
    describe: bool = Field(default=False, description="CLIP words for every change polygon (needs polygons)")
    query: str = Field(default="", max_length=2000,
                       description="words ('building') or a transition ('farmland to building'); needs describe")
    query_threshold: float = Field(default=protocol.DEFAULT_QUERY_THRESHOLD, gt=0, lt=1,
                                   description="query_score at or above which a polygon matches")
    keep_matching: bool = Field(default=False, description="also write the matching polygons and mask; needs query")
    vocabulary: AbsolutePath | None = Field(default=None,
                                            description="a vocabulary file (one class name per line)")
    describe_weights: AbsolutePath | None = Field(default=None, description="CLIP weights for describing")
    describe_model: str | None = Field(default=None, min_length=1, max_length=200,
                                       description="open_clip architecture of describe_weights, e.g. ViT-B-32")
    kind: Literal["detect"] = Field(default="detect", description="job kind; may be left out for a detection")

    def to_params(self) -> DetectParams:
        """The protocol parameters, validated by :meth:`DetectParams.validate`.

        Raises:
            protocol.ParamError: a rule of the protocol is broken (names the field).
        """
        return DetectParams.from_dict(self.model_dump(exclude={"kind"}))


PathStr = Annotated[str, Field(min_length=1, max_length=4096)]
OptionalName = Annotated[str | None, Field(default=None, min_length=1, max_length=4096)]


class DatasetRequest(BaseModel):
    """Body of ``POST /v1/jobs`` for a ``dataset`` job: ``changeclip dataset from-vectors``.

    Paths are absolute paths on the server's machine.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    kind: Literal["dataset"] = Field(description="job kind")
    before: PathStr = Field(description="absolute path of the 'before' raster")
    after: PathStr = Field(description="absolute path of the 'after' raster")
    changes: PathStr = Field(description="absolute path of the change polygons (any OGR format and CRS)")
    output_dir: PathStr = Field(description="absolute path of the dataset folder to create")
    layer: OptionalName = None
    where: str | None = Field(default=None, min_length=1, max_length=10000, description="OGR SQL filter on changes")
    aoi: OptionalName = Field(default=None, description="polygons of the labelled area")
    aoi_layer: OptionalName = None
    bands: list[Int] = Field(default_factory=lambda: [1, 2, 3], min_length=3, max_length=3)
    value_range: list[list[float]] | None = Field(default=None, min_length=1, max_length=3)
    grid: Literal[protocol.GRIDS] = "before"  # type: ignore[valid-type]
    target_crs: str | None = Field(default=None, min_length=1, max_length=10000)
    resolution: float | None = Field(default=None, gt=0)
    tile: Int = Field(default=256, ge=64, le=8192, multiple_of=32)
    stride: Int = Field(default=192, ge=1, le=8192)
    val_fraction: float = Field(default=0.15, gt=0, lt=1)
    val_block_size: float | None = Field(default=None, gt=0, description="metres")
    keep_empty: float = Field(default=1.0, ge=0, le=1)
    all_touched: bool = False
    seed: Int = Field(default=0, ge=0, le=2**31 - 1)
    train_dataset: OptionalName = None
    overwrite: bool = False

    def to_params(self) -> DatasetParams:
        """The protocol parameters, validated (raises :class:`protocol.ParamError`)."""
        return DatasetParams.from_dict(self.model_dump(exclude={"kind"}))


class TrainRequest(BaseModel):
    """Body of ``POST /v1/jobs`` for a ``train`` job: the options of ``changeclip train``.

    ``null`` means the variant's recipe default. Paths are absolute paths on the server's machine.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    kind: Literal["train"] = Field(description="job kind")
    datasets: list[PathStr] = Field(max_length=64, description="dataset folders (empty only with resume)")
    run_dir: PathStr = Field(description="absolute path of the run folder")
    variant: Literal[("",) + protocol.TRAIN_VARIANTS] = ""  # type: ignore[valid-type]
    init: str = Field(default="", max_length=4200, description="clip:FILE, clip:openai, weights:FILE or scratch")
    iters: Int | None = Field(default=None, ge=1, le=10**8)
    epochs: float | None = Field(default=None, gt=0, le=10**6)
    batch_size: Int | None = Field(default=None, ge=1, le=4096)
    accumulate: Int | None = Field(default=None, ge=1, le=4096)
    lr: float | None = Field(default=None, gt=0, le=10)
    weight_decay: float = Field(default=0.01, ge=0, le=10)
    warmup: Int | None = Field(default=None, ge=1, le=10**8)
    crop: Int = Field(default=256, ge=64, le=8192, multiple_of=32)
    precision: Literal[protocol.TRAIN_PRECISIONS] = "auto"  # type: ignore[valid-type]
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d{1,3})?)$")
    prompt_mode: Literal[protocol.TRAIN_PROMPT_MODES] = "none"  # type: ignore[valid-type]
    prompt: str = Field(default="", max_length=2000)
    tagger_weights: OptionalName = None
    freeze: Literal[protocol.FREEZE_CHOICES] = "none"  # type: ignore[valid-type]
    encoder_lr_mult: float = Field(default=1.0, ge=0, le=100)
    loss: Literal[protocol.TRAIN_LOSSES] = "ce"  # type: ignore[valid-type]
    class_weights: list[float] | None = Field(default=None, min_length=2, max_length=2)
    val_every: Int | None = Field(default=None, ge=1, le=10**8)
    patience: Int | None = Field(default=None, ge=1, le=10**6)
    select: Literal[protocol.SELECT_CHOICES] = "f1"  # type: ignore[valid-type]
    seed: Int = Field(default=0, ge=0, le=2**31 - 1)
    workers: Int = Field(default=2, ge=0, le=64)
    augment: bool = True
    log_every: Int = Field(default=10, ge=1, le=10**6)
    resume: bool = False
    overwrite: bool = False

    def to_params(self) -> TrainParams:
        """The protocol parameters, validated (raises :class:`protocol.ParamError`)."""
        return TrainParams.from_dict(self.model_dump(exclude={"kind"}))


class JobProgressModel(BaseModel):
    """Progress of a job (:class:`protocol.JobProgress`)."""

    stage: str = Field(description=f"one of {', '.join(protocol.STAGES)}")
    done: int = Field(description="units done in this stage (tiles in stage 'tiles')")
    total: int = Field(description="units in this stage (0 when unknown)")
    fraction: float = Field(description="overall progress of the job, 0..1")
    eta_s: float | None = Field(default=None, description="estimated seconds left, if known")
    message: str = Field(default="", description="what the job waits for or last reported")
    iteration: int | None = Field(default=None, description="train: iterations done")
    iterations: int | None = Field(default=None, description="train: iterations of the whole run")
    loss: float | None = Field(default=None, description="train: mean training loss of the last log step")
    val: dict[str, Any] | None = Field(default=None, description="train: last validation (iteration, "
                                                                 "precision, recall, f1, iou of the change class)")
    best: dict[str, Any] | None = Field(default=None, description="train: best validation so far (same keys)")
    device: str | None = Field(default=None, description="train: the device it runs on")
    events: int = Field(default=0, description="events so far (GET .../events?since=N)")


class JobInfoModel(BaseModel):
    """One job (:class:`protocol.JobInfo`)."""

    job_id: str
    kind: Literal[protocol.JOB_KINDS] = "detect"  # type: ignore[valid-type]
    state: Literal[protocol.JOB_STATES]  # type: ignore[valid-type]
    params: dict[str, Any]
    progress: JobProgressModel
    device: str
    created: float = Field(description="submission time, seconds since the epoch")
    started: float | None = None
    finished: float | None = None
    error: str | None = None


class JobListModel(BaseModel):
    """All jobs the server remembers, oldest first."""

    jobs: list[JobInfoModel]


class JobEventsModel(BaseModel):
    """Events of a job after ``since`` (training: start, step, val, note, checkpoint, end)."""

    job_id: str
    events: list[dict[str, Any]] = Field(description="each with 'seq' (1, 2, ...) and 'event'")
    next: int = Field(description="events so far: pass it as 'since' to get only newer ones")


class JobResultModel(BaseModel):
    """Result of a succeeded job: output paths and the summary (same as ``summary.json``)."""

    job_id: str
    outputs: dict[str, Any] = Field(description="output paths by kind (mask, probability, polygons, summary)")
    summary: dict[str, Any]


class StatusModel(BaseModel):
    """Server health and load."""

    status: Literal["ok"] = "ok"
    version: str
    protocol_version: int
    pid: int
    cuda_available: bool
    devices: list[dict[str, Any]] = Field(description="devices with name and memory")
    default_device: str
    loaded_models: list[dict[str, Any]]
    queue_length: int = Field(description="jobs waiting (not yet running), all devices")
    queues: dict[str, int] = Field(description="jobs waiting, per device")
    running: list[str] = Field(description="ids of running jobs")
    jobs_total: int


class LiveModel(BaseModel):
    """Liveness probe answer."""

    status: Literal["ok"] = "ok"


class MessageModel(BaseModel):
    """A plain acknowledgement or error (``detail`` says what happened)."""

    detail: str
