"""Evaluation metrics against hand-computed cases; label-free thresholds; JSON stability."""
from __future__ import annotations

import inspect
import json
import logging
import math

import numpy as np
import pytest

from stages.core.errors import InputError
from stages.core.evaluation import (
    ThresholdParams,
    choose_threshold,
    evaluate,
    evaluate_by_kind,
    fit_gpd,
    point_adjust,
    pr_curve,
    score_series,
    segments,
    write_metrics_json,
)
from stages.core.params import build

# Two events: steps 1-2 and 5-7. At threshold 0.5 the alarms are steps 2, 3, 5, 6, 7.
LABELS = np.array([0, 1, 1, 0, 0, 1, 1, 1, 0])
SCORES = np.array([0.1, 0.2, 0.9, 0.8, 0.1, 0.7, 0.6, 0.95, 0.3])


def test_segments_are_half_open_runs():
    assert segments(LABELS).tolist() == [[1, 3], [5, 8]]
    assert segments(np.array([1, 1, 0, 1])).tolist() == [[0, 2], [3, 4]]
    assert segments(np.zeros(4)).shape == (0, 2)


def test_metrics_match_hand_computation():
    m = evaluate(SCORES, LABELS, threshold=0.5, step_s=10.0)
    # TP = steps 2,5,6,7; FP = step 3; FN = step 1
    assert m["precision"] == pytest.approx(4 / 5)
    assert m["recall"] == pytest.approx(4 / 5)
    assert m["f1"] == pytest.approx(0.8)
    assert m["event_recall"] == 1.0
    # event 1 starts at step 1, first alarm step 2 → 1 step; event 2 alarms at its start → 0
    assert m["mean_delay_s"] == pytest.approx((1 + 0) / 2 * 10.0)
    # point-adjusted: step 1 joins the detected event → TP 5, FP 1 → P 5/6, R 1
    assert m["pa_f1"] == pytest.approx(2 * (5 / 6) / (5 / 6 + 1))
    # AUC-ROC: 16 of 20 (positive, negative) pairs ordered correctly
    assert m["auc_roc"] == pytest.approx(16 / 20)
    # AP = Σ ΔR·P over thresholds 0.95, 0.9, 0.7, 0.6, 0.2
    assert m["auc_pr"] == pytest.approx(0.2 * (1 + 1 + 0.75 + 0.8 + 5 / 7))
    # oracle best F1: threshold 0.2 → P 5/7, R 1 → F1 5/6
    assert m["best_f1_oracle"] == pytest.approx(5 / 6)
    # oracle PA: segment maxima 0.9 and 0.95 above every normal score → perfect
    assert m["best_f1_oracle_pa"] == pytest.approx(1.0)
    assert (m["n_steps"], m["n_anomalous"], m["n_events"], m["n_alarms"]) == (9, 5, 2, 5)
    assert m["threshold"] == 0.5


def test_missed_event_and_strict_alarm_rule():
    scores = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.5, 0.9, 0.0])
    m = evaluate(scores, LABELS, threshold=0.5, step_s=1.0)  # 0.5 itself does not alarm
    assert m["n_alarms"] == 1
    assert m["event_recall"] == 0.5
    assert m["mean_delay_s"] == 2.0  # event 2 starts at 5, first alarm at 7
    assert m["precision"] == 1.0 and m["recall"] == pytest.approx(1 / 5)
    assert m["pa_f1"] == pytest.approx(2 * 1 * 0.6 / 1.6)  # TP 3 (event 2), FN 2


def test_no_alarm_gives_zero_precision_and_nan_delay():
    m = evaluate(SCORES, LABELS, threshold=10.0)
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    assert m["event_recall"] == 0.0 and math.isnan(m["mean_delay_s"])


def test_nan_scores_are_dropped_with_their_labels():
    scores = np.r_[np.nan, np.nan, SCORES]
    labels = np.r_[1, 1, LABELS]  # the unscored steps' labels must not count
    m = evaluate(scores, labels, threshold=0.5)
    ref = evaluate(SCORES, LABELS, threshold=0.5)
    assert m == ref


def test_point_adjust_lifts_whole_segment():
    adj = point_adjust(SCORES, LABELS)
    assert adj.tolist() == [0.1, 0.9, 0.9, 0.8, 0.1, 0.95, 0.95, 0.95, 0.3]


def test_no_anomaly_does_not_crash(caplog):
    with caplog.at_level(logging.WARNING):
        m = evaluate(SCORES, np.zeros(9, int), threshold=0.5)
    assert math.isnan(m["auc_pr"]) and math.isnan(m["auc_roc"])
    assert math.isnan(m["recall"]) and math.isnan(m["event_recall"]) and math.isnan(m["best_f1_oracle"])
    assert m["precision"] == 0.0 and m["n_events"] == 0
    assert "single class" in caplog.text


def test_all_anomalous_does_not_crash():
    m = evaluate(SCORES, np.ones(9, int), threshold=0.5)
    assert math.isnan(m["auc_pr"]) and math.isnan(m["auc_roc"])
    assert m["precision"] == 1.0 and m["recall"] == pytest.approx(5 / 9)
    assert m["event_recall"] == 1.0 and m["mean_delay_s"] == 2.0
    assert m["best_f1_oracle"] == 1.0


def test_empty_and_mismatched_inputs():
    m = evaluate(np.full(3, np.nan), np.zeros(3), threshold=0.0)
    assert m["n_steps"] == 0 and math.isnan(m["auc_pr"])
    with pytest.raises(ValueError):
        evaluate(np.zeros(3), np.zeros(4), threshold=0.0)


# ---------------------------------------------------------------- thresholds


def test_threshold_signature_takes_no_labels():
    assert list(inspect.signature(choose_threshold).parameters) == ["val_scores", "params"]


def test_pot_on_exponential_sits_between_quantiles():
    x = np.random.default_rng(0).exponential(1.0, 20_000)
    z = choose_threshold(x, ThresholdParams(method="pot", pot_init_level=0.98, pot_risk=1e-3))
    assert np.quantile(x, 0.98) < z < np.quantile(x, 0.9999)
    assert z == pytest.approx(-math.log(1e-3), rel=0.1)  # the true 1e-3 tail quantile


def test_gpd_fit_recovers_known_shapes():
    from scipy.stats import genpareto

    for shape in (0.3, -0.3):
        y = genpareto.rvs(shape, scale=1.5, size=4000, random_state=1)
        gamma, sigma = fit_gpd(y)
        ref_shape, _, ref_scale = genpareto.fit(y, floc=0)
        assert gamma == pytest.approx(ref_shape, abs=2e-3)
        assert sigma == pytest.approx(ref_scale, rel=2e-3)


def test_pot_ignores_nans():
    x = np.random.default_rng(1).exponential(1.0, 5000)
    with_nan = np.r_[x, [np.nan] * 50]
    p = ThresholdParams()
    assert choose_threshold(with_nan, p) == choose_threshold(x, p)


def test_pot_degenerate_falls_back_to_quantile(caplog):
    p = ThresholdParams(method="pot", quantile=0.9)
    with caplog.at_level(logging.WARNING):
        assert choose_threshold(np.full(100, 3.0), p) == 3.0
    assert "constant" in caplog.text
    few = np.arange(20, dtype=float)  # 2% of 20 points = no usable peaks
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert choose_threshold(few, p) == pytest.approx(np.quantile(few, 0.9))
    assert "falling back" in caplog.text


def test_quantile_and_max_methods():
    x = np.arange(101, dtype=float)
    assert choose_threshold(x, ThresholdParams(method="val_quantile", quantile=0.9)) == pytest.approx(90.0)
    assert choose_threshold(x, ThresholdParams(method="val_max")) == 100.0
    with pytest.raises(ValueError):
        choose_threshold(np.array([np.nan]), ThresholdParams())


@pytest.mark.parametrize("raw", [{"method": "oracle"}, {"quantile": 1.5}, {"pot_init_level": 1.0},
                                 {"pot_risk": 0.5}])
def test_threshold_params_reject_bad_values(raw):
    with pytest.raises(InputError):
        build(ThresholdParams, raw, where="evaluate.threshold")


# ---------------------------------------------------------------- plot data + JSON


def test_pr_curve_is_thinned_and_ordered():
    rng = np.random.default_rng(0)
    labels = rng.random(1000) < 0.1
    scores = rng.random(1000) + labels
    pts = pr_curve(scores, labels, max_points=50)
    assert len(pts) <= 50
    rec = [p["recall"] for p in pts]
    assert rec == sorted(rec) and rec[-1] == 1.0
    assert set(pts[0]) == {"precision", "recall", "threshold"}
    assert pr_curve(scores, np.zeros(1000)) == []


def test_score_series_keeps_spikes_and_formats_time():
    scores = np.zeros(1000)
    scores[537] = 9.0
    labels = np.zeros(1000, int)
    labels[540] = 1
    ts = 1_700_000_000_000_000 + np.arange(1000, dtype=np.int64) * 10_000_000
    rows = score_series(ts, scores, labels, threshold=1.0, max_points=10)
    assert len(rows) == 10
    spike = [r for r in rows if r["score"] == 9.0]
    assert len(spike) == 1 and spike[0]["alarm"] == 1 and spike[0]["label"] == 1
    assert rows[0]["ts"] == "2023-11-14T22:13:20Z" and rows[0]["t"] == 0
    idx = score_series(None, np.r_[np.nan, scores[:5]], np.zeros(6), 0.5)
    assert [r["t"] for r in idx] == [1, 2, 3, 4, 5]  # NaN step left out, step indices kept


def test_write_metrics_json_rounds_and_nulls(tmp_path):
    path = tmp_path / "m" / "x.json"
    write_metrics_json(path, {"b": 1 / 3, "a": float("nan"), "c": np.float32(2.5), "d": {"z": np.int64(3),
                                                                                          "y": -1e-9}})
    text = path.read_text()
    assert json.loads(text) == {"a": None, "b": 0.333333, "c": 2.5, "d": {"y": 0.0, "z": 3}}
    assert text.index('"a"') < text.index('"b"')
    write_metrics_json(path, {"b": 1 / 3 + 1e-12, "a": float("nan"), "c": 2.5, "d": {"z": 3, "y": 0.0}})
    assert path.read_text() == text  # tiny float noise does not churn the bytes
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]  # no temp leftovers


def test_write_metrics_json_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "bad.json"
    with pytest.raises(TypeError):
        write_metrics_json(path, {"a": object()})
    assert list(tmp_path.iterdir()) == []


def test_by_kind_judges_each_fault_kind_against_normal_steps_only():
    labels = np.array([0, 1, 1, 0, 0, 1, 1, 0, 0])
    kinds = np.array(["", "logs", "logs", "", "", "cpu", "cpu", "", ""])
    scores = np.array([0.1, 0.9, 0.8, 0.2, 0.1, 0.15, 0.12, 0.3, 0.0])  # sees the log fault, misses cpu
    by = evaluate_by_kind(scores, labels, kinds, threshold=0.5)
    assert set(by) == {"logs", "cpu"}
    assert by["logs"]["auc_pr"] == pytest.approx(1.0) and by["logs"]["event_recall"] == 1.0
    assert by["cpu"]["event_recall"] == 0.0 and by["cpu"]["n_events"] == 1 and by["cpu"]["auc_pr"] < 1.0


def test_contamination_rule_takes_the_matching_quantile():
    x = np.arange(1000, dtype=float)
    assert choose_threshold(x, ThresholdParams(method="contamination", contamination=0.1)) == pytest.approx(
        np.quantile(x, 0.9))
    # unknown contamination falls back to the quantile rule; absurd shares are capped
    assert choose_threshold(x, ThresholdParams(method="contamination", quantile=0.99)) == pytest.approx(
        np.quantile(x, 0.99))
    assert choose_threshold(x, ThresholdParams(method="contamination", contamination=0.9)) == pytest.approx(
        np.quantile(x, 0.5))
    with pytest.raises(InputError, match="contamination"):
        build(ThresholdParams, {"method": "contamination", "contamination": 1.5}, where="evaluate.threshold")
