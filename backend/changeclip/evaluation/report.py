"""Scoring masks against references and presenting the result (JSON report, text table)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from changeclip.errors import InputError
from changeclip.evaluation.labels import Encoding, Mask, detect_encoding, present_values, read_mask
from changeclip.evaluation.metrics import COUNT_KEYS, METRIC_KEYS, ConfusionMatrix


@dataclass
class ImageScore:
    """Confusion counts of one image (for ``--per-image``)."""

    name: str
    cm: ConfusionMatrix
    ignored: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Name, metrics, counts and ignored-pixel count."""
        return {"name": self.name, **self.cm.to_dict(), "ignored_pixels": self.ignored}


@dataclass
class Evaluation:
    """Accumulates per-image confusion matrices into the global one."""

    total: ConfusionMatrix = field(default_factory=ConfusionMatrix)
    images: list[ImageScore] = field(default_factory=list)
    ignored: int = 0

    def add(self, name: str, pred: np.ndarray, ref: np.ndarray, valid: np.ndarray) -> ImageScore:
        """Score one image; ``pred``/``ref``/``valid`` are bool (H, W) arrays."""
        cm = ConfusionMatrix().update(pred, ref, valid)
        ignored = int(valid.size - np.count_nonzero(valid))
        self.total.merge(cm)
        self.ignored += ignored
        score = ImageScore(name, cm, ignored)
        self.images.append(score)
        return score

    def report(self, per_image: bool = False, **extra: Any) -> dict[str, Any]:
        """The JSON report: global metrics and counts first, then ``extra`` keys."""
        out: dict[str, Any] = self.total.to_dict()
        out["ignored_pixels"] = self.ignored
        out["images"] = len(self.images)
        out["official_fudged"] = self.total.official_metrics()
        out.update(extra)
        if per_image:
            out["per_image"] = [s.to_dict() for s in self.images]
        return out


def check_same_grid(pred: Mask, ref: Mask, pred_name: str, ref_name: str) -> None:
    """Raise unless two masks have the same size (and geotransform, where both have one)."""
    if pred.values.shape != ref.values.shape:
        raise InputError(f"{pred_name} is {pred.values.shape[1]}x{pred.values.shape[0]} px but {ref_name} is "
                         f"{ref.values.shape[1]}x{ref.values.shape[0]} px; predictions must be on the reference grid")
    if pred.geotransform and ref.geotransform:
        if not np.allclose(pred.geotransform, ref.geotransform, rtol=0, atol=1e-6 * max(
                1.0, abs(ref.geotransform[1]))):
            raise InputError(f"{pred_name} and {ref_name} have different geotransforms ({pred.geotransform} vs "
                             f"{ref.geotransform}); resample the prediction onto the reference grid")


def score_mask_pairs(pairs: Sequence[tuple[str, Path, Path]], label_encoding: str = "auto",
                     pred_encoding: str = "auto", ignore_values: Iterable[int] = ()) -> tuple[Evaluation, dict]:
    """Score prediction masks against reference masks.

    Both sets' encodings are detected independently over all their files (see
    :mod:`changeclip.evaluation.labels`). Reference pixels that are nodata/ignored are
    left out; prediction pixels equal to the prediction file's nodata value (e.g. 255 in
    our ``change_mask.tif``) are left out too and counted in ``pred_nodata_pixels``.

    Returns:
        (evaluation, info) where info holds the encodings for the report.
    """
    ignore = list(ignore_values)
    ref_vals: set[int] = set()
    pred_vals: set[int] = set()
    for _, p, r in pairs:
        ref_vals |= present_values(read_mask(r), ignore)
        pred_vals |= present_values(read_mask(p))
    ref_enc = detect_encoding(ref_vals, label_encoding, ignore, "reference masks")
    pred_enc = detect_encoding(pred_vals, pred_encoding, (), "prediction masks")
    ev = Evaluation()
    pred_nodata = 0
    for name, p, r in pairs:
        pm, rm = read_mask(p), read_mask(r)
        check_same_grid(pm, rm, str(p), str(r))
        ref_change, ref_valid = ref_enc.decode(rm)
        pred_change, pred_valid = pred_enc.decode(pm)
        pred_nodata += int(np.count_nonzero(ref_valid & ~pred_valid))
        ev.add(name, pred_change, ref_change, ref_valid & pred_valid)
    info = {**ref_enc.describe(), "prediction": pred_enc.describe(), "pred_nodata_pixels": pred_nodata}
    return ev, info


def encoding_of(masks: Iterable[Mask], requested: str, ignore_values: Iterable[int]) -> Encoding:
    """Detect the encoding over already-read reference masks."""
    ignore = list(ignore_values)
    vals: set[int] = set()
    for m in masks:
        vals |= present_values(m, ignore)
    return detect_encoding(vals, requested, ignore, "reference masks")


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{100.0 * v:.2f}"


def format_table(report: dict[str, Any]) -> str:
    """Plain-text table of the report (metrics in %), plus the per-image table if present."""
    head = ["", *[k.upper() if k in ("oa",) else k for k in METRIC_KEYS], *COUNT_KEYS]
    rows = [["all", *[_fmt(report[k]) for k in METRIC_KEYS], *[str(report[k]) for k in COUNT_KEYS]]]
    for s in report.get("per_image", []):
        rows.append([s["name"], *[_fmt(s[k]) for k in METRIC_KEYS], *[str(s[k]) for k in COUNT_KEYS]])
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in [head, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    if len(rows) > 1:
        lines.insert(3, "-" * len(lines[0]))
    notes = [f"metrics in % of the change class from one confusion matrix over {report['pixels']} pixels "
             f"of {report['images']} image(s); label encoding {report.get('label_encoding', '?')}"]
    if report.get("ignored_pixels"):
        notes.append(f"{report['ignored_pixels']} pixels ignored (unlabelled / nodata)")
    for n in report.get("notes", []):
        notes.append(n)
    return "\n".join(lines + notes)


def write_json(report: dict[str, Any], path: str | Path) -> None:
    """Write the report atomically (temporary name in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2, sort_keys=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
