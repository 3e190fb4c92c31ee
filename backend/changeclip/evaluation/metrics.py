"""Binary change-detection metrics from one global confusion matrix.

The paper's protocol (spec §4.3) accumulates **one** confusion matrix over all pixels
of all test images and derives the change-class metrics from it; it is *not* an
average of per-image scores. :class:`ConfusionMatrix` is that accumulator.

Empty denominators are handled explicitly: a metric whose denominator is zero is
*undefined* and reported as ``None`` (JSON ``null``), never silently 0 or 1. For
example precision is undefined when nothing was predicted as change, and kappa is
undefined when the expected agreement is 1 (both maps constant and equal).

The official ``tools/general/metric.py`` instead adds ``+0.0001`` to every cell of
its confusion matrix before dividing, which turns undefined metrics into ~0 and
moves defined ones by a negligible amount. :meth:`ConfusionMatrix.official_metrics`
reproduces that convention for side-by-side comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from changeclip.errors import InputError

OFFICIAL_EPS = 0.0001
"""The constant the official metric script adds to every confusion cell."""

METRIC_KEYS = ("precision", "recall", "f1", "iou", "oa", "kappa")
COUNT_KEYS = ("tp", "fp", "fn", "tn")


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else num / den


@dataclass
class ConfusionMatrix:
    """Counts of the 2×2 confusion matrix, change (1) being the positive class.

    Counts are Python ints (no overflow, whatever the dataset size).
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    # -- accumulation --------------------------------------------------------------

    def update(self, pred: np.ndarray, ref: np.ndarray, valid: np.ndarray | None = None) -> ConfusionMatrix:
        """Add the pixels of one prediction/reference pair.

        Args:
            pred: predicted change, bool (any shape); True = change.
            ref: reference change, bool, same shape; True = change.
            valid: optional bool mask, same shape; only True pixels are counted.

        Returns:
            ``self`` (for chaining).

        Raises:
            InputError: shapes differ.
        """
        pred = np.asarray(pred, dtype=bool)
        ref = np.asarray(ref, dtype=bool)
        if pred.shape != ref.shape:
            raise InputError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}; "
                             "both masks must be on the same pixel grid")
        if valid is not None:
            valid = np.asarray(valid, dtype=bool)
            if valid.shape != ref.shape:
                raise InputError(f"valid-pixel mask shape {valid.shape} differs from reference shape {ref.shape}")
            pred = pred[valid]
            ref = ref[valid]
        n = int(pred.size)
        tp = int(np.count_nonzero(pred & ref))
        n_pred = int(np.count_nonzero(pred))
        n_ref = int(np.count_nonzero(ref))
        self.tp += tp
        self.fp += n_pred - tp
        self.fn += n_ref - tp
        self.tn += n - n_pred - n_ref + tp
        return self

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts into this one; returns ``self``."""
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.tn += other.tn
        return self

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return ConfusionMatrix(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def total(self) -> int:
        """Number of pixels counted."""
        return self.tp + self.fp + self.fn + self.tn

    # -- metrics ---------------------------------------------------------------------

    @property
    def precision(self) -> float | None:
        """TP / (TP + FP); undefined when nothing is predicted as change."""
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float | None:
        """TP / (TP + FN); undefined when the reference has no change."""
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float | None:
        """2·TP / (2·TP + FP + FN) (the harmonic mean of P and R where both exist).

        Defined as soon as either map has a change pixel; 0 when they share none.
        """
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def iou(self) -> float | None:
        """TP / (TP + FP + FN) of the change class; undefined when both maps are empty."""
        return _ratio(self.tp, self.tp + self.fp + self.fn)

    @property
    def oa(self) -> float | None:
        """Overall accuracy (TP + TN) / N; undefined for N = 0."""
        return _ratio(self.tp + self.tn, self.total)

    @property
    def kappa(self) -> float | None:
        """Cohen's kappa (p_o − p_e) / (1 − p_e), in [−1, 1]; undefined when p_e = 1.

        Computed with exact integer arithmetic: kappa = (N·(TP+TN) − S) / (N² − S) with
        S = (TP+FP)(TP+FN) + (FN+TN)(FP+TN).
        """
        n = self.total
        s = (self.tp + self.fp) * (self.tp + self.fn) + (self.fn + self.tn) * (self.fp + self.tn)
        return _ratio(n * (self.tp + self.tn) - s, n * n - s)

    def metrics(self) -> dict[str, float | None]:
        """precision, recall, f1, iou, oa, kappa (fractions; ``None`` where undefined)."""
        return {k: getattr(self, k) for k in METRIC_KEYS}

    def counts(self) -> dict[str, int]:
        """tp, fp, fn, tn."""
        return {k: int(getattr(self, k)) for k in COUNT_KEYS}

    def official_metrics(self) -> dict[str, float]:
        """The official script's numbers: every cell + 0.0001 before dividing.

        Returns precision, recall, f1 (harmonic mean of the fudged P and R, as the
        official script computes it), iou and oa of the change class.
        """
        e = OFFICIAL_EPS
        tp, fp, fn, tn = self.tp + e, self.fp + e, self.fn + e, self.tn + e
        p = tp / (tp + fp)
        r = tp / (tp + fn)
        return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r),
                "iou": tp / (tp + fp + fn), "oa": (tp + tn) / (tp + fp + fn + tn)}

    def to_dict(self) -> dict[str, Any]:
        """Metrics and counts in one flat JSON-able dict."""
        out: dict[str, Any] = dict(self.metrics())
        out.update(self.counts())
        out["pixels"] = self.total
        return out
