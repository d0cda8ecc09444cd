"""``python -m stages.replay metalog|xlstm_logad`` end to end on tiny loghub fixtures."""
from __future__ import annotations

import json

import polars as pl

from stages.replay import main as replay
from test_loghub import write_bgl, write_hdfs

KEYS = {"auc_pr", "auc_roc", "precision", "recall", "f1", "threshold", "best_f1_oracle", "train_seconds"}


def test_metalog_replay_cross_system(tmp_path):
    hdfs_csv, hdfs_labels = write_hdfs(tmp_path, n_blocks=60)
    _, bgl_raw = write_bgl(tmp_path, n_lines=800, bursts=((300, 360), (520, 560), (680, 740)))
    out = tmp_path / "metalog.json"
    rc = replay(["metalog", "--loghub", str(hdfs_csv), "--labels", str(hdfs_labels), "--target", str(bgl_raw),
                 "--target-style", "bgl", "--window", "10", "-S", "train.epochs=4", "-S", "hidden=16",
                 "-S", "labelled_anomaly_percent=50", "--out", str(out)])
    assert rc == 0
    m = json.loads(out.read_text())
    assert KEYS <= set(m) and m["protocol"] == "cross_system" and m["threshold"] == 0.5
    assert m["n_source"] == 60 and m["n_test"] == 16 and m["n_test_anomalous"] >= 1
    share = m["n_test_anomalous"] / m["n_test"]
    assert m["auc_pr"] > share  # beats a random score on the target's test part


def test_xlstm_replay_and_bad_input(tmp_path):
    csv, _ = write_bgl(tmp_path, n_lines=800, bursts=((150, 200), (520, 560), (680, 740)))
    out = tmp_path / "xlstm.json"
    rc = replay(["xlstm_logad", "--loghub", str(csv), "--window", "10", "-S", "train.epochs=2",
                 "-S", "embed_dim=16", "-S", "max_len=16", "--out", str(out)])
    assert rc == 0
    m = json.loads(out.read_text())
    assert KEYS <= set(m) and m["threshold_source"].startswith("best F1 on training")
    assert m["auc_pr"] > m["n_test_anomalous"] / m["n_test"]
    broken = tmp_path / "broken.csv"
    pl.read_csv(csv).drop("Content").write_csv(broken)
    bad_out = tmp_path / "bad.json"
    assert replay(["xlstm_logad", "--loghub", str(broken), "--out", str(bad_out)]) == 2
    assert not bad_out.exists()
    assert replay(["xlstm_logad", "--loghub", str(csv), "-S", "nosuchkey=1", "--out", str(bad_out)]) == 2
