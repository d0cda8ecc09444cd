"""The metrics stage's table written in chunks of time steps (``stages.features.metric_table``)
against the whole table: the same cells, bit for bit, and the same stats, with the step means
held or spilled, in chunks of 1, 7 and many steps; a small table keeps ``write_parquet``'s bytes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from stages.core.errors import InputError
from stages.core.params import SplitParams
from stages.features import metric_table
from stages.features.metric_matrix import metric_matrix, metric_matrix_parts
from stages.features.params import MetricsParams
from stages.formats import read_metric_parts, read_modality
from stages.simulate.generate import generate
from stages.simulate.params import SynthParams

SPLIT = SplitParams()


def _points(columns: dict[str, np.ndarray], t0: int = 1_600_000_000_000_000, every_s: float = 3.0) -> pl.DataFrame:
    rows = [(t0 + int(i * every_s * 1e6), name.split("/")[0], name.split("/")[1], float(v))
            for name, values in columns.items() for i, v in enumerate(values)]
    return pl.DataFrame(rows, schema={"ts": pl.Int64, "entity": pl.Utf8, "metric": pl.Utf8, "value": pl.Float64},
                        orient="row").sort("ts")


def _gappy(rng: np.random.Generator, n: int) -> np.ndarray:
    """A series with NaNs, runs of gaps longer and shorter than the fill limit, and a spike."""
    x = rng.normal(50, 5, n)
    x[rng.random(n) < 0.1] = np.nan
    x[n // 3:n // 3 + 40] = np.nan  # a long gap: filled for max_gap_steps, then the training median
    x[n // 4] = 1e6  # at the clip, in training
    return x


def _assert_same(path: Path, want: pl.DataFrame, got_stats: dict, want_stats: dict) -> None:
    got = pl.read_parquet(path)
    assert got.columns == want.columns and got.height == want.height
    for c in want.columns:
        assert got[c].dtype == want[c].dtype
        assert got[c].to_numpy().tobytes() == want[c].to_numpy().tobytes(), c
    assert json.dumps(got_stats, sort_keys=True) == json.dumps(want_stats, sort_keys=True)


@pytest.fixture()
def chunky(monkeypatch):
    """Force the chunked path: everything spilled, tiny chunks."""
    def force(hold: int, chunk_rows: int):
        monkeypatch.setattr(metric_table, "MEANS_HOLD_BYTES", hold)
        monkeypatch.setattr(metric_table, "WHOLE_BYTES", 0)
        monkeypatch.setattr(metric_table, "CHUNK_BYTES", 4 * chunk_rows)  # one kept column → chunk_rows rows
    return force


def test_chunks_give_the_whole_tables_cells_and_stats(tmp_path, chunky):
    rng = np.random.default_rng(11)
    n = 600
    cols = {"a/cpu": _gappy(rng, n), "a/mem": rng.normal(3e9, 1e3, n), "b/cpu": _gappy(rng, n),
            "b/flat": np.full(n, 7.0), "c/late": np.r_[np.full(n - 100, np.nan), rng.normal(0, 1, 100)]}
    parts = [_points({k: cols[k]}) for k in sorted(cols)]  # one column per part, disjoint
    params = MetricsParams(max_gap_steps=3)
    want, want_stats = metric_matrix(pl.concat(parts).sort("ts"), 10.0, SPLIT, params)
    assert want_stats["dropped"] and want_stats["normalisation"]["clipped_share_train"] > 0
    for hold, chunk_rows in ((0, 1), (0, 7), (10**9, 7), (0, 10**6)):
        chunky(hold, chunk_rows)
        spill = tmp_path / f"spill_{hold}_{chunk_rows}"
        spill.mkdir()
        out = tmp_path / f"m_{hold}_{chunk_rows}.parquet"
        got = metric_table.write_metric_table(parts, out, spill, 10.0, SPLIT, params)
        _assert_same(out, want, got.stats, want_stats)
        assert got.row_groups == pq.ParquetFile(out).metadata.num_row_groups > 0
        assert (got.steps, got.columns, got.ts_min, got.ts_max) == (want.height, want.width - 1,
                                                                    want["ts"].min(), want["ts"].max())
        # a 4-column table in chunks of chunk_rows * 1/4 rows per kept column: several row groups
        assert got.row_groups == -(-want.height // max(1, chunk_rows // (want.width - 1)))
        assert bool(list(spill.glob("means_*.npy"))) == (hold == 0)


def test_parts_on_their_own_stretches_and_unbounded_fill(tmp_path, chunky):
    """Parts covering different stretches of the grid (NaN outside), max_gap_steps unbounded."""
    rng = np.random.default_rng(2)
    early = _points({"x/a": _gappy(rng, 300)})
    late = _points({"y/b": _gappy(rng, 300)}, t0=1_600_000_000_000_000 + 400_000_000)
    params = MetricsParams(max_gap_steps=None)
    want, want_stats = metric_matrix(pl.concat([early, late]).sort("ts"), 10.0, SPLIT, params)
    chunky(0, 5)
    (tmp_path / "s").mkdir()
    got = metric_table.write_metric_table([early, late], tmp_path / "m.parquet", tmp_path / "s", 10.0, SPLIT, params)
    _assert_same(tmp_path / "m.parquet", want, got.stats, want_stats)


def test_a_small_table_keeps_write_parquets_bytes(tmp_path):
    rng = np.random.default_rng(4)
    parts = [_points({"a/cpu": _gappy(rng, 200)}), _points({"b/cpu": _gappy(rng, 200)})]
    frame, stats = metric_matrix_parts(parts, 10.0, SPLIT, MetricsParams())
    frame.write_parquet(tmp_path / "want.parquet", compression="zstd", compression_level=3, statistics=True)
    got = metric_table.write_metric_table(parts, tmp_path / "got.parquet", tmp_path, 10.0, SPLIT, MetricsParams())
    assert got.row_groups == 0 and got.stats == stats
    assert (tmp_path / "got.parquet").read_bytes() == (tmp_path / "want.parquet").read_bytes()


def test_no_points_and_a_full_disk(tmp_path, chunky, monkeypatch):
    got = metric_table.write_metric_table([], tmp_path / "m.parquet", tmp_path, 10.0, SPLIT, MetricsParams())
    assert got.steps == 0 and pl.read_parquet(tmp_path / "m.parquet").columns == ["ts"]
    # a spill that does not fit on the disk: an error naming the spill folder, before anything is written
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage(10, 10, 0))
    chunky(0, 5)
    spill = tmp_path / "spill"
    spill.mkdir()
    with pytest.raises(InputError, match="room for the metrics stage's spilled step means"):
        metric_table.write_metric_table([_points({"a/cpu": np.arange(50.0)})], tmp_path / "x.parquet", spill, 10.0,
                                        SPLIT, MetricsParams())
    assert not (tmp_path / "x.parquet").exists()


@pytest.mark.parametrize("fmt", ["gaia", "eadro", "msds"])
def test_formats_dumps_in_chunks(tmp_path, chunky, fmt):
    """Each format's synthetic dump, read in parts as the stage reads it, in chunks of 13 steps."""
    root = tmp_path / fmt
    generate(f"chunks_{fmt}", fmt, root, SynthParams(hours=3.0, services=3, requests_per_s=0.2), seed=5)
    want, want_stats = metric_matrix(read_modality(fmt, root, "metrics"), 20.0, SPLIT, MetricsParams())
    kept = want.width - 1
    chunky(0, 13 * kept)
    (tmp_path / "s").mkdir()
    got = metric_table.write_metric_table(read_metric_parts(fmt, root, part_bytes=50_000), tmp_path / "m.parquet",
                                          tmp_path / "s", 20.0, SPLIT, MetricsParams())
    _assert_same(tmp_path / "m.parquet", want, got.stats, want_stats)
    assert got.row_groups == -(-want.height // 13) > 1


def test_real_sample_in_chunks(tmp_path, chunky, shared_data):
    root = shared_data / "tt-eadro"
    want, want_stats = metric_matrix(read_modality("eadro", root, "metrics"), 10.0, SPLIT, MetricsParams())
    chunky(0, 50 * (want.width - 1))
    got = metric_table.write_metric_table(read_metric_parts("eadro", root, part_bytes=1), tmp_path / "m.parquet",
                                          tmp_path, 10.0, SPLIT, MetricsParams())
    _assert_same(tmp_path / "m.parquet", want, got.stats, want_stats)
    assert got.row_groups > 1
