"""Metric CSVs read together (``_common.direct_csvs``) give each file the frame its own read gives.

The own read is ``read_csv(..., infer=True)``: ``_direct_csv`` where polars reads the path, else the
checked read of the bytes (a name polars would take for a glob, ``name[1]*.csv``, goes there)."""
from __future__ import annotations

import warnings

import polars as pl
from polars.testing import assert_frame_equal

from stages.formats import _common as c


def _files(tmp_path):
    bodies = {
        "a.csv": "timestamp,value\n1650288183,1.5\n1650288184,2.5\n",
        "b.csv": "timestamp,cpu,mem\n1650288183,0.1,3\n1650288184,,4\n",
        "header_only.csv": "timestamp,value\n",
        "empty.csv": "",
        "late_text.csv": "timestamp,value\n" + "".join(f"{1650288000 + i},{i}\n" for i in range(150)) + "1650289000,oops\n",
        "bad_bytes.csv": b"timestamp,v\xff\n1650288183,1\n",
        "name[1]*.csv": "timestamp,value\n1650288183,7\n",
        "c.csv": "timestamp,value\n1650288185,3.25\n",
    }
    paths = []
    for name, body in bodies.items():
        p = tmp_path / name
        p.write_bytes(body if isinstance(body, bytes) else body.encode())
        paths.append(p)
    return paths


def _same(got, want):
    assert (got is None) == (want is None)
    if want is not None:
        assert_frame_equal(got, want)


def test_together_equals_one_by_one(tmp_path, monkeypatch):
    paths = _files(tmp_path)
    good = [p for p in paths if p.name in ("a.csv", "b.csv", "name[1]*.csv", "c.csv")]
    got = list(c.direct_csvs(good))
    assert [p for p, _ in got] == good
    assert all(df is not None for _, df in got)  # read together, not left to the one-file path
    for p, df in got:
        _same(df, c.read_csv(p, [], infer=True))
    # every layout, in groups of one to all files: in order, each the file's own frame or None
    for group_bytes in (1, 60, 10**9):
        monkeypatch.setattr(c, "_DIRECT_GROUP_BYTES", group_bytes)
        out = list(c.direct_csvs(paths))
        assert [p for p, _ in out] == paths
        for p, df in out:
            if df is not None:
                _same(df, c.read_csv(p, [], infer=True))


def test_a_bad_file_leaves_its_group_to_the_checked_path(tmp_path):
    paths = _files(tmp_path)
    out = dict(c.direct_csvs(paths))
    assert all(df is None for df in out.values())  # one group (< 32 MB) holding bad files: all go one by one
    for p in paths:
        if out[p] is not None:
            _same(out[p], c.read_csv(p, [], infer=True))
    # what the readers then do with None: the checked read, the same frame or the same error
    for p in paths:
        try:
            want = c.read_csv(p, ["timestamp"], infer=True)
        except Exception as exc:  # noqa: BLE001 - compared below
            want = exc
        try:
            got = c.read_csv(p, ["timestamp"], infer=True, direct=out[p])
        except Exception as exc:  # noqa: BLE001
            got = exc
        if isinstance(want, Exception):
            assert type(got) is type(want) and str(got) == str(want)
        else:
            assert_frame_equal(got, want)


def test_real_eadro_metric_files(shared_data):
    files = sorted((shared_data / "tt-eadro").glob("*/metrics/*.csv"))
    assert len(files) == 27
    out = list(c.direct_csvs(files))
    assert all(isinstance(df, pl.DataFrame) for _, df in out)
    for p, df in out:
        assert_frame_equal(df, c._direct_csv(p))


def test_many_small_files_stay_under_polars_blocking_threads(tmp_path):
    """Thousands of small metric files (a short GAIA export) are read in queries of at most
    ``QUERY_FILES`` scans: one query over 7,000 of them hung in polars 2.1, which opens each scan
    on a blocking thread (512 at most) and warns when it runs out."""
    paths = []
    for i in range(1200):  # without the cap, 1,200 scans in one query already reach polars' 512 threads
        p = tmp_path / f"m{i:04d}.csv"
        p.write_text("timestamp,value\n" + "".join(f"{1650288000 + j},{i + j / 4}\n" for j in range(5)))
        paths.append(p)
    groups = c.byte_groups(paths, [1] * len(paths), 10**9, c.QUERY_FILES)
    assert max(len(g) for g in groups) == c.QUERY_FILES < 512 and sum(len(g) for g in groups) == 1200
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # polars' POLARS_MAX_BLOCKING_THREAD_COUNT warning fails the test
        out = list(c.direct_csvs(paths))
    assert [p for p, _ in out] == paths and all(df is not None for _, df in out)
    for p, df in out[::199]:
        _same(df, c.read_csv(p, [], infer=True))
