"""The trainer: :func:`train` runs one training run and returns its result.

``train(config, progress_cb, cancel_cb) -> TrainResult`` is the whole feature; the CLI and a
server job are thin layers around it. ``progress_cb`` receives JSON-able event dicts (``start``,
``note``, ``step``, ``val``, ``checkpoint``, ``end``); ``cancel_cb`` is polled once per
iteration and, when it returns True, the run saves a resumable checkpoint and returns with
status ``interrupted``.

Order of work: every check first (options, RUN_DIR, data, start weights, resume consistency;
nothing is written until all pass), then RUN_DIR and ``config.json``, the tags (``auto``), the
loop. One iteration = one optimizer step = ``accumulate`` micro-batches per process. Before
each micro-batch torch's generator is seeded from (seed, step, chunk) (see
:class:`~changeclip.training.data.DistributedBatchPlan`), so dropout and stochastic depth, like
the augmentations, do not depend on workers, resumes or how the global batch is split.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from changeclip import __version__
from changeclip.errors import ChangeClipError, InputError, ModelError
from changeclip.evaluation.metrics import ConfusionMatrix
from changeclip.model import IMAGENET_MEAN, IMAGENET_STD, ChangeCLIP, build_model_from_state_dict
from changeclip.training import checkpoint as ck
from changeclip.training import distributed as dd
from changeclip.training.config import TrainConfig, check_options, resolve_schedule
from changeclip.training.data import (
    DistributedBatchPlan,
    TileDataset,
    TrainingData,
    collate,
    load_training_data,
    read_image,
    read_label,
)
from changeclip.training.prompting import CachedTagger, TrainPrompts, compute_tags, load_tagger
from changeclip.training.recipe import (
    SegmentationLoss,
    WarmupPolySchedule,
    apply_freeze,
    build_optimizer,
    set_train_mode,
)
from changeclip.training.start import StartWeights, check_start, load_start

log = logging.getLogger(__name__)

ProgressCb = Callable[[dict[str, Any]], None]
CancelCb = Callable[[], bool]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainResult:
    """How a run ended.

    Attributes:
        status: ``finished``, ``early-stopped`` or ``interrupted`` (resumable).
        iteration: optimizer steps done.
        iters: steps of the full run.
        run_dir: the run folder.
        best: the best validation (metrics + iteration), or None.
        last_val: the last validation, or None.
        notes: things the run decided on its own (e.g. a smaller batch after an out-of-memory).
    """

    status: str
    iteration: int
    iters: int
    run_dir: str
    best: dict[str, Any] | None = None
    last_val: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able copy."""
        return {"status": self.status, "iteration": self.iteration, "iters": self.iters, "run_dir": self.run_dir,
                "best": self.best, "last_val": self.last_val, "notes": self.notes}


class StepModule(nn.Module):
    """The network plus its text side in one ``forward``, so that DDP sees every parameter used.

    Args:
        net: the ChangeCLIP network.
    """

    def __init__(self, net: ChangeCLIP) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, index_a: torch.Tensor | None,
                index_b: torch.Tensor | None) -> torch.Tensor:
        """Logits (B, 2, H, W) of normalised pairs ``x`` with the prompts of ``tokens``."""
        emb = self.net.encode_text(tokens)
        if index_a is None or index_b is None:
            text = emb.unsqueeze(0)
            return self.net(x, text, text)
        return self.net(x, emb[index_a], emb[index_b])


def val_report(cm: ConfusionMatrix) -> dict[str, Any]:
    """Validation metrics: change-class P/R/F1/IoU, both classes, and the change shares."""
    other = ConfusionMatrix(tp=cm.tn, fp=cm.fn, fn=cm.fp, tn=cm.tp)
    keys = ("precision", "recall", "f1", "iou")
    total = cm.total or 1
    return {**{k: getattr(cm, k) for k in keys}, "oa": cm.oa,
            "per_class": {"no change": {k: getattr(other, k) for k in keys},
                          "change": {k: getattr(cm, k) for k in keys}},
            "predicted_change_share": (cm.tp + cm.fp) / total, "reference_change_share": (cm.tp + cm.fn) / total,
            **cm.counts()}


def _fill_from_run(config: TrainConfig) -> TrainConfig:
    """With --resume, options left out (datasets, variant, init) come from the run's config.json."""
    if not config.resume:
        return config
    path = Path(config.run_dir).expanduser() / ck.CONFIG
    if not path.is_file():
        return config
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))["options"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"--resume: cannot read {path} ({exc})") from None
    if not config.datasets:
        config.datasets = list(saved.get("datasets") or [])
    if not config.variant:
        config.variant = str(saved.get("variant") or "")
    if not config.init:
        config.init = str(saved.get("init") or "")
    return config


def train(config: TrainConfig, progress_cb: ProgressCb | None = None, cancel_cb: CancelCb | None = None) -> TrainResult:
    """Run (or resume) one training run.

    Args:
        config: the options (see :class:`~changeclip.training.config.TrainConfig`).
        progress_cb: receives event dicts on rank 0 (None: log only).
        cancel_cb: polled every iteration; True = save a resumable checkpoint and stop.

    Returns:
        The result; ``status`` says whether it finished, stopped early or was interrupted.

    Raises:
        InputError: a bad option, dataset folder, RUN_DIR or resume (nothing written).
        ModelError: unusable ``--init`` weights or tagger (nothing written).
    """
    config = _fill_from_run(config)
    check_options(config)
    ctx = dd.init_from_env(config.device)
    try:
        trainer = Trainer(config, ctx, progress_cb, cancel_cb)
        trainer.prepare()
        return trainer.run()
    finally:
        dd.cleanup(ctx)


class Trainer:
    """One run's state; see :func:`train`."""

    def __init__(self, config: TrainConfig, ctx: dd.DistContext, progress_cb: ProgressCb | None,
                 cancel_cb: CancelCb | None) -> None:
        self.cfg = config
        self.ctx = ctx
        self.progress_cb = progress_cb if ctx.is_main else None
        self.cancel_cb = cancel_cb
        self.run_dir = Path(config.run_dir).expanduser()
        self.notes: list[str] = []
        self.rows: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.last_val: dict[str, Any] | None = None
        self.bad_validations = 0
        self.start_step = 0
        self.saved_state: dict[str, Any] | None = None
        self.tags: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------------------ events
    def emit(self, event: dict[str, Any]) -> None:
        """Send an event to the progress callback (rank 0)."""
        if self.progress_cb is not None:
            self.progress_cb(event)

    def note(self, message: str) -> None:
        """Something the run decided on its own: logged, reported, kept in the result."""
        self.notes.append(message)
        if self.ctx.is_main:
            log.warning("%s", message)
        self.emit({"event": "note", "message": message})

    # ------------------------------------------------------------------------------ checks
    def _agreed(self, fn: Callable[[], Any]) -> Any:
        """Run a check on every process; if it fails anywhere, fail everywhere."""
        error: ChangeClipError | None = None
        result = None
        try:
            result = fn()
        except ChangeClipError as exc:
            error = exc
        if dd.any_true(self.ctx, error is not None):
            raise error or InputError("another training process failed its checks (see rank 0's message)")
        return result

    def prepare(self) -> None:
        """Every check before any work; nothing is written here."""
        from changeclip.inference.devices import resolve_device, resolve_precision

        cfg, ctx = self.cfg, self.ctx

        def run_dir_checks() -> None:
            if ctx.is_main:
                ck.check_run_dir(self.run_dir, cfg.resume, cfg.overwrite)
                ck.check_plotting()

        self._agreed(run_dir_checks)

        def device_checks() -> tuple[str, str]:
            device = dd.process_device(ctx, resolve_device(cfg.device))
            return device, resolve_precision(cfg.precision, device)

        self.device, self.precision = self._agreed(device_checks)
        self.data: TrainingData = self._agreed(lambda: load_training_data(cfg.datasets, cfg.crop))
        self.schedule = self._agreed(lambda: resolve_schedule(cfg, len(self.data.train), ctx.world_size))

        def start_checks() -> None:
            check_start(cfg.init, cfg.variant)
            if cfg.prompt_mode == "auto":
                path = Path(str(cfg.tagger_weights)).expanduser()
                if not path.is_file():
                    raise ModelError(f"--tagger-weights {path} does not exist; pass a local CLIP ViT-B/16 file "
                                     "(OpenAI ViT-B-16.pt or open_clip's open_clip_pytorch_model.bin)")

        self._agreed(start_checks)
        if cfg.resume:
            self.saved_state = self._agreed(lambda: ck.load_state(self.run_dir / ck.STATE))
            diffs = ck.resume_differences(self.saved_state["run"], self.run_record())
            if diffs:
                raise InputError(f"--resume refused: this run differs from the one in {self.run_dir}: "
                                 + "; ".join(diffs) + ". Resume with the original options, or start a new run")
            self.start = StartWeights(self._cfg_net(), {}, self.saved_state.get("start", {}))
        else:
            self.start = self._agreed(lambda: load_start(cfg.init, cfg.variant, cfg.seed))

    def _cfg_net(self) -> Any:
        from changeclip.model.config import PRESETS

        return PRESETS[self.cfg.variant]

    def run_record(self) -> dict[str, Any]:
        """The fields a resume must match (:data:`~changeclip.training.checkpoint.RESUME_MUST_MATCH`)."""
        c, s = self.cfg, self.schedule
        return {"variant": c.variant, "batch_size": s.batch_size, "global_batch": s.global_batch, "iters": s.iters,
                "crop": c.crop, "seed": c.seed, "lr": s.lr, "warmup": s.warmup, "weight_decay": c.weight_decay,
                "loss": c.loss, "class_weights": c.class_weights, "freeze": c.freeze,
                "encoder_lr_mult": c.encoder_lr_mult, "prompt_mode": c.prompt_mode,
                "prompt": " ".join((c.prompt or "").split()), "augment": c.augment, "data_sha256": self.data.sha256}

    def recipe(self) -> dict[str, Any]:
        """The recipe recorded in the weights metadata and config.json."""
        c, s = self.cfg, self.schedule
        return {"optimizer": "AdamW", "betas": [0.9, 0.999], "lr": s.lr, "weight_decay": c.weight_decay,
                "no_decay": "norm, relative_position_bias_table, absolute_pos_embed", "warmup": s.warmup,
                "schedule": "linear warm-up from 1e-6, then poly (power 1) to 0 at the last iteration",
                "iters": s.iters, "batch_size": s.batch_size, "accumulate": s.accumulate,
                "world_size": s.world_size, "global_batch": s.global_batch, "epochs": round(s.epochs, 3),
                "crop": c.crop, "loss": c.loss, "class_weights": c.class_weights, "freeze": c.freeze,
                "encoder_lr_mult": c.encoder_lr_mult, "augment": "official" if c.augment else "none",
                "prompt_mode": c.prompt_mode, "prompt": c.prompt, "precision": self.precision, "seed": c.seed,
                "select": c.select}

    # ------------------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        if ctx.is_main:
            ck.create_run_dir(self.run_dir, cfg.overwrite)
            if not cfg.resume:
                ck.write_json(self.run_dir / ck.CONFIG, {
                    "format": "changeclip-train-run", "changeclip": __version__, "options": cfg.to_dict(),
                    "schedule": self.schedule.to_dict(), "recipe": self.recipe(), "data": self.data.describe(),
                    "init": self.start.description, "device": self.device, "precision": self.precision,
                    "world_size": ctx.world_size})
        dd.barrier(ctx)
        if cfg.prompt_mode == "auto":
            self.tags = dd.broadcast_object(ctx, self._load_or_compute_tags() if ctx.is_main else None)  # type: ignore[assignment]
        self.prompts = TrainPrompts(cfg.prompt_mode, cfg.prompt, self.tags, self._cfg_net().prompt_length)
        if self.saved_state is not None:
            state = self.saved_state["model"]
        else:
            state = self.start.state_dict
        net = build_model_from_state_dict(self._cfg_net(), state, device=self.device)
        self.start.state_dict = {}  # the network holds the tensors now
        apply_freeze(net, cfg.freeze)
        self.channels_last = net.cfg.backbone == "rn50"
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
            for name, p in net.named_parameters():  # only convolution weights keep the channels-last layout:
                if p.ndim == 4 and not name.endswith(".weight"):  # their gradients come back in it (DDP buckets)
                    p.data = p.data.contiguous()
        self.net = net
        set_train_mode(net, cfg.freeze)
        self.model = dd.wrap(StepModule(net), ctx, self.device)
        self.optimizer = build_optimizer(net, self.schedule.lr, cfg.weight_decay, cfg.encoder_lr_mult,
                                         fused=self.device.startswith("cuda"))
        self.lr_schedule = WarmupPolySchedule(self.optimizer, self.schedule.iters, self.schedule.warmup)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.criterion = SegmentationLoss(cfg.loss, cfg.class_weights).to(self.device)
        self.batch_size, self.accumulate = self.schedule.batch_size, self.schedule.accumulate
        mean = torch.tensor(IMAGENET_MEAN * 2, dtype=torch.float32).view(1, 6, 1, 1)
        std = torch.tensor(IMAGENET_STD * 2, dtype=torch.float32).view(1, 6, 1, 1)
        self._mean, self._std = mean.to(self.device), std.to(self.device)
        if self.saved_state is not None:
            self._restore(self.saved_state)
            self.saved_state = None
        if self.device.startswith("cuda"):
            torch.backends.cudnn.benchmark = True

    def _restore(self, s: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(s["optimizer"])
        self.lr_schedule.load_state_dict(s["schedule"])
        if self.scaler is not None and s.get("scaler"):
            self.scaler.load_state_dict(s["scaler"])
        ck.set_rng_state(s["rng"])
        self.start_step = int(s["iteration"])
        self.best = s.get("best")
        self.last_val = s.get("last_val")
        self.bad_validations = int(s.get("bad_validations", 0))
        self.rows = list(s.get("history", []))
        self.batch_size = int(s["effective"]["batch_size"])
        self.accumulate = int(s["effective"]["accumulate"])
        self.rows.append({"kind": "resume", "iteration": self.start_step, "time": time.time()})
        if self.ctx.is_main:
            log.info("resuming %s at iteration %d of %d", self.run_dir, self.start_step, self.schedule.iters)

    def _load_or_compute_tags(self) -> dict[str, dict[str, Any]]:
        path = self.run_dir / ck.TAGS
        tiles = self.data.train + self.data.val
        if path.is_file():
            tags = json.loads(path.read_text(encoding="utf-8"))
            if all(t.key in tags for t in tiles):
                return tags
        tagger = load_tagger(str(self.cfg.tagger_weights), self.device)
        self.emit({"event": "note", "message": f"tagging {len(tiles)} tiles (both dates) once with the CLIP tagger"})
        tags = compute_tags(tiles, tagger)
        ck.write_json(path, tags)
        del tagger
        return tags

    def _loader(self, start_step: int) -> Any:
        from torch.utils.data import DataLoader

        self.plan = DistributedBatchPlan(len(self.data.train), self.batch_size, self.accumulate,
                                         self.ctx.world_size, self.ctx.rank, self.cfg.seed, start_step)
        dataset = TileDataset(self.data.train, self.cfg.crop, self.cfg.seed, self.cfg.augment)
        workers = self.cfg.workers
        loader = DataLoader(dataset, batch_sampler=self.plan, num_workers=workers, collate_fn=collate,
                            pin_memory=self.device.startswith("cuda"), worker_init_fn=_worker_init if workers else None,
                            prefetch_factor=2 if workers else None)
        return iter(loader)

    # ------------------------------------------------------------------------------ steps
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=_DTYPES[self.precision])

    def _micro(self, batch: dict[str, Any], step: int, micro: int) -> torch.Tensor:
        torch.manual_seed(self.plan.torch_seed(step, micro))
        x = batch["image"].to(self.device, non_blocking=True)
        y = batch["label"].to(self.device, non_blocking=True)
        x = (x - self._mean) / self._std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        tokens, ia, ib = self.prompts.tokens(batch["key"])
        tokens = tokens.to(self.device)
        ia = ia.to(self.device) if ia is not None else None
        ib = ib.to(self.device) if ib is not None else None
        last = micro == self.accumulate - 1
        sync = contextlib.nullcontext() if (last or not self.ctx.distributed) else self.model.no_sync()
        with sync:
            with self._autocast():
                logits = self.model(x, tokens, ia, ib)
            loss = self.criterion(logits, y)
            scaled = loss / self.accumulate
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return loss.detach()

    def _step(self, loader: Any, step: int) -> torch.Tensor:
        self.lr_schedule.apply(step)
        total = torch.zeros((), device=self.device)
        for micro in range(self.accumulate):
            total += self._micro(next(loader), step, micro)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total / self.accumulate

    def _first_step(self, step: int) -> tuple[Any, torch.Tensor]:
        """The first step, retried at half the batch and twice the accumulation after an out-of-memory."""
        while True:
            loader = self._loader(step)
            try:
                return loader, self._step(loader, step)
            except torch.OutOfMemoryError:
                self.optimizer.zero_grad(set_to_none=True)
                del loader
                if self.device.startswith("cuda"):
                    torch.cuda.empty_cache()
                if self.ctx.distributed:
                    raise ModelError(f"out of memory at the first step with --batch-size {self.batch_size} per "
                                     f"process; lower --batch-size and raise --accumulate to keep the effective "
                                     f"batch of {self.schedule.global_batch}") from None
                if self.batch_size < 2 or self.batch_size % 2:
                    raise ModelError(f"out of memory at the first step with batch {self.batch_size}; use a smaller "
                                     "(even) --batch-size with a larger --accumulate, --precision bf16/fp16, or a "
                                     "smaller --crop") from None
                self.batch_size //= 2
                self.accumulate *= 2
                self.note(f"out of memory at the first step: retrying with batch {self.batch_size} and accumulate "
                          f"{self.accumulate} (same effective batch of {self.schedule.global_batch})")

    # ------------------------------------------------------------------------------ validation
    def validate(self) -> dict[str, Any]:
        """Change metrics on the val split, through the predictor detect and eval use."""
        from changeclip.inference.predictor import ChangeCLIPPredictor, LoadedModel

        net = self.net
        net.eval()
        try:
            lm = LoadedModel(model=net, cfg=net.cfg, device=self.device, precision=self.precision,
                             weights_path=str(self.run_dir), weights_sha256="", source_format="training",
                             channels_last=self.channels_last)
            tagger = CachedTagger(self.tags, "tags.json") if self.cfg.prompt_mode == "auto" else None
            pred = ChangeCLIPPredictor(lm, self.cfg.prompt_mode, self.cfg.prompt, tagger=tagger,  # type: ignore[arg-type]
                                       batch_size=self.batch_size)
            cm = ConfusionMatrix()
            tiles = self.data.val[self.ctx.rank::self.ctx.world_size]
            i = 0
            while i < len(tiles):
                size = tiles[i].size
                group = []
                while i < len(tiles) and tiles[i].size == size and len(group) < self.batch_size:
                    group.append(tiles[i])
                    i += 1
                a = np.stack([read_image(t.before) for t in group])
                b = np.stack([read_image(t.after) for t in group])
                lab = np.stack([read_label(t.label) for t in group])
                logits = pred.predict_logits(a, b)
                cm.update(logits[:, 1] - logits[:, 0] > 0, lab == 1, valid=lab != 255)
        finally:
            set_train_mode(net, self.cfg.freeze)
        tp, fp, fn, tn = dd.sum_ints(self.ctx, [cm.tp, cm.fp, cm.fn, cm.tn])
        return val_report(ConfusionMatrix(tp, fp, fn, tn))

    # ------------------------------------------------------------------------------ checkpoints
    def weights_meta(self, step: int, val: dict[str, Any] | None) -> dict[str, Any]:
        """Metadata of the native weights files (read by ``weights info`` and detect's scale check)."""
        return {"source": "changeclip train", "variant": self.cfg.variant, "train_dataset": self.data.train_dataset,
                "train_gsd_m": self.data.gsd_m, "recipe": self.recipe(), "seed": self.cfg.seed,
                "data_sha256": self.data.sha256, "iteration": step,
                "val_metrics": {k: v for k, v in (val or {}).items() if k != "per_class"} or None,
                "init": self.start.description, "prompt_mode": self.cfg.prompt_mode, "prompt": self.cfg.prompt}

    def checkpoint(self, step: int, reason: str) -> None:
        """Write state.pt, last.safetensors, metrics.jsonl and curves.png (rank 0)."""
        if not self.ctx.is_main:
            return
        from changeclip.weights.native import save_weights

        state = {"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                 "schedule": self.lr_schedule.state_dict(), "iteration": step, "rng": ck.rng_state(),
                 "run": self.run_record(), "best": self.best, "last_val": self.last_val,
                 "bad_validations": self.bad_validations, "history": self.rows, "start": self.start.description,
                 "effective": {"batch_size": self.batch_size, "accumulate": self.accumulate}}
        ck.save_state(self.run_dir / ck.STATE, state)
        save_weights(self.net.state_dict(), self.net.cfg, self.run_dir / ck.LAST,
                     meta=self.weights_meta(step, self.last_val))
        ck.write_jsonl(self.run_dir / ck.METRICS, self.rows)
        ck.write_curves(self.run_dir / ck.CURVES, self.rows)
        self.emit({"event": "checkpoint", "iteration": step, "reason": reason})

    def _after_validation(self, step: int, val: dict[str, Any]) -> bool:
        """Record a validation, keep the best; returns True when early stopping triggers."""
        key = self.cfg.select
        score = val.get(key)
        score = -1.0 if score is None else float(score)
        best_score = -math.inf if self.best is None else float(self.best.get("score", -1.0))
        improved = score > best_score
        if improved:
            self.best = {"iteration": step, "score": score, "select": key,
                         **{k: val[k] for k in ("precision", "recall", "f1", "iou")}}
            self.bad_validations = 0
            if self.ctx.is_main:
                from changeclip.weights.native import save_weights

                save_weights(self.net.state_dict(), self.net.cfg, self.run_dir / ck.BEST,
                             meta=self.weights_meta(step, val))
        else:
            self.bad_validations += 1
        row = {"kind": "val", "iteration": step, "time": time.time(), "best": improved,
               **{k: v for k, v in val.items()}}
        self.rows.append(row)
        self.emit({"event": "val", **row})
        patience = self.cfg.patience
        return bool(patience and self.bad_validations >= patience)

    # ------------------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        """Train until the last iteration, early stopping or a cancel."""
        self._setup()
        s, cfg = self.schedule, self.cfg
        step = self.start_step
        self.emit({"event": "start", "iteration": step, "iters": s.iters, "schedule": s.to_dict(),
                   "device": self.device, "precision": self.precision, "world_size": self.ctx.world_size,
                   "run_dir": str(self.run_dir), "train_tiles": len(self.data.train),
                   "val_tiles": len(self.data.val)})
        status = "finished"
        loader = None
        window: list[torch.Tensor] = []
        t_window = time.perf_counter()
        step_seconds: list[float] = []
        val_seconds = 0.0
        try:
            while step < s.iters:
                t0 = time.perf_counter()
                if loader is None:
                    loader, loss = self._first_step(step)
                else:
                    loss = self._step(loader, step)
                step += 1
                window.append(loss)
                step_seconds.append(time.perf_counter() - t0)
                if step % cfg.log_every == 0 or step == s.iters:
                    mean_loss = dd.mean_float(self.ctx, float(torch.stack(window).mean().item()))
                    elapsed = time.perf_counter() - t_window
                    recent = step_seconds[-50:]
                    n_val_left = (s.iters - step) // s.val_every
                    eta = (s.iters - step) * (sum(recent) / len(recent)) + n_val_left * val_seconds
                    row = {"kind": "step", "iteration": step, "iters": s.iters, "loss": mean_loss,
                           "lr": self.optimizer.param_groups[0]["lr"], "epoch": round(self.plan.epoch_of(step), 4),
                           "pairs_per_s": len(window) * s.global_batch / max(elapsed, 1e-9), "eta_s": eta,
                           "last_val_f1": (self.last_val or {}).get("f1"), "time": time.time()}
                    self.rows.append(row)
                    self.emit({"event": "step", **row})
                    window, t_window = [], time.perf_counter()
                stop_early = False
                if step % s.val_every == 0 or step == s.iters:
                    tv = time.perf_counter()
                    self.last_val = self.validate()
                    val_seconds = time.perf_counter() - tv
                    stop_early = self._after_validation(step, self.last_val)
                    self.checkpoint(step, "validation")
                    t_window = time.perf_counter()
                if stop_early:
                    status = "early-stopped"
                    self.note(f"early stop at iteration {step}: {cfg.patience} validation(s) without a better "
                              f"change {cfg.select}")
                    break
                cancelled = dd.any_true(self.ctx, bool(self.cancel_cb and self.cancel_cb()))
                if cancelled and step < s.iters:
                    status = "interrupted"
                    self.rows.append({"kind": "interrupted", "iteration": step, "time": time.time()})
                    self.checkpoint(step, "interrupted")
                    break
        finally:
            del loader
        if status == "early-stopped" or step == s.iters:
            self.rows.append({"kind": "end", "status": status, "iteration": step, "time": time.time()})
            if self.ctx.is_main:
                ck.write_jsonl(self.run_dir / ck.METRICS, self.rows)
        dd.barrier(self.ctx)
        result = TrainResult(status, step, s.iters, str(self.run_dir), self.best, self.last_val, self.notes)
        self.emit({"event": "end", **result.to_dict()})
        return result


def _worker_init(_: int) -> None:
    """Data workers ignore Ctrl-C: the main process handles it and saves a checkpoint."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
