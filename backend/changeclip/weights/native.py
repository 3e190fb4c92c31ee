"""Our own weights format: one ``.safetensors`` file that also says which network it is for.

The safetensors header metadata (string to string) holds:

* ``format`` = ``"changeclip-native"``;
* ``format_version`` = ``"1"``;
* ``config`` = the :class:`~changeclip.model.config.ChangeCLIPConfig` as JSON;
* ``meta`` = optional free JSON object (provenance: source checkpoint, sha256, dataset, ...).

Tensors are the network's state dict under the official key names. Files are written under a
temporary name in the target folder and renamed at the end, so a final name never holds a
half-written file.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from changeclip.errors import ModelError
from changeclip.model.config import ChangeCLIPConfig

LOG = logging.getLogger(__name__)

FORMAT_TAG = "changeclip-native"
FORMAT_VERSION = 1


def _check_fits(state_dict: Mapping[str, torch.Tensor], cfg: ChangeCLIPConfig) -> None:
    from changeclip.model import build_model

    expected = {k: tuple(v.shape) for k, v in build_model(cfg, device="meta").state_dict().items()}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [k for k in expected if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        raise ModelError(
            f"state dict does not fit the {cfg.name!r} configuration: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, wrong shape {wrong[:3]} (of {len(missing)}/{len(unexpected)}/{len(wrong)})"
        )


def save_weights(
    state_dict: Mapping[str, torch.Tensor],
    cfg: ChangeCLIPConfig,
    path: str | os.PathLike[str],
    meta: Mapping[str, Any] | None = None,
    validate: bool = True,
) -> Path:
    """Write a native weights file atomically.

    Args:
        state_dict: Network state dict (official key names).
        cfg: The configuration the weights are for (stored inside the file).
        path: Destination ``.safetensors`` path; its folder must exist.
        meta: Optional JSON-serialisable provenance information.
        validate: Check that keys and shapes fit ``cfg`` before writing.

    Returns:
        The final path.

    Raises:
        ModelError: the state dict does not fit ``cfg``, or ``meta`` is not JSON-serialisable.
        InputError-free OSError subclasses are re-raised as ModelError with the path.
    """
    final = Path(path)
    if validate:
        _check_fits(state_dict, cfg)
    try:
        meta_json = json.dumps(dict(meta or {}), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"weights meta must be JSON-serialisable: {exc}") from exc
    metadata = {
        "format": FORMAT_TAG,
        "format_version": str(FORMAT_VERSION),
        "config": cfg.to_json(),
        "meta": meta_json,
    }
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in state_dict.items():
        t = value.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel() > 0:
            t = t.clone()  # safetensors refuses tensors that share memory
        seen.add(t.untyped_storage().data_ptr())
        tensors[key] = t
    if not final.parent.is_dir():
        raise ModelError(f"cannot write weights to {final}: folder {final.parent} does not exist")
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, final)
    except OSError as exc:
        raise ModelError(f"cannot write weights to {final}: {exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    LOG.info("wrote %d tensors for %s to %s", len(tensors), cfg.name, final)
    return final


def read_native_header(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata of a native weights file, without reading the tensors.

    Raises:
        ModelError: missing file, not a safetensors file, or not a ChangeCLIP native file.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"weights file {p} does not exist")
    try:
        with safe_open(str(p), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ModelError(f"{p} is not a readable .safetensors file ({exc})") from exc
    tag = metadata.get("format")
    if tag != FORMAT_TAG:
        raise ModelError(
            f"{p} is a safetensors file but not ChangeCLIP native weights (format tag {tag!r}, expected "
            f"{FORMAT_TAG!r}); convert official checkpoints with `changeclip weights convert`"
        )
    version = metadata.get("format_version", "")
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise ModelError(
            f"{p} has native format version {version!r}; this backend reads versions <= {FORMAT_VERSION}"
        )
    return metadata


def load_native(path: str | os.PathLike[str]) -> tuple[ChangeCLIPConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Read a native weights file.

    Args:
        path: File written by :func:`save_weights`.

    Returns:
        (configuration, state dict on CPU, meta dict).

    Raises:
        ModelError: missing file, not a safetensors file, wrong format tag or version, or a bad
            embedded configuration.
    """
    p = Path(path)
    metadata = read_native_header(p)
    try:
        cfg = ChangeCLIPConfig.from_json(metadata.get("config", ""))
    except ModelError as exc:
        raise ModelError(f"{p}: embedded configuration is invalid: {exc}") from exc
    try:
        meta = json.loads(metadata.get("meta", "{}") or "{}")
    except json.JSONDecodeError as exc:
        raise ModelError(f"{p}: embedded meta is not valid JSON: {exc}") from exc
    try:
        state_dict = load_file(str(p), device="cpu")
    except Exception as exc:  # truncated data section and similar
        raise ModelError(f"{p}: cannot read the tensors ({exc})") from exc
    return cfg, state_dict, meta
