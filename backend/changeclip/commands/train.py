"""``changeclip train``: train or fine-tune ChangeCLIP on dataset folders (see docs/training.md).

A thin layer over :func:`changeclip.training.train`: options -> :class:`TrainConfig`, a progress
bar (or ``--json`` lines), and SIGINT/SIGTERM -> a resumable checkpoint and a clean exit (130).
Works the same under ``torchrun --nproc-per-node=G -m changeclip train ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from changeclip.errors import InputError


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, e.g. 1,5; got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    from changeclip.training.config import (
        FREEZE_CHOICES,
        LOSSES,
        PRECISIONS,
        PROMPT_MODES,
        RECIPES,
        SELECT,
        VARIANTS,
        WEIGHT_DECAY,
    )

    rn, vit = RECIPES["rn50"], RECIPES["vit-b-16"]
    p = subparsers.add_parser(
        "train", help="train or fine-tune ChangeCLIP on dataset folders (official recipe, resumable, multi-GPU)",
        description="Train ChangeCLIP on one or more dataset folders made by 'changeclip dataset'. Defaults are the "
                    "official recipe of the variant (AdamW, warm-up + poly decay to 0 at the last iteration, CE with "
                    "255 ignored, 256 px crops, the official augmentations). Writes RUN_DIR/best.safetensors and "
                    "last.safetensors (native weights for detect/eval), state.pt (resume), metrics.jsonl, "
                    "config.json and curves.png. Many GPUs: torchrun --nproc-per-node=G -m changeclip train ...")
    p.add_argument("datasets", nargs="*", metavar="DATASET_DIR",
                   help="dataset folder(s) with dataset.json (optional with --resume: taken from the run)")
    p.add_argument("-o", "--output", dest="run_dir", required=True, metavar="RUN_DIR", help="the run folder")
    p.add_argument("--variant", choices=VARIANTS, default=None,
                   help="network: rn50, vit-b-16 (official) or tiny-rn50/tiny-vit (tests)")
    p.add_argument("--init", default=None, metavar="clip:FILE|clip:openai|weights:FILE|scratch",
                   help="start point: weights:FILE fine-tunes ChangeCLIP weights (native or official .pth; "
                        "recommended), clip:FILE / clip:openai starts from OpenAI CLIP as the official training, "
                        "scratch from a seeded random network")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--iters", type=int, default=None, metavar="N",
                        help=f"optimizer steps (default: {rn.iters} rn50, {vit.iters} vit-b-16)")
    length.add_argument("--epochs", type=float, default=None, metavar="E",
                        help="passes over the training tiles instead of --iters")
    p.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help=f"tiles per GPU/process (default {rn.batch_size} rn50, {vit.batch_size} vit-b-16)")
    p.add_argument("--accumulate", type=int, default=None, metavar="K",
                   help=f"micro-batches per step (default: the official effective batch, {rn.effective_batch} rn50 / "
                        f"{vit.effective_batch} vit-b-16, over batch x processes)")
    p.add_argument("--lr", type=float, default=None, help=f"base learning rate (default {rn.lr:g})")
    p.add_argument("--weight-decay", type=float, default=None, help=f"AdamW weight decay (default {WEIGHT_DECAY})")
    p.add_argument("--warmup", type=int, default=None, metavar="N",
                   help=f"linear warm-up iterations (default {rn.warmup}, at most a tenth of the run)")
    p.add_argument("--crop", type=int, default=None, help="training crop in px, multiple of 32 (default 256)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="auto: bf16 autocast on GPUs with bf16, fp16 + grad scaler on others, fp32 on the CPU")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--prompt-mode", choices=PROMPT_MODES, default=None,
                   help="none: constant prompts; words: --prompt words; auto: each date's CLIP tags (needs "
                        "--tagger-weights; tags are cached in RUN_DIR). Default none")
    p.add_argument("--prompt", default=None, metavar="WORDS", help="words of the foreground prompt (words/auto)")
    p.add_argument("--tagger-weights", metavar="FILE", help="CLIP ViT-B/16 weights for --prompt-mode auto")
    p.add_argument("--freeze", choices=FREEZE_CHOICES, default=None,
                   help="parts not trained (default none, as officially)")
    p.add_argument("--encoder-lr-mult", type=float, default=None, metavar="M",
                   help="learning-rate factor of the image encoder (default 1 as officially; 0.1 is a common "
                        "choice when fine-tuning on little data)")
    p.add_argument("--loss", choices=LOSSES, default=None, help="ce (official) or ce+dice (sparse change)")
    p.add_argument("--class-weights", type=_floats, default=None, metavar="W0,W1",
                   help="cross-entropy weights of no change and change, e.g. 1,5")
    p.add_argument("--val-every", type=int, default=None, metavar="N",
                   help=f"validate (and checkpoint) every N iterations (default {rn.val_every})")
    p.add_argument("--patience", type=int, default=None, metavar="P",
                   help="stop after P validations without a better score (default: never)")
    p.add_argument("--select", choices=SELECT, default=None, help="best checkpoint by change f1 or iou (default f1)")
    p.add_argument("--seed", type=int, default=None, help="seed of data order, augmentations and init (default 0)")
    p.add_argument("--workers", type=int, default=None, help="data-loading processes (default 2)")
    p.add_argument("--no-augment", action="store_true", default=None, help="no augmentations (debugging, overfitting tests)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its state.pt")
    p.add_argument("--overwrite", action="store_true", help="replace the run in RUN_DIR")
    p.add_argument("--json", action="store_true", help="print progress as JSON lines on stdout, not a bar")
    p.set_defaults(func=run)


_OPTION_FIELDS = ("iters", "epochs", "batch_size", "accumulate", "lr", "weight_decay", "warmup", "crop", "precision",
                  "device", "prompt_mode", "prompt", "tagger_weights", "freeze", "encoder_lr_mult", "loss",
                  "class_weights", "val_every", "patience", "select", "seed", "workers")
"""TrainConfig fields set by the option of the same name (None = not given on the command line)."""


def _saved_options(run_dir: str) -> dict[str, Any]:
    """The options of the run in RUN_DIR (its config.json), or {} when there is none."""
    path = Path(run_dir).expanduser() / "config.json"
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text(encoding="utf-8"))["options"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"--resume: cannot read {path} ({exc}); it is not a changeclip run folder") from None


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`TrainConfig` of parsed arguments.

    With ``--resume``, every option not given on the command line comes from the run's
    config.json, so ``changeclip train -o RUN_DIR --resume`` continues a run as it was started;
    options that are given are checked against the run (a resume that would change the run is
    refused by the trainer).
    """
    from changeclip.training.config import TrainConfig

    given: dict[str, Any] = {f: getattr(args, f) for f in _OPTION_FIELDS if getattr(args, f) is not None}
    if args.no_augment is not None:
        given["augment"] = not args.no_augment
    if args.datasets:
        given["datasets"] = [str(Path(d).expanduser().resolve()) for d in args.datasets]
    if args.variant:
        given["variant"] = args.variant
    if args.init:
        given["init"] = args.init
    base: dict[str, Any] = {}
    if args.resume:
        base = {k: v for k, v in _saved_options(args.run_dir).items() if k not in ("resume", "overwrite", "run_dir")}
    else:
        missing = [o for o, k in (("DATASET_DIR", "datasets"), ("--variant", "variant"), ("--init", "init"))
                   if k not in given]
        if missing:
            raise InputError(f"train needs {', '.join(missing)} (only --resume takes them from the run)")
    merged = {**base, **given}
    merged.setdefault("datasets", [])
    merged.setdefault("variant", "")
    merged.setdefault("init", "")
    known = set(TrainConfig.__dataclass_fields__)
    return TrainConfig(**{k: v for k, v in merged.items() if k in known}, run_dir=args.run_dir, resume=args.resume,
                       overwrite=args.overwrite)


def _fmt_time(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "--:--"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


class ProgressPrinter:
    """Progress on stderr (a bar redrawn in place on a terminal, one line per log step otherwise)
    or, with ``--json``, one JSON object per event on stdout."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.tty = sys.stderr.isatty()
        self.t0 = time.monotonic()

    def __call__(self, event: dict[str, Any]) -> None:
        if self.as_json:
            sys.stdout.write(json.dumps(event, sort_keys=True, default=str) + "\n")
            sys.stdout.flush()
            return
        kind = event.get("event")
        if kind == "step":
            done, total = event["iteration"], event["iters"]
            width = 24
            fill = int(width * done / max(total, 1))
            line = (f"[{'#' * fill}{'.' * (width - fill)}] {done}/{total} loss {event['loss']:.4f} "
                    f"lr {event['lr']:.2e} val F1 {_pct(event.get('last_val_f1'))} "
                    f"{event['pairs_per_s']:.1f} pairs/s ETA {_fmt_time(event.get('eta_s'))}")
            sys.stderr.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        elif kind == "val":
            pc = event["per_class"]
            text = (f"validation at {event['iteration']}: change P {_pct(event['precision'])} R "
                    f"{_pct(event['recall'])} F1 {_pct(event['f1'])} IoU {_pct(event['iou'])} | no change F1 "
                    f"{_pct(pc['no change']['f1'])} IoU {_pct(pc['no change']['iou'])} | predicted change "
                    f"{_pct(event['predicted_change_share'])} % of pixels (reference "
                    f"{_pct(event['reference_change_share'])} %){'  * best' if event.get('best') else ''}")
            sys.stderr.write(("\n" if self.tty else "") + text + "\n")
        elif kind == "note":
            sys.stderr.write(("\n" if self.tty else "") + f"note: {event['message']}\n")
        elif kind == "start":
            s = event["schedule"]
            sys.stderr.write(f"training {event['train_tiles']} tiles ({event['val_tiles']} for validation) on "
                             f"{event['device']} x {event['world_size']}, {event['precision']}: {s['iters']} iterations "
                             f"of {s['global_batch']} tiles (batch {s['batch_size']} x accumulate {s['accumulate']} x "
                             f"{s['world_size']} process(es)) = {s['epochs']:.1f} epochs, from iteration "
                             f"{event['iteration']}; run folder {event['run_dir']}\n")
        sys.stderr.flush()


class StopSignals:
    """SIGINT/SIGTERM set a flag (the trainer then checkpoints and stops) instead of killing the run;
    a second signal restores the default behaviour (a second Ctrl-C kills at once)."""

    def __init__(self, verbose: bool = True) -> None:
        self.verbose = verbose
        self.stop = False
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.stop = True
        self.signal_name = signal.Signals(signum).name
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
        if self.verbose:
            sys.stderr.write(f"\n{self.signal_name}: saving a resumable checkpoint after this iteration "
                             "(signal again to stop at once)\n")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __call__(self) -> bool:
        return self.stop


def run(args: argparse.Namespace) -> int:
    """Train; exit 0 when finished or stopped early, 130 when interrupted (resumable)."""
    from changeclip.training import train

    config = config_from_args(args)
    printer = ProgressPrinter(args.json)
    main_process = os.environ.get("RANK", "0") in ("", "0")  # under torchrun only rank 0 reports
    with StopSignals(verbose=main_process) as stop:
        result = train(config, progress_cb=printer, cancel_cb=stop)
    if not main_process:
        return 130 if result.status == "interrupted" else 0
    out = result.to_dict()
    if args.json:
        sys.stdout.write(json.dumps({"event": "result", **out}, sort_keys=True) + "\n")
    else:
        best = result.best
        if best:
            sys.stderr.write(f"\nbest: change F1 {_pct(best['f1'])} IoU {_pct(best['iou'])} at iteration "
                             f"{best['iteration']} -> {result.run_dir}/best.safetensors\n")
    if result.status == "interrupted":
        sys.stderr.write(f"interrupted at iteration {result.iteration} of {result.iters}; continue with the same "
                         f"command plus --resume\n")
        return 130
    if result.status == "early-stopped":
        sys.stderr.write(f"stopped early at iteration {result.iteration} (no better validation for --patience "
                         f"{config.patience} validations)\n")
    return 0
