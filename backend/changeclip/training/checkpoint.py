"""The run folder: its files, atomic writes, the resumable ``state.pt`` and the resume checks.

RUN_DIR holds::

    config.json        every option, the resolved schedule, the data summary (written at the start)
    state.pt           everything --resume needs: network, optimizer, grad scaler, schedule,
                       iteration, RNG states, best score, metrics history
    last.safetensors   native weights of the last checkpoint (metadata: variant, train_dataset,
                       train_gsd_m, recipe, seed, data hash, val metrics)
    best.safetensors   the same for the best validation (change F1, or IoU with --select iou)
    metrics.jsonl      one JSON line per log step and per validation, up to the last checkpoint
    curves.png         loss and val F1/IoU against iteration
    tags.json          --prompt-mode auto only: the tagger's tags of every tile, per date

Every file is written under a temporary name in RUN_DIR, flushed to disk and renamed, so a
``kill -9`` at any moment leaves the previous version of each file complete. ``state.pt`` is
self-contained (it holds the network too) and is written before ``last.safetensors``: a resume
never mixes files of two checkpoints.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from changeclip.errors import InputError

CONFIG = "config.json"
STATE = "state.pt"
LAST = "last.safetensors"
BEST = "best.safetensors"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
TAGS = "tags.json"
RUN_FILES = (CONFIG, STATE, LAST, BEST, METRICS, CURVES, TAGS)
STATE_FORMAT = "changeclip-train-state"
STATE_VERSION = 1

RESUME_MUST_MATCH = ("variant", "batch_size", "global_batch", "iters", "crop", "seed", "lr", "warmup",
                     "weight_decay", "loss", "class_weights", "freeze", "encoder_lr_mult", "prompt_mode", "prompt",
                     "augment", "data_sha256")
"""What a resumed run must share with the interrupted one (anything else would silently make a
different run): compared field by field, and each difference named."""


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems refuse fsync on directories
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, write: Callable[[Any], None], binary: bool = True) -> Path:
    """Write ``path`` through ``write(fh)`` under a temporary name, fsync, rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def write_json(path: Path, data: Any) -> Path:
    """Atomic JSON file (indented, newline at the end)."""
    return atomic_write(path, lambda fh: fh.write(json.dumps(data, indent=1, sort_keys=True) + "\n"), binary=False)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Atomic JSON-lines file."""
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    return atomic_write(path, lambda fh: fh.write(text), binary=False)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file ([] when missing)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_run_dir(path: Path, resume: bool, overwrite: bool) -> None:
    """Check RUN_DIR can be used as asked, without writing anything.

    Raises:
        InputError: a file, an existing run without --overwrite/--resume, --resume without a
            resumable run, or a location this user cannot write.
    """
    if path.exists() and not path.is_dir():
        raise InputError(f"RUN_DIR {path} is a file; give a folder")
    if resume:
        if not (path / STATE).is_file():
            raise InputError(f"--resume: {path} holds no {STATE} to resume from; start a new run without --resume")
    elif path.is_dir() and any(path.iterdir()) and not overwrite:
        raise InputError(f"RUN_DIR {path} already exists and is not empty; pass --resume to continue its run, "
                         "--overwrite to replace it, or choose another -o folder")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise InputError(f"cannot create RUN_DIR {path}: {base} is not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise InputError(f"cannot write RUN_DIR {path}: no write permission on {base}; choose another -o folder")


def create_run_dir(path: Path, overwrite: bool) -> None:
    """Create RUN_DIR; with ``overwrite`` remove the previous run's files (only those).

    Temporary files a killed run left behind (``.NAME.tmp-PID``) are removed too: the files they
    were meant to replace are complete.
    """
    path.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        for stale in path.glob(f".{name}.tmp-*"):
            stale.unlink(missing_ok=True)
        if overwrite:
            (path / name).unlink(missing_ok=True)


def rng_state() -> dict[str, Any]:
    """Every global generator's state (torch CPU and CUDA, numpy, Python)."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])


def save_state(path: Path, state: dict[str, Any]) -> Path:
    """Atomic ``torch.save`` of the resumable state."""
    payload = {"format": STATE_FORMAT, "format_version": STATE_VERSION, **state}
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    return atomic_write(path, lambda fh: fh.write(data))


def load_state(path: Path) -> dict[str, Any]:
    """Read ``state.pt`` onto the CPU (``map_location="cpu"``; only tensors and plain data).

    Raises:
        InputError: unreadable, truncated or not a training state.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle errors: the file is not usable
        raise InputError(f"cannot read {path} ({type(exc).__name__}: {exc}); it is not a complete training state. "
                         "Start a new run (--overwrite)") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise InputError(f"{path} is not a changeclip training state")
    if state.get("format_version") != STATE_VERSION:
        raise InputError(f"{path} has training-state version {state.get('format_version')!r}; this backend reads "
                         f"{STATE_VERSION}")
    return state


def resume_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between the interrupted run and this one, among :data:`RESUME_MUST_MATCH`."""
    out = []
    for key in RESUME_MUST_MATCH:
        if saved.get(key) != current.get(key):
            out.append(f"{key}: {saved.get(key)!r} in the run, {current.get(key)!r} now")
    return out


def check_plotting() -> None:
    """Raise before any work when matplotlib (for ``curves.png``) is missing."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise InputError("changeclip train draws curves.png with matplotlib, which is not installed in this "
                         "Python: pip install 'matplotlib>=3.6' (Debian: apt install python3-matplotlib)")


def write_curves(path: Path, rows: list[dict[str, Any]]) -> Path:
    """``curves.png``: training loss and validation F1/IoU of the change class against iteration."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    steps = [r for r in rows if r.get("kind") == "step"]
    vals = [r for r in rows if r.get("kind") == "val"]
    fig = Figure(figsize=(9, 3.6), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot([r["iteration"] for r in steps], [r["loss"] for r in steps], lw=1,
             marker="." if len(steps) < 50 else None)
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("training loss")
    ax1.grid(alpha=0.3)
    for key, label in (("f1", "change F1"), ("iou", "change IoU")):
        pts = [(r["iteration"], r[key]) for r in vals if r.get(key) is not None]
        ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=label)
    ax2.set_xlabel("iteration")
    ax2.set_ylabel("validation")
    ax2.set_ylim(0, 1)
    ax2.grid(alpha=0.3)
    ax2.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    return atomic_write(path, lambda fh: fh.write(data))
