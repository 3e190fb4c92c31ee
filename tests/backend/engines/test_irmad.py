"""IR-MAD: chi-square CDF, canonical correlations, detection and invariance."""

from __future__ import annotations

import numpy as np
import pytest

from changeclip.engines import IRMADEngine, build_engine
from changeclip.engines.base import ChangeEngine
from changeclip.engines.irmad import SIGNIFICANCE, change_score, chi2_cdf, chi2_sf
from changeclip.errors import InputError
from changeclip.protocol import DetectParams

# (x, k, F) from chi-square tables
TABLE = [(3.841, 1, 0.95), (6.635, 1, 0.99), (5.991, 2, 0.95), (9.210, 2, 0.99), (7.815, 3, 0.95),
         (11.345, 3, 0.99), (13.277, 4, 0.99), (15.086, 5, 0.99), (16.812, 6, 0.99), (1.386, 2, 0.5)]


@pytest.mark.parametrize("x,k,expected", TABLE)
def test_chi2_cdf_matches_tables(x: float, k: int, expected: float) -> None:
    assert chi2_cdf(np.array([x]), k)[0] == pytest.approx(expected, abs=2e-4)


def test_chi2_cdf_edges() -> None:
    assert chi2_cdf(np.array([0.0]), 3)[0] == pytest.approx(0.0, abs=1e-6)
    assert chi2_cdf(np.array([1e9, np.inf]), 4).tolist() == [1.0, 1.0]
    v = chi2_cdf(np.linspace(0, 40, 400), 5)
    assert np.all(np.diff(v) >= -1e-7)
    with pytest.raises(ValueError):
        chi2_cdf(np.array([1.0]), 0)


@pytest.mark.parametrize("x,k,expected", TABLE)
def test_chi2_sf_is_the_upper_tail(x: float, k: int, expected: float) -> None:
    assert chi2_sf(np.array([x]), k)[0] == pytest.approx(1.0 - expected, abs=2e-4)
    far = chi2_sf(np.array([60.0], np.float32), k)[0]  # p ~ 1e-10..1e-13: 1 - cdf would round to 0
    assert far.dtype == np.float32 and 0.0 < far < 1e-8


def test_score_is_one_half_at_the_mask_threshold() -> None:
    """The value shown as "probability" crosses 50 % exactly where the mask starts (p = 1 %)."""
    for x, k, cdf in TABLE:
        if cdf == 0.99:  # the 1 % critical values of chi-square
            assert change_score(chi2_sf(np.array([x]), k))[0] == pytest.approx(0.5, abs=2e-3)
    assert change_score(np.array([SIGNIFICANCE]))[0] == pytest.approx(0.5)
    assert change_score(np.array([1.0]))[0] < 0.01 and change_score(np.array([0.0]))[0] == 1.0
    z = np.linspace(0, 40, 400)
    assert np.all(np.diff(change_score(chi2_sf(z, 3))) >= 0), "monotone in the statistic"


def _scene(n: int = 40000, changed: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(120, 30, size=(n, 3)) @ np.array([[1, 0.4, 0.2], [0, 1, 0.3], [0, 0, 1]])
    y = x * np.array([1.3, 0.8, 1.1]) + np.array([5, 20, -10]) + rng.normal(0, 3, size=x.shape)
    y[:changed] = rng.normal(120, 30, size=(changed, 3))
    truth = np.zeros(n, bool)
    truth[:changed] = True
    return x.astype(np.float32), y.astype(np.float32), truth


def _as_tiles(p: np.ndarray) -> np.ndarray:
    return p.T.reshape(1, p.shape[1], -1, 100)


def test_irmad_detects_change_and_ignores_radiometric_differences() -> None:
    x, y, truth = _scene()
    eng = IRMADEngine()
    assert isinstance(eng, ChangeEngine)
    eng.fit(x, y)
    assert eng.iterations >= 2 and eng.rho is not None and np.all(np.diff(eng.rho) >= 0)
    assert eng.rho[-1] > 0.95
    prob = eng.predict_proba(_as_tiles(x), _as_tiles(y), np.ones((1, 400, 100), bool)).ravel()
    assert prob.dtype == np.float32 and 0 <= prob.min() and prob.max() <= 1
    change = prob > eng.default_threshold
    assert change[truth].mean() > 0.9, "changed pixels are found"
    assert change[~truth].mean() < 0.02, "per-band gain/offset differences are not change"
    d = eng.describe()
    assert d["name"] == "irmad" and d["iterations"] == eng.iterations and len(d["canonical_correlations"]) == 3


def test_probability_layer_reads_like_the_mask() -> None:
    """10 % of the scene changed: about 10 % of the pixels read >= 0.5, not half of them (the raw
    chi-square CDF is uniform over unchanged pixels, so ~55 % of this scene read >= 0.5 before)."""
    x, y, truth = _scene(changed=4000)
    eng = IRMADEngine()
    eng.fit(x, y)
    prob = eng.predict_proba(_as_tiles(x), _as_tiles(y), np.ones((1, 400, 100), bool)).ravel()
    mask = prob > eng.default_threshold
    assert (prob >= 0.5).mean() == pytest.approx(mask.mean(), abs=1e-3)
    assert (prob >= 0.5).mean() < 0.15 and (prob >= 0.9).mean() < 0.12
    assert np.median(prob[~truth]) < 0.05, "a typical unchanged pixel reads as unlikely change"
    z = eng.statistic(_as_tiles(x), _as_tiles(y)).ravel()
    same = mask == (chi2_cdf(z.astype(np.float64), 3) > 0.99)
    assert same.mean() > 0.9995, "the default mask is the 1 % significance test it always was"


def test_irmad_is_pixelwise() -> None:
    x, y, _ = _scene(n=10000)
    eng = IRMADEngine()
    eng.fit(x, y)
    bx, by = _as_tiles(x), _as_tiles(y)
    whole = eng.predict_proba(bx, by, np.ones((1, 100, 100), bool))
    part = eng.predict_proba(bx[:, :, 10:42, 20:52], by[:, :, 10:42, 20:52], np.ones((1, 32, 32), bool))
    np.testing.assert_array_equal(whole[:, 10:42, 20:52], part)


def test_identical_dates_show_no_change() -> None:
    x, _, _ = _scene(n=5000, changed=0)
    eng = IRMADEngine()
    eng.fit(x, x.copy())
    prob = eng.predict_proba(_as_tiles(x), _as_tiles(x), np.ones((1, 50, 100), bool))
    assert (prob > eng.default_threshold).mean() < 0.02


def test_too_few_pixels() -> None:
    with pytest.raises(InputError, match="too few for IR-MAD"):
        IRMADEngine().fit(np.ones((10, 3), np.float32), np.ones((10, 3), np.float32))


def test_predict_before_fit() -> None:
    with pytest.raises(RuntimeError, match="fit"):
        IRMADEngine().predict_proba(np.zeros((1, 3, 4, 4)), np.zeros((1, 3, 4, 4)), np.ones((1, 4, 4), bool))


def test_build_engine_irmad() -> None:
    eng = build_engine(DetectParams("a.tif", "b.tif", "out", engine="irmad"))
    assert eng.name == "irmad" and eng.default_threshold == 0.5 and not eng.needs_context
