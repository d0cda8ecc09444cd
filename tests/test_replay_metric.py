"""Home-data readers (KPI CSV folders, InterFusion pkl) and the two metric replays end to end."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.core.errors import InputError
from stages.formats.interfusion_pkl import parse_interpretation, read_pkl_dataset
from stages.formats.kpi import read_kpi_csv, read_kpi_dir

PIPELINE_KEYS = {"auc_pr", "auc_roc", "precision", "recall", "f1", "event_recall", "mean_delay_s", "pa_f1",
                 "best_f1_oracle", "best_f1_oracle_pa", "threshold", "train_seconds", "score_windows_per_s",
                 "device", "detector", "dataset"}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ KPI CSV reader


def write_kpi(path: Path, n: int, seed: int, faults: int = 2, period: int = 12, header: str = "timestamp,value,label"
              ) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    value = 10 + np.sin(2 * np.pi * t / period) + 0.05 * rng.standard_normal(n)
    label = np.zeros(n, np.int64)
    for s in np.linspace(n * 0.45, n - 15, faults).astype(int):
        value[s:s + 5] += 4.0
        label[s:s + 5] = 1
    rows = [header] + [f"{1500000000 + 60 * i},{v:.5f},{lab}" for i, (v, lab) in enumerate(zip(value, label))]
    path.write_text("\n".join(rows) + "\n")


def test_kpi_csv_sorted_deduplicated_and_gaps_interpolated(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("timestamp,value,label\n120,3.0,0\n0,1.0,0\n60,,1\n120,4.0,0\n180,5.0,0\n")
    (s,) = read_kpi_csv(f)
    np.testing.assert_array_equal(s.timestamp, [0, 60, 120, 180])
    np.testing.assert_allclose(s.value, [1.0, 2.5, 4.0, 5.0])  # duplicate 120 keeps the last row; gap interpolated
    np.testing.assert_array_equal(s.label, [0, 1, 0, 0])
    np.testing.assert_array_equal(s.filled, [False, True, False, False])
    assert s.has_labels and s.name == "a"


def test_kpi_csv_absent_rows_reinserted(tmp_path):
    f = tmp_path / "gappy.csv"
    f.write_text("timestamp,value,label\n0,1.0,0\n60,2.0,1\n240,5.0,0\n300,6.0,0\n")
    (s,) = read_kpi_csv(f)
    np.testing.assert_array_equal(s.timestamp, [0, 60, 120, 180, 240, 300])
    np.testing.assert_allclose(s.value, [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(s.label, [0, 1, 0, 0, 0, 0])
    assert s.filled.sum() == 2


def test_kpi_csv_aliases_no_timestamp_and_kpi_id_bundle(tmp_path):
    yahoo = tmp_path / "real_1.csv"
    yahoo.write_text("timestamps,value,is_anomaly\n1,0.5,0\n2,0.7,1\n")
    (s,) = read_kpi_csv(yahoo)
    np.testing.assert_array_equal(s.label, [0, 1])
    bare = tmp_path / "bare.csv"
    bare.write_text("value\n1\n2\n3\n")
    (b,) = read_kpi_csv(bare)
    assert b.timestamp is None and not b.has_labels and b.label.tolist() == [0, 0, 0]
    bundle = tmp_path / "phase2.csv"
    bundle.write_text("timestamp,value,label,KPI ID\n1,1.0,0,k2\n1,5.0,0,k1\n2,6.0,1,k1\n2,2.0,0,k2\n")
    series = read_kpi_csv(bundle)
    assert [x.name for x in series] == ["phase2:k1", "phase2:k2"]
    np.testing.assert_array_equal(series[0].value, [5.0, 6.0])
    with pytest.raises(InputError, match="label column"):
        read_kpi_csv(bare, require_labels=True)


def test_kpi_bad_input_names_file_and_expectation(tmp_path):
    f = tmp_path / "broken.csv"
    f.write_text("timestamp,val,label\n1,2,0\n")
    with pytest.raises(InputError) as exc:
        read_kpi_csv(f)
    assert "broken.csv" in str(exc.value) and "'value' column" in str(exc.value)
    g = tmp_path / "typo.csv"
    g.write_text("timestamp,value,label\n1,2.0,0\n2,abc,0\n")
    with pytest.raises(InputError, match=r"typo.csv: row 3 column 'value'"):
        read_kpi_csv(g)
    h = tmp_path / "labels.csv"
    h.write_text("timestamp,value,label\n1,2.0,0\n2,3.0,7\n")
    with pytest.raises(InputError, match="0/1 label"):
        read_kpi_csv(h)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"empty: expected at least one \*.csv"):
        read_kpi_dir(empty)


# ------------------------------------------------------------------ InterFusion pkl reader


def write_pkl_set(root: Path, name: str, train: np.ndarray, test: np.ndarray, label: np.ndarray,
                  interpretation: str | None = None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for suffix, arr in (("train", train), ("test", test), ("test_label", label)):
        with open(root / f"{name}_{suffix}.pkl", "wb") as fh:
            pickle.dump(arr, fh)
    if interpretation is not None:
        (root / f"{name}_interpretation_label.txt").write_text(interpretation)


def test_pkl_reader_reads_arrays_and_interpretation(tmp_path):
    rng = np.random.default_rng(0)
    label = np.zeros(50)
    label[10:15] = 1
    write_pkl_set(tmp_path, "m-1", rng.random((80, 3)), rng.random((50, 3)), label, "10-14:1,3\n\n20-21:2\n")
    data = read_pkl_dataset(tmp_path, "m-1")
    assert data.train.shape == (80, 3) and data.test.dtype == np.float32 and data.test_label.sum() == 5
    assert [(s.start, s.end, s.dims) for s in data.interpretation] == [(10, 14, [0, 2]), (20, 21, [1])]


def test_pkl_reader_bad_shapes_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    write_pkl_set(tmp_path, "wrongdims", rng.random((80, 3)), rng.random((50, 4)), np.zeros(50))
    with pytest.raises(InputError) as exc:
        read_pkl_dataset(tmp_path, "wrongdims")
    assert "wrongdims_test.pkl" in str(exc.value) and "(T', 3)" in str(exc.value)
    write_pkl_set(tmp_path, "shortlabel", rng.random((80, 3)), rng.random((50, 3)), np.zeros(49))
    with pytest.raises(InputError, match=r"shortlabel_test_label.pkl: shape: expected a 1-D array \(50,\)"):
        read_pkl_dataset(tmp_path, "shortlabel")
    write_pkl_set(tmp_path, "flat", rng.random(80), rng.random((50, 3)), np.zeros(50))
    with pytest.raises(InputError, match=r"flat_train.pkl: shape: expected a 2-D array"):
        read_pkl_dataset(tmp_path, "flat")
    bad = rng.random((50, 3))
    bad[7, 1] = np.nan
    write_pkl_set(tmp_path, "nan", rng.random((80, 3)), bad, np.zeros(50))
    with pytest.raises(InputError, match=r"nan_test.pkl: index \(7, 1\)"):
        read_pkl_dataset(tmp_path, "nan")
    (tmp_path / "junk_train.pkl").write_bytes(b"not a pickle")
    with pytest.raises(InputError, match="junk_train.pkl"):
        read_pkl_dataset(tmp_path, "junk")
    with pytest.raises(InputError, match="missing_train.pkl"):
        read_pkl_dataset(tmp_path, "missing")


def test_interpretation_label_errors(tmp_path):
    f = tmp_path / "i.txt"
    f.write_text("1-3:1,2\n5-4:1\n")
    with pytest.raises(InputError, match="i.txt: line 2"):
        parse_interpretation(f, n_dims=3, n_steps=10)
    f.write_text("1-3:4\n")
    with pytest.raises(InputError, match=r"line 1: expected 1-based dimensions in 1..3"):
        parse_interpretation(f, n_dims=3, n_steps=10)
    f.write_text("oops\n")
    with pytest.raises(InputError, match="'start-end:d1,d2,...'"):
        parse_interpretation(f, n_dims=3, n_steps=10)
    f.write_text("1-3:1\n")
    assert parse_interpretation(f, 3, 10, one_based_steps=True)[0].start == 0


# ------------------------------------------------------------------ replays end to end


def test_kad_disformer_replay_end_to_end(tmp_path):
    from stages.replay import main

    kpis = tmp_path / "kpis"
    kpis.mkdir()
    for i in range(3):
        write_kpi(kpis / f"kpi_{i}.csv", 420, seed=i, period=12 + 4 * i)
    out = tmp_path / "kad.json"
    rc = main(["kad_disformer", "--kpi-dir", str(kpis), "--pretrain-fraction", "0.34", "--window", "16",
               "--fewshot-fraction", "0.2", "--val-fraction", "0.2", "--threshold", "val_quantile", "--out", str(out),
               "--n-boot", "20",
               "-S", "d_model=16", "-S", "layers=1", "-S", "ff_dim=32", "-S", "pretrain_epochs=1",
               "-S", "pretrain_samples=256", "-S", "train.epochs=2", "-S", "train.max_train_windows=64"])
    assert rc == 0
    m = json.loads(out.read_text())
    assert PIPELINE_KEYS <= set(m)
    assert m["n_pretrain_kpis"] == 1 and m["n_target_kpis"] == 2 and set(m["per_kpi"]) == {"kpi_1", "kpi_2"}
    assert m["threshold"] == 1.0 and 0.0 <= m["auc_pr"] <= 1.0
    check_kad_floors(m, out)


KAD_TINY = ["--window", "16", "--fewshot-fraction", "0.2", "--val-fraction", "0.2", "--threshold", "val_quantile",
            "--n-boot", "20", "-S", "d_model=16", "-S", "layers=1", "-S", "ff_dim=32", "-S", "pretrain_epochs=1",
            "-S", "pretrain_samples=256", "-S", "train.epochs=2", "-S", "train.max_train_windows=64"]


def check_kad_floors(m: dict, out: Path) -> None:
    """Floors pooled and per KPI in the JSON, intervals beside them, the markdown tables beside the JSON."""
    assert set(m["floors"]) == {"random", "pca", "iforest"}
    for f in (m, *m["floors"].values()):
        assert {"auc_pr", "vus_pr", "f1", "event_recall", "best_f1_oracle_pa", "intervals"} <= set(f)
        lo, hi = f["intervals"]["auc_pr"]
        assert lo <= hi
    for kpi in m["per_kpi"].values():
        assert set(kpi["floors"]) == {"random", "pca", "iforest"}
    md = out.with_suffix(".md").read_text()
    assert "| kad_disformer |" in md and "| iforest |" in md and "Per KPI" in md


def write_nab_kpis(root: Path, n: int = 420) -> None:
    """A NAB folder (data/<group>/<kpi>.csv, labels/*.json) with injected level shifts."""
    (root / "data" / "synthetic").mkdir(parents=True)
    (root / "labels").mkdir()
    points, windows = {}, {}
    for i in range(3):
        rng = np.random.default_rng(i)
        t = np.arange(n)
        value = 10 + np.sin(2 * np.pi * t / (12 + 4 * i)) + 0.05 * rng.standard_normal(n)
        stamps = [str(np.datetime64("2015-03-01T00:00:00") + np.timedelta64(300 * k, "s")).replace("T", " ")
                  for k in range(n)]
        key = f"synthetic/kpi_{i}.csv"
        points[key], windows[key] = [], []
        for s in (int(n * 0.5), int(n * 0.8)):
            value[s:s + 5] += 4.0
            points[key].append(stamps[s])
            windows[key].append([stamps[s - 2] + ".000000", stamps[s + 6] + ".000000"])
        rows = ["timestamp,value"] + [f"{a},{v:.5f}" for a, v in zip(stamps, value)]
        (root / "data" / key).write_text("\n".join(rows) + "\n")
    (root / "labels" / "combined_labels.json").write_text(json.dumps(points))
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))


def test_kad_disformer_replay_on_a_nab_folder_leave_one_out(tmp_path, capsys):
    from stages.replay import main

    write_nab_kpis(tmp_path / "nab")
    out = tmp_path / "kad_nab.json"
    assert main(["kad_disformer", "--nab-dir", str(tmp_path / "nab"), "--labels", "windows", "--out", str(out),
                 *KAD_TINY]) == 0
    m = json.loads(out.read_text())
    assert m["protocol"] == "pretrain_utune_kpi/loo" and m["labels"] == "windows"
    assert m["n_target_kpis"] == 3 and m["n_pretrain_kpis"] == 3  # each KPI unseen once, pre-trained on the others
    assert set(m["per_kpi"]) == {f"synthetic/kpi_{i}" for i in range(3)}
    assert m["per_kpi"]["synthetic/kpi_0"]["n_anomalous"] == 18  # two windows of 9 steps, both in the test span
    check_kad_floors(m, out)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "wall " in last and str(out) in last


def test_kad_disformer_replay_bad_kpi_dir(tmp_path, capsys):
    from stages.replays.kad_disformer import main

    d = tmp_path / "k"
    d.mkdir()
    (d / "x.csv").write_text("timestamp,val\n1,2\n")
    assert main(["--kpi-dir", str(d), "--out", str(tmp_path / "o.json")]) == 2
    assert "x.csv" in capsys.readouterr().err and not (tmp_path / "o.json").exists()


def test_interfusion_replay_end_to_end(tmp_path):
    from stages.replay import main

    rng = np.random.default_rng(0)
    t = np.arange(700)[:, None]
    series = (np.sin(2 * np.pi * t / 12) @ rng.normal(size=(1, 4)) + 0.1 * rng.standard_normal((700, 4)))
    train, test = series[:400], series[400:].copy()
    label = np.zeros(300)
    test[100:106, 2] += 5.0
    label[100:106] = 1
    test[200:206, 0] -= 5.0
    label[200:206] = 1
    write_pkl_set(tmp_path / "pkl", "machine-9-9", train, test, label, "100-105:3\n200-205:1\n")
    out = tmp_path / "if.json"
    rc = main(["interfusion", "--pkl-dir", str(tmp_path / "pkl"), "--name", "machine-9-9", "--window", "16",
               "--out", str(out), "--floors", "pca", "-S", "rnn_hidden=16", "-S", "dense_hidden=16",
               "-S", "flow_layers=2", "-S", "flow_hidden=8", "-S", "mcmc_iters=2", "-S", "score_samples=2",
               "-S", "pretrain_epochs=3", "-S", "train.epochs=6", "-S", "train.max_train_windows=256"])
    assert rc == 0
    m = json.loads(out.read_text())
    assert PIPELINE_KEYS <= set(m)
    assert m["n_steps"] == 300 and m["test_context_steps"] == 15 and m["n_anomalous"] == 12
    assert m["window"] == 16 and m["config"]["mcmc_iters"] == 2 and m["stage1_epochs_run"] >= 1
    assert set(m["floors"]) == {"pca"} and m["floors"]["pca"]["n_steps"] == 300
    assert out.with_suffix(".md").read_text().count("| interfusion |") == 1
    for key in ("interpretation_hitrate_100", "interpretation_hitrate_150", "interpretation_hitrate_100_all_labelled"):
        assert key in m
    assert m["interpretation_hitrate_100_all_labelled"] >= 0.5


def test_interfusion_replay_bad_input_leaves_no_output(tmp_path, capsys):
    from stages.replays.interfusion import main

    rng = np.random.default_rng(0)
    write_pkl_set(tmp_path, "bad", rng.random((100, 3)), rng.random((40, 2)), np.zeros(40))
    out = tmp_path / "o.json"
    assert main(["--pkl-dir", str(tmp_path), "--name", "bad", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bad_test.pkl" in err and "(T', 3)" in err and not out.exists()
