"""Baseline detectors: better than chance on injected spikes, deterministic, exact save/load."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from stages.core.errors import InputError
from stages.core.evaluation import evaluate
from stages.core.windowset import WindowSet
from stages.nets.baselines import (
    IsolationForestDetector,
    PCADetector,
    RandomDetector,
    step_features,
)
from stages.nets.registry import detector_class

SMALL = {"random": {}, "iforest": {"n_estimators": 50}, "pca": {"n_components": 4}}


def metric_set(T: int, seed: int, spikes: int = 0, window: int = 8) -> WindowSet:
    """Gaussian channels; ``spikes`` 3-step bursts of +6 on one channel, labelled anomalous."""
    rng = np.random.default_rng(seed)
    metric = rng.normal(size=(T, 5)).astype(np.float32)
    labels = np.zeros(T, np.int8)
    for s in rng.choice(np.arange(window, T - 5), spikes, replace=False):
        metric[s:s + 3, rng.integers(5)] += 6.0
        labels[s:s + 3] = 1
    return WindowSet.from_arrays(metric, labels, window=window, stride=1)


def multimodal_set(T: int, seed: int, log_bursts: int = 0) -> WindowSet:
    """Metric + trace + log arrays; anomalies only in the log counts (metrics stay normal)."""
    base = metric_set(T, seed)
    rng = np.random.default_rng(seed + 100)
    trace = rng.normal(size=(T, 2, 3)).astype(np.float32)
    log_counts = rng.poisson(1.0, size=(T, 4)).astype(np.float32)
    labels = np.zeros(T, np.int8)
    for s in rng.choice(np.arange(10, T - 5), log_bursts, replace=False):
        log_counts[s:s + 2, 3] += 8.0
        labels[s:s + 2] = 1
    schema = dataclasses.replace(base.schema, edges=[("a", "b"), ("b", "c")], services=["a", "b", "c"],
                                 log_columns=[("a", 0), ("a", 1), ("b", 0), ("c", 2)], templates=["x", "y", "z"])
    return WindowSet(schema=schema, ts=base.ts, metric=base.metric, trace=trace, log=log_counts, labels=labels,
                     kinds=np.where(labels > 0, "burst", ""), log_events=np.zeros((0, 3), np.int64),
                     window=base.window, stride=base.stride)


@pytest.fixture(scope="module")
def spans():
    return metric_set(600, 1), metric_set(200, 2), metric_set(400, 3, spikes=8)


def fitted(name: str, train: WindowSet, val: WindowSet, seed: int = 3):
    det = detector_class(name).from_params(SMALL[name], train.schema, seed=seed)
    det.fit(train, val)
    return det


def auc_pr(det, ws: WindowSet) -> float:
    return evaluate(det.score(ws), ws.labels, threshold=0.0)["auc_pr"]


def test_learned_baselines_beat_random(spans):
    train, val, test = spans
    floor = auc_pr(fitted("random", train, val), test)
    assert floor < 0.15  # ≈ the anomaly rate
    assert auc_pr(fitted("iforest", train, val), test) > floor + 0.05
    assert auc_pr(fitted("pca", train, val), test) > 0.8


def test_iforest_sees_log_modality():
    train, val, test = multimodal_set(600, 1), multimodal_set(200, 2), multimodal_set(400, 3, log_bursts=8)
    assert step_features(test).shape == (400, 5 + 2 * 3 + 4)
    det = fitted("iforest", train, val)
    floor = auc_pr(fitted("random", train, val), test)
    assert auc_pr(det, test) > floor + 0.1


@pytest.mark.parametrize("name", ["random", "iforest", "pca"])
def test_scores_shape_and_save_load_round_trip(name, spans, tmp_path):
    train, val, test = spans
    det = fitted(name, train, val)
    scores = det.score(test)
    assert scores.shape == (test.n_steps,)
    assert np.isnan(scores).sum() == (0 if name == "random" else test.window - 1)
    det.save(tmp_path / "det")
    assert (tmp_path / "det" / "config.json").exists()
    again = detector_class(name).load(tmp_path / "det", test.schema)
    np.testing.assert_array_equal(again.score(test), scores)


@pytest.mark.parametrize("name", ["random", "iforest", "pca"])
def test_same_seed_same_scores(name, spans):
    train, val, test = spans
    np.testing.assert_array_equal(fitted(name, train, val).score(test), fitted(name, train, val).score(test))


def test_training_subsample_is_seeded(spans):
    train, val, test = spans
    a = IsolationForestDetector.from_params({"n_estimators": 20, "max_train_windows": 100}, train.schema, seed=5)
    b = IsolationForestDetector.from_params({"n_estimators": 20, "max_train_windows": 100}, train.schema, seed=5)
    a.fit(train, val)
    b.fit(train, val)
    np.testing.assert_array_equal(a.score(test), b.score(test))


@pytest.mark.parametrize("name,raw", [("iforest", {"n_estimators": 0}), ("iforest", {"contamination": 0.9}),
                                      ("iforest", {"contamination": "some"}), ("pca", {"n_components": 0}),
                                      ("pca", {"unknown": 1})])
def test_bad_config_is_an_input_error(name, raw, spans):
    with pytest.raises(InputError):
        detector_class(name).from_params(raw, spans[0].schema)


def test_load_with_other_schema_is_an_input_error(spans, tmp_path):
    train, val, _ = spans
    other = WindowSet.from_arrays(np.zeros((50, 3)), window=8).schema  # 3 features per step, model has 5
    for name in ("iforest", "pca"):
        fitted(name, train, val).save(tmp_path / name)
        with pytest.raises(InputError):
            detector_class(name).load(tmp_path / name, other)
    with pytest.raises(InputError):
        IsolationForestDetector.load(tmp_path / "missing", train.schema)


def test_misuse_is_reported(spans):
    train, val, test = spans
    with pytest.raises(RuntimeError):
        PCADetector.from_params({}, train.schema).score(test)
    with pytest.raises(RuntimeError):
        IsolationForestDetector.from_params({}, train.schema).save("/nonexistent/never")
    tiny = WindowSet.from_arrays(np.zeros((5, 5)), window=8)
    with pytest.raises(ValueError, match="no complete window"):
        PCADetector.from_params({}, tiny.schema).fit(tiny, tiny)
    assert np.isnan(fitted("pca", train, val).score(tiny)).all()
    assert RandomDetector.from_params({}, train.schema).fit(train, val) == {}
