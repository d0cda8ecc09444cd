"""The traces stage's reading in buckets of whole traces against the whole read.

Buckets hold disjoint traces and, per trace, the whole frame's spans in the same order; the four
tables written from them are the whole path's (frames, bits and JSON); bad input raises the same
error; nothing is left in the spill folders.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from stages.core.errors import InputError
from stages.core.params import SplitParams
from stages.features.params import TracesParams
from stages.features.trace_buckets import main_body, time_runs, write_trace_tables
from stages.features.trace_features import drop_stray_spans
from stages.formats._buckets import MAX_BUCKETS
from stages.formats import _trace_reading, read_modality, read_trace_buckets, reader
from stages.simulate.generate import generate
from stages.simulate.params import SynthParams

SHARES = (40, 3, 0)  # buckets of 1/40 of the dump's span input, of 1/3, one bucket
TABLES = ("trace_aggregates.parquet", "trace_series.parquet", "call_graph.json", "trace_stats.json")


def _sizes(fmt: str, root: Path) -> list[int]:
    reading = reader(fmt).trace_reading(root)
    total = sum(reading.size(p) for p in reading.files)
    return [max(1, total // share) if share else 10**12 for share in SHARES]


def _buckets(fmt: str, root: Path, spill: Path, size: int) -> list[pl.DataFrame]:
    spill.mkdir(parents=True, exist_ok=True)
    got = list(read_trace_buckets(fmt, root, spill, bucket_bytes=size))
    assert not any(spill.iterdir()), "spill files left behind"
    return got


def _check_reader(fmt: str, root: Path, tmp: Path, several: bool = True) -> None:
    whole = read_modality(fmt, root, "traces")
    for size in _sizes(fmt, root):
        buckets = _buckets(fmt, root, tmp / f"r{size}", size)
        seen: set[str] = set()
        for bucket in buckets:
            traces = set(bucket["trace_id"].to_list())
            assert not traces & seen, "a trace in two buckets"
            seen |= traces
            # the whole frame's rows of these traces, in the same order
            assert_frame_equal(bucket, whole.filter(pl.col("trace_id").is_in(list(traces))))
        assert seen == set(whole["trace_id"].to_list())
        assert sum(b.height for b in buckets) == whole.height
    assert (len(_buckets(fmt, root, tmp / "r-most", _sizes(fmt, root)[0])) > 1) == several


def _tables(fmt: str, root: Path, tmp: Path, size: int) -> tuple[dict, dict]:
    out, spill = tmp / f"out{size}", tmp / f"spill{size}"
    out.mkdir(parents=True)
    spill.mkdir(parents=True)
    got = write_trace_tables(read_trace_buckets(fmt, root, spill, bucket_bytes=size), out, spill, 20.0,
                             SplitParams(), TracesParams())
    assert not [p for p in spill.rglob("*") if p.is_file()], "spill files left behind"
    return got.__dict__, {name: (out / name).read_bytes() for name in TABLES}


def _check_tables(fmt: str, root: Path, tmp: Path) -> None:
    want_summary, want = _tables(fmt, root, tmp, 10**12)  # one bucket: trace_features on the whole frame
    for size in _sizes(fmt, root)[:-1]:
        summary, got = _tables(fmt, root, tmp, size)
        assert summary == want_summary
        for name in TABLES:
            if name.endswith(".json"):
                assert json.loads(got[name]) == json.loads(want[name]), name
            else:
                a, b = (pl.read_parquet(x[name]) for x in (got, want))
                assert a.columns == b.columns
                for c in a.columns:  # bit for bit
                    assert a[c].to_arrow().equals(b[c].to_arrow()), f"{name} {c}"


@pytest.fixture(scope="module")
def dumps(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("buckets")
    params = SynthParams(hours=6.0, services=4, requests_per_s=0.2)
    out = {}
    for fmt in ("msds", "gaia", "eadro"):
        out[fmt] = base / fmt
        generate(f"buckets_{fmt}", fmt, out[fmt], params, seed=3)
    return out


@pytest.mark.parametrize("fmt", ["msds", "gaia", "eadro"])
def test_buckets_hold_the_whole_reads_spans_trace_by_trace(dumps, fmt, tmp_path):
    _check_reader(fmt, dumps[fmt], tmp_path)


@pytest.mark.parametrize("fmt", ["msds", "gaia", "eadro"])
def test_tables_from_buckets_are_the_whole_paths(dumps, fmt, tmp_path):
    _check_tables(fmt, dumps[fmt], tmp_path)


def test_real_samples_in_buckets(shared_data, tmp_path):
    root = shared_data / "tt-eadro"  # 4,327 spans; 200 of them stray, dropped across buckets
    _check_reader("eadro", root, tmp_path / "eadro")
    _check_tables("eadro", root, tmp_path / "eadro")
    _check_reader("msds", shared_data / "msds", tmp_path / "msds", several=False)  # one trace


def test_bucket_count_follows_the_input_and_is_capped(dumps):
    reading = reader("gaia").trace_reading(dumps["gaia"])
    total = sum(p.stat().st_size for p in reading.files)
    assert _trace_reading.bucket_count(reading, total) == 1
    assert _trace_reading.bucket_count(reading, total // 3) == 4
    assert _trace_reading.bucket_count(reading, 1) == MAX_BUCKETS


def test_bad_input_raises_the_whole_reads_error_after_the_last_bucket(dumps, tmp_path):
    root = tmp_path / "gaia"
    shutil.copytree(dumps["gaia"], root)
    table = sorted((root / "trace").glob("*.csv"))[-1]
    lines = table.read_text().splitlines()
    head = lines[0].split(",")
    start = head.index("start_time")
    row = lines[-1].split(",")
    row[start] = "not-a-time"
    table.write_text("\n".join([*lines, ",".join(row)]) + "\n")
    with pytest.raises(InputError) as whole:
        read_modality("gaia", root, "traces")
    with pytest.raises(InputError) as buckets:
        _buckets("gaia", root, tmp_path / "s1", _sizes("gaia", root)[0])
    assert str(buckets.value) == str(whole.value)
    # a start more than a year from the median: the audit's error, from the buckets' median
    row = lines[1].split(",")
    for col in ("start_time", "end_time"):
        row[head.index(col)] = row[head.index(col)].replace("2021", "2018")
    table.write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    with pytest.raises(InputError) as whole:
        read_modality("gaia", root, "traces")
    with pytest.raises(InputError) as buckets:
        _buckets("gaia", root, tmp_path / "s2", _sizes("gaia", root)[0])
    assert "within a year" in str(whole.value) and str(buckets.value) == str(whole.value)


def test_main_body_of_merged_runs_is_the_largest_segment():
    rng = np.random.default_rng(7)
    gap = 100
    for _ in range(50):
        ts = np.sort(np.concatenate([rng.integers(0, 300, rng.integers(1, 40)),
                                     rng.integers(1000, 1200, rng.integers(1, 40)),
                                     rng.integers(5000, 5100, rng.integers(0, 40))]))
        spans = pl.DataFrame({"start_ts": ts, "trace_id": [str(i) for i in range(len(ts))],
                              "span_id": [str(i) for i in range(len(ts))]})
        body, dropped = drop_stray_spans(spans, gap / 1_000_000)
        runs = [time_runs(np.sort(part), gap) for part in np.array_split(rng.permutation(ts), 5) if len(part)]
        first, last, n, total = main_body(runs, gap)
        assert (first, last, n, total - n) == (body["start_ts"].min(), body["start_ts"].max(), body.height, dropped)
    # a tie goes to the earliest segment, as drop_stray_spans keeps it
    assert main_body([np.array([[500, 510, 3]]), np.array([[0, 10, 3]])], 100)[:3] == (0, 10, 3)


def test_large_aggregates_go_out_chunk_by_chunk(dumps, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from stages.features import chunked

    root = dumps["eadro"]
    _, want = _tables("eadro", root, tmp_path / "whole", 10**12)
    monkeypatch.setattr(chunked, "HOLD_BYTES", 0)  # every chunk past the hold
    _, got = _tables("eadro", root, tmp_path / "chunks", _sizes("eadro", root)[0])
    path = tmp_path / "agg.parquet"
    path.write_bytes(got["trace_aggregates.parquet"])
    assert pq.ParquetFile(path).metadata.num_row_groups > 1
    assert_frame_equal(pl.read_parquet(path), pl.read_parquet(want["trace_aggregates.parquet"]))
