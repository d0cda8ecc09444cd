"""``python -m stages.replay metalog|xlstm_logad`` end to end on tiny loghub fixtures."""
from __future__ import annotations

import json

import polars as pl
import pytest

from stages.replay import main as replay
from test_loghub import write_bgl, write_hdfs

KEYS = {"auc_pr", "auc_roc", "vus_pr", "precision", "recall", "f1", "threshold", "best_f1_oracle", "train_seconds",
        "wall_seconds", "floors", "intervals"}
FLOORS = {"random", "pca", "iforest", "flag every window"}
SMALL_XLSTM = ["-S", "train.epochs=2", "-S", "embed_dim=16", "-S", "max_len=16", "--n-boot", "20"]


@pytest.fixture(autouse=True)
def one_thread(one_torch_thread):
    yield


def check_floors(m: dict, out) -> None:
    """Floors beside the method in the JSON, and the markdown table beside the JSON."""
    assert set(m["floors"]) == FLOORS
    for name, f in m["floors"].items():
        assert {"auc_pr", "f1", "event_recall", "best_f1_oracle_pa"} <= set(f), name
    share = m["n_test_anomalous"] / m["n_test"]
    assert m["floors"]["flag every window"]["f1"] == pytest.approx(2 * share / (1 + share), abs=1e-6)
    lo, hi = m["intervals"]["auc_pr"]
    assert lo <= hi
    md = out.with_suffix(".md").read_text()
    assert "flag every window" in md and "| pca |" in md and "[" in md  # intervals in brackets


def test_metalog_replay_cross_system(tmp_path, capsys):
    hdfs_csv, hdfs_labels = write_hdfs(tmp_path, n_blocks=60)
    _, bgl_raw = write_bgl(tmp_path, n_lines=800, bursts=((300, 360), (520, 560), (650, 670), (700, 740)))
    out = tmp_path / "metalog.json"
    rc = replay(["metalog", "--loghub", str(hdfs_csv), "--labels", str(hdfs_labels), "--target", str(bgl_raw),
                 "--target-style", "bgl", "--window", "10", "-S", "train.epochs=4", "-S", "hidden=16",
                 "-S", "labelled_anomaly_percent=50", "--n-boot", "20", "--out", str(out)])
    assert rc == 0
    m = json.loads(out.read_text())
    assert KEYS <= set(m) and m["protocol"] == "cross_system" and m["threshold"] == 0.5
    assert m["n_source"] == 60 and m["n_test"] == 16 and m["n_test_anomalous"] >= 1
    share = m["n_test_anomalous"] / m["n_test"]
    assert m["auc_pr"] > share  # beats a random score on the target's test part
    check_floors(m, out)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "wall " in last and str(out) in last


def test_xlstm_replay_and_bad_input(tmp_path):
    csv, _ = write_bgl(tmp_path, n_lines=800, bursts=((150, 200), (520, 560), (650, 670), (700, 740)))
    out = tmp_path / "xlstm.json"
    rc = replay(["xlstm_logad", "--loghub", str(csv), "--window", "10", *SMALL_XLSTM, "--out", str(out)])
    assert rc == 0
    m = json.loads(out.read_text())
    assert KEYS <= set(m) and m["threshold_source"].startswith("best F1 on training")
    assert m["auc_pr"] > m["n_test_anomalous"] / m["n_test"]
    check_floors(m, out)
    broken = tmp_path / "broken.csv"
    pl.read_csv(csv).drop("Content").write_csv(broken)
    bad_out = tmp_path / "bad.json"
    assert replay(["xlstm_logad", "--loghub", str(broken), "--out", str(bad_out)]) == 2
    assert not bad_out.exists()
    assert replay(["xlstm_logad", "--loghub", str(csv), "-S", "nosuchkey=1", "--out", str(bad_out)]) == 2


@pytest.mark.parametrize("method", ["metalog", "xlstm_logad"])
def test_one_class_test_split_is_refused(tmp_path, capsys, method):
    src = tmp_path / "src"
    src.mkdir()
    src_csv, _ = write_bgl(src, n_lines=400, bursts=((100, 140), (250, 300)))
    quiet = tmp_path / "quiet"
    quiet.mkdir()
    quiet_csv, _ = write_bgl(quiet, n_lines=400, bursts=((50, 120),))  # anomalies only in the training part
    out = tmp_path / "refused.json"
    for args in (["--loghub", str(src_csv), "--target", str(quiet_csv)], ["--loghub", str(quiet_csv)]):
        capsys.readouterr()
        assert replay([method, *args, "--window", "10", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "test split (units 33-40 of 40; " in err[0] and "0 anomalous of 8" in err[0]
        assert not out.exists() and not out.with_suffix(".md").exists()


def test_loghub_folder_argument_as_in_the_readme(tmp_path):
    hdfs = tmp_path / "HDFS"
    hdfs.mkdir()
    write_hdfs(hdfs, n_blocks=90, anomaly_every=5)  # structured CSV + anomaly_label.csv, found in the folder
    out = tmp_path / "hdfs.json"
    assert replay(["xlstm_logad", "--loghub", f"{hdfs}/", *SMALL_XLSTM, "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["n_train"] + m["n_val"] + m["n_test"] == 90 and m["n_test_anomalous"] >= 2
    assert set(m["floors"]) == FLOORS
