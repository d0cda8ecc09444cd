"""The windows stage: common grid, honest splits, refusal of unusable splits, leakage check."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from stages.core.errors import InputError
from stages.core.params import SplitParams
from stages.core.windowset import load_split
from stages.windowing.align import WindowParams, split_ranges, fewshot_blocks
from stages import windows as windows_stage

STEP = 10_000_000  # 10 s in µs


def write_features(root: Path, n: int = 400, metric_offset: int = 0, fault=(360, 390), stats_until=None) -> Path:
    f = root / "data/features/ds"
    f.mkdir(parents=True)
    ts = (np.arange(n) + metric_offset) * STEP
    rng = np.random.default_rng(0)
    pl.DataFrame({"ts": ts, "svc-a/cpu": rng.normal(size=n).astype(np.float32),
                  "svc-b/mem": rng.normal(size=n).astype(np.float32)}).write_parquet(f / "metrics.parquet")
    (f / "metrics_stats.json").write_text(json.dumps({"fit_until_ts": stats_until if stats_until else int(ts[200])}))
    ts2 = np.arange(n) * STEP
    pl.DataFrame({"ts": ts2, "a->b/latency": np.ones(n, np.float32), "a->b/count": np.zeros(n, np.float32),
                  "a->b/error_rate": np.zeros(n, np.float32)}).write_parquet(f / "trace_series.parquet")
    (f / "trace_stats.json").write_text(json.dumps({"fit_until_ts": int(ts2[200])}))
    (f / "call_graph.json").write_text(json.dumps({"services": ["a", "b"], "edges": [["a", "b"]]}))
    pl.DataFrame({"ts": ts2, "a/0": np.full(n, 2.0, np.float32), "b/1": np.zeros(n, np.float32)}
                 ).write_parquet(f / "log_counts.parquet")
    pl.DataFrame({"template_id": [0, 1], "template": ["login <*>", "error <*>"], "service": ["a", "b"],
                  "count": [2 * n, 0], "first_ts": [0, 0]}).write_parquet(f / "log_templates.parquet")
    pl.DataFrame({"ts": ts2, "step_ts": ts2, "service": ["a"] * n, "template_id": [0] * n, "level": ["INFO"] * n}
                 ).write_parquet(f / "log_events.parquet")
    lab = np.zeros(n, np.int8)
    lab[fault[0]:fault[1]] = 1
    pl.DataFrame({"ts": ts2, "label": lab, "kind": np.where(lab > 0, "cpu_hog", ""),
                  "entity": np.where(lab > 0, "svc-a", "")}).write_parquet(f / "labels.parquet")
    np.save(f / "template_embeddings.npy", np.ones((2, 4), np.float32))
    return f


RAW = {"datasets": {"ds": {"format": "eadro", "raw": "x", "step_s": 10}},
       "split": {"train": 0.6, "val": 0.2, "test": 0.2, "purge_windows": 1, "fewshot_percent": 10},
       "windows": {"length": 16, "stride": 4}}


def test_split_ranges_are_chronological_with_purge_gap():
    r = split_ranges(1000, 20, SplitParams(train=0.6, val=0.2, test=0.2, purge_windows=2, fewshot_layout="head"))
    assert r["train"] == [0, 600] and r["val"] == [640, 800] and r["test"] == [840, 1000]
    assert r["fewshot"] == [0, 60]


def test_fewshot_blocks_spread_over_the_training_span():
    split = SplitParams(fewshot_percent=10, fewshot_blocks=4)
    blocks = fewshot_blocks(2000, 20, split)
    assert len(blocks) == 4 and blocks[0][0] == 0 and blocks[-1][1] == 2000
    assert all(b - a == 50 for a, b in blocks)
    gaps = [blocks[i + 1][0] - blocks[i][1] for i in range(3)]
    assert max(gaps) - min(gaps) <= 1  # evenly spread
    # a budget too small for four windows gives fewer, window-long blocks
    assert fewshot_blocks(400, 20, split) == [[0, 20], [380, 400]]
    assert fewshot_blocks(2000, 20, SplitParams(fewshot_layout="head")) == [[0, 200]]


def test_fewshot_split_loads_only_its_blocks(tmp_path):
    write_features(tmp_path)
    raw = {**RAW, "split": {**RAW["split"], "fewshot_percent": 40, "fewshot_blocks": 3}}
    windows_stage.run("ds", raw, features_root=tmp_path / "data/features", out_root=tmp_path / "data/windows",
                      metrics_root=tmp_path / "metrics")
    meta = json.loads((tmp_path / "data/windows/ds/splits.json").read_text())
    blocks = meta["fewshot_blocks"]
    few = load_split(tmp_path / "data/windows/ds", "fewshot")
    train = load_split(tmp_path / "data/windows/ds", "train")
    assert len(blocks) == 3 and few.n_steps == sum(b - a for a, b in blocks)
    expected_ts = np.concatenate([train.ts[a:b] for a, b in blocks])
    assert np.array_equal(few.ts, expected_ts)
    # every window lies inside one block: its time steps are contiguous
    idx = few.starts[:, None] + np.arange(few.window)[None, :]
    assert np.all(np.diff(few.ts[idx], axis=1) == STEP)


def test_split_too_short_is_refused():
    with pytest.raises(InputError, match="to hold at least one window"):
        split_ranges(100, 32, SplitParams())


def test_windows_stage_aligns_and_loads(tmp_path):
    write_features(tmp_path, metric_offset=5)  # metrics start 5 steps later: intersection grid
    summary = windows_stage.run("ds", RAW, features_root=tmp_path / "data/features",
                                out_root=tmp_path / "data/windows", metrics_root=tmp_path / "metrics")
    assert summary["steps"] == 395
    assert summary["overlap"]["metrics~traces_overlap_s"] == pytest.approx(394 * 10)
    test = load_split(tmp_path / "data/windows/ds", "test")
    assert test.metric.shape[1] == 2 and test.trace.shape[1:] == (1, 3) and test.log.shape[1] == 2
    assert np.allclose(test.log[:, 0], np.log1p(2.0))
    assert test.labels.sum() == 30 and set(test.kinds[test.labels > 0]) == {"cpu_hog"}
    assert test.schema.template_embeddings.shape == (2, 4)
    assert test.log_events[:, 0].min() == 0 and test.log_events[:, 1].max() == 0
    few = load_split(tmp_path / "data/windows/ds", "fewshot")
    assert few.n_steps == 24  # 10% of 237 training steps: too few for two windows, so one block
    assert json.loads((tmp_path / "metrics/data/ds.json").read_text())["splits"]["test"]["anomalous_steps"] == 30


def test_splits_read_their_rows_and_match_a_whole_read(tmp_path, monkeypatch):
    """load_split reads only a split's rows of grid.npz (not the whole grid, once per fewshot block):
    the values, dtypes and strides are np.load's, a compressed grid still loads, and a split's
    arrays are its own."""
    import os

    from stages.core import windowset

    write_features(tmp_path, n=600)
    raw = {**RAW, "split": {**RAW["split"], "fewshot_percent": 40, "fewshot_blocks": 3}}
    windows_stage.run("ds", raw, features_root=tmp_path / "data/features", out_root=tmp_path / "data/windows",
                      metrics_root=tmp_path / "metrics")
    wdir = tmp_path / "data/windows/ds"
    meta = json.loads((wdir / "splits.json").read_text())
    with np.load(wdir / "grid.npz") as z:
        whole = {k: z[k] for k in z.files}
    packed = tmp_path / "packed"
    packed.mkdir()
    for name in ("schema.json", "splits.json", "template_embeddings.npy"):
        (packed / name).write_bytes((wdir / name).read_bytes())
    np.savez_compressed(packed / "grid.npz", **whole)
    read = []
    real_preadv = os.preadv
    monkeypatch.setattr(windowset.os, "preadv", lambda fd, bufs, pos: read.append(real_preadv(fd, bufs, pos)) or read[-1])
    for split in ("train", "val", "test", "fewshot"):
        read.clear()
        got = load_split(wdir, split)
        blocks = meta["fewshot_blocks"] if split == "fewshot" else [meta["ranges"][split]]
        steps = sum(b - a for a, b in blocks)
        row_bytes = sum(whole[k][0:1].nbytes for k in ("ts", "metric", "trace", "log", "labels", "kinds", "severity"))
        assert sum(read) == steps * row_bytes  # exactly the split's rows of every per-step array
        unpacked = load_split(packed, split)
        for key in ("ts", "metric", "trace", "log", "labels"):
            want = np.concatenate([whole[key][a:b] for a, b in blocks])
            for ws in (got, unpacked):
                a = getattr(ws, key)
                assert a.dtype == want.dtype and np.array_equal(a, want), (split, key)
                assert type(a) is np.ndarray and a.flags.writeable
            if len(blocks) == 1:  # a one-block split has the strides of a slice of the whole array
                assert getattr(got, key).strides == whole[key][0:1].strides == getattr(unpacked, key).strides
        assert np.array_equal(got.kinds, unpacked.kinds) and np.array_equal(got.log_events, unpacked.log_events)
    assert whole["metric"].shape[0] * row_bytes < (wdir / "grid.npz").stat().st_size


def test_grid_rows_are_the_slices_of_np_load(tmp_path):
    """Every layout np.savez writes: column- and row-major, 1- to 3-D, zero-width, text, bool, big-endian."""
    from stages.core.windowset import GridArrays

    rng = np.random.default_rng(1)
    arrays = {
        "f2": np.asfortranarray(rng.normal(size=(50, 7)).astype(np.float32)),
        "c2": rng.normal(size=(50, 7)),
        "f3": np.asfortranarray(rng.normal(size=(50, 4, 3)).astype(np.float32)),
        "c3": rng.normal(size=(50, 4, 3)).astype(np.float32),
        "wide0": np.zeros((50, 0, 3), np.float32), "cols0": np.zeros((50, 0), np.float32),
        "text": np.array([f"k{i}" for i in range(50)], dtype="U64"), "flag": rng.random(50) < 0.5,
        "big": np.arange(50, dtype=">i8"), "empty": np.zeros((0, 5), np.float32),
    }
    np.savez(tmp_path / "g.npz", **arrays)
    with GridArrays(tmp_path / "g.npz") as z, np.load(tmp_path / "g.npz") as plain:
        for key in arrays:
            whole = plain[key]
            assert np.array_equal(whole, arrays[key])
            for a, b in ((0, 50), (3, 17), (49, 50), (10, 10), (40, 99), (20, 5)):
                got, want = z.rows(key, a, b), whole[a:b]
                assert got.dtype == want.dtype and got.shape == want.shape and got.strides == want.strides, (key, a, b)
                assert np.array_equal(got, want) and got.flags.writeable, (key, a, b)


def test_a_cut_grid_is_named(tmp_path):
    """A grid.npz cut short: before it is opened (no zip directory) or while it is read (a member ends early)."""
    import os

    from stages.core.windowset import GridArrays

    write_features(tmp_path)
    windows_stage.run("ds", RAW, features_root=tmp_path / "data/features", out_root=tmp_path / "data/windows",
                      metrics_root=tmp_path / "metrics")
    grid = tmp_path / "data/windows/ds/grid.npz"
    with GridArrays(grid) as z:
        cut = z._infos["labels"].header_offset + 200  # inside labels.npy's data; the members before it whole
        os.truncate(grid, cut)
        assert z.rows("ts", 0, 10).shape == (10,)
        with pytest.raises(InputError, match=r"grid.npz: member labels.npy: expected .*the file ends early"):
            z.rows("labels", 0, 395)
    with pytest.raises(InputError, match=r"grid.npz: expected the .npz archive the windows stage writes"):
        load_split(grid.parent, "test")


def test_a_grid_larger_than_memory_is_refused_before_it_is_built(tmp_path, monkeypatch):
    """The windows stage checks its arrays against MemAvailable: a clear error naming the settings,
    not a kernel kill part way; the previous outputs stay."""
    from stages.core import memory

    write_features(tmp_path)
    roots = dict(features_root=tmp_path / "data/features", out_root=tmp_path / "data/windows",
                 metrics_root=tmp_path / "metrics")
    windows_stage.run("ds", RAW, **roots)
    before = (tmp_path / "data/windows/ds/grid.npz").read_bytes()
    need = 4 * 400 * (2 + 3 + 2)  # 400 steps × (2 metric + 1 edge × 3 + 2 log columns) float32
    monkeypatch.setattr(memory, "available_bytes", lambda: need - 1)
    with pytest.raises(InputError, match=r"params.yaml: datasets.<name>.step_s .*: expected a common grid of 400 "
                                         r"steps × 7 float32 columns that fits in memory"):
        windows_stage.run("ds", RAW, **roots)
    assert (tmp_path / "data/windows/ds/grid.npz").read_bytes() == before
    monkeypatch.setattr(memory, "available_bytes", lambda: need)
    windows_stage.run("ds", RAW, **roots)


def test_split_without_normal_steps_is_refused(tmp_path):
    write_features(tmp_path, fault=(0, 400))
    with pytest.raises(InputError, match="normal"):
        windows_stage.run("ds", RAW, features_root=tmp_path / "data/features",
                          out_root=tmp_path / "data/windows", metrics_root=tmp_path / "metrics")
    assert not (tmp_path / "data/windows/ds").exists()


def test_statistics_fitted_on_test_span_are_refused(tmp_path):
    write_features(tmp_path, stats_until=399 * STEP)
    with pytest.raises(InputError, match="fit_until_ts"):
        windows_stage.run("ds", RAW, features_root=tmp_path / "data/features",
                          out_root=tmp_path / "data/windows", metrics_root=tmp_path / "metrics")


def test_bad_window_params():
    from stages.core.params import build

    with pytest.raises(InputError, match="windows.modalities"):
        build(WindowParams, {"modalities": ["metrics", "video"]}, where="windows")
    with pytest.raises(InputError, match="windows.lenght"):
        build(WindowParams, {"lenght": 3}, where="windows")


@pytest.mark.parametrize("row_group_size", [7, 64, 10_000])
@pytest.mark.parametrize("grid", ["inside", "wider", "shifted", "none"])
def test_metric_table_read_onto_the_grid_is_the_join(tmp_path, row_group_size: int, grid: str):
    """The metric table read a row group at a time onto the grid (issue 11: no frame, join and
    copies of a 2.9 GiB table) gives the join's array bit for bit: NaN, nulls and -0.0 in the
    cells, grid steps the table lacks, row groups of any size, the same column-major layout."""
    from stages.windowing.align import _parquet_on_grid, _reindex

    rng = np.random.default_rng(row_group_size)
    n = 300
    cells = rng.normal(size=(n, 5)).astype(np.float32)
    cells[rng.random(cells.shape) < 0.1] = np.nan
    cells[3, 1] = -0.0
    frame = pl.DataFrame({"ts": (np.arange(n) + 40) * STEP, **{f"c{j}": cells[:, j] for j in range(5)}})
    frame = frame.with_columns(pl.when(pl.int_range(n) % 17 == 0).then(None).otherwise(pl.col("c2")).alias("c2"))
    path = tmp_path / "metrics.parquet"
    frame.write_parquet(path, row_group_size=row_group_size)
    grid_ts = {"inside": np.arange(60, 300) * STEP, "wider": np.arange(0, 400) * STEP,
               "shifted": np.arange(0, 400) * STEP + STEP // 2, "none": np.arange(0, 0) * STEP}[grid]
    columns = ["c3", "c0", "c2"]
    got, want = _parquet_on_grid(path, grid_ts, columns), _reindex(frame, grid_ts, columns)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.flags["F_CONTIGUOUS"] == want.flags["F_CONTIGUOUS"]
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_metric_table_the_join_must_decide(tmp_path):
    """A time twice (the join repeats that grid step) or a column that is not Float32: the join path."""
    from stages.windowing.align import _parquet_on_grid

    twice = pl.DataFrame({"ts": [0, STEP, STEP, 2 * STEP], "c": np.ones(4, np.float32)})
    twice.write_parquet(tmp_path / "twice.parquet", row_group_size=2)
    assert _parquet_on_grid(tmp_path / "twice.parquet", np.arange(3) * STEP, ["c"]) is None
    wide = pl.DataFrame({"ts": [0, STEP], "c": [1.0, 2.0]})  # Float64
    wide.write_parquet(tmp_path / "wide.parquet")
    assert _parquet_on_grid(tmp_path / "wide.parquet", np.arange(2) * STEP, ["c"]) is None
