"""What a weights file is, read without torch: for the dock's line under the weights field.

A native ``.safetensors`` file starts with an 8-byte little-endian header length and a JSON
header whose ``__metadata__`` holds, as written by the backend's
``changeclip.weights.native.save_weights``: ``format`` = ``changeclip-native``, ``config`` (the
network configuration as JSON, with its ``name``) and ``meta`` (free JSON: ``random`` for
seeded test weights, ``train_dataset`` / ``train_gsd_m`` for the training imagery). Only the
header is read (a few kB), never the tensors. Official ``.pth`` checkpoints are pickles the
plugin does not open; the backend identifies them when it loads them.

A test in ``tests/backend/weights`` writes files with the backend and reads them with this
module, so that both sides keep agreeing on these keys.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

NATIVE_FORMAT = "changeclip-native"
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the header size


@dataclass(frozen=True)
class WeightsSummary:
    """What the dock says about a weights file.

    Attributes:
        text: One line for the user, e.g. ``rn50 · trained on LEVIR-CD at 0.5 m/px``.
        warning: True when the file is unusable or holds random test weights.
    """

    text: str
    warning: bool = False


def _header(path: Path) -> dict:
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise ValueError("the file is too short to be a safetensors file")
        (size,) = struct.unpack("<Q", raw)
        if not 0 < size <= _MAX_HEADER:
            raise ValueError("it has no valid safetensors header")
        header = json.loads(fh.read(size).decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("its safetensors header is not a JSON object")
    return header


def unreadable_reason(path: str) -> str | None:
    """Why ``path`` cannot be a weights file at all, in words (None when it may be one).

    A ``.safetensors`` file needs a readable header; a ``.pth``/``.pt`` checkpoint starts with a
    zip (``PK``) or pickle (``0x80``) signature, as the backend checks. Files that are readable but
    not native ChangeCLIP weights are left to the backend (it identifies official checkpoints).
    """
    p = Path(path).expanduser()
    try:
        if p.suffix.lower() in (".pth", ".pt"):
            with p.open("rb") as fh:
                head = fh.read(2)
            if head[:2] != b"PK" and head[:1] != b"\x80":
                return "it is not a PyTorch checkpoint (no zip or pickle signature at its start)"
            return None
        _header(p)
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    except UnicodeDecodeError:
        return "its safetensors header is not text"
    except ValueError as exc:
        return str(exc) if str(exc).startswith(("it ", "its ", "the file")) else "its safetensors header is not JSON"
    return None


def summarize_weights(path: str) -> WeightsSummary:
    """A one-line description of ``path`` (never raises: problems become a warning line)."""
    p = Path(path).expanduser()
    if not p.is_file():
        return WeightsSummary(f"{p.name or path}: no such file", warning=True)
    if p.suffix.lower() in (".pth", ".pt"):
        return WeightsSummary("official checkpoint: the backend identifies its network when it loads it")
    try:
        metadata = _header(p).get("__metadata__") or {}
        if metadata.get("format") != NATIVE_FORMAT:
            return WeightsSummary(f"{p.name} is not ChangeCLIP weights (convert official checkpoints with "
                                  "`changeclip weights convert`)", warning=True)
        name = json.loads(metadata.get("config") or "{}").get("name") or "unknown network"
        meta = json.loads(metadata.get("meta") or "{}")
    except (OSError, ValueError, UnicodeDecodeError, AttributeError) as exc:
        return WeightsSummary(f"{p.name} cannot be read as ChangeCLIP weights ({exc})", warning=True)
    if meta.get("random") or meta.get("source") == "seeded":
        return WeightsSummary(f"{name} · RANDOM test weights: their change maps are meaningless", warning=True)
    dataset, gsd = meta.get("train_dataset"), meta.get("train_gsd_m")
    try:
        gsd = float(gsd) if gsd is not None else None
    except (TypeError, ValueError):
        gsd = None  # a hand-edited value: unknown, as the backend treats it
    if gsd is not None and gsd > 0:
        where = f"{dataset} at {gsd:g} m/px" if dataset else f"{gsd:g} m/px imagery"
        return WeightsSummary(f"{name} · trained on {where}")
    if dataset:
        return WeightsSummary(f"{name} · trained on {dataset}")
    return WeightsSummary(f"{name} · training imagery unknown (no scale check)")


def weights_variant(path: str) -> str | None:
    """The network (``rn50``, ``vit-b-16``, ``tiny-rn50``, ``tiny-vit``) a native weights file holds,
    or ``None`` when it cannot be told without the backend (official ``.pth`` files, unreadable files)."""
    p = Path(path).expanduser()
    try:
        metadata = _header(p).get("__metadata__") or {}
        if metadata.get("format") != NATIVE_FORMAT:
            return None
        name = json.loads(metadata.get("config") or "{}").get("name")
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return None
    return str(name) if name else None
