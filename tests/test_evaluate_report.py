"""The evaluate and report stages end to end on a tiny windows directory in a temp dir."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from stages import evaluate as evaluate_stage
from stages import report as report_stage
from stages.core.errors import InputError
from stages.core.io import dumps_json
from stages.core.windowset import FeatureSchema, WindowSet, load_split
from stages.nets.baselines import PCADetector
from stages.nets.registry import DETECTORS

DS = "tiny"
T, WINDOW, STRIDE = 400, 8, 2
RANGES = {"train": [0, 200], "fewshot": [0, 40], "val": [208, 288], "test": [296, 400]}
RAW = {"seed": 0, "pipeline": {"datasets": [DS], "detectors": ["pca"]},
       "evaluate": {"threshold": {"method": "val_quantile", "quantile": 0.99}, "series_points": 50}}


def write_windows(root: Path, val_labels: int = 0) -> Path:
    """A windows dir as ``windows@ds`` writes it: metric + trace + log, spikes only in the test span."""
    rng = np.random.default_rng(0)
    metric = rng.normal(size=(T, 4)).astype(np.float32)
    trace = rng.normal(size=(T, 1, 3)).astype(np.float32)
    log_counts = np.log1p(rng.poisson(1.0, size=(T, 3))).astype(np.float32)
    labels = np.zeros(T, np.int8)
    for s in (310, 340, 372):
        metric[s:s + 4, 1] += 7.0
        labels[s:s + 4] = 1
    a, b = RANGES["val"]
    labels[a:b] = val_labels  # only evaluation may read labels; val labels must change nothing
    kinds = np.where(labels > 0, "cpu", "")
    ts = 1_700_000_000_000_000 + np.arange(T, dtype=np.int64) * 10_000_000
    events = np.stack([np.arange(0, T, 5), np.zeros(T // 5, int), np.ones(T // 5, int)], axis=1).astype(np.int64)
    schema = FeatureSchema(dataset=DS, step_s=10.0, metric_channels=[f"svc{i}/cpu" for i in range(4)],
                           metric_entities=[f"svc{i}" for i in range(4)], edges=[("svc0", "svc1")],
                           edge_features=["latency", "count", "error_rate"], services=["svc0", "svc1"],
                           log_columns=[("svc0", 0), ("svc1", 1), ("svc1", 2)], templates=["a <*>", "b", "c <*>"])
    wdir = root / "data" / "windows" / DS
    wdir.mkdir(parents=True)
    np.savez(wdir / "grid.npz", ts=ts, metric=metric, trace=trace, log=log_counts, labels=labels, kinds=kinds,
             log_events=events)
    (wdir / "schema.json").write_text(dumps_json(schema.to_json()))
    (wdir / "splits.json").write_text(dumps_json({"ranges": RANGES, "window": WINDOW, "stride": STRIDE}))
    return wdir


def train_detector(root: Path, name: str = "pca", cls=PCADetector) -> None:
    """What the train stage leaves: ``detector/`` (via save) and ``train.json``."""
    train = load_split(root / "data" / "windows" / DS, "train")
    val = load_split(root / "data" / "windows" / DS, "val")
    det = cls.from_params({}, train.schema, seed=0)
    history = det.fit(train, val)
    mdir = root / "models" / DS / name
    det.save(mdir / "detector")
    (mdir / "train.json").write_text(dumps_json({"train_seconds": 1.5, "device": "cpu", "peak_memory_mb": 10.0,
                                                 "n_train_windows": len(train), "history": history}))


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_windows(tmp_path)
    train_detector(tmp_path)
    return tmp_path


def test_evaluate_writes_metrics_and_plot_data(workdir):
    m = evaluate_stage.run(DS, "pca", raw=RAW)
    path = workdir / "metrics" / "eval" / DS / "pca.json"
    saved = json.loads(path.read_text())
    for key in ("auc_pr", "auc_roc", "precision", "recall", "f1", "event_recall", "mean_delay_s", "pa_f1",
                "best_f1_oracle", "best_f1_oracle_pa", "threshold", "n_steps", "n_anomalous", "n_events",
                "train_seconds", "score_windows_per_s", "peak_memory_mb", "device", "n_test_windows",
                "detector", "dataset", "vus_pr", "vus_roc", "event_precision", "event_f1", "ci", "protocol",
                "threshold_final"):
        assert key in saved, key
    assert set(saved["ci"]) == {"auc_pr", "vus_pr", "event_f1", "auc_roc"}
    lo, hi = saved["ci"]["auc_pr"]
    assert lo <= saved["auc_pr"] <= hi
    assert saved["n_events"] == 3 and saved["n_test_windows"] == len(range(0, 104 - WINDOW + 1, STRIDE))
    assert saved["auc_pr"] > 0.5 and saved["event_recall"] == 1.0
    assert saved["train_seconds"] == 1.5 and saved["device"] == "cpu" and saved["peak_memory_mb"] >= 10.0
    assert saved["detector"] == "pca" and saved["dataset"] == DS
    assert m["threshold"] == pytest.approx(saved["threshold"], abs=1e-6)  # JSON keeps 6 decimals

    scores = pl.read_csv(workdir / "metrics" / "eval" / DS / "pca" / "scores.csv")
    assert scores.columns == ["t", "ts", "score", "threshold", "label", "alarm"]
    assert ((scores["score"] > scores["threshold"]).cast(pl.Int64) == scores["alarm"]).all()
    assert 0 < scores.height <= 50 and scores["label"].sum() > 0
    pr = pl.read_csv(workdir / "metrics" / "eval" / DS / "pca" / "pr.csv")
    assert pr.columns == ["recall", "precision", "threshold"] and pr["recall"].max() == 1.0
    assert not (workdir / "metrics" / "eval" / DS / "pca" / "fusion.csv").exists()


def test_evaluate_is_deterministic_and_ignores_val_labels(workdir, tmp_path_factory, monkeypatch):
    evaluate_stage.run(DS, "pca", raw=RAW)
    first = (workdir / "metrics" / "eval" / DS / "pca.json").read_text()
    other = tmp_path_factory.mktemp("other")
    write_windows(other, val_labels=1)  # every validation step labelled anomalous
    train_detector(other)
    monkeypatch.chdir(other)
    evaluate_stage.run(DS, "pca", raw=RAW)
    second = (other / "metrics" / "eval" / DS / "pca.json").read_text()
    strip = ("score_seconds", "score_windows_per_s", "peak_memory_mb", "score_peak_memory_mb")
    a, b = json.loads(first), json.loads(second)
    assert {k: v for k, v in a.items() if k not in strip} == {k: v for k, v in b.items() if k not in strip}


def test_bf16_scoring_request_is_float32_for_a_detector_without_a_bf16_path(workdir, caplog, monkeypatch):
    """Only detectors with a tested bf16 scoring path (FuseGuard) use evaluate.cpu_score_dtype=bfloat16;
    the others score in float32, keep the vector pin, say so, and give the float32 metrics."""
    for key in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR"):
        monkeypatch.delenv(key, raising=False)
    fp32 = evaluate_stage.run(DS, "pca", raw=RAW)
    assert fp32["cpu_score_dtype"] == "float32" and fp32["cpu_vectors"] in ("avx2", "default")
    assert fp32["environment"]["libraries"]["torch"] and fp32["environment"]["cpu"]["vendor"]  # provenance
    raw = {**RAW, "evaluate": {**RAW["evaluate"], "cpu_score_dtype": "bfloat16"}}
    with caplog.at_level(logging.WARNING, logger="stages.evaluate"):
        asked = evaluate_stage.run(DS, "pca", raw=raw)
    assert "no tested bf16 scoring path" in caplog.text
    assert asked["cpu_score_dtype"] == "float32" and asked["auc_pr"] == fp32["auc_pr"]
    with pytest.raises(InputError, match="evaluate.cpu_score_dtype"):
        evaluate_stage.run(DS, "pca", raw={**RAW, "evaluate": {**RAW["evaluate"], "cpu_score_dtype": "fp8"}})


def test_vector_pin_is_left_to_the_libraries_for_bf16(monkeypatch):
    from stages.core.device import reproducible_cpu_env

    for key in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR"):
        monkeypatch.delenv(key, raising=False)
    assert reproducible_cpu_env(pin_vectors=False) == {
        "ATEN_CPU_CAPABILITY": "unset", "ONEDNN_MAX_CPU_ISA": "unset", "MKL_CBWR": "unset"}
    assert "ATEN_CPU_CAPABILITY" not in os.environ
    pinned = reproducible_cpu_env()
    assert pinned["MKL_CBWR"] in ("AVX2", "COMPATIBLE")


class ExplainingPCA(PCADetector):
    """A PCA that also explains per-step 'fusion weights', like FuseGuard does."""

    name = "explaining"

    def explain(self, windows: WindowSet) -> dict:
        n = windows.n_steps
        return {"fusion_weights": {"metric": np.full(n, 0.75), "log": np.full(n, 0.25)},
                "mask_density": 0.5, "per_channel": np.ones(3)}


def test_evaluate_writes_fusion_weights(workdir, monkeypatch):
    monkeypatch.setitem(DETECTORS, "explaining", f"{__name__}:ExplainingPCA")
    train_detector(workdir, "explaining", ExplainingPCA)
    m = evaluate_stage.run(DS, "explaining", raw=RAW)
    fusion = pl.read_csv(workdir / "metrics" / "eval" / DS / "explaining" / "fusion.csv")
    assert fusion.columns == ["t", "ts", "fusion_weights/metric", "fusion_weights/log"]
    assert fusion["fusion_weights/metric"].to_list() == [0.75] * fusion.height and fusion.height <= 50
    assert m["explain"] == {"mask_density": 0.5}


def test_evaluate_bad_input_leaves_nothing(workdir):
    (workdir / "models" / DS / "pca" / "train.json").write_text("{not json")
    with pytest.raises(InputError, match="train.json"):
        evaluate_stage.run(DS, "pca", raw=RAW)
    with pytest.raises(InputError, match="config.json"):
        evaluate_stage.run(DS, "iforest", raw=RAW)
    with pytest.raises(InputError, match="evaluate.threshold.method"):
        evaluate_stage.run(DS, "pca", raw={"evaluate": {"threshold": {"method": "test_labels"}}})
    with pytest.raises(InputError, match="splits.json"):
        evaluate_stage.run("absent", "pca", raw=RAW)
    assert not (workdir / "metrics").exists()


def test_evaluate_cli_reports_input_error(workdir, capsys):
    (workdir / "params.yaml").write_text("evaluate:\n  threshold:\n    quantile: 2.0\n")
    assert evaluate_stage.main([DS, "pca"]) == 2
    assert "evaluate.threshold.quantile" in capsys.readouterr().err


def test_report_tables_and_missing(workdir, caplog):
    evaluate_stage.run(DS, "pca", raw=RAW)
    raw = {"pipeline": {"datasets": [DS, "absent"], "detectors": ["pca", "random"]}}
    with caplog.at_level(logging.INFO):
        summary = report_stage.run(raw=raw)
    assert sorted(summary["missing"]) == ["absent/pca", "absent/random", f"{DS}/random"]
    saved = json.loads((workdir / "metrics" / "summary.json").read_text())
    assert {"by_dataset", "mean_by_detector", "missing", "protocol_of", "threshold_method"} <= set(saved)
    row = saved["by_dataset"][DS]["pca"]
    assert row["auc_pr"] == json.loads((workdir / "metrics" / "eval" / DS / "pca.json").read_text())["auc_pr"]
    assert saved["mean_by_detector"]["pca"]["n_datasets"] == 1
    md = (workdir / "metrics" / "summary.md").read_text()
    assert "| detector | data | labelled events | AUC-PR | VUS-PR | AUC-ROC |" in md
    lo, hi = row["ci"]["auc_pr"]
    assert f"| pca (floor) | — | 0 | **{row['auc_pr']:.3f} [{lo:.3f}, {hi:.3f}]** |" in md
    assert "| random (floor) | — | — | missing |" in md and "protocol `unsupervised`" in md
    assert "reads validation scores" in md  # the header says what the threshold rule read
    assert "best-F1 (oracle)" in caplog.text and "absent/pca" in caplog.text


def test_report_rejects_malformed_metrics(workdir):
    bad = workdir / "metrics" / "eval" / DS / "pca.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(json.dumps({"auc_pr": "high"}))
    with pytest.raises(InputError, match="auc_pr"):
        report_stage.run(raw=RAW)
    with pytest.raises(InputError, match="pipeline.detectors"):
        report_stage.run(raw={"pipeline": {"datasets": [DS], "detectors": "pca"}})
    assert not (workdir / "metrics" / "summary.json").exists()


def test_contamination_threshold_is_estimated_from_fewshot_training_labels(workdir):
    grid = workdir / "data/windows" / DS / "grid.npz"
    z = dict(np.load(grid))
    a, b = RANGES["fewshot"]
    z["labels"][a:a + (b - a) // 5] = 1  # 20% of the labelled few-shot span is anomalous
    np.savez(grid, **z)
    m = evaluate_stage.run(DS, "pca", raw={"evaluate": {"threshold": {"method": "contamination"}}})
    assert m["contamination"] == pytest.approx(((b - a) // 5) / (b - a))
    assert m["threshold_method"] == "contamination"


def test_report_gives_mean_and_interval_across_seeds(workdir):
    evaluate_stage.run(DS, "pca", raw=RAW)
    src = workdir / "metrics" / "eval" / DS / "pca.json"
    for k, auc in (("s1", 0.2), ("s2", 0.4)):
        dst = workdir / "metrics" / "eval" / f"{DS}_{k}" / "pca.json"
        dst.parent.mkdir(parents=True)
        dst.write_text(json.dumps({**json.loads(src.read_text()), "auc_pr": auc}))
    entry = {"format": "eadro", "raw": "x", "group": DS}
    raw = {"pipeline": {"datasets": [DS, f"{DS}_s1", f"{DS}_s2"], "detectors": ["pca"]},
           "datasets": {DS: {"format": "eadro", "raw": "x"}, f"{DS}_s1": entry, f"{DS}_s2": entry}}
    summary = report_stage.run(raw=raw)
    cell = summary["across_seeds"][DS]["pca"]["auc_pr"]
    base = json.loads(src.read_text())["auc_pr"]
    assert cell["n"] == 3 and cell["mean"] == pytest.approx((base + 0.6) / 3)
    assert cell["lo"] < cell["mean"] < cell["hi"]
    assert "Across generator seeds" in (workdir / "metrics" / "summary.md").read_text()
