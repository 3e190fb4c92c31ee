"""The three evaluation modes behind ``changeclip eval``, each returning a JSON-able report.

* :func:`evaluate_predictions`: prediction masks against reference masks (no engine).
* :func:`evaluate_dataset`: run an engine over a LEVIR-layout folder under one of the
  protocols of :mod:`changeclip.evaluation.protocols` and score it.
* :func:`evaluate_georeferenced_pair`: run the normal detection pipeline
  (``changeclip.pipeline.run_detection``) on a georeferenced pair into a temporary
  folder and score its mask on the reference grid (dense or sparse references).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from changeclip.errors import InputError
from changeclip.evaluation.datasets import discover_levir, pair_predictions
from changeclip.evaluation.labels import Mask, detect_encoding, read_mask, sparse_reference
from changeclip.evaluation.protocols import PROTOCOLS, predict
from changeclip.evaluation.report import Evaluation, check_same_grid, encoding_of, score_mask_pairs

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


def evaluate_predictions(pred: str | Path, ref: str | Path | None = None, *, ref_changed: str | Path | None = None,
                         ref_unchanged: str | Path | None = None, label_encoding: str = "auto",
                         pred_encoding: str = "auto", ignore_values: Iterable[int] = (),
                         per_image: bool = False) -> dict[str, Any]:
    """Score existing prediction masks (``--pred``) against references.

    Args:
        pred: prediction mask file or folder.
        ref: reference mask file or folder (or LEVIR-layout folder), or ``None`` with
            ``ref_changed``/``ref_unchanged`` (two sparse masks; ``pred`` must be a file).
        label_encoding, pred_encoding: ``auto``, ``0/255`` or ``0/1``.
        ignore_values: reference values to leave out.
        per_image: add the per-image list.
    """
    if ref is not None and (ref_changed or ref_unchanged):
        raise InputError("give either --ref or --ref-changed with --ref-unchanged, not both")
    if ref is not None:
        pairs = pair_predictions(pred, ref)
        ev, info = score_mask_pairs(pairs, label_encoding, pred_encoding, ignore_values)
        return ev.report(per_image, mode="pred-vs-ref", **info)
    if not (ref_changed and ref_unchanged):
        raise InputError("a reference is needed: --ref MASK_OR_FOLDER, or both --ref-changed and --ref-unchanged")
    pred = Path(pred)
    if not pred.is_file():
        raise InputError(f"with sparse references --pred must be one mask file; {pred} is not a file")
    pm = read_mask(pred)
    pred_enc = detect_encoding(_values(pm), pred_encoding, (), "prediction masks")
    pred_change, pred_valid = pred_enc.decode(pm)
    ev, info = _score_sparse(pred.stem, pm, pred_change, pred_valid, ref_changed, ref_unchanged)
    return ev.report(per_image, mode="pred-vs-sparse-ref", prediction=pred_enc.describe(), **info)


def _values(m: Mask) -> set[int]:
    vals = {int(v) for v in np.unique(m.values)}
    return vals - ({m.nodata} if m.nodata is not None else set())


def _score_sparse(name: str, pm: Mask, pred_change: np.ndarray, pred_valid: np.ndarray,
                  ref_changed: str | Path, ref_unchanged: str | Path) -> tuple[Evaluation, dict[str, Any]]:
    ch, un = read_mask(ref_changed), read_mask(ref_unchanged)
    check_same_grid(pm, ch, "the prediction", str(ref_changed))
    ref_change, ref_valid = sparse_reference(ch, un)
    ev = Evaluation()
    ev.add(name, pred_change, ref_change, ref_valid & pred_valid)
    info = {"label_encoding": "sparse (changed/unchanged masks, non-zero = marked)",
            "labelled_pixels": int(ref_valid.sum()),
            "pred_nodata_pixels": int(np.count_nonzero(ref_valid & ~pred_valid))}
    return ev, info


# --- engine-driven: a dataset folder ------------------------------------------------------

def read_rgb(path: Path) -> np.ndarray:
    """Read an 8-bit image's first three bands as (3, H, W) float32 in 0..255.

    Raises:
        InputError: unreadable, fewer than 3 bands, or not 8-bit.
    """
    from osgeo import gdal

    gdal.UseExceptions()
    try:
        ds = gdal.Open(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None
    if ds.RasterCount < 3:
        raise InputError(f"{path} has {ds.RasterCount} band(s); dataset images must be RGB (3 bands)")
    if ds.GetRasterBand(1).DataType != gdal.GDT_Byte:
        raise InputError(f"{path} is not 8-bit; dataset evaluation expects 8-bit RGB tiles as the benchmarks ship "
                         "them (for other rasters use --before/--after, which scales values)")
    return np.stack([ds.GetRasterBand(i).ReadAsArray() for i in (1, 2, 3)]).astype(np.float32)


def evaluate_dataset(root: str | Path, scorer: Any, protocol: str = "tiles", *, tile: int = 256,
                     batch_size: int = 8, label_encoding: str = "auto", ignore_values: Iterable[int] = (),
                     per_image: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Run ``scorer`` over a LEVIR-layout dataset folder and score it.

    Args:
        root: folder with ``A/``, ``B/``, ``label/``.
        scorer: a :class:`changeclip.evaluation.scorers.Scorer`.
        protocol: one of :data:`~changeclip.evaluation.protocols.PROTOCOLS`.
        tile: window size of the protocol (256 in the paper).
        batch_size: windows per engine call.
        label_encoding: ``auto``, ``0/255`` or ``0/1``.
        ignore_values: label values to leave out.
        per_image: add the per-image list.
        progress: optional ``(stage, done, total)`` callback.
    """
    if protocol not in PROTOCOLS:
        raise InputError(f"protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
    triplets = discover_levir(root)
    ignore = list(ignore_values)
    enc = encoding_of((read_mask(t.label) for t in triplets), label_encoding, ignore)
    ev = Evaluation()
    t0 = time.perf_counter()
    for i, t in enumerate(triplets):
        a, b = read_rgb(t.before), read_rgb(t.after)
        if a.shape != b.shape:
            raise InputError(f"{t.before} {a.shape[1:]} and {t.after} {b.shape[1:]} differ in size")
        ref_change, ref_valid = enc.decode(read_mask(t.label))
        if ref_change.shape != a.shape[1:]:
            raise InputError(f"label {t.label} is {ref_change.shape} but the images are {a.shape[1:]}")
        scorer.prepare(a, b)
        pred = predict(protocol, a, b, scorer.score, scorer.threshold, tile=tile, batch_size=batch_size)
        s = ev.add(t.name, pred, ref_change, ref_valid)
        log.debug("%s: tp=%d fp=%d fn=%d tn=%d", t.name, s.cm.tp, s.cm.fp, s.cm.fn, s.cm.tn)
        if progress:
            progress("images", i + 1, len(triplets))
    return ev.report(per_image, mode="dataset", dataset=str(root), protocol=protocol, tile=tile,
                     engine=scorer.describe(), seconds=round(time.perf_counter() - t0, 3),
                     notes=scorer.notes(protocol), **enc.describe())


# --- engine-driven: a georeferenced pair through the real pipeline -----------------------

def evaluate_georeferenced_pair(params: Any, ref: str | Path | None = None, *,
                                ref_changed: str | Path | None = None, ref_unchanged: str | Path | None = None,
                                label_encoding: str = "auto", ignore_values: Sequence[int] = (),
                                per_image: bool = False, progress: Progress | None = None,
                                keep_outputs: str | Path | None = None) -> dict[str, Any]:
    """Detect change on a georeferenced pair with the normal pipeline and score the mask.

    ``params`` is a :class:`changeclip.protocol.DetectParams` whose ``output_dir`` is
    replaced by a temporary folder (or ``keep_outputs``). The mask is compared on the
    reference's pixel grid: a georeferenced reference must have the mask's geotransform;
    a plain image (BMP/PNG) must have its size and is assumed to be on the output grid.
    """
    import dataclasses

    from changeclip.pipeline import run_detection

    if ref is not None and (ref_changed or ref_unchanged):
        raise InputError("give either --ref or --ref-changed with --ref-unchanged, not both")
    if ref is None and not (ref_changed and ref_unchanged):
        raise InputError("a reference is needed: --ref MASK, or both --ref-changed and --ref-unchanged")
    with tempfile.TemporaryDirectory(prefix="changeclip-eval-") as tmp:
        out_dir = str(keep_outputs) if keep_outputs else tmp
        run = dataclasses.replace(params, output_dir=out_dir, mask_path=None, probability_path=None,
                                  polygons=False, polygons_path=None, overwrite=True)
        run.validate()
        summary = run_detection(run, progress=progress)
        mask_path = Path(run.output_paths()["mask"])
        pm = read_mask(mask_path)
        pred_enc = detect_encoding(_values(pm), "0/1", (), "prediction masks")
        pred_change, pred_valid = pred_enc.decode(pm)
        notes = []
        if ref is not None:
            rm = read_mask(ref)
            ref_ref = rm
            enc = encoding_of([rm], label_encoding, ignore_values)
            check_same_grid(pm, rm, "the detected mask", str(ref))
            ref_change, ref_valid = enc.decode(rm)
            ev = Evaluation()
            ev.add(Path(ref).stem, pred_change, ref_change, ref_valid & pred_valid)
            info: dict[str, Any] = {**enc.describe(),
                                    "pred_nodata_pixels": int(np.count_nonzero(ref_valid & ~pred_valid))}
        else:
            ref_ref = read_mask(ref_changed)  # type: ignore[arg-type]
            ev, info = _score_sparse(Path(str(params.before)).stem, pm, pred_change, pred_valid,
                                     ref_changed, ref_unchanged)  # type: ignore[arg-type]
        if ref_ref.geotransform is None:
            notes.append("the reference has no georeferencing; it was taken to be on the output grid "
                         f"({params.grid} raster), size {pm.values.shape[1]}x{pm.values.shape[0]}")
        return ev.report(per_image, mode="georeferenced-pair", before=params.before, after=params.after,
                         engine=summary.get("engine"), threshold=summary.get("threshold"),
                         summary=summary, notes=notes, **info)
