"""DSPOT (drift-aware streaming POT) and the vectorised GPD fit behind it.

The drifting streams are synthetic and label-free: a slowly rising score level plus unit
Gaussian noise, calibrated on a stationary prefix. A threshold that ignores drift alarms on most
of the drifted part; DSPOT keeps its false-alarm rate near the target risk and still catches spikes.
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np
import pytest

from stages.core.dspot import DSpot, dspot_thresholds, fit_gpd, tail_quantile
from stages.core.evaluation import pot_threshold

RISK = 1e-3
FACTOR = 4.0  # the false-alarm rate must stay within this factor of the risk (observed: 1-2.6x over seeds)
KW = dict(depth=100, init_level=0.98, risk=RISK)


def _drifting(seed: int, n: int = 20_000, rise: float = 8.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    calib = rng.normal(size=5_000)
    level = np.linspace(0.0, rise, n)
    return calib, level + rng.normal(size=n), level


# ---------------------------------------------------------------- GPD fit


@pytest.mark.parametrize("shape", [0.4, 0.15, 0.0, -0.2])
@pytest.mark.parametrize("m", [60, 400, 3000])
def test_fit_gpd_matches_scipy(shape, m):
    """Same maximum as scipy's generic fit (loc fixed at 0): likelihood at least as high, same shape."""
    from scipy.stats import genpareto

    y = genpareto.rvs(shape, scale=1.7, size=m, random_state=int(m + 100 * (shape + 1)))
    gamma, sigma = fit_gpd(y)
    ref_shape, _, ref_scale = genpareto.fit(y, floc=0)
    ll = genpareto.logpdf(y, gamma, scale=sigma).sum()
    ll_ref = genpareto.logpdf(y, ref_shape, scale=ref_scale).sum()
    assert ll >= ll_ref - 1e-6 * abs(ll_ref)
    assert gamma == pytest.approx(ref_shape, abs=5e-3)
    assert sigma == pytest.approx(ref_scale, rel=5e-3)


def test_fit_gpd_is_faster_than_scipy():
    from scipy.stats import genpareto

    y = genpareto.rvs(0.1, scale=1.0, size=400, random_state=3)

    def per_call(f):
        f(y)
        t0 = time.perf_counter()
        for _ in range(5):
            f(y)
        return (time.perf_counter() - t0) / 5

    assert per_call(fit_gpd) < per_call(lambda v: genpareto.fit(v, floc=0))


def test_tail_quantile_exponential_limit():
    # gamma → 0 is the exponential tail: t − sigma·log(q·n/N_t)
    assert tail_quantile(1.0, 0.0, 2.0, 1e-3, 1000, 20) == pytest.approx(1.0 - 2.0 * math.log(0.05))
    assert tail_quantile(1.0, 1e-7, 2.0, 1e-3, 1000, 20) == pytest.approx(1.0 - 2.0 * math.log(0.05), rel=1e-5)
    assert tail_quantile(1.0, 5.0, 1.0, 1e-300, 10, 10_000) == math.inf  # overflow is "no fit", not a crash


# ---------------------------------------------------------------- drift


def test_dspot_follows_drift_where_a_static_threshold_floods():
    calib, stream, level = _drifting(seed=0)
    thr = dspot_thresholds(calib, stream, **KW)
    assert thr.shape == stream.shape and np.isfinite(thr).all()
    alarms = stream > thr
    assert RISK / FACTOR <= alarms.mean() <= FACTOR * RISK
    static = pot_threshold(calib, 0.98, RISK)
    drifted = level > 4.0  # the second half: the level has moved by more than 4 noise sd
    assert np.mean(stream[drifted] > static) > 0.9  # the calibration-only threshold alarms on most of it
    assert alarms[drifted].mean() <= FACTOR * RISK
    # the threshold moved with the level: at the end it sits about 8 above where it started
    assert thr[-1000:].mean() - thr[:1000].mean() == pytest.approx(8.0, abs=0.5)


def test_dspot_false_alarm_rate_without_drift():
    stream = np.random.default_rng(8).normal(size=20_000)
    thr = dspot_thresholds(np.random.default_rng(9).normal(size=5_000), stream, **KW)
    assert RISK / FACTOR <= np.mean(stream > thr) <= FACTOR * RISK


def test_dspot_catches_spikes_on_a_drifting_stream():
    calib, stream, _ = _drifting(seed=1)
    spikes = np.random.default_rng(11).choice(np.arange(500, len(stream)), 40, replace=False)
    stream[spikes] += 7.0
    thr = dspot_thresholds(calib, stream, **KW)
    alarms = stream > thr
    assert alarms[spikes].mean() >= 0.95
    others = np.ones(len(stream), bool)
    others[spikes] = False
    assert alarms[others].mean() <= FACTOR * RISK


def test_alarm_rule_holds_step_by_step():
    calib, stream, _ = _drifting(seed=2, n=3_000)
    stream[[500, 1500, 2500]] += 9.0
    thr = dspot_thresholds(calib, stream, **KW)
    model = DSpot(100, 0.98, RISK)
    assert model.calibrate(calib)
    for i, x in enumerate(stream):
        t, alarm = model.step(float(x))
        assert t == thr[i] and alarm == (x > thr[i])


def test_refit_every_n_peaks_keeps_the_rate():
    calib, stream, _ = _drifting(seed=3)
    thr = dspot_thresholds(calib, stream, **KW, refit_every=10)
    assert RISK / FACTOR <= np.mean(stream > thr) <= FACTOR * RISK


def test_twenty_thousand_steps_run_fast():
    calib, stream, _ = _drifting(seed=4)
    t0 = time.perf_counter()
    dspot_thresholds(calib, stream, **KW)
    # speed is a benchmark figure (see the issue notes), never a timed assertion


# ---------------------------------------------------------------- NaN and degenerate input


def test_nan_steps_carry_the_threshold_and_change_nothing():
    calib, stream, _ = _drifting(seed=5, n=4_000)
    holes = np.zeros(len(stream), bool)
    holes[[0, 1, 700, 701, 702, 3999]] = True
    with_nan = stream.copy()
    with_nan[holes] = np.nan
    thr = dspot_thresholds(calib, with_nan, **KW)
    assert np.isfinite(thr).all()
    ref = dspot_thresholds(calib, stream[~holes], **KW)
    np.testing.assert_array_equal(thr[~holes], ref)  # the NaN steps left the model untouched
    assert thr[700] == thr[701] == thr[702] == thr[703]  # carried across the gap
    assert thr[0] == thr[1] == thr[2]


def test_nan_calibration_scores_are_ignored():
    calib, stream, _ = _drifting(seed=6, n=2_000)
    with_nan = np.r_[np.nan, calib[:2500], [np.nan] * 5, calib[2500:]]
    np.testing.assert_array_equal(dspot_thresholds(with_nan, stream, **KW), dspot_thresholds(calib, stream, **KW))


def test_constant_calibration_falls_back_to_a_constant(caplog):
    stream = np.r_[np.full(50, 3.0), [4.0]]
    with caplog.at_level(logging.WARNING):
        thr = dspot_thresholds(np.full(500, 3.0), stream, **KW)
    assert (thr == 3.0).all() and (stream > thr).tolist() == [False] * 50 + [True]
    assert "constant" in caplog.text and "falling back" in caplog.text


def test_short_or_peakless_calibration_falls_back_to_the_quantile(caplog):
    short = np.arange(50, dtype=float)  # fewer than depth + 10 scores
    with caplog.at_level(logging.WARNING):
        thr = dspot_thresholds(short, np.zeros(7), **KW, fallback_quantile=0.9)
    assert thr.tolist() == [pytest.approx(np.quantile(short, 0.9))] * 7
    assert "falling back" in caplog.text
    caplog.clear()
    two_values = np.r_[np.zeros(990), np.ones(10)]  # residual tail has ties: nothing strictly above t
    np.random.default_rng(0).shuffle(two_values)
    with caplog.at_level(logging.WARNING):
        thr = dspot_thresholds(two_values, np.zeros(3), depth=5, init_level=0.995, risk=1e-3)
    assert "falling back" in caplog.text and np.unique(thr).size == 1


def test_no_finite_calibration_score_raises():
    with pytest.raises(ValueError, match="no finite calibration score"):
        dspot_thresholds(np.full(10, np.nan), np.zeros(3), **KW)


def test_empty_stream():
    calib, _, _ = _drifting(seed=0, n=10)
    assert dspot_thresholds(calib, np.empty(0), **KW).shape == (0,)
