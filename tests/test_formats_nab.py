"""Numenta Anomaly Benchmark reader: the real six-KPI sample, both label files, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stages.core.errors import InputError
from stages.formats.nab import read_nab, read_nab_csv

REAL = {  # name: (points after cleaning, anomalous steps with windows, with points)
    "ec2_cpu_utilization_24ae8d": (4032, 402, 2),
    "ec2_cpu_utilization_53ea38": (4032, 402, 2),
    "ec2_cpu_utilization_5f5533": (4032, 402, 2),
    "ec2_disk_write_bytes_1ef3de": (4719, 473, 1),  # 4730 rows, 11 duplicated timestamps
    "ec2_network_in_257a54": (4034, 403, 1),  # 2 absent 5-minute rows re-inserted
    "rds_cpu_utilization_cc0c53": (4033, 403, 2),  # 1 absent row re-inserted
}


@pytest.fixture(scope="module")
def nab(shared_data) -> Path:
    root = shared_data / "nab"
    if not root.is_dir():
        pytest.skip(f"no NAB sample at {root}")
    return root


def test_real_sample_windows_and_points(nab):
    windows = read_nab(nab, "windows")
    points = read_nab(nab, "points")
    assert [s.name for s in windows] == [f"realAWSCloudwatch/{k}" for k in REAL]
    for w, p in zip(windows, points):
        n, n_win, n_pts = REAL[Path(w.name).name]
        assert len(w) == len(p) == n and w.has_labels and p.has_labels
        assert int(w.label.sum()) == n_win and int(p.label.sum()) == n_pts
        assert np.all(w.label[p.label > 0] == 1)  # every anomaly point lies inside a scoring window
        assert np.all(np.diff(w.timestamp) > 0) and np.isfinite(w.value).all()
    first = windows[0]
    assert first.timestamp[0] == 1392388200  # 2014-02-14 14:30:00 read as UTC
    # the window [2014-02-26 13:45, 2014-02-27 06:25] covers 201 five-minute steps, both ends included
    t = first.timestamp
    inside = (t >= 1393422300) & (t <= 1393482300)
    assert inside.sum() == 201 and first.label[inside].all()


def write_nab(root: Path, n: int = 50, labels: dict | None = None, windows: dict | None = None) -> Path:
    (root / "data" / "grp").mkdir(parents=True)
    (root / "labels").mkdir()
    t0 = np.datetime64("2015-01-01T00:00:00")
    for name in ("a", "b"):
        rows = ["timestamp,value"] + [f"{str(t0 + np.timedelta64(300 * i, 's')).replace('T', ' ')},{i % 7}.5"
                                      for i in range(n)]
        (root / "data" / "grp" / f"{name}.csv").write_text("\n".join(rows) + "\n")
    labels = labels if labels is not None else {"grp/a.csv": ["2015-01-01 01:00:00"], "grp/b.csv": []}
    windows = windows if windows is not None else {
        "grp/a.csv": [["2015-01-01 00:50:00.000000", "2015-01-01 01:10:00.000000"]], "grp/b.csv": []}
    (root / "labels" / "combined_labels.json").write_text(json.dumps(labels))
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    return root


def test_labels_from_points_and_windows(tmp_path):
    root = write_nab(tmp_path)
    a, b = read_nab(root, "points")
    assert np.flatnonzero(a.label).tolist() == [12] and b.label.sum() == 0
    a, _ = read_nab(root, "windows")
    assert np.flatnonzero(a.label).tolist() == [10, 11, 12, 13, 14]  # 00:50 .. 01:10 inclusive


def test_bad_timestamp_names_file_and_row(tmp_path):
    root = write_nab(tmp_path)
    f = root / "data" / "grp" / "b.csv"
    lines = f.read_text().splitlines()
    lines[3] = "2015-02-30 00:10:00,1.0"  # no 30 February
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"b\.csv: row 4 column 'timestamp': expected a timestamp"):
        read_nab(root)
    with pytest.raises(InputError, match=r"columns 'timestamp,value'"):
        f.write_text("time,value\n1,2\n")
        read_nab_csv(f)


def test_label_for_an_absent_kpi_or_a_missing_entry(tmp_path):
    root = write_nab(tmp_path / "x", windows={"grp/a.csv": [], "grp/b.csv": [], "grp/gone.csv": []})
    with pytest.raises(InputError, match=r"combined_windows\.json: key 'grp/gone\.csv': expected a KPI file"):
        read_nab(root, "windows")
    root = write_nab(tmp_path / "y", labels={"grp/a.csv": []})
    with pytest.raises(InputError, match=r"combined_labels\.json: key 'grp/b\.csv': expected a label entry"):
        read_nab(root, "points")
    root = write_nab(tmp_path / "z", labels={"grp/a.csv": ["2015-01-01 01:02:00"], "grp/b.csv": []})
    with pytest.raises(InputError, match=r"key 'grp/a\.csv' entry 0: expected a timestamp present in a\.csv"):
        read_nab(root, "points")
    root = write_nab(tmp_path / "w", windows={"grp/a.csv": [["2015-01-01 02:00:00", "2015-01-01 01:00:00"]],
                                              "grp/b.csv": []})
    with pytest.raises(InputError, match="end is not before its start"):
        read_nab(root, "windows")
    with pytest.raises(InputError, match="--labels"):
        read_nab(root, "both")
