"""Build :class:`protocol.DetectParams` from the dock's widgets or the algorithm's parameters.

Both front-ends call :func:`build_params`, so a run from the dock and one from Processing with
the same choices send the same job to the backend.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path
from typing import Any

from . import output_safety, protocol
from .errors import ConfigError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt")

LABELS = {
    "before": "Before raster", "after": "After raster", "output_dir": "Output folder",
    "engine": "Engine", "weights": "Weights file", "prompt": "Prompt", "prompt_mode": "Prompt mode",
    "bands": "Bands", "tile": "Tile size", "overlap": "Overlap", "device": "Device",
    "precision": "Precision", "threshold": "Threshold", "min_area": "Minimum area", "min_pixels": "Minimum size",
    "grid": "Output grid", "target_crs": "Target CRS", "resolution": "Resolution",
    "mask_path": "Change mask", "probability_path": "Change probability", "polygons_path": "Change polygons",
    "describe": "Describe changes", "query": "Find", "query_threshold": "Query threshold",
    "keep_matching": "Keep matching", "vocabulary": "Vocabulary file", "describe_weights": "Describe weights",
    "describe_model": "Describe model",
}
"""What the UI calls each job parameter (used in error messages)."""


ENGINE_NAMES = {"changeclip": "ChangeCLIP", "irmad": "IR-MAD"}
"""What the UI calls each engine (the dock's combo, messages); the job and Processing use the keys."""


def engine_name(engine: str) -> str:
    """The user-facing name of an engine, e.g. ``IR-MAD`` for ``irmad`` (unknown ones as they are)."""
    return ENGINE_NAMES.get(engine, engine)


def resolve_weights(weights: str, weights_dir: str, engine: str) -> str | None:
    """The weights file for a run.

    Args:
        weights: a path, a file name inside ``weights_dir``, or "" for the default.
        weights_dir: the configured weights folder ("" if none).
        engine: ``changeclip`` needs weights; ``irmad`` ignores them.

    Returns:
        An absolute path, or None for ``irmad``.

    Raises:
        ConfigError: the file does not exist, or no default can be chosen.
    """
    if engine != "changeclip":
        return None
    weights = (weights or "").strip()
    if weights:
        path = Path(weights).expanduser()
        if not path.is_absolute() and weights_dir:
            path = Path(weights_dir).expanduser() / path
        if not path.is_file():
            raise ConfigError(f"Weights file {path} does not exist; pick a .safetensors or .pth file "
                              "(or put it in the weights folder set in the ChangeCLIP settings)")
        return str(path.resolve())
    if not weights_dir:
        raise ConfigError(f"The {engine_name('changeclip')} engine needs a weights file: pick one, set a weights "
                          "folder in the ChangeCLIP settings (or CHANGECLIP_WEIGHTS_DIR), or use the "
                          f"{engine_name('irmad')} engine, which needs none")
    folder = Path(weights_dir).expanduser()
    found = sorted(p for p in folder.glob("*") if p.suffix in WEIGHT_SUFFIXES) if folder.is_dir() else []
    if len(found) != 1:
        what = "no weights files" if not found else f"{len(found)} weights files"
        raise ConfigError(f"The weights folder {folder} has {what}; pick the weights file to use")
    return str(found[0].resolve())


TAGGER_SUBFOLDER = "tagger"
"""Inside the weights folder: where the CLIP ViT-B/16 weights for prompt mode ``auto`` live."""


def resolve_tagger_weights(weights_dir: str, engine: str, prompt_mode: str) -> str | None:
    """The CLIP tagger weights for prompt mode ``auto``: the one file in ``<weights folder>/tagger/``.

    Returns None when the run needs no tagger, or when that folder does not exist; the backend
    then tries open_clip's own download of OpenAI CLIP ViT-B/16 and, where downloads are off,
    stops with a message saying to add the file or choose another prompt mode.

    Raises:
        ConfigError: the tagger folder holds several candidate files.
    """
    if engine != "changeclip" or prompt_mode != "auto" or not weights_dir:
        return None
    folder = Path(weights_dir).expanduser() / TAGGER_SUBFOLDER
    if not folder.is_dir():
        return None
    found = sorted(p for p in folder.glob("*") if p.suffix in (*WEIGHT_SUFFIXES, ".bin"))
    if len(found) > 1:
        raise ConfigError(f"The tagger folder {folder} has {len(found)} weights files; keep only the "
                          "CLIP ViT-B/16 file there")
    return str(found[0].resolve()) if found else None


def crs_text(crs: Any) -> str | None:
    """A CRS as the text the backend (GDAL) reads: its authority id if it has one, else its WKT.

    QGIS's own ids of user-defined CRSs (``USER:100000``) mean nothing to GDAL: those go as WKT.

    Args:
        crs: a ``QgsCoordinateReferenceSystem``, a CRS string (returned stripped), or None.

    Returns:
        e.g. ``"EPSG:32633"``, a WKT string, or None for None, "" and an invalid CRS.
    """
    if crs is None:
        return None
    if isinstance(crs, str):
        return crs.strip() or None
    if not crs.isValid():
        return None
    authid = str(crs.authid())
    if authid and not authid.upper().startswith(("USER:", "INTERNAL:")):  # QGIS-only ids GDAL cannot read
        return authid
    from ..compat import CRS_WKT_PREFERRED  # Qgis.CrsWktVariant since QGIS 3.36

    return str(crs.toWkt(CRS_WKT_PREFERRED)) or None


def grid_choice(grid: str = "before", target_crs: Any = None,
                resolution: float | None = None) -> tuple[str, str | None, float | None]:
    """Check the output grid choice before any work is done; errors use the UI's labels.

    Args:
        grid: ``before``, ``after`` or ``custom`` (protocol.GRIDS).
        target_crs: for ``custom``: a ``QgsCoordinateReferenceSystem`` or a CRS string
            (``EPSG:32633``, WKT); None or an invalid CRS = not set.
        resolution: for ``custom``: pixel size in the target CRS's units; None or 0 = not set.

    Returns:
        ``(grid, target_crs_text, resolution)`` as the job takes them (see :func:`crs_text`).

    Raises:
        ConfigError: an unknown grid, ``custom`` without a Target CRS or a Resolution, a
            Resolution that is not positive, or a Target CRS / Resolution without ``custom``.
    """
    grid = (grid or "before").strip()
    if grid not in protocol.GRIDS:
        raise ConfigError(f"{LABELS['grid']}: must be one of {', '.join(protocol.GRIDS)}; got {grid!r}")
    crs = crs_text(target_crs)
    try:
        res = float(resolution) if resolution not in (None, "", 0) else None
    except (TypeError, ValueError):
        res = float("nan")
    if res is not None and not res > 0:  # also NaN
        raise ConfigError(f"{LABELS['resolution']}: must be a positive pixel size in the Target CRS's units "
                          f"(e.g. 10 for 10 m in a UTM CRS); got {resolution!r}")
    if grid == "custom":
        missing = [(label, fix) for label, fix, value in (
            ("a Target CRS", "pick the outputs' CRS (e.g. EPSG:32633)", crs),
            ("a Resolution", "give their pixel size in that CRS's units (e.g. 10 for 10 m in UTM)", res))
            if value is None]
        if missing:
            raise ConfigError(f"{LABELS['grid']} 'custom' needs {' and '.join(m[0] for m in missing)}: "
                              f"{' and '.join(m[1] for m in missing)}")
    elif crs is not None or res is not None:
        given = " and ".join(n for n, v in (("a Target CRS", crs), ("a Resolution", res)) if v is not None)
        raise ConfigError(f"{LABELS['grid']} is '{grid}' but {given} {'was' if ' and ' not in given else 'were'} "
                          f"given; they only apply to {LABELS['grid']} 'custom': choose 'custom', or clear them "
                          f"to keep the {grid} raster's grid")
    return grid, crs, res


def build_params(before: str, after: str, output_dir: str, *, engine: str = "changeclip",
                 weights: str = "", weights_dir: str = "", prompt: str = "", prompt_mode: str = "auto",
                 bands: str | list[int] = "1,2,3", tile: int = 256, overlap: int = 64,
                 threshold: float | None = None, device: str = "auto", precision: str = "auto",
                 polygons: bool = False, grid: str = "before", target_crs: Any = None,
                 resolution: float | None = None,
                 min_area_m2: float = 0.0, min_pixels: int = protocol.DEFAULT_MIN_POLYGON_PIXELS,
                 mask_path: str | None = None,
                 probability_path: str | None = None, polygons_path: str | None = None,
                 overwrite: bool = False, describe: bool = False, query: str = "",
                 query_threshold: float = protocol.DEFAULT_QUERY_THRESHOLD, keep_matching: bool = False,
                 vocabulary: str = "", describe_weights: str | None = None) -> protocol.DetectParams:
    """A validated job from UI-level values.

    Args:
        before, after: local raster files (see :mod:`layers` for non-file layers).
        output_dir: folder for the outputs and ``summary.json``.
        engine: ``changeclip`` or ``irmad``.
        weights, weights_dir: see :func:`resolve_weights`.
        prompt, prompt_mode: the prompt words and how they are used (``auto``/``none``/``words``).
        bands: 1-based band numbers, as a list or text like ``"3,2,1"``.
        tile, overlap: tile size and overlap in pixels.
        threshold: change threshold in (0, 1), or None/0 for the engine's default.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto`` (fp32 on the CPU, bf16/fp16 autocast on a GPU), ``fp32``, ``bf16``
            (also on CPUs with AMX or AVX-512 BF16, where it is 2-3x faster than fp32) or ``fp16``.
        polygons, min_area_m2, min_pixels: write change polygons, dropping those under
            ``min_area_m2`` m² or of fewer than ``min_pixels`` output pixels.
        grid, target_crs, resolution: the output grid: the ``before`` raster's (default), the
            ``after`` raster's, or ``custom``: ``target_crs`` (a QgsCoordinateReferenceSystem or
            a CRS string; sent as its authid, else its WKT) at ``resolution`` CRS units per pixel.
            See :func:`grid_choice`.
        mask_path, probability_path, polygons_path: explicit output files (Processing).
        overwrite: replace existing outputs.
        describe, query, query_threshold, keep_matching, vocabulary, describe_weights: describe every
            polygon in words with CLIP and score it against ``query`` (see :mod:`.describe`;
            ``describe_weights`` already resolved, None = the backend's default).

    Raises:
        ConfigError: a value is invalid, or an output path may not be written (a device, FIFO,
            folder, link, an input of the job, a system folder, two outputs on one file: see
            :mod:`output_safety`, the backend's own rule); the message names the field as the UI
            labels it.
    """
    def absolute(path: str | None) -> str | None:  # the backend runs in another working directory
        return os.path.abspath(os.path.expanduser(path)) if path and path.strip() else None

    grid, target_crs, resolution = grid_choice(grid, target_crs, resolution)
    try:
        band_list = protocol.parse_bands(bands) if isinstance(bands, str) else list(bands)
        params = protocol.DetectParams(
            before=absolute(before) or "", after=absolute(after) or "", output_dir=absolute(output_dir) or "",
            engine=engine,
            weights=resolve_weights(weights, weights_dir, engine), prompt=prompt.strip(),
            tagger_weights=resolve_tagger_weights(weights_dir, engine, prompt_mode),
            prompt_mode=prompt_mode, bands=band_list, tile=int(tile), overlap=int(overlap),
            threshold=threshold if threshold else None, device=(device or "auto").strip(),
            precision=(precision or "auto").strip(),
            grid=grid, target_crs=target_crs, resolution=resolution,
            polygons=bool(polygons), min_area=float(min_area_m2),
            min_pixels=int(min_pixels), mask_path=absolute(mask_path),
            probability_path=absolute(probability_path), polygons_path=absolute(polygons_path),
            overwrite=overwrite, describe=bool(describe), query=(query or "").strip(),
            query_threshold=float(query_threshold), keep_matching=bool(keep_matching),
            vocabulary=absolute(vocabulary), describe_weights=absolute(describe_weights))
        params.validate()
        output_safety.check_job(params)
    except protocol.ParamError as exc:
        raise ConfigError(f"{LABELS.get(exc.field, exc.field)}: {exc.message}") from None
    except output_safety.OutputPathError as exc:
        raise ConfigError(f"{LABELS.get(exc.field, exc.field)}: {exc.path}: {exc.message}") from None
    return params


def run_name(before_name: str, after_name: str, prompt: str = "", engine: str = "changeclip") -> str:
    """A short human name for a run: ``"<before> → <after> [prompt]"``."""
    name = f"{before_name} → {after_name}"
    if prompt.strip():
        name += f" [{prompt.strip()[:40]}]"
    elif engine == "irmad":
        name += f" [{engine_name(engine)}]"
    return name


def default_output_dir(base_dir: str, before_name: str, after_name: str,
                       now: _dt.datetime | None = None) -> str:
    """A fresh folder for a dock run: ``<base>/<before>_<after>_<YYYYmmdd-HHMMSS>``."""
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    slug = _slug(f"{before_name}_{after_name}")
    return os.path.join(base_dir, f"{slug}_{stamp}")


def default_output_base(project_home: str = "") -> str:
    """Where dock runs go by default: ``<project folder>/changeclip_runs`` or ``~/ChangeCLIP``."""
    if project_home and os.path.isdir(project_home):
        return os.path.join(project_home, "changeclip_runs")
    return os.path.join(os.path.expanduser("~"), "ChangeCLIP")


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")
    return slug[:80] or "run"
