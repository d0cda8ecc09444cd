"""Evaluation metrics against hand-computed cases; label-free thresholds; JSON stability."""
from __future__ import annotations

import inspect
import json
import logging
import math

import numpy as np
import pytest

from stages.core.errors import InputError
from stages.core.dspot import dspot_thresholds
from stages.core.evaluation import (
    ThresholdParams,
    choose_threshold,
    evaluate,
    evaluate_by_group,
    evaluate_by_kind,
    fit_gpd,
    point_adjust,
    pr_curve,
    score_series,
    segments,
    stream_thresholds,
    write_metrics_json,
)
from stages.core.params import build
from stages.core.vus import vus

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
                                 {"pot_risk": 0.5}, {"dspot_depth": 0}, {"dspot_init_level": 0.0},
                                 {"dspot_risk": 0.05}, {"dspot_refit_every": 0}, {"dspot_depth": 2.5}])
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


# ---------------------------------------------------------------- event precision / F1


def test_event_precision_and_f1_by_hand():
    m = evaluate(SCORES, LABELS, threshold=0.5)
    # alarm runs [2,4) and [5,8): both touch an event
    assert (m["n_alarm_segments"], m["event_precision"], m["event_f1"]) == (2, 1.0, 1.0)
    scores = np.array([0.9, 0.0, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.9])
    m = evaluate(scores, LABELS, threshold=0.5)
    # alarm runs [0,1), [2,3), [8,9): only [2,3) touches an event; events: 1 of 2 detected
    assert m["n_alarm_segments"] == 3 and m["event_precision"] == pytest.approx(1 / 3)
    assert m["event_recall"] == 0.5 and m["event_f1"] == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))
    none = evaluate(SCORES, LABELS, threshold=10.0)
    assert (none["n_alarm_segments"], none["event_precision"], none["event_f1"]) == (0, 0.0, 0.0)
    normal_only = evaluate(SCORES, np.zeros(9, int), threshold=0.5)
    assert normal_only["event_precision"] == 0.0 and math.isnan(normal_only["event_f1"])


def test_one_alarm_run_spanning_two_events_counts_once():
    labels = np.array([0, 1, 1, 0, 1, 1, 0, 0])
    scores = np.array([0, 1, 1, 1, 1, 1, 0, 0], dtype=float)
    m = evaluate(scores, labels, threshold=0.5)
    assert m["n_alarm_segments"] == 1 and m["event_precision"] == 1.0 and m["event_recall"] == 1.0


# ---------------------------------------------------------------- per-step thresholds


def test_per_step_threshold_array():
    thr = np.array([0.0, 0.5, 0.5, 0.85, 0.5, 0.8, 0.5, 0.5, 0.2])
    m = evaluate(SCORES, LABELS, thr)
    # alarms: step 0 (0.1 > 0), 2 (0.9), 5 (0.7 ≤ 0.8: no), 6, 7, 8 (0.3 > 0.2); step 3 (0.8 ≤ 0.85: no)
    assert m["n_alarms"] == 5 and m["precision"] == pytest.approx(3 / 5) and m["recall"] == pytest.approx(3 / 5)
    assert m["threshold"] == 0.5 and m["threshold_final"] == 0.2  # median and last value
    assert m["mean_delay_s"] == pytest.approx((1 + 1) / 2)
    const = evaluate(SCORES, LABELS, np.full(9, 0.5))
    scalar = evaluate(SCORES, LABELS, 0.5)
    assert const == scalar and scalar["threshold_final"] == 0.5
    with pytest.raises(ValueError, match="threshold array"):
        evaluate(SCORES, LABELS, np.zeros(8))


def test_per_step_thresholds_drop_with_nan_scores():
    scores = np.r_[np.nan, SCORES]
    thr = np.r_[-1.0, np.full(9, 0.5)]  # the unscored step's threshold must not matter
    m = evaluate(scores, np.r_[1, LABELS], thr)
    ref = evaluate(SCORES, LABELS, 0.5)
    assert {k: v for k, v in m.items() if not k.startswith("threshold")} == \
        {k: v for k, v in ref.items() if not k.startswith("threshold")}


def test_vus_keys_match_the_vus_module():
    rng = np.random.default_rng(0)
    labels = np.zeros(600, int)
    labels[100:130] = labels[400:420] = 1
    scores = rng.normal(size=600) + labels
    m = evaluate(scores, labels, 1.0, vus_window=40)
    assert (m["vus_roc"], m["vus_pr"]) == vus(scores, labels, 40)
    assert evaluate(scores, labels, 1.0)["vus_pr"] == vus(scores, labels)[1]  # default window 100
    assert 0 < m["vus_pr"] < 1 and 0.5 < m["vus_roc"] < 1
    one = evaluate(scores, np.zeros(600, int), 1.0)
    assert math.isnan(one["vus_pr"]) and math.isnan(one["vus_roc"])


def test_score_series_with_a_moving_threshold():
    scores = np.r_[np.zeros(5), [2.0], np.zeros(4)]
    thr = np.r_[np.full(5, 1.0), [3.0], np.full(4, 1.0)]  # the spike sits under its own step's threshold
    rows = score_series(None, scores, np.zeros(10), thr, max_points=10)
    assert [r["alarm"] for r in rows] == [0] * 10 and rows[5]["threshold"] == 3.0
    assert list(rows[0]) == ["t", "score", "label", "alarm", "threshold"]
    assert "threshold" not in score_series(None, scores, np.zeros(10), 1.0)[0]  # scalar: columns unchanged


# ---------------------------------------------------------------- by group


def test_by_group_with_intensity_classes_and_moving_threshold():
    labels = np.array([0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 0])
    groups = np.array(["", "severe", "severe", "", "", "subtle", "subtle", "", "", "severe", ""])
    scores = np.array([0.1, 0.9, 0.8, 0.2, 0.1, 0.4, 0.35, 0.3, 0.0, 0.7, np.nan])
    thr = np.full(11, 0.5)
    thr[5:7] = 0.3  # a lower threshold during the subtle fault catches it
    by = evaluate_by_group(scores, labels, groups, thr)
    assert set(by) == {"severe", "subtle"}
    assert set(by["severe"]) == {"auc_pr", "auc_roc", "vus_pr", "recall", "event_recall", "mean_delay_s",
                                 "n_events", "n_anomalous"}
    assert by["severe"]["n_events"] == 2 and by["severe"]["n_anomalous"] == 3 and by["severe"]["recall"] == 1.0
    assert by["subtle"]["event_recall"] == 1.0 and by["subtle"]["n_anomalous"] == 2
    flat = evaluate_by_group(scores, labels, groups, 0.5)
    assert flat["subtle"]["event_recall"] == 0.0
    assert evaluate_by_kind(scores, labels, groups, thr) == by
    with pytest.raises(ValueError):
        evaluate_by_group(scores, labels, groups[:-1], 0.5)


# ---------------------------------------------------------------- threshold rules


def test_dspot_is_the_default_and_reads_no_labels():
    p = ThresholdParams()
    assert p.method == "dspot"
    assert list(inspect.signature(stream_thresholds).parameters) == ["val_scores", "test_scores", "params"]
    rng = np.random.default_rng(0)
    val, test = rng.normal(size=3000), rng.normal(size=2000) + np.linspace(0, 5, 2000)
    thr = stream_thresholds(val, test, p)
    ref = dspot_thresholds(val, test, depth=p.dspot_depth, init_level=p.dspot_init_level, risk=p.dspot_risk)
    np.testing.assert_array_equal(thr, ref)
    assert choose_threshold(val, p) == thr[0]  # the threshold in force at the first test step
    assert thr[-1] > thr[0] + 3.0  # it followed the drift


@pytest.mark.parametrize("method", ["pot", "val_quantile", "val_max", "contamination"])
def test_static_rules_give_a_constant_stream(method):
    rng = np.random.default_rng(1)
    val, test = rng.exponential(size=3000), rng.exponential(size=50)
    p = ThresholdParams(method=method, contamination=0.05)
    thr = stream_thresholds(val, test, p)
    assert thr.shape == (50,) and (thr == choose_threshold(val, p)).all()


def test_dspot_degenerate_validation_falls_back_to_quantile(caplog):
    p = ThresholdParams(quantile=0.9)
    short = np.arange(40, dtype=float)  # shorter than the default depth
    with caplog.at_level(logging.WARNING):
        assert choose_threshold(short, p) == pytest.approx(np.quantile(short, 0.9))
        assert stream_thresholds(short, np.zeros(4), p).tolist() == [pytest.approx(np.quantile(short, 0.9))] * 4
    assert "falling back" in caplog.text
