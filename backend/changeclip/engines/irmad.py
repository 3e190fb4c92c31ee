"""IR-MAD: iteratively reweighted multivariate alteration detection (Nielsen 2007), unsupervised.

Fit (once, on a nodata-free sample of both dates): canonical correlation analysis of the before
bands ``X`` and after bands ``Y`` gives projections ``U = aᵀX``, ``V = bᵀY`` with correlations
``ρ_i``; the MAD variates ``M_i = U_i - V_i`` have variance ``2 (1 - ρ_i)`` over unchanged
pixels. The statistic ``Z = Σ_i M_i² / (2 (1 - ρ_i))`` is chi-square with ``C`` degrees of
freedom where nothing changed, so each pixel is re-weighted by its no-change probability
``1 - F_χ²(Z; C)`` and the CCA repeated until the canonical correlations stop moving.

Calibration: the reweighting concentrates on the least-changed pixels, so the weighted variances
``2 (1 - ρ_i)`` underestimate the spread of the whole no-change population (thresholding with
them flags a large share of unchanged pixels). After the iterations each MAD variate's no-change
centre and variance are therefore re-estimated robustly on the sample (median and
``1.4826 * median absolute deviation``; valid while less than half of the area changed).

Apply (per pixel, so tiles never show seams): ``p = 1 - F_χ²(Z; C)`` is the pixel's p-value, the
chance that an unchanged pixel shows a MAD statistic at least this large. The raw chi-square CDF
``F`` is uniform over unchanged pixels (half of a scene with no change at all would read >= 0.5),
so it is not what users read a "change probability" as. The value written is the change score
``s = α / (α + p)`` with ``α`` = :data:`SIGNIFICANCE` (1 %): monotone in ``Z``, exactly 0.5 at the
1 % significance level, so the default threshold 0.5 marks the same pixels as ``F > 0.99`` and the
probability layer's 50 % contour is the mask's edge. Its odds ``α / p`` grow tenfold for every
tenfold smaller p-value (p = 10 %: 0.09; 1 %: 0.5; 0.1 %: 0.91); unchanged pixels mostly read
below 0.05.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from changeclip.errors import InputError

_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def _erf(x: np.ndarray) -> np.ndarray:
    """erf for x >= 0 (Abramowitz & Stegun 7.1.26, absolute error < 1.5e-7)."""
    t = 1.0 / (1.0 + _ERF_P * x)
    poly = t * (_ERF_A[0] + t * (_ERF_A[1] + t * (_ERF_A[2] + t * (_ERF_A[3] + t * _ERF_A[4]))))
    return 1.0 - poly * np.exp(-x * x)


SIGNIFICANCE = 0.01
"""The p-value at which the change score is 0.5 (the default threshold): the 1 % level."""


def _erfc(x: np.ndarray) -> np.ndarray:
    """erfc for x >= 0 (Abramowitz & Stegun 7.1.26), without the cancellation of ``1 - erf``."""
    t = 1.0 / (1.0 + _ERF_P * x)
    poly = t * (_ERF_A[0] + t * (_ERF_A[1] + t * (_ERF_A[2] + t * (_ERF_A[3] + t * _ERF_A[4]))))
    return poly * np.exp(-x * x)


def _chi2_series(x: np.ndarray, k: int) -> tuple[np.ndarray | None, np.ndarray]:
    """The closed-form pieces both chi-square tails share, in the input's float dtype.

    Returns ``(sqrt(x/2) or None, series)``: for even ``k`` the CDF is ``1 - series`` and the
    survival function ``series``; for odd ``k`` they are ``erf(sq) - series`` and ``erfc(sq) + series``.
    """
    if k < 1:
        raise ValueError("degrees of freedom must be >= 1")
    x = np.asarray(x)
    dtype = np.float32 if x.dtype == np.float32 else np.float64
    h = np.clip(x.astype(dtype, copy=False), 0.0, 1e4) / dtype(2.0)
    e = np.exp(-h)
    if k % 2 == 0:
        term = np.ones_like(h)
        total = term.copy()
        for i in range(1, k // 2):
            term = term * h / dtype(i)
            total += term
        return None, e * total
    sq = np.sqrt(h)
    term = sq / dtype(math.gamma(1.5))
    total = np.zeros_like(h)
    for i in range(k // 2):
        if i:
            term = term * h / dtype(i + 0.5)
        total += term
    return sq, e * total


def chi2_sf(x: np.ndarray, k: int) -> np.ndarray:
    """Chi-square survival function ``1 - CDF`` (the p-value) with ``k`` >= 1 degrees of freedom.

    The same closed forms as :func:`chi2_cdf`, summed for the upper tail, so small p-values keep
    their precision (``1 - chi2_cdf`` rounds them to 0 in float32). Same dtypes as :func:`chi2_cdf`.
    """
    sq, series = _chi2_series(x, k)
    out = series if sq is None else _erfc(sq) + series
    return np.clip(out, 0.0, 1.0)


def change_score(p_value: np.ndarray, significance: float = SIGNIFICANCE) -> np.ndarray:
    """The change score ``α / (α + p)`` of p-values: 0.5 at ``p = α``, towards 1 as ``p`` -> 0."""
    p = np.asarray(p_value)
    a = p.dtype.type(significance) if p.dtype == np.float32 else significance
    return a / (a + p)


def chi2_cdf(x: np.ndarray, k: int) -> np.ndarray:
    """Chi-square CDF with ``k`` (integer >= 1) degrees of freedom, elementwise (float32 in, float32 out;
    otherwise float64).

    Closed forms of the regularised lower incomplete gamma function at ``k/2``: a finite
    Poisson sum for even ``k``; erf plus a finite sum for odd ``k``. Accurate to ~1e-7.
    """
    sq, series = _chi2_series(x, k)
    out = 1.0 - series if sq is None else _erf(sq) - series
    return np.clip(out, 0.0, 1.0)


_UNUSABLE_SAMPLE = ("IR-MAD cannot estimate change statistics from the scaled imagery; check --value-range "
                    "(value_range), which must cover the raster's values, e.g. 0:3000, or leave it out")


class IRMADEngine:
    """The IR-MAD change engine (no weights, CPU, pixelwise).

    Args:
        max_iter: Maximum reweighting iterations.
        tol: Convergence: largest change of a canonical correlation between iterations.
    """

    name = "irmad"
    default_threshold = 0.5
    clip_input = False
    needs_context = False
    device = "cpu"
    training_data = None

    def __init__(self, max_iter: int = 50, tol: float = 1e-4) -> None:
        self.max_iter = max_iter
        self.tol = tol
        self.iterations = 0
        self.rho: np.ndarray | None = None
        self._mx = self._my = self._a = self._b = self._var = self._centre = None  # type: ignore[assignment]

    def fit(self, before_sample: np.ndarray, after_sample: np.ndarray) -> None:
        """Iterated CCA on ``(P, C)`` samples of both dates (pixels valid in both).

        Raises:
            InputError: Too few valid pixels to estimate the statistics, or scaled values that
                are not finite or defeat the statistics (e.g. an absurd value range).
        """
        x = np.asarray(before_sample, dtype=np.float64)
        y = np.asarray(after_sample, dtype=np.float64)
        p, c = x.shape
        if p < max(50, 10 * c):
            raise InputError(f"only {p} pixels are valid in both rasters, too few for IR-MAD "
                             f"(needs at least {max(50, 10 * c)}); use a larger overlapping area")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise InputError(_UNUSABLE_SAMPLE + " (the scaled values are not finite)")
        try:
            self._iterate(x, y)
        except np.linalg.LinAlgError as exc:
            raise InputError(f"{_UNUSABLE_SAMPLE} ({exc})") from None

    def _iterate(self, x: np.ndarray, y: np.ndarray) -> None:
        """The IR-MAD iterations and the robust calibration of :meth:`fit`."""
        p, c = x.shape
        w = np.ones(p)
        rho_prev: np.ndarray | None = None
        for it in range(1, self.max_iter + 1):
            mx, my, a, b, rho = _weighted_cca(x, y, w)
            var = np.maximum(2.0 * (1.0 - rho), 1e-9)
            mad = (x - mx) @ a - (y - my) @ b
            z = (mad * mad / var).sum(axis=1)
            w = 1.0 - chi2_cdf(z, c)
            self._mx, self._my, self._a, self._b, self._var, self.rho = mx, my, a, b, var, rho
            self.iterations = it
            if rho_prev is not None and np.max(np.abs(rho - rho_prev)) < self.tol:
                break
            rho_prev = rho
            if w.sum() < 1e-6 * p:  # everything looks changed: keep the last estimate
                break
        # The reweighting concentrates on the least-changed pixels, so the weighted MAD variances
        # 2(1 - rho) come out too small for the whole no-change population (Z would flag noise as
        # change). Calibrate each MAD variate's no-change centre and spread robustly instead:
        # median and 1.4826 * median absolute deviation, valid while under half of the area changed.
        mad = (x - self._mx) @ self._a - (y - self._my) @ self._b
        centre = np.median(mad, axis=0)
        spread = 1.4826 * np.median(np.abs(mad - centre), axis=0)
        self._centre = centre
        self._var = np.maximum(spread * spread, 1e-12)

    def statistic(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """The MAD chi-square statistic ``Z`` of ``(N, C, H, W)`` inputs: ``(N, H, W)`` float32.

        Computed band by band in float32 (no ``(pixels, C)`` copies): the MAD variates are
        differences of unit-variance projections, far above float32 rounding.
        """
        if self._a is None:
            raise RuntimeError("IRMADEngine.fit() must run before predict_proba()")
        n, c, h, w = before.shape
        x = before.astype(np.float32, copy=False)
        y = after.astype(np.float32, copy=False)
        a = self._a.astype(np.float32)
        b = self._b.astype(np.float32)
        const = (self._mx @ self._a - self._my @ self._b + self._centre).astype(np.float32)
        inv_var = (1.0 / self._var).astype(np.float32)
        z = np.zeros((n, h, w), np.float32)
        m = np.empty((n, h, w), np.float32)
        for k in range(c):
            m.fill(-const[k])
            for j in range(c):
                m += a[j, k] * x[:, j]
                m -= b[j, k] * y[:, j]
            z += m * m * inv_var[k]
        return z

    def predict_proba(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """The change score of each pixel's MAD statistic: ``(N, H, W)`` float32 in 0..1, 0.5 at the
        1 % significance level (see the module's docstring)."""
        z = self.statistic(before, after)
        return change_score(chi2_sf(z, before.shape[1])).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        """Engine description for the summary."""
        return {
            "name": "irmad",
            "weights": None,
            "weights_sha256": None,
            "iterations": self.iterations,
            "canonical_correlations": [round(float(r), 6) for r in (self.rho if self.rho is not None else [])],
            "probability": (f"change score {SIGNIFICANCE:g} / ({SIGNIFICANCE:g} + p), p = the chi-square p-value of "
                            "the MAD statistic (degrees of freedom = number of bands); 0.5 at the "
                            f"{SIGNIFICANCE:.0%} significance level"),
        }


def _weighted_cca(x: np.ndarray, y: np.ndarray, w: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weighted canonical correlation analysis.

    Returns:
        ``(mean_x (C,), mean_y (C,), a (C, C), b (C, C), rho (C,))`` with ``rho`` ascending,
        ``aᵀ Σxx a = bᵀ Σyy b = I`` and every ``corr(aᵢᵀx, bᵢᵀy) = ρᵢ >= 0``.
    """
    ws = w / w.sum()
    mx, my = ws @ x, ws @ y
    xc, yc = x - mx, y - my
    sxx = (xc * ws[:, None]).T @ xc
    syy = (yc * ws[:, None]).T @ yc
    sxy = (xc * ws[:, None]).T @ yc
    c = x.shape[1]
    sxx += np.eye(c) * (1e-9 * np.trace(sxx) / c + 1e-12)
    syy += np.eye(c) * (1e-9 * np.trace(syy) / c + 1e-12)
    m = sxy @ np.linalg.solve(syy, sxy.T)
    lx = np.linalg.cholesky(sxx)
    lx_inv = np.linalg.inv(lx)
    vals, vecs = np.linalg.eigh(lx_inv @ m @ lx_inv.T)
    a = lx_inv.T @ vecs
    rho = np.sqrt(np.clip(vals, 0.0, 1.0))
    b = np.linalg.solve(syy, sxy.T @ a)
    norm = np.sqrt(np.maximum(np.einsum("ij,ik,kj->j", b, syy, b), 1e-300))
    b = b / norm
    return mx, my, a, b, rho
