"""The network exported to ONNX for the CPU runtimes, cached per weights file and verified on every use.

The graph takes the image pair and the two dates' text features (``x`` (B, 6, H, W), ``text_a`` and
``text_b`` (B, 2, D)) and returns ``logits`` (B, 2, H, W): the text encoder stays in PyTorch, because
its output is cached per prompt string. The batch is dynamic; the tile size is fixed per graph (the
Swin decoder's shifted-window mask depends on it), so each tile size has its own file.

Cache layout, in :func:`cache_root` (``$CHANGECLIP_CACHE_DIR``, else ``$XDG_CACHE_HOME/changeclip``,
else ``~/.cache/changeclip``)::

    runtime/<weights sha256>/<runtime>-<runtime version>/<variant>-<H>x<W>-<kind>.onnx
    runtime/<weights sha256>/<runtime>-<runtime version>/<variant>-<H>x<W>-<kind>.onnx.manifest.json

The manifest next to each graph records the graph's own SHA-256, the weights' SHA-256, the torch
and runtime versions and how long the build took. An entry is used only when the manifest matches
the request and the file's hash matches the manifest; anything else (missing manifest, truncated
or edited file, other versions) is logged and rebuilt, never trusted. Files are written under a
temporary name and renamed, so an interrupted build leaves no entry behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from changeclip.errors import ModelError

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_VERSION = 1
INPUT_NAMES = ("x", "text_a", "text_b")
OUTPUT_NAME = "logits"


def cache_root() -> Path:
    """The backend's cache folder (created on demand by the callers)."""
    explicit = os.environ.get("CHANGECLIP_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "changeclip"


def entry_folder(weights_sha256: str, runtime: str, runtime_version: str) -> Path:
    """Folder of one weights file's graphs for one runtime version."""
    return cache_root() / "runtime" / weights_sha256 / f"{runtime}-{runtime_version}"


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified(path: Path, expect: dict[str, Any]) -> tuple[bool, str]:
    """Whether the cached graph ``path`` can be used.

    Args:
        path: The graph file.
        expect: Manifest fields that must match (weights hash, versions, tile size...).

    Returns:
        ``(True, "")`` or ``(False, why)``.
    """
    manifest_path = Path(str(path) + MANIFEST_SUFFIX)
    if not path.is_file():
        return False, "not built yet"
    if not manifest_path.is_file():
        return False, "its manifest is missing"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return False, f"its manifest is unreadable ({exc})"
    if not isinstance(manifest, dict):
        return False, "its manifest is not a JSON object"
    for key, value in expect.items():
        if manifest.get(key) != value:
            return False, f"stale: manifest {key} is {manifest.get(key)!r}, expected {value!r}"
    actual = file_sha256(path)
    if manifest.get("sha256") != actual:
        return False, f"corrupt: the file's SHA-256 {actual[:12]}… differs from its manifest's"
    return True, ""


def write_entry(path: Path, build: Callable[[Path], None], expect: dict[str, Any],
                extra: dict[str, Any] | None = None) -> float:
    """Build a graph under a temporary name, then write its manifest and rename both into place.

    Args:
        path: Final graph path.
        build: ``build(tmp_path)`` writes the graph to ``tmp_path``.
        expect: Manifest fields (as later checked by :func:`verified`).
        extra: More manifest fields (informative only).

    Returns:
        Seconds the build took.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    manifest_path = Path(str(path) + MANIFEST_SUFFIX)
    t = time.perf_counter()
    try:
        build(tmp)
        seconds = time.perf_counter() - t
        manifest = {**expect, **(extra or {}), "sha256": file_sha256(tmp), "build_s": round(seconds, 2),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp_manifest = manifest_path.with_name(f".{manifest_path.name}.{os.getpid()}.part")
        tmp_manifest.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        if manifest_path.exists():  # never leave a new graph next to an old manifest
            manifest_path.unlink()
        os.replace(tmp, path)
        os.replace(tmp_manifest, manifest_path)
    finally:
        for leftover in (tmp, manifest_path.with_name(f".{manifest_path.name}.{os.getpid()}.part")):
            if leftover.exists():
                leftover.unlink()
    return seconds


def _sibling_graph(path: Path, expect: dict[str, Any]) -> Path | None:
    """A verified graph of the same weights, tile and torch version in another runtime's folder."""
    same = {k: v for k, v in expect.items() if k not in ("runtime", "runtime_version")}
    for folder in sorted(path.parent.parent.iterdir()) if path.parent.parent.is_dir() else []:
        candidate = folder / path.name
        if folder == path.parent or not candidate.is_file():
            continue
        try:
            manifest = json.loads(Path(str(candidate) + MANIFEST_SUFFIX).read_text(encoding="utf-8"))
            runtime_fields = {k: manifest.get(k) for k in ("runtime", "runtime_version")}
        except (OSError, ValueError, AttributeError):
            continue
        if verified(candidate, {**same, **runtime_fields})[0]:
            return candidate
    return None


def _link_or_copy(src: Path, dst: Path) -> None:
    import shutil

    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


class _GraphModule(nn.Module):
    """``model(x, text_a, text_b)`` as the exported graph's signature."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, text_a: torch.Tensor, text_b: torch.Tensor) -> torch.Tensor:
        return self.model(x, text_a, text_b)


def export_onnx(model: nn.Module, embed_dim: int, height: int, width: int, out: Path) -> None:
    """Export the network (fp32, CPU) to an ONNX file with a dynamic batch.

    Args:
        model: The ChangeCLIP network (eval mode, fp32, on the CPU).
        embed_dim: Text feature width D.
        height, width: Tile size in pixels (multiples of 32).
        out: Output file (one self-contained file, weights inside).

    Raises:
        ModelError: The exporter failed (its message is included).
    """
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ModelError("the ONNX export needs the network on the CPU")
    batch = torch.export.Dim("batch", min=1, max=1024)
    # three distinct example tensors: an aliased pair (text_a is text_b) makes the exporter merge them
    example = (torch.zeros(2, 6, height, width), torch.zeros(2, 2, embed_dim), torch.ones(2, 2, embed_dim))
    try:
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(_GraphModule(model).eval(), example, str(out), dynamo=True, external_data=False,
                              input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                              dynamic_shapes=({0: batch}, {0: batch}, {0: batch}), verbose=False)
    except Exception as exc:  # the exporter raises many types; the caller falls back to torch
        raise ModelError(f"exporting the network to ONNX failed: {type(exc).__name__}: {exc}") from exc


def cached_export(model: nn.Module, variant: str, embed_dim: int, weights_sha256: str, runtime: str,
                  runtime_version: str, height: int, width: int) -> Path:
    """The fp32 ONNX graph of these weights at this tile size: from the cache, else built now.

    A missing, stale or corrupt entry is rebuilt; the build logs a progress message and its time.

    Returns:
        Path of the verified graph.
    """
    folder = entry_folder(weights_sha256, runtime, runtime_version)
    path = folder / f"{variant}-{height}x{width}-fp32.onnx"
    expect = {"manifest_version": MANIFEST_VERSION, "kind": "fp32", "weights_sha256": weights_sha256,
              "variant": variant, "tile": [height, width], "runtime": runtime, "runtime_version": runtime_version,
              "torch": torch.__version__}
    ok, why = verified(path, expect)
    if ok:
        log.info("runtime cache: using %s", path)
        return path
    if why != "not built yet":
        log.warning("runtime cache entry %s is not usable (%s): rebuilding it", path, why)
    sibling = _sibling_graph(path, expect)
    if sibling is not None:  # the same torch export made for the other runtime: reuse it, verified
        write_entry(path, lambda tmp: _link_or_copy(sibling, tmp), expect, {"copied_from": str(sibling)})
        log.info("runtime cache: reused the verified export %s for %s", sibling, runtime)
        return path
    log.warning("exporting %s to ONNX for %s at %dx%d px (once per weights file and tile size; "
                "about a minute for RN50 on 2 cores) into %s", variant, runtime, height, width, folder)
    seconds = write_entry(path, lambda tmp: export_onnx(model, embed_dim, height, width, tmp), expect)
    log.warning("ONNX export of %s done in %.1f s; cached as %s", variant, seconds, path)
    return path
