"""Floors beside a replay: same split, label-free thresholds, a markdown table, and inside a real replay."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from stages.core.evaluation import ThresholdParams, choose_threshold, evaluate
from stages.core.windowset import WindowSet
from stages.replays.floors import FLOORS, floor_metrics, floor_scores, markdown_table

SMALL = {"random": {}, "pca": {"n_components": 4}, "iforest": {"n_estimators": 30}}


def toy(n: int, seed: int, anomaly: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    x = np.sin(t / 5.0 + np.arange(4)[None, :]) + 0.05 * rng.standard_normal((n, 4))
    lab = np.zeros(n, np.int8)
    if anomaly:
        a, b = anomaly
        x[a:b, 1] += 3.0
        lab[a:b] = 1
    return x.astype(np.float32), lab


@pytest.fixture(scope="module")
def splits() -> tuple[WindowSet, WindowSet, WindowSet]:
    (a, _), (b, _), (c, lab) = toy(500, 0), toy(250, 1), toy(300, 2, (150, 165))
    mk = lambda x, y, name: WindowSet.from_arrays(x, y, window=8, name=name)  # noqa: E731
    return mk(a, None, "train"), mk(b, None, "val"), mk(c, lab, "test")


def test_floor_scores_are_per_step_and_seeded(splits):
    train, val, test = splits
    s1 = floor_scores(train, val, test, seed=3, configs=SMALL)
    s2 = floor_scores(train, val, test, seed=3, configs=SMALL)
    assert list(s1) == list(FLOORS)
    for name, (v, t) in s1.items():
        assert v.shape == (val.n_steps,) and t.shape == (test.n_steps,)
        assert np.isfinite(t[test.window - 1:]).all()
        np.testing.assert_array_equal(t, s2[name][1])


def test_floor_metrics_threshold_from_val_scores_only(splits):
    train, val, test = splits
    tp = ThresholdParams(method="val_quantile", quantile=0.99)
    m = floor_metrics(train, val, test, threshold_params=tp, configs=SMALL, names=("pca",))
    v, t = floor_scores(train, val, test, configs=SMALL, names=("pca",))["pca"]
    thr = choose_threshold(v, tp)
    assert m["pca"]["threshold"] == pytest.approx(thr)
    assert m["pca"]["auc_pr"] == pytest.approx(evaluate(t, test.labels, thr)["auc_pr"])
    assert m["pca"]["auc_pr"] > 0.8  # a clean level shift is easy for the PCA floor
    # flipping test labels changes metrics but never the threshold
    flipped = WindowSet.from_arrays(test.metric, 1 - test.labels, window=8)
    m2 = floor_metrics(train, val, flipped, threshold_params=tp, configs=SMALL, names=("pca",))
    assert m2["pca"]["threshold"] == m["pca"]["threshold"]


def test_floor_window_and_eval_from(splits):
    train, val, test = splits
    tp = ThresholdParams(method="val_quantile")
    m = floor_metrics(train, val, test, threshold_params=tp, configs=SMALL, names=("pca",), window=4, eval_from=20)
    assert m["pca"]["window"] == 4 and m["pca"]["n_steps"] == test.n_steps - 20
    assert "train_seconds" in m["pca"] and m["pca"]["score_windows_per_s"] > 0


def test_markdown_table_rows_in_order_and_missing_columns_dropped():
    rows = {"method": {"auc_pr": 0.5, "auc_roc": 0.75, "f1": float("nan"), "best_f1_oracle_pa": 0.9},
            "pca": {"auc_pr": 0.25, "auc_roc": 0.6, "f1": 0.1}}
    table = markdown_table(rows)
    lines = table.strip().splitlines()
    assert lines[0].startswith("| method | AUC-PR | AUC-ROC |") and "VUS-PR" not in lines[0]
    assert "(oracle)" in lines[0]
    assert lines[2].startswith("| method | 0.500 | 0.750 | – |") and lines[3].startswith("| pca | 0.250")
    assert markdown_table(rows, columns=(("vus_pr", "VUS-PR"),)).splitlines()[0] == "| method |  |"


def write_pkl_set(root: Path, name: str, train: np.ndarray, test: np.ndarray, label: np.ndarray) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for suffix, arr in (("train", train), ("test", test), ("test_label", label)):
        with open(root / f"{name}_{suffix}.pkl", "wb") as fh:
            pickle.dump(arr, fh)


def test_floors_inside_the_interfusion_replay(tmp_path, one_torch_thread):
    """The replay's JSON carries a floors section evaluated on the same test steps, and a .md table."""
    from stages.replays.interfusion import main

    rng = np.random.default_rng(0)
    t = np.arange(600)[:, None]
    series = np.sin(2 * np.pi * t / 12) @ rng.normal(size=(1, 3)) + 0.1 * rng.standard_normal((600, 3))
    train, test = series[:360], series[360:].copy()
    label = np.zeros(240)
    test[120:126, 1] += 5.0
    label[120:126] = 1
    write_pkl_set(tmp_path / "pkl", "toy-1", train, test, label)
    out = tmp_path / "if.json"
    rc = main(["--pkl-dir", str(tmp_path / "pkl"), "--name", "toy-1", "--window", "12", "--out", str(out),
               "--threshold", "val_quantile", "--floor-window", "6",
               "-S", "rnn_hidden=8", "-S", "dense_hidden=8", "-S", "flow_layers=1", "-S", "flow_hidden=4",
               "-S", "mcmc_iters=1", "-S", "score_samples=2", "-S", "pretrain_epochs=1", "-S", "train.epochs=1",
               "-S", "train.max_train_windows=64", "-S", "cpu_threads=1"])
    assert rc == 0
    m = json.loads(out.read_text())
    assert set(m["floors"]) == set(FLOORS)
    for name, fm in m["floors"].items():
        assert fm["n_steps"] == m["n_steps"] == 240 and fm["n_anomalous"] == 6, name
        assert fm["window"] == 6
    md = out.with_suffix(".md").read_text()
    body = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert body[1].startswith("| interfusion |") and [ln.split("|")[1].strip() for ln in body[2:]] == list(FLOORS)
