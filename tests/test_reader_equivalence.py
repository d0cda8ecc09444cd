"""The fast reader paths of issue 11 give exactly the frames of the straightforward ones.

Real samples: exact row counts, dtypes, sort order and values read independently with ``csv`` /
``json``. Synthetic inputs: :class:`MetricPoints` against the previous implementation (long
frame by ``unpivot``, one stable sort on the text keys) on tricky layouts, and the OSProfiler
Python path against its general polars path, span by span.
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal, assert_series_equal

from stages.core.frames import SCHEMAS, US, conform
from stages.formats import _common as c
from stages.formats import _osprofiler as osp
from stages.formats import eadro, gaia, msds
from stages.formats._metric_points import MetricPoints

CHUNK = "tt-eadro/TT.2022-04-19T001753D2022-04-19T020534"
GLANCES = "msds/snedelkoski_repo/workloads/network_create_delete_config"
KEYS = ["ts", "entity", "metric"]


def text_sorted(df: pl.DataFrame, keys: list[str]) -> bool:
    return df.equals(df.sort(keys, maintain_order=True, nulls_last=True))


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------ real samples


def test_real_tt_metrics_exact(shared_data: Path):
    m = eadro.read_metrics(shared_data / CHUNK, 0.0)
    assert dict(m.schema) == SCHEMAS["metrics"]
    assert m.height == 27 * 6461 * 7
    assert text_sorted(m, KEYS)
    first = m.head(7)  # the first second: ts-assurance-service's 7 metrics, in name order
    raw = csv_rows(shared_data / CHUNK / "metrics" / "ts-assurance-service.csv")[0]
    assert first["entity"].unique().to_list() == ["ts-assurance-service"]
    assert first["metric"].to_list() == sorted(k for k in raw if k != "timestamp")
    assert first["value"].to_list() == [float(raw[k]) for k in first["metric"]]
    assert first["ts"].unique().to_list() == [int(raw["timestamp"]) * US]
    last = csv_rows(shared_data / CHUNK / "metrics" / "ts-verification-code-service.csv")[-1]
    assert m.row(-1) == (int(last["timestamp"]) * US, "ts-verification-code-service", "tx_bytes",
                         float(last["tx_bytes"]))
    travel = m.filter((pl.col("entity") == "ts-travel-service") & (pl.col("metric") == "rx_bytes"))
    assert travel["value"].head(3).to_list() == [3954.5] * 3


def test_real_glances_repeated_seconds_keep_file_order(shared_data: Path):
    """Repeated seconds in one file take the point-by-point path; ties stay in file order."""
    m = msds.read_metrics(shared_data / GLANCES, 0.0)
    assert m.height == 9887 * 6 and dict(m.schema) == SCHEMAS["metrics"]
    assert text_sorted(m, KEYS)
    rows = csv_rows(shared_data / GLANCES / "glances_out.csv")
    same = [float(r["cpu.user"]) for r in rows if r["now"] == rows[0]["now"]]
    assert len(same) == 2
    first = m.filter((pl.col("ts") == m["ts"][0]) & (pl.col("metric") == "cpu.user"))
    assert first["value"].to_list() == same == [23.7, 27.0]


def test_real_osprofiler_trace_both_paths(shared_data: Path):
    path = shared_data / "msds/snedelkoski_repo/workloads/create_delete_image_config/test.json"
    rows = osp.walk(json.loads(path.read_text()), path)
    fast = osp.place(rows, path, c.TimeAudit("traces"))
    assert fast is not None  # real OSProfiler stamps take the Python path
    general = conform(osp.place_polars(rows, path, c.TimeAudit("traces")), "traces")
    assert_frame_equal(pl.DataFrame(fast, schema=SCHEMAS["traces"]), general, check_exact=True)
    t = msds.read_traces(path.parent, 0.0)
    assert t.height == 12 and dict(t.schema) == SCHEMAS["traces"]
    assert text_sorted(t, ["start_ts", "trace_id", "span_id"])


# ------------------------------------------------------------------ metric points


def previous(files: list[tuple[str, pl.Series, dict[str, pl.Series]]]) -> pl.DataFrame:
    """The previous implementation: unpivot per file, NaN/null dropped, one stable text sort."""
    longs = []
    for entity, ts, cols in files:
        if not cols:
            continue
        long = pl.DataFrame({"ts": ts, **cols}).unpivot(index="ts", variable_name="metric", value_name="value")
        longs.append(long.filter(pl.col("value").is_not_null() & pl.col("value").is_not_nan())
                     .with_columns(pl.lit(entity).alias("entity")).select(list(SCHEMAS["metrics"])))
    if not longs:
        return pl.DataFrame(schema=SCHEMAS["metrics"])
    return pl.concat(longs).sort(KEYS, maintain_order=True)


def random_files(rng: np.random.Generator, case: int) -> list[tuple[str, pl.Series, dict[str, pl.Series]]]:
    files = []
    for _ in range(int(rng.integers(1, 6))):
        n = int(rng.integers(1, 25))
        if case % 2:  # sorted, sometimes with a repeated time (MSDS Glances)
            ts = np.sort(rng.choice(np.arange(60), n, replace=bool(rng.random() < 0.4)))
        else:  # any order, many repeats
            ts = rng.integers(0, 15, n)
        scale = 10**16 if case % 5 == 0 else US  # huge spans take the Int64-key-free path
        k = 1 if case % 3 == 0 else int(rng.integers(0, 4))  # one metric per file: GAIA
        cols = {}
        for name in rng.choice(["b", "a", "cpu", "mem.used", "a.b", "zz"], k, replace=False):
            v = rng.normal(size=n)
            v[rng.random(n) < 0.15] = np.nan
            cols[str(name)] = pl.Series(str(name), v).set(pl.Series(rng.random(n) < 0.1), None)
        files.append((str(rng.choice(["svc-b", "svc-a", "node1"])), pl.Series("ts", ts.astype(np.int64) * scale), cols))
    return files


@pytest.mark.parametrize("case", range(60))
def test_metric_points_match_previous_sort(case: int):
    files = random_files(np.random.default_rng(case), case)
    points = MetricPoints()
    for entity, ts, cols in files:
        points.add(entity, ts, cols)
    assert_frame_equal(points.frame(), previous(files), check_exact=True)


@pytest.mark.parametrize("case", range(40))
def test_metric_points_one_layout_repeated_seconds(case: int):
    """Glances-like files (every file the same metrics, a second now and then twice) in any file
    order, an entity sometimes in two files: tied rows' points sorted within their (ts, entity)."""
    rng = np.random.default_rng(1000 + case)
    names = [str(n) for n in rng.choice(["b", "a", "cpu", "mem.used", "a.b", "zz"], int(rng.integers(1, 5)),
                                        replace=False)]
    files = []
    for _ in range(int(rng.integers(1, 5))):
        n = int(rng.integers(1, 30))
        ts = np.sort(rng.choice(np.arange(40), n, replace=True)) if case % 3 else rng.integers(0, 10, n)
        cols = {}
        for name in names:
            v = rng.normal(size=n)
            v[rng.random(n) < 0.1] = np.nan
            cols[name] = pl.Series(name, v)
        files.append((str(rng.choice(["node2", "node1"])), pl.Series("ts", ts.astype(np.int64) * US), cols))
    points = MetricPoints()
    for entity, ts, cols in files:
        points.add(entity, ts, cols)
    assert_frame_equal(points.frame(), previous(files), check_exact=True)


@pytest.mark.parametrize("case", range(40))
def test_metric_points_shared_grids(case: int):
    """GAIA-like one-series files on a few shared time grids (the counting order), any file order,
    an (entity, metric) sometimes in two files, some files several metrics (Eadro-like)."""
    rng = np.random.default_rng(2000 + case)
    grids = [np.sort(rng.choice(np.arange(50), int(rng.integers(1, 20)), replace=False)) for _ in range(3)]
    files = []
    for _ in range(int(rng.integers(2, 12))):
        ts = grids[int(rng.integers(0, len(grids) if case % 2 else 1))]
        k = 1 if case % 4 else int(rng.integers(1, 3))
        cols = {str(name): pl.Series(rng.normal(size=len(ts)))
                for name in rng.choice(["b", "a", "cpu", "mem.used"], k, replace=False)}
        files.append((str(rng.choice(["svc-b", "svc-a", "node1"])), pl.Series("ts", ts.astype(np.int64) * US), cols))
    points = MetricPoints()
    for entity, ts, cols in files:
        points.add(entity, ts, cols)
    assert_frame_equal(points.frame(), previous(files), check_exact=True)


def test_metric_points_layouts():
    """Disjoint files of one entity use the row path; overlapping ones fall back; both are exact."""
    ts = pl.Series("ts", [2, 1, 1, 3], dtype=pl.Int64)
    files = [("e", ts, {"b": pl.Series([1.0, 2.0, 3.0, 4.0]), "d": pl.Series([5.0, 6.0, 7.0, 8.0])}),
             ("e", ts, {"a": pl.Series([9.0, 10.0, 11.0, 12.0])}),  # before b: not interleaved
             ("e", ts, {"c": pl.Series([13.0, 14.0, 15.0, 16.0])})]  # between b and d: interleaved
    for some in (files[:2], files):
        points = MetricPoints()
        for entity, t, cols in some:
            assert points.add(entity, t, cols) == 0
        assert_frame_equal(points.frame(), previous(some), check_exact=True)
    with pytest.raises(ValueError, match="null"):
        MetricPoints().add("e", pl.Series([1, None]), {"a": pl.Series([1.0, 2.0])})


# ------------------------------------------------------------------ CSV typing


def test_metric_csv_typed_past_the_first_100_rows(tmp_path: Path):
    """A column that looks integer (or empty) for 100 rows and then holds decimals reads exactly."""
    metrics = tmp_path / "TT.2022-04-19T001753D2022-04-19T020534" / "metrics"
    metrics.mkdir(parents=True)
    lines = ["timestamp,cpu,late"] + [f"{1650269873 + i},{i},{'' if i < 150 else i / 4}" for i in range(200)]
    lines[180] = "1650270052,0.5,44.75"
    (metrics / "ts-a-service.csv").write_text("\n".join(lines) + "\n")
    # only the empty-then-decimal column: typed as text from 100 rows, read as numbers all the same
    (metrics / "ts-b-service.csv").write_text("\n".join(line.rsplit(",", 2)[0] + "," + line.rsplit(",", 1)[1]
                                                        for line in lines) + "\n")
    m = eadro.read_metrics(tmp_path, 0.0).filter(pl.col("entity") == "ts-a-service")
    cpu = m.filter(pl.col("metric") == "cpu")
    assert cpu.height == 200 and cpu["value"][179] == 0.5 and cpu["value"][3] == 3.0
    late = m.filter(pl.col("metric") == "late")
    assert late.height == 50 and late["value"][0] == 37.5 and 44.75 in late["value"].to_list()
    b = eadro.read_metrics(tmp_path, 0.0).filter(pl.col("entity") == "ts-b-service")
    assert b["metric"].unique().to_list() == ["late"] and b["value"].to_list() == late["value"].to_list()


# ------------------------------------------------------------------ OSProfiler paths


def osprofiler(base: str, stamps: list[str | None], offsets: list[tuple[float, float]]) -> dict:
    """A trace whose i-th top-level node has stamp i (None: no start payload) and offsets i."""
    children = []
    for i, (stamp, (started, finished)) in enumerate(zip(stamps, offsets)):
        info = {"name": "wsgi", "project": "nova", "started": started, "finished": finished}
        if stamp is not None:
            info["meta.raw_payload.wsgi-start"] = {"timestamp": stamp, "base_id": base,
                                                   "info": {"request": {"method": "GET", "path": f"/v2/{i}"}}}
        children.append({"trace_id": f"{base}-{i}", "parent_id": base, "info": info, "children": []})
    return {"info": {"name": "total", "started": 0, "finished": 100}, "children": children}


TRACES = {
    "one": (["2019-11-19T10:00:00.5"], [(0, 9)]),  # one span: polars divides exactly here
    "many": (["2019-11-19 10:00:01.123456", None, "2019-11-19T10:00:01"], [(0, 9), (3, 12), (1.5, 10.5)]),
    "zoned": (["2019-11-19 11:00:02 CET", None], [(0, 9), (2, 4)]),  # not plain ISO: general path
    "epoch": (["1574157602.25", "1574157602.5"], [(0, 9), (5, 7)]),
}


@pytest.mark.parametrize("name", sorted(TRACES))
def test_osprofiler_python_path_matches_general_path(tmp_path: Path, name: str):
    stamps, offsets = TRACES[name]
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(osprofiler(name, stamps, offsets)))
    rows = osp.walk(osp.load(path), path)
    general = conform(osp.place_polars(rows, path, c.TimeAudit("traces")), "traces")
    fast = osp.place(rows, path, c.TimeAudit("traces"))
    if name in ("zoned", "epoch"):
        assert fast is None
    else:
        assert_frame_equal(pl.DataFrame(fast, schema=SCHEMAS["traces"]), general, check_exact=True)
    assert general["duration_s"][0] == pl.DataFrame({"f": [9.0] * len(offsets)}).select(pl.col("f") / 1000.0)["f"][0]


def test_msds_traces_mix_paths_in_file_order(tmp_path: Path):
    for name, (stamps, offsets) in TRACES.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(osprofiler(name, stamps, offsets)))
    t = msds.read_traces(tmp_path, 0.0)
    assert t.height == sum(len(s) for s, _ in TRACES.values())
    assert text_sorted(t, ["start_ts", "trace_id", "span_id"])
    # no stamp: placed at the trace's earliest anchor (10:00:01 minus its 1.5 ms offset) + its 3 ms offset
    assert t.filter(pl.col("span_id") == "many-1")["start_ts"][0] == 1574157601_000000 - 1500 + 3000
    assert t.filter(pl.col("span_id") == "zoned-0")["start_ts"][0] == 1574157602 * US


# ------------------------------------------------------------------ finish() and scans


def test_finish_enum_keys_sort_like_text():
    rng = np.random.default_rng(3)
    services = rng.choice(["b-svc", "a-svc", "", "c"], 5000).tolist()
    services[7] = None
    df = pl.DataFrame({"ts": rng.integers(0, 50, 5000), "service": services, "level": ["INFO"] * 5000,
                       "message": [str(i) for i in range(5000)]}, schema_overrides={"ts": pl.Int64})
    got = c.finish([df.head(2000), df.tail(3000)], "logs", ["ts", "service"])
    assert_frame_equal(got, conform(df, "logs").sort(["ts", "service"], maintain_order=True, nulls_last=True))


def test_msds_metrics_read_opens_no_json(tmp_path: Path, monkeypatch, caplog):
    (tmp_path / "wally117_metrics.csv").write_text("now,cpu.user\n2019-11-19 19:38:46 CET,1.5\n")
    (tmp_path / "trace.json").write_text(json.dumps(osprofiler("x", ["2019-11-19T10:00:00"], [(0, 1)])))
    (tmp_path / "notes.json").write_text("{}")
    opened: list[str] = []
    real_kind, real_hooks = msds._json_kind, msds._rally_hook_count
    monkeypatch.setattr(msds, "_json_kind", lambda p: opened.append(p.name) or real_kind(p))
    monkeypatch.setattr(msds, "_rally_hook_count", lambda p: opened.append(p.name) or real_hooks(p))
    assert msds.read_metrics(tmp_path, 0.0).height == 1
    assert opened == []
    with caplog.at_level(logging.WARNING):
        assert msds.read_traces(tmp_path, 0.0).height == 1
    assert sorted(opened) == ["notes.json", "trace.json"]
    assert "notes.json" in caplog.text  # a JSON no reader takes is still named, when JSON is read
    assert sorted(msds.list_files(tmp_path)["traces"]) == [tmp_path / "trace.json"]


def test_gaia_metric_files_one_series_each(tmp_path: Path):
    for inst, metric, values in (("webservice1", "cpu_pct", "1.5,2.5"), ("dbservice1", "cpu_pct", "3,nan"),
                                 ("webservice1", "mem_rss", "7,8")):
        (tmp_path / f"{inst}_0.0.0.1_docker_{metric}_2021-07-01_2021-07-31.csv").write_text(
            "timestamp,value\n" + "\n".join(f"{1625097600000 + 30000 * i},{v}" for i, v in enumerate(values.split(",")))
            + "\n")
    m = gaia.read_metrics(tmp_path, 0.0)
    assert m.rows() == [
        (1625097600 * US, "dbservice1", "docker_cpu_pct", 3.0),
        (1625097600 * US, "webservice1", "docker_cpu_pct", 1.5),
        (1625097600 * US, "webservice1", "docker_mem_rss", 7.0),
        (1625097630 * US, "webservice1", "docker_cpu_pct", 2.5),
        (1625097630 * US, "webservice1", "docker_mem_rss", 8.0),
    ]


@pytest.mark.parametrize("values", [
    [1625097600000, 1625097630000, None],  # GAIA: epoch ms
    [1650269873, 1650269874],  # Eadro: epoch s
    [1574157601123456, -5],  # µs and a value of another unit: per-value units
    [1574157601123456789, 1574157601123456000],  # ns
    [2**40, 2**40 + 1],  # ms whose µs product passes 2**53
])
def test_integer_epochs_as_the_float_path(values: list):
    s = pl.Series("t", values, dtype=pl.Int64)
    assert_frame_equal(c.epoch_to_us(s).to_frame(), c.epoch_to_us(s.cast(pl.Float64)).to_frame(), check_exact=True)


# ------------------------------------------------------------------ time strings

TIME_COLUMNS = {
    "glances": ["2019-11-19 12:00:00 CEST", "2019-11-19 12:00:01 CEST", "2019-11-19 12:00:01 CEST"],
    "lower": ["2019-11-19 12:00:00 cet", "2019-12-31 23:59:59 cet"],
    "naive": ["2019-11-19 12:00:00", "2020-02-29 23:59:59"],
    "utc": ["2019-11-19 12:00:00 UTC", "2019-12-31 23:59:59 UTC"],
    "mixed zones": ["2019-11-19 12:00:00 CEST", "2019-11-19 12:00:01 CET "],
    "z": ["2019-11-19 12:00:00Z", "2019-12-31 23:59:59Z"],
    "blank": [" 2019-11-19 12:00:00 ", "2019-11-19 12:00:01"],
    "fraction": ["2019-11-19 12:00:00.5 CEST", "2019-11-19 12:00:01.0 CEST"],
    "iso": ["2019-11-19T12:00:00", "2019-11-19T12:00:01"],
    "null": [None, "2019-11-19 12:00:00 CEST", None],
    "all null": [None, None],
    "gaia trace": ["2021-07-01 00:01:42.875903", "2021-07-01 00:01:43", "2021-07-01 00:01:43.1"],
    "gaia business": ["2021-07-01 00:02:22,277", None, "2021-07-01 00:02:27,488"],
    "nanoseconds": ["2021-07-01 00:02:22.123456789 UTC", "2021-07-01 00:02:22.999999999 UTC"],
    "blank cell": ["2021-07-01 00:02:22", ""],
    "offset": ["2021-07-01 00:02:22+02:00", "2021-07-01 00:02:23+02:00"],
    "unknown zone": ["2019-11-19 12:00:00 CEST", "2019-11-19 12:00:00 XYZ"],
}


@pytest.mark.parametrize("name", sorted(TIME_COLUMNS))
@pytest.mark.parametrize("offset", [0.0, 3600.0, 0.5])
def test_fixed_time_parse_matches_general(monkeypatch, name: str, offset: float):
    """The fixed-width time parse (Glances' `` CEST`` strings) gives the general path's µs."""
    col = pl.Series("now", TIME_COLUMNS[name], dtype=pl.Utf8)
    try:
        fast = c.parse_times(col, "f.csv", "now", tz_offset_s=offset)
    except c.InputError as exc:
        fast = str(exc)
    assert (c._parse_fixed(col, offset) is not None) == (name in (
        "glances", "lower", "naive", "utc", "null", "gaia trace", "gaia business", "nanoseconds", "fraction"))
    monkeypatch.setattr(c, "_parse_fixed", lambda *a: None)
    try:
        general = c.parse_times(col, "f.csv", "now", tz_offset_s=offset)
    except c.InputError as exc:
        assert fast == str(exc)
    else:
        assert_series_equal(fast, general, check_exact=True)


def test_fixed_time_parse_leaves_bad_days_to_the_general_path():
    with pytest.raises(c.InputError, match="row 2"):
        c.parse_times(pl.Series("now", ["2019-02-28 12:00:00 CET", "2019-02-30 12:00:00 CET"]), "f.csv", "now")
