"""The metrics stage's reading in parts (``formats.read_metric_parts``) against the whole read.

Parts hold disjoint columns and, per column, the whole frame's points in the same order; the
table and stats made from them are the whole frame's, bit for bit; bad input raises the same error.
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
from stages.features.metric_matrix import metric_matrix, metric_matrix_parts
from stages.features.params import MetricsParams
from stages.formats import _metric_reading, read_metric_parts, read_modality
from stages.simulate.generate import generate
from stages.simulate.params import SynthParams

PART_SIZES = (1, 50_000, 10**9)  # a part per key, a few keys per part, one part


def _by_column(df: pl.DataFrame) -> dict[tuple[str, str], pl.DataFrame]:
    df = df.with_columns(pl.col("entity").cast(pl.Utf8), pl.col("metric").cast(pl.Utf8))
    return {k: g.drop("entity", "metric") for k, g in df.group_by(["entity", "metric"], maintain_order=True)}


def _check(fmt: str, root: Path, several: bool = True) -> None:
    whole = read_modality(fmt, root, "metrics")
    want_table, want_stats = metric_matrix(whole, 20.0, SplitParams(), MetricsParams())
    want = _by_column(whole)
    for size in PART_SIZES:
        parts = list(read_metric_parts(fmt, root, part_bytes=size))
        got: dict = {}
        for part in parts:
            for key, points in _by_column(part).items():
                assert key not in got, f"column {key} in two parts"
                got[key] = points
        assert got.keys() == want.keys()
        for key, points in want.items():
            assert_frame_equal(got[key], points)
        table, stats = metric_matrix_parts(read_metric_parts(fmt, root, part_bytes=size), 20.0, SplitParams(),
                                           MetricsParams())
        assert table.columns == want_table.columns
        for c in table.columns:
            assert table[c].to_numpy().tobytes() == want_table[c].to_numpy().tobytes()
        assert json.dumps(stats, sort_keys=True) == json.dumps(want_stats, sort_keys=True)
    assert (len(list(read_metric_parts(fmt, root, part_bytes=1))) > 1) == several


@pytest.fixture(scope="module")
def dumps(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("parts")
    params = SynthParams(hours=6.0, services=4, requests_per_s=0.2)
    out = {}
    for fmt in ("msds", "gaia", "eadro"):
        out[fmt] = base / fmt
        generate(f"parts_{fmt}", fmt, out[fmt], params, seed=3)
    return out


@pytest.mark.parametrize("fmt", ["msds", "gaia", "eadro"])
def test_parts_give_the_whole_reads_points_and_table(dumps, fmt):
    _check(fmt, dumps[fmt])


def test_real_samples_in_parts(shared_data):
    _check("eadro", shared_data / "tt-eadro")  # 27 services
    _check("msds", shared_data / "msds", several=False)  # one Glances file


def test_the_median_of_parts_is_the_whole_median():
    rng = np.random.default_rng(5)
    for n, raw in ((1, 0), (2, 0), (7, 0), (1000, 0), (2, 10**6), (7, 10**6), (1000, 10**6), (1000, 300)):
        # raw: times held as they come, then selected (all of them, or counted past 300)
        ts = np.sort(rng.integers(0, 50 if n < 1000 or raw < n else 10**9, n)) * 1_000_000 + 1_600_000_000_000_000
        s = pl.Series(ts)
        want = int(float(s[(n - 1) // 2]) if s[(n - 1) // 2] == s[n // 2] else (float(s[(n - 1) // 2]) + float(s[n // 2])) / 2)
        for arrival in (rng.permutation(ts), ts):  # parts in any order, or each in time order (counted by runs)
            counts = _metric_reading._TimeCounts(raw_values=raw)
            for chunk in np.array_split(arrival, 40):
                counts.add(chunk)
            assert counts.median() == want


def test_distinct_counts_are_numpys():
    rng = np.random.default_rng(6)
    for n in (0, 1, 2, 9, 5000):
        for ts in (np.sort(rng.integers(0, 1 + n // 4, n)), rng.integers(0, 30, n), np.arange(n) * 10):
            got, want = _metric_reading._distinct_counts(ts), np.unique(ts, return_counts=True)
            for a, b in zip(got, want):
                assert a.dtype == b.dtype and np.array_equal(a, b)


def test_bad_input_raises_the_whole_reads_error_after_the_last_part(dumps, tmp_path):
    root = tmp_path / "gaia"
    shutil.copytree(dumps["gaia"], root)
    files = sorted((root / "metric").glob("*.csv"))
    late = files[-1]
    late.write_text(late.read_text() + "not-a-time,1.0\n")
    with pytest.raises(InputError) as whole:
        read_modality("gaia", root, "metrics")
    with pytest.raises(InputError) as parts:
        list(read_metric_parts("gaia", root, part_bytes=1))
    assert str(parts.value) == str(whole.value)
    # a time more than a year from the median: the audit's error, from the parts' median
    shutil.rmtree(root)
    shutil.copytree(dumps["gaia"], root)
    first = sorted((root / "metric").glob("*.csv"))[0]
    lines = first.read_text().splitlines()
    head, row = lines[0], lines[1].split(",")
    row[0] = str(int(row[0]) - 3 * 365 * 86_400_000)
    first.write_text("\n".join([head, ",".join(row), *lines[2:]]) + "\n")
    with pytest.raises(InputError) as whole:
        read_modality("gaia", root, "metrics")
    with pytest.raises(InputError) as parts:
        list(read_metric_parts("gaia", root, part_bytes=1))
    assert "within a year" in str(whole.value) and str(parts.value) == str(whole.value)


def test_data_time_range_reads_metrics_in_parts(dumps):
    from stages.formats import data_time_range

    for fmt, root in dumps.items():
        whole = read_modality(fmt, root, "metrics")
        assert data_time_range(fmt, root, modalities=("metrics",)) == (int(whole["ts"].min()), int(whole["ts"].max()))
