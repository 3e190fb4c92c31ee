"""Engines as per-pixel *score functions* for the evaluation protocols.

A scorer turns a batch of window pairs into a per-pixel change score plus the
threshold that decides change:

* :class:`ChangeCLIPScorer`: the logit margin ``l1 − l0`` from the predictor's
  ``predict_logits``; threshold 0 (= argmax), or ``logit(t)`` for an explicit
  probability threshold ``t`` (two-class softmax ``p1 = sigmoid(l1 − l0)``). Averaging
  margins over windows is averaging logits, as mmseg's slide mode does.
* :class:`IrmadScorer`: the irmad engine's change probability, fitted once per image
  (its global statistics) before the windows are scored. There are no logits, so the
  slide protocol averages probabilities; reports say so.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from changeclip.errors import InputError


class ChangeCLIPScorer:
    """Score windows with a ChangeCLIP predictor's logits.

    Args:
        predictor: object with ``predict_logits(before, after) -> (N, 2, H, W)`` and ``describe()``.
        threshold: optional change-probability threshold in (0, 1); ``None`` = argmax.
    """

    name = "changeclip"
    score_kind = "logit margin (l_change - l_no_change)"

    def __init__(self, predictor: Any, threshold: float | None = None) -> None:
        self.predictor = predictor
        self.probability_threshold = threshold
        if threshold is None:
            self.threshold = 0.0
        elif 0.0 < threshold < 1.0:
            self.threshold = math.log(threshold / (1.0 - threshold))
        else:
            raise InputError(f"threshold must be strictly between 0 and 1, got {threshold}")

    def prepare(self, before: np.ndarray, after: np.ndarray) -> None:
        """Nothing to fit for ChangeCLIP."""

    def score(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """(N, 3, h, w) float32 0..255 pairs -> (N, h, w) float32 logit margins."""
        h, w = before.shape[-2:]
        if h % 32 or w % 32:
            raise InputError(f"ChangeCLIP needs window sides that are multiples of 32, got {w}x{h}; use "
                             "--protocol tiles or levir-merge (they pad) or crop the images")
        logits = np.asarray(self.predictor.predict_logits(before, after), dtype=np.float32)
        return logits[:, 1] - logits[:, 0]

    def describe(self) -> dict[str, Any]:
        """Engine description for the report."""
        out: dict[str, Any] = {"name": self.name, "score": self.score_kind,
                               "decision": "argmax of logits" if self.probability_threshold is None
                               else f"change probability > {self.probability_threshold}"}
        desc = getattr(self.predictor, "describe", None)
        if callable(desc):
            out["predictor"] = desc()
        return out

    def notes(self, protocol: str) -> list[str]:
        """Report notes that depend on the protocol."""
        return []


class IrmadScorer:
    """Score windows with the irmad engine, fitted on each whole image first.

    Args:
        engine: a :class:`changeclip.engines.base.ChangeEngine` (``fit``/``predict_proba``).
        threshold: change-probability threshold; ``None`` = the engine's default.
        max_fit_pixels: at most this many pixels (a regular subsample) go into ``fit``.
    """

    name = "irmad"
    score_kind = "change probability"

    def __init__(self, engine: Any, threshold: float | None = None, max_fit_pixels: int = 1_000_000) -> None:
        self.engine = engine
        self.threshold = float(engine.default_threshold if threshold is None else threshold)
        self.max_fit_pixels = max_fit_pixels

    def prepare(self, before: np.ndarray, after: np.ndarray) -> None:
        """Fit irmad's global statistics on the whole image pair ((C, H, W) float32)."""
        c = before.shape[0]
        a = before.reshape(c, -1).T
        b = after.reshape(c, -1).T
        step = max(1, a.shape[0] // self.max_fit_pixels)
        self.engine.fit(np.ascontiguousarray(a[::step], np.float32), np.ascontiguousarray(b[::step], np.float32))

    def score(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """(N, C, h, w) float32 pairs -> (N, h, w) float32 change probabilities."""
        valid = np.ones((before.shape[0], *before.shape[2:]), dtype=bool)
        return np.asarray(self.engine.predict_proba(before, after, valid), dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        """Engine description for the report."""
        out: dict[str, Any] = {"name": self.name, "score": self.score_kind,
                               "decision": f"change probability > {self.threshold}",
                               "fit": "per image, on the whole image pair"}
        desc = getattr(self.engine, "describe", None)
        if callable(desc):
            out["engine"] = desc()
        return out

    def notes(self, protocol: str) -> list[str]:
        """Report notes that depend on the protocol."""
        if protocol == "levir-slide":
            return ["irmad has no logits: levir-slide averaged change probabilities instead of logits"]
        return []
