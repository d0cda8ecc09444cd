"""Extreme-value thresholds: a fast GPD fit, the POT tail quantile, and drift-aware streaming SPOT (DSPOT).

DSPOT (Siffer et al., KDD 2017) sets a threshold that reads *scores only*: it models the score minus
the moving mean of the last ``depth`` non-alarming scores, fits a Generalised Pareto distribution
(GPD) to the excesses of that residual over a high initial level ``t``, and alarms when a residual
passes the ``risk`` tail quantile ``z_q``. The model keeps learning on the test stream from the
steps it does not alarm on, so a slow drift of the score level (the daily load cycle, an ageing
model) does not turn into a flood of false alarms the way a threshold frozen on validation does.

Known limit (as in the paper): an abrupt level shift larger than ``z_q`` is never absorbed, since
alarming steps never enter the moving window.
"""
from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)

MIN_POT_PEAKS = 10  # fewer excesses than this cannot fit a GPD meaningfully

_COARSE = np.logspace(-10, 0, 80)  # |x| magnitudes of the coarse grid, per side of 0
_EDGE = np.logspace(-6, -1, 11)  # relative distances to the support limit x = -1/max(y)
_ZOOM_POINTS = 33
_ZOOM_ROUNDS = 3


# ------------------------------------------------------------------ GPD fit


def _profile_loglik(xs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Profile log-likelihood of GPD excesses ``y`` at every nonzero ``x = gamma/sigma`` → (ll, gamma).

    For fixed x the MLE of gamma is mean(log(1 + x·y)) and sigma = gamma/x (Grimshaw 1993), so the
    two-parameter fit is a one-dimensional search. Callers keep x > -1/max(y) and x != 0 (the
    exponential limit is evaluated apart), so every term is finite: no masking on the hot path.
    """
    m = len(y)
    gamma = np.log1p(np.multiply.outer(xs, y)).sum(axis=1) / m
    return -m * np.log(gamma / xs) - m * (1.0 + gamma), gamma


def fit_gpd(excesses: np.ndarray, near: float | None = None) -> tuple[float, float]:
    """Maximum-likelihood (gamma, sigma) of a GPD with location 0 (Grimshaw's profile trick, vectorised).

    A log-spaced grid of x = gamma/sigma on both sides of 0 (x > -1/max(y) keeps the support
    valid) finds the best bracket, then a few rounds of a fine linear grid zoom into it. Every
    round is one numpy expression over all candidate x, which keeps refitting on every new peak
    affordable in :class:`DSpot` (see tests/test_dspot.py for the timing against scipy's fit).
    ``near`` (the previous fit's x, when one peak was just added) tries a ±10 % window around it
    first and skips the coarse grid when the maximum lies inside that window.
    """
    y = np.asarray(excesses, dtype=np.float64).ravel()
    m = len(y)
    y_max, y_mean = float(y.max()), float(y.mean())
    y_min = float(max(y.min(), 1e-9 * y_max))
    lo = -1.0 / y_max * (1.0 - 1e-6)  # the support limit, just inside
    hi = max(2.0 * (y_mean - y_min) / (y_min ** 2), 1.0 / y_max)  # Grimshaw's upper bound on the root
    hi = min(hi, 1e6 / y_max)
    tiny = 1e-10 * min(-lo, hi)  # stands in for x = 0 inside zoom grids
    warm = None
    if near is not None and near != 0.0 and lo < near < hi:
        xs = np.linspace(max(near - 0.1 * abs(near), lo), min(near + 0.1 * abs(near), hi), _ZOOM_POINTS)
        xs[xs == 0.0] = tiny
        lz, gz = _profile_loglik(xs, y)
        k = int(np.argmax(lz))
        if 0 < k < _ZOOM_POINTS - 1:  # an interior maximum: no need for the global grid
            warm = float(xs[k]), float(lz[k]), float(gz[k]), float(xs[k - 1]), float(xs[k + 1])
    if warm is not None:
        x_best, ll_best, g_best, a, b = warm
    else:
        edge = -1.0 / y_max * (1.0 - _EDGE)  # near the support limit, where gamma < -1 maxima sit
        grid = np.unique(np.concatenate([edge, lo * _COARSE, hi * _COARSE]))  # ascending
        ll, gl = _profile_loglik(grid, y)
        best = int(np.argmax(ll))
        ll0 = -m * math.log(y_mean) - m  # the exponential limit x = 0
        if ll0 > ll[best]:  # best bracket straddles 0
            x_best, ll_best, g_best = 0.0, ll0, 0.0
            a, b = lo * _COARSE[0], hi * _COARSE[0]
        else:
            x_best, ll_best, g_best = float(grid[best]), float(ll[best]), float(gl[best])
            a, b = float(grid[max(best - 1, 0)]), float(grid[min(best + 1, len(grid) - 1)])
    lz = xs = None
    k = 0
    for _ in range(_ZOOM_ROUNDS):
        if not b - a > 1e-9 * max(abs(a), abs(b)):
            lz = None
            break
        xs = np.linspace(a, b, _ZOOM_POINTS)
        xs[xs == 0.0] = tiny
        lz, gz = _profile_loglik(xs, y)
        k = int(np.argmax(lz))
        if lz[k] >= ll_best:
            x_best, ll_best, g_best = float(xs[k]), float(lz[k]), float(gz[k])
        a, b = float(xs[max(k - 1, 0)]), float(xs[min(k + 1, _ZOOM_POINTS - 1)])
    if lz is not None and 0 < k < _ZOOM_POINTS - 1:  # interior maximum: the parabola through its neighbours
        l0, l1, l2 = lz[k - 1], lz[k], lz[k + 1]
        curv = l0 - 2.0 * l1 + l2
        if curv < 0:
            xv = xs[k] + 0.5 * (xs[1] - xs[0]) * (l0 - l2) / curv
            if xv != 0.0:
                lv, gv = _profile_loglik(np.array([xv]), y)
                if lv[0] >= ll_best:
                    x_best, ll_best, g_best = float(xv), float(lv[0]), float(gv[0])
    if x_best == 0.0:
        return 0.0, y_mean
    return g_best, g_best / x_best


def tail_quantile(t: float, gamma: float, sigma: float, risk: float, n_obs: int, n_peaks: int) -> float:
    """SPOT's z_q = t + sigma/gamma·((q·n/N_t)^-gamma − 1), the score exceeded with probability ``risk``.

    inf when the power overflows (an absurd fit); callers treat a non-finite z_q as "no fit".
    """
    r = risk * n_obs / n_peaks
    if abs(gamma) < 1e-9:
        return t - sigma * math.log(r)
    try:
        return t + sigma / gamma * (r ** (-gamma) - 1.0)
    except OverflowError:
        return math.inf


# ------------------------------------------------------------------ DSPOT


class DSpot:
    """Drift-aware streaming POT, calibrated on label-free scores, then fed one score at a time.

    ``calibrate`` walks the calibration scores with a moving window of ``depth`` values (every value
    enters it, as in the paper's initialisation), takes the residuals, sets ``t`` at their
    ``init_level`` quantile and fits the GPD to the excesses. ``step`` then applies the paper's
    update: an alarming residual (> z_q) changes nothing; a residual in (t, z_q] is a new peak
    (refit every ``refit_every`` peaks, z_q recomputed at every peak); any non-alarming score
    enters the moving window. z_q is kept at or above t (the GPD only describes the tail above t).
    """

    def __init__(self, depth: int, init_level: float, risk: float, refit_every: int = 1):
        self.depth, self.init_level, self.risk, self.refit_every = int(depth), init_level, risk, int(refit_every)
        self.ok = False  # set by calibrate when a GPD could be fitted
        self.t = self.z = math.nan
        self.gamma = self.sigma = math.nan
        self.n_obs = 0
        self._peaks = np.empty(0)
        self._n_peaks = 0
        self._since_fit = 0
        self._buf = np.empty(0)
        self._pos = 0
        self._sum = 0.0
        self._updates = 0

    # -- calibration
    def calibrate(self, calib_scores: np.ndarray) -> bool:
        """Fit on the finite calibration scores; False (with a warning) when a GPD cannot be fitted."""
        c = np.asarray(calib_scores, dtype=np.float64).ravel()
        c = c[np.isfinite(c)]
        d = self.depth
        if len(c) < d + MIN_POT_PEAKS:
            log.warning("DSPOT: %d finite calibration scores, need more than depth %d + %d; falling back",
                        len(c), d, MIN_POT_PEAKS)
            return False
        cs = np.concatenate([[0.0], np.cumsum(c)])
        means = (cs[d:-1] - cs[:-d - 1]) / d  # mean of c[i-d:i] for i = d .. len-1
        resid = c[d:] - means
        if float(resid.max()) == float(resid.min()):
            log.warning("DSPOT: calibration residuals are constant (%.6g); falling back", resid[0])
            return False
        t = float(np.quantile(resid, self.init_level))
        peaks = resid[resid > t] - t
        if len(peaks) < MIN_POT_PEAKS:
            log.warning("DSPOT: only %d of %d calibration residuals exceed the %.4g quantile (need %d); "
                        "falling back", len(peaks), len(resid), self.init_level, MIN_POT_PEAKS)
            return False
        self.t, self.n_obs = t, len(resid)
        self._peaks = np.empty(max(64, 2 * len(peaks)))
        self._peaks[:len(peaks)] = peaks
        self._n_peaks = len(peaks)
        if not self._refit() or not math.isfinite(self.z):
            log.warning("DSPOT: GPD fit on the calibration peaks failed (gamma=%s, sigma=%s); falling back",
                        self.gamma, self.sigma)
            return False
        self._buf = c[-d:].copy()
        self._pos, self._sum, self._updates = 0, float(self._buf.sum()), 0
        self.ok = True
        log.info("DSPOT: depth %d, t %.6g (%d peaks of %d residuals), gamma %.4g, sigma %.4g, z_q %.6g",
                 d, t, self._n_peaks, self.n_obs, self.gamma, self.sigma, self.z)
        return True

    def _refit(self) -> bool:
        near = self.gamma / self.sigma if math.isfinite(self.gamma) and self.sigma > 0 else None
        gamma, sigma = fit_gpd(self._peaks[:self._n_peaks], near=near)
        if not (math.isfinite(gamma) and math.isfinite(sigma)) or sigma <= 0:
            return False
        self.gamma, self.sigma, self._since_fit = gamma, sigma, 0
        self._update_z()
        return True

    def _update_z(self) -> None:
        z = tail_quantile(self.t, self.gamma, self.sigma, self.risk, self.n_obs, self._n_peaks)
        if math.isfinite(z):
            self.z = max(z, self.t)

    # -- persistence: a stream scored run by run resumes exactly where the last run stopped
    def to_state(self) -> dict:
        """Everything :meth:`step` depends on, as JSON-safe values (floats round-trip exactly)."""
        return {"depth": self.depth, "init_level": self.init_level, "risk": self.risk,
                "refit_every": self.refit_every, "ok": self.ok, "t": self.t, "z": self.z, "gamma": self.gamma,
                "sigma": self.sigma, "n_obs": self.n_obs, "peaks": self._peaks[:self._n_peaks].tolist(),
                "since_fit": self._since_fit, "buf": self._buf.tolist(), "pos": self._pos, "sum": self._sum,
                "updates": self._updates}

    @classmethod
    def from_state(cls, state: dict) -> "DSpot":
        """The model :meth:`to_state` described (KeyError/TypeError on a malformed state)."""
        model = cls(int(state["depth"]), float(state["init_level"]), float(state["risk"]), int(state["refit_every"]))
        model.ok = bool(state["ok"])
        model.t, model.z = float(state["t"]), float(state["z"])
        model.gamma, model.sigma = float(state["gamma"]), float(state["sigma"])
        model.n_obs = int(state["n_obs"])
        peaks = np.asarray(state["peaks"], dtype=np.float64)
        model._peaks = np.empty(max(64, 2 * len(peaks)))
        model._peaks[:len(peaks)] = peaks
        model._n_peaks = len(peaks)
        model._since_fit = int(state["since_fit"])
        model._buf = np.asarray(state["buf"], dtype=np.float64)
        model._pos, model._sum, model._updates = int(state["pos"]), float(state["sum"]), int(state["updates"])
        if model.ok and len(model._buf) != model.depth:
            raise ValueError(f"DSPOT state: {len(model._buf)} buffered scores for depth {model.depth}")
        return model

    # -- streaming
    @property
    def level(self) -> float:
        """The moving mean of the last ``depth`` non-alarming scores."""
        return self._sum / self.depth

    @property
    def threshold(self) -> float:
        """The threshold in force for the next score, in score units (z_q + moving mean)."""
        return self.z + self.level

    def step(self, x: float) -> tuple[float, bool]:
        """Process one score → (threshold it was judged against, alarm). NaN: no alarm, no update."""
        m = self.level
        thr = self.z + m
        if not math.isfinite(x):
            return thr, False
        if x > thr:
            return thr, True
        r = x - m
        self.n_obs += 1
        if r > self.t:
            self._add_peak(r - self.t)
        self._push(x)
        return thr, False

    def _add_peak(self, excess: float) -> None:
        if self._n_peaks == len(self._peaks):
            self._peaks = np.concatenate([self._peaks, np.empty(len(self._peaks))])
        self._peaks[self._n_peaks] = excess
        self._n_peaks += 1
        self._since_fit += 1
        if self._since_fit < self.refit_every or not self._refit():
            self._update_z()  # new n and N_t with the current fit

    def _push(self, x: float) -> None:
        self._sum += x - self._buf[self._pos]
        self._buf[self._pos] = x
        self._pos = (self._pos + 1) % self.depth
        self._updates += 1
        if self._updates % self.depth == 0:  # no round-off creep in the running sum
            self._sum = float(self._buf.sum())


def dspot_thresholds(calib_scores: np.ndarray, stream_scores: np.ndarray, *, depth: int, init_level: float,
                     risk: float, refit_every: int = 1, fallback_quantile: float = 0.99) -> np.ndarray:
    """Threshold in force at every step of ``stream_scores`` (alarm = score > threshold), no labels read.

    Calibrates on ``calib_scores`` (validation scores), then walks the stream. When no GPD can be
    fitted (too few or constant calibration scores, too few peaks) the result is the constant
    ``fallback_quantile`` quantile of the finite calibration scores, with a warning.
    """
    stream = np.asarray(stream_scores, dtype=np.float64).ravel()
    model = DSpot(depth, init_level, risk, refit_every)
    if not model.calibrate(calib_scores):
        c = np.asarray(calib_scores, dtype=np.float64).ravel()
        c = c[np.isfinite(c)]
        if len(c) == 0:
            raise ValueError("dspot_thresholds: no finite calibration score (is the validation split empty?)")
        q = float(np.quantile(c, fallback_quantile))
        log.warning("DSPOT: using the constant %.4g quantile of calibration scores (%.6g)", fallback_quantile, q)
        return np.full(len(stream), q)
    out = np.empty(len(stream))
    n_alarm = 0
    for i, x in enumerate(stream.tolist()):
        out[i], alarm = model.step(x)
        n_alarm += alarm
    log.info("DSPOT: %d alarms in %d steps; final z_q %.6g (%d peaks), final threshold %.6g", n_alarm,
             len(stream), model.z, model._n_peaks, model.threshold)
    return out
