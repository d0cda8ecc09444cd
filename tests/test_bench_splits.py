"""The split-load benchmark: its grid is the windows stage's layout, and both loaders read the same values."""
from __future__ import annotations

import json

import numpy as np

from stages import bench
from stages.bench_splits import SCENARIOS, _reference_split, write_windows
from stages.core.windowset import load_split


def test_bench_grid_loads_the_same_both_ways(tmp_path):
    wdir = write_windows(tmp_path / "w", steps=3000, channels=7, edges=3, log_columns=5)
    for split in ("train", "val", "test", "fewshot"):
        by_rows, plain = load_split(wdir, split), _reference_split(wdir, split)
        for key in ("ts", "metric", "trace", "log", "labels"):
            assert np.array_equal(getattr(by_rows, key), plain[key]), (split, key)
    assert load_split(wdir, "fewshot").n_steps < load_split(wdir, "train").n_steps  # eight blocks, not the hull


def test_bench_splits_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert bench.main(["splits", "--steps", "3000", "--channels", "5", "--repeat", "1"]) == 0
    result = json.loads((tmp_path / "bench/splits.json").read_text())
    assert [r["scenario"] for r in result["rows"]] == list(SCENARIOS)
    for row in result["rows"]:
        assert row["project"]["load_and_read_s"] > 0 and row["reference"]["VmHWM"] > 0
        assert row["time_ratio"] > 0
    assert "| evaluate (val, test, fewshot) |" in result["table"]
