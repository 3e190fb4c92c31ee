"""Confusion-matrix metrics against hand-computed values."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from changeclip.errors import InputError
from changeclip.evaluation.metrics import ConfusionMatrix


def test_small_hand_example() -> None:
    pred = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], bool)
    ref = np.array([[1, 0, 1, 0], [1, 0, 0, 0]], bool)
    cm = ConfusionMatrix().update(pred, ref)
    assert cm.counts() == {"tp": 2, "fp": 1, "fn": 1, "tn": 4}
    assert cm.precision == pytest.approx(2 / 3)
    assert cm.recall == pytest.approx(2 / 3)
    assert cm.f1 == pytest.approx(2 / 3)
    assert cm.iou == pytest.approx(0.5)
    assert cm.oa == pytest.approx(0.75)
    # p_o = 3/4, p_e = (3*3 + 5*5)/64 = 34/64 -> kappa = (48-34)/(64-34) = 7/15
    assert cm.kappa == pytest.approx(7 / 15)


def test_counts_example_exact() -> None:
    cm = ConfusionMatrix(tp=10, fp=5, fn=15, tn=70)
    p, r = Fraction(10, 15), Fraction(10, 25)
    assert cm.precision == pytest.approx(float(p))
    assert cm.recall == pytest.approx(float(r))
    assert cm.f1 == pytest.approx(float(2 * p * r / (p + r)))
    assert cm.f1 == pytest.approx(0.5)  # 20 / (20 + 5 + 15)
    assert cm.iou == pytest.approx(1 / 3)
    assert cm.oa == pytest.approx(0.8)
    assert cm.kappa == pytest.approx(5 / 13)  # p_e = 0.675


def test_valid_mask_excludes_pixels() -> None:
    pred = np.array([1, 1, 0, 0], bool)
    ref = np.array([1, 0, 1, 0], bool)
    valid = np.array([True, False, True, True])
    cm = ConfusionMatrix().update(pred, ref, valid)
    assert cm.counts() == {"tp": 1, "fp": 0, "fn": 1, "tn": 1}
    assert cm.total == 3


def test_empty_denominators_are_undefined_not_zero() -> None:
    cm = ConfusionMatrix(tn=100)
    assert cm.precision is None and cm.recall is None and cm.f1 is None and cm.iou is None
    assert cm.oa == 1.0
    assert cm.kappa is None  # p_e == 1
    missed = ConfusionMatrix(fn=5, tn=95)
    assert missed.precision is None
    assert missed.recall == 0.0 and missed.f1 == 0.0 and missed.iou == 0.0
    assert ConfusionMatrix().oa is None


def test_perfect_and_inverted_kappa() -> None:
    assert ConfusionMatrix(tp=30, tn=70).kappa == pytest.approx(1.0)
    assert ConfusionMatrix(fp=50, fn=50).kappa == pytest.approx(-1.0)


def test_official_fudge_close_but_defined() -> None:
    cm = ConfusionMatrix(tp=10, fp=5, fn=15, tn=70)
    off = cm.official_metrics()
    assert off["precision"] == pytest.approx((10.0001) / (15.0002))
    assert off["iou"] == pytest.approx(10.0001 / 30.0003)
    assert abs(off["f1"] - cm.f1) < 1e-5
    empty = ConfusionMatrix(tn=100).official_metrics()
    assert empty["precision"] == pytest.approx(0.5)  # 0.0001 / 0.0002: the fudge hides "undefined"
    assert empty["iou"] == pytest.approx(1 / 3)


def test_shape_mismatch_is_input_error() -> None:
    with pytest.raises(InputError, match="same pixel grid"):
        ConfusionMatrix().update(np.zeros((2, 2), bool), np.zeros((2, 3), bool))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=1, max_size=60),
       st.integers(1, 59))
def test_merge_equals_one_pass_and_brute_force(cells: list[tuple[bool, bool, bool]], split: int) -> None:
    arr = np.array(cells, bool)
    pred, ref, valid = arr[:, 0], arr[:, 1], arr[:, 2]
    whole = ConfusionMatrix().update(pred, ref, valid)
    k = min(split, len(cells))
    parts = ConfusionMatrix().update(pred[:k], ref[:k], valid[:k]) + ConfusionMatrix().update(
        pred[k:], ref[k:], valid[k:])
    assert whole == parts
    brute = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    for p, r, v in cells:
        if v:
            brute[{(1, 1): "tp", (1, 0): "fp", (0, 1): "fn", (0, 0): "tn"}[(int(p), int(r))]] += 1
    assert whole.counts() == brute
    if whole.f1 is not None and whole.precision is not None and whole.recall is not None \
            and whole.precision + whole.recall > 0:
        assert whole.f1 == pytest.approx(2 * whole.precision * whole.recall / (whole.precision + whole.recall))
