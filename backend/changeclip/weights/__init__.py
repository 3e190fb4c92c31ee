"""ChangeCLIP weights: one entry point, :func:`load_weights`, for every supported file format.

Modules: ``seeded.py`` (the parity kit's deterministic weights), ``native.py`` (our safetensors
format with the configuration inside), ``official.py`` + ``safe_unpickle.py`` (the authors'
mmengine ``.pth`` checkpoints, read without executing them), ``clip_init.py`` (a training
start point from OpenAI CLIP weights), ``checks.py`` (key/shape comparison, variant detection),
``training_data.py`` (the imagery a file was trained on, and the scale warning worded from it).

Formats :func:`load_weights` reads:

* **native** ``.safetensors`` (network configuration as JSON in its metadata) - what
  ``changeclip weights convert`` writes;
* **official** mmengine ``.pth`` as released by the ChangeCLIP authors.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from changeclip.errors import ModelError
from changeclip.model.config import ChangeCLIPConfig
from changeclip.preflight import regular_file_problem
from changeclip.weights.checks import check_variant, diff_state_dict, require_variant

log = logging.getLogger(__name__)

__all__ = ["LoadedWeights", "detect_format", "file_sha256", "is_random", "load_weights"]


@dataclass
class LoadedWeights:
    """A weights file read into memory.

    Attributes:
        cfg: Network configuration the state dict belongs to.
        state_dict: Official key names -> CPU tensors.
        source_format: ``"native"`` or ``"official"``.
        sha256: Hex SHA-256 of the file.
        meta: JSON-compatible metadata (training info of official files, provenance of
            native ones; seeded test weights say they are random).
        path: The file read.
    """

    cfg: ChangeCLIPConfig
    state_dict: dict[str, torch.Tensor]
    source_format: str
    sha256: str
    meta: dict[str, Any] = field(default_factory=dict)
    path: str = ""


def is_random(meta: Mapping[str, Any]) -> bool:
    """True for seeded random weights (tests and demos), whose change maps are meaningless."""
    return bool(meta.get("random")) or meta.get("source") == "seeded"


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def detect_format(path: str | Path) -> str:
    """``"native"`` (safetensors) or ``"official"`` (torch pickle/zip) from the file's first bytes.

    Raises:
        ModelError: missing, empty or unrecognised file.
    """
    p = Path(path)
    problem = regular_file_problem(p)
    if problem:
        raise ModelError(f"weights file {p} {problem}; pass the path of a ChangeCLIP .safetensors or "
                         "official .pth file")
    with p.open("rb") as fh:
        head = fh.read(16)
    if len(head) < 8:
        raise ModelError(f"weights file {p} is empty or truncated ({len(head)} bytes)")
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "official"
    (header_len,) = struct.unpack("<Q", head[:8])
    if head[8:9] == b"{" and 2 <= header_len < 100_000_000:
        return "native"
    # say what the file looks like in words: raw bytes mean nothing to a user (and end up in the dock)
    looks = "text" if all(32 <= b < 127 or b in b"\t\r\n" for b in head) else "binary data"
    raise ModelError(f"{p} is neither a safetensors file nor a PyTorch checkpoint: it starts with {looks} that "
                     "is neither a safetensors header nor a PyTorch zip/pickle signature (a different file, a web "
                     "page saved instead of the download, or a damaged download); pass a ChangeCLIP .safetensors "
                     "file or an official .pth checkpoint")


def _load_native(path: Path) -> tuple[ChangeCLIPConfig, dict[str, torch.Tensor], dict[str, Any]]:
    from changeclip.weights.native import load_native

    try:
        return load_native(path)
    except ModelError:
        raise
    except Exception as exc:  # safetensors' SafetensorError, OSError, JSON errors: the file is bad
        raise ModelError(f"{path.name} is a corrupt or truncated safetensors file ({type(exc).__name__}: {exc}); "
                         "copy or convert it again") from exc


def load_weights(path: str | Path, variant: str = "auto") -> LoadedWeights:
    """Read a ChangeCLIP weights file of any supported format and check it fits its network.

    Args:
        path: Native ``.safetensors`` or official mmengine ``.pth``.
        variant: ``auto`` (detect), ``rn50`` or ``vit-b-16`` (also ``tiny-rn50``/``tiny-vit``).

    Returns:
        The configuration, state dict, format, file hash and metadata.

    Raises:
        ModelError: missing file; truncated/corrupt file; a checkpoint of another model (the
            message lists missing/unexpected keys with counts); variant mismatch; forbidden
            pickle content (named; nothing executed).
    """
    check_variant(variant)
    p = Path(path).expanduser()
    fmt = detect_format(p)
    if fmt == "native":
        cfg, state, meta = _load_native(p)
        diff = diff_state_dict(cfg, state)
        if not diff.ok:
            raise ModelError(f"{p.name} does not fit the {cfg.name} network stored in it: {diff.describe()}")
        require_variant(cfg, variant, p.name)
    else:
        from changeclip.weights.official import load_official

        cfg, state, meta = load_official(p, variant)
    return LoadedWeights(cfg=cfg, state_dict=state, source_format=fmt, sha256=file_sha256(p),
                         meta=dict(meta or {}), path=str(p))
