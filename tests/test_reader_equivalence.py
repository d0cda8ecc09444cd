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
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal, assert_series_equal

from stages.core.frames import SCHEMAS, US, conform
from stages.formats import _common as c
from stages.formats import _osprofiler as osp
from stages.formats import eadro, gaia, msds
from stages.core.errors import InputError
from stages.formats._metric_grids import grid_plan
from stages.formats._metric_points import MetricPoints, _consecutive_blocks, _ranks

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
    # sorted as text, then given the canonical key dtype (Categorical entity and metric)
    return pl.concat(longs).sort(KEYS, maintain_order=True).cast(SCHEMAS["metrics"])


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


def test_categorical_keys_sort_as_text():
    """Downstream sorts on the Categorical keys must give the text order the readers produce
    (polars >= 1.32: Categorical sorts lexically, whatever order its categories were met in)."""
    files = random_files(np.random.default_rng(7), 1)
    files.append(("zz-last-seen-first", pl.Series("ts", [0], dtype=pl.Int64), {"zz": pl.Series([1.0])}))
    frame = run_points(files[::-1])
    assert frame.schema["entity"] == pl.Categorical
    assert_frame_equal(frame.sort(KEYS, maintain_order=True), frame)
    assert frame["entity"].unique().sort().to_list() == sorted(frame["entity"].unique().to_list())


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


@pytest.mark.parametrize("case", range(24))
def test_metric_points_rows_given_as_blocks(case: int):
    """``add_rows`` (MSDS files read together): blocks back to back in one array (the rows are
    used without a copy), blocks in arrays of their own (one contiguous copy each) and columns
    not in text order (copied column by column) all give the frame ``add`` gives, NaN dropped."""
    rng = np.random.default_rng(3000 + case)
    names = [str(n) for n in rng.choice(["b", "a", "cpu", "mem.used", "zz"], int(rng.integers(1, 5)), replace=False)]
    files = []
    for _ in range(int(rng.integers(1, 5))):
        n = int(rng.integers(1, 30))
        ts = np.sort(rng.choice(np.arange(40), n, replace=True)) if case % 3 else rng.integers(0, 10, n)
        v = rng.normal(size=(n, len(names)))
        v[rng.random(v.shape) < 0.1] = np.nan
        files.append((str(rng.choice(["node2", "node1"])), pl.Series("ts", ts.astype(np.int64) * US), v))
    expect = previous([(e, ts, {m: pl.Series(m, v[:, j]) for j, m in enumerate(names)}) for e, ts, v in files])
    order = sorted(range(len(names)), key=lambda j: names[j])
    one = np.empty(sum(v.size for _, _, v in files))
    at, shared = 0, []
    for _, _, v in files:
        shared.append(one[at:at + v.size].reshape(v.shape))
        shared[-1][:] = v[:, order]
        at += v.size
    ways = {"one array": [(e, ts, [names[j] for j in order], b) for (e, ts, _), b in zip(files, shared)],
            "own arrays": [(e, ts, [names[j] for j in order], np.ascontiguousarray(v[:, order])) for e, ts, v in files],
            "any order": [(e, ts, names, np.ascontiguousarray(v)) for e, ts, v in files]}
    for way, blocks in ways.items():
        points = MetricPoints()
        dropped = sum(points.add_rows(e, ts, cols, b) for e, ts, cols, b in blocks)
        assert dropped == sum(int(np.isnan(v).sum()) for _, _, v in files), way
        assert (_consecutive_blocks(points._files) is one) == (way == "one array")
        assert_frame_equal(points.frame(), expect, check_exact=True)


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


def run_points(files, grid_path: bool = True) -> pl.DataFrame:
    points = MetricPoints()
    points.grid_path = grid_path
    for entity, ts, cols in files:
        points.add(entity, ts, cols)
    return points.frame()


def grid_files(rng: np.random.Generator, case: int) -> list[tuple[str, pl.Series, dict[str, pl.Series]]]:
    """Files whose times never repeat within a file, drawn from a few grids: shared ones (GAIA),
    back-to-back chunks (Eadro), overlapping ones with different steps (holes in the union); files
    in any order, an (entity, metric) sometimes in two files, several metrics per file, NaN and nulls,
    and grids missing a few times (one block on their union, the absent cells dropped)."""
    chunks = [np.arange(c * 20, c * 20 + int(rng.integers(5, 20))) for c in range(3)]
    shared = np.sort(rng.choice(np.arange(60), int(rng.integers(1, 30)), replace=False))
    steps = [np.arange(0, 60, 2), np.arange(1, 61, 2), np.arange(0, 60, 3), np.arange(30, 45)]
    base = np.arange(40)
    gappy = [base, np.delete(base, rng.choice(40, int(rng.integers(1, 4)), replace=False)), np.arange(3, 43)]
    pools = [[shared], chunks, steps, [shared, *chunks, steps[int(rng.integers(0, len(steps)))]], gappy][case % 5]
    files = []
    for _ in range(int(rng.integers(1, 14))):
        ts = pools[int(rng.integers(0, len(pools)))]
        k = 1 if case % 3 == 0 else int(rng.integers(1, 4))
        cols = {}
        for name in rng.choice(["b", "a", "cpu", "mem.used", "a.b", "zz", "Z"], k, replace=False):
            v = rng.normal(size=len(ts))
            if case % 3 == 1:
                v[rng.random(len(ts)) < 0.2] = np.nan
            col = pl.Series(str(name), v)
            if case % 7 == 2:
                col = col.set(pl.Series(rng.random(len(ts)) < 0.1), None)
            if case % 11 == 3:  # integer columns: nulls only, no NaN
                col = pl.Series(str(name), rng.integers(-5, 5, len(ts)))
            cols[str(name)] = col
        scale = 10**16 if case % 13 == 4 else US  # spans no Int64 key holds: the grid path needs none
        files.append((str(rng.choice(["svc-b", "svc-a", "node1", "Node0"])),
                      pl.Series("ts", ts.astype(np.int64) * scale), cols))
    return files


@pytest.mark.parametrize("case", range(150))
def test_metric_points_grid_path_matches_row_path(case: int):
    """The transpose (no file repeats a time) gives the row path's frame and the previous one's."""
    files = grid_files(np.random.default_rng(3000 + case), case)
    grid = run_points(files)
    assert_frame_equal(grid, run_points(files, grid_path=False), check_exact=True)
    floats = [(e, ts, {k: v.cast(pl.Float64) for k, v in cols.items()}) for e, ts, cols in files]
    assert_frame_equal(grid, previous(floats), check_exact=True)


def test_metric_points_grid_path_taken_and_left():
    """Shared grids and back-to-back chunks take the transpose; interleaved grids (a sparse union)
    and a repeated time do not; all give the previous frame."""
    def plan_of(files):
        points = MetricPoints()
        for entity, ts, cols in files:
            points.add(entity, ts, cols)
        _, e_rank = _ranks(points._entities)
        _, m_rank = _ranks(points._metrics)
        return grid_plan(points._files, points._grids.arrays, e_rank, m_rank)

    one = lambda t, v: {"m": pl.Series(v, dtype=pl.Float64)}  # noqa: E731
    shared = [("b", pl.Series([1, 2, 3]), one(None, [1.0, 2.0, 3.0])), ("a", pl.Series([1, 2, 3]), one(None, [4, 5, 6]))]
    chunks = [("a", pl.Series([1, 2]), one(None, [1, 2])), ("a", pl.Series([3, 4]), one(None, [3, 4]))]
    interleaved = [("a", pl.Series([0, 2, 4, 6]), one(None, [1, 2, 3, 4])), ("b", pl.Series([1, 3, 5, 7]), one(None, [5, 6, 7, 8]))]
    repeated = [("a", pl.Series([1, 1, 2]), one(None, [1, 2, 3]))]
    for files, taken in ((shared, True), (chunks, True), (interleaved, False), (repeated, False)):
        assert (plan_of(files) is not None) == taken
        assert_frame_equal(run_points(files), previous(files), check_exact=True)
    assert len(plan_of(shared).blocks) == 1 and len(plan_of(chunks).blocks) == 2


# ------------------------------------------------------------------ CSV typing


CSV_BYTES = {
    "numbers": b"timestamp,value\n1,2\n3,4.5\n",
    "bom": b"\xef\xbb\xbftimestamp,value\n1,2\n",
    "text column": b"timestamp,now,value\n1,2019-11-19 12:00:00 CEST,2\n",
    "utf-8 text": "timestamp,h\u00f4te,value\n1,caf\u00e9,2\n".encode(),
    "quoted": b'timestamp,value\n1,"2"\n2,"a\nb"\n',
    "bad byte in text": b"timestamp,value\n1,a\xff\n",
    "bad byte late": b"timestamp,value\n" + b"1,2\n" * 150 + b"3,\xff\n",
    "bad header byte": b"time\xffstamp,value\n1,2\n",
    "header only": b"timestamp,value\n",
    "empty": b"",
    "blank": b"  \n",
    "late decimal": b"timestamp,value\n" + b"1,2\n" * 150 + b"3,4.5\n",
    "ragged": b"timestamp,value\n1,2,3\n",
    "nan": b"timestamp,value\n1,nan\n2,\n3,NaN\n",
}


@pytest.mark.parametrize("name", sorted(CSV_BYTES))
def test_direct_csv_read_as_the_checked_path(tmp_path: Path, monkeypatch, name: str):
    """Reading a metric CSV straight from its path gives the checked path's frame, or its error."""
    path = tmp_path / "m.csv"
    path.write_bytes(CSV_BYTES[name])

    def read():
        try:
            return c.read_csv(path, ["timestamp"], infer=True)
        except InputError as exc:
            return str(exc)

    direct = read()
    monkeypatch.setattr(c, "_direct_csv", lambda p: None)
    checked = read()
    if isinstance(checked, str):
        assert direct == checked
    else:
        assert_frame_equal(direct, checked, check_exact=True)


# ------------------------------------------------------------------ CSV typing (readers)


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
    [-1650269873, -1650269874],  # negative only: the unit by |value|
    [-1650269873, 1650269874, 0],  # both signs
    [-(2**63), 1],  # |most negative Int64| does not fit
    [-5, 1625097600000],  # a small negative among ms
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
    "elasticsearch": ["2019-11-19T10:00:01.578Z", "2019-11-19T10:00:02Z", None, "2019-11-19T10:00:03,5Z"],
    "elasticsearch whole seconds": ["2019-11-19T10:00:01Z", "2019-11-19T10:00:02Z"],
    "separators mixed": ["2019-11-19T10:00:01Z", "2019-11-19 10:00:02Z"],
    "z lower": ["2019-11-19T10:00:01z", "2019-11-19T10:00:02z"],
    "z then zone": ["2019-11-19T10:00:01Z", "2019-11-19T10:00:02 UTC"],
    "iso with zone": ["2019-11-19T12:00:00 CEST", "2019-11-19T12:00:01 CEST"],
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
        "glances", "lower", "naive", "utc", "null", "gaia trace", "gaia business", "nanoseconds", "fraction",
        "z", "iso", "elasticsearch", "elasticsearch whole seconds", "iso with zone"))
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


# ------------------------------------------------------------------ GAIA traces and business logs
#
# The previous GAIA trace and business-log readers, kept here as the reference for the faster ones
# (issue 11): several collects per trace file, the capture regex on every message, the ids' join
# and text sort. The general time parse (``c._parse_general``) and the unchanged helpers are shared.


def old_parse_fixed(s: pl.Series, tz_offset_s: float) -> pl.Series | None:
    nulls = s.null_count()
    if s.len() == nulls:
        return None
    first = s[0] if not nulls else s.drop_nulls()[0]
    _, _, zone = first.rpartition(" ")
    if zone.isascii() and zone.isalpha():
        if not 2 <= len(zone) <= 5 or zone.upper() not in c.TZ_OFFSETS_S:
            return None
        suffix, shift_us = " " + zone, c.TZ_OFFSETS_S[zone.upper()] * US
    else:
        suffix, shift_us = "", int(round(tz_offset_s * US))
    if not bool(s.str.contains(c._fixed_pattern(" ") + suffix + "$").all()):
        return None
    fmt = "%Y-%m-%d %H:%M:%S"
    if s.str.len_bytes().max() == 19 + len(suffix):
        fmt += suffix
    else:
        if suffix:
            s = s.str.strip_suffix(suffix)
        fmt += "%.f"
        if bool(s.str.contains(",", literal=True).any()):
            s = s.str.replace(",", ".", literal=True)
    parsed = s.str.to_datetime(fmt, strict=False, time_unit="us")
    if parsed.null_count() != nulls:
        return None
    return parsed.dt.epoch("us") - shift_us


def old_parse_times(col: pl.Series, path, column: str, row_label=c.row_of) -> pl.Series:
    if col.dtype.is_numeric():
        return c.epoch_to_us(col)
    if col.dtype == pl.Utf8:
        fixed = old_parse_fixed(col, 0.0)
        if fixed is not None:
            return fixed.rename(col.name)
    return c._parse_general(col, path, column, 0.0, row_label)


def old_to_float(col: pl.Series, path: Path, column: str) -> pl.Series:
    s = col.cast(pl.Utf8).str.strip_chars()
    out = s.cast(pl.Float64, strict=False)
    bad = out.is_null() & s.is_not_null() & (s != "") & ~s.str.to_lowercase().is_in(["nan", "null", "none", "na"])
    if bad.any():
        i = int(bad.arg_true()[0])
        raise c.InputError(path, f"{c.row_of(i)} column '{column}'", "a number", s[i])
    return out


def old_read_trace_file(path: Path, audit: c.TimeAudit) -> pl.DataFrame:
    df = c.read_csv(path, gaia.TRACE_COLUMNS)
    start = old_parse_times(df["start_time"], path, "start_time")
    end = old_parse_times(df["end_time"], path, "end_time")
    for name, series in (("start_time", start), ("end_time", end)):
        if series.is_null().any():
            i = int(series.is_null().arg_true()[0])
            raise c.InputError(path, f"{c.row_of(i)} column '{name}'", "a time", df[name][i])
        audit.series(path, series, name)
    backwards = end < start
    if backwards.any():
        i = int(backwards.arg_true()[0])
        raise c.InputError(path, f"{c.row_of(i)} column 'end_time'", f"a time >= start_time ({df['start_time'][i]})",
                           df["end_time"][i])
    status = old_to_float(df["status_code"], path, "status_code")
    parent = pl.col("parent_id").str.strip_chars()
    return df.with_columns(
        pl.Series("start_ts", start),
        ((end - start) / US).alias("duration_s"),
        pl.when(parent.is_null() | parent.str.to_lowercase().is_in(["", "none", "null", "nan", "0"]))
        .then(None).otherwise(parent).alias("parent_id"),
        pl.col("service_name").alias("service"),
        pl.col("url").fill_null("").alias("operation"),
        ((pl.Series(status).fill_null(0) >= 400)
         | pl.col("message").fill_null("").str.to_lowercase().str.contains("error")).alias("is_error"),
    )


def old_dedupe_spans(spans: pl.DataFrame, source: str) -> pl.DataFrame:
    if spans.height == 0:
        return spans
    key = ["trace_id", "span_id"]
    if not bool(spans.select(key).is_duplicated().any()):
        return spans
    distinct = spans.unique(maintain_order=True)
    clash = distinct.filter(pl.len().over(key) > 1)
    if clash.height:
        groups = clash.unique(subset=key, maintain_order=True)
        c.log.warning("%s: %d span id(s) reused by different spans (%d records); the first record of each is kept "
                      "(%s)", source, groups.height, clash.height, c._ids(groups))
    return distinct.unique(subset=key, keep="first", maintain_order=True)


def old_cut_bad_parents(spans: pl.DataFrame, source: str) -> pl.DataFrame:
    if spans.height == 0:
        return spans
    idx = spans.select("trace_id", "span_id").with_row_index("_i")
    parent = (spans.select("trace_id", pl.col("parent_id").alias("span_id")).with_row_index("_c")
              .join(idx, on=["trace_id", "span_id"], how="left").sort("_c")["_i"])
    p = parent.fill_null(-1).cast(pl.Int64).to_numpy().copy()
    n = len(p)
    q = p.copy()
    for _ in range(max(1, int(np.ceil(np.log2(n + 1))) + 1)):
        q = np.where(q >= 0, q[np.maximum(q, 0)], -1)
    in_cycle = np.zeros(n, bool)
    frontier = np.unique(q[q >= 0])
    while frontier.size:
        new = frontier[~in_cycle[frontier]]
        in_cycle[new] = True
        frontier = p[new]
        frontier = frontier[frontier >= 0]
    if not in_cycle.any():
        return spans
    bad = spans.filter(pl.Series(in_cycle))
    selfish = bad.filter(pl.col("parent_id") == pl.col("span_id"))
    c.log.warning("%s: %d span(s) in %d trace(s) are their own parent (%d) or sit on a parent cycle (%d); their "
                  "parent links are cut so no call edge is made up (%s)", source, bad.height,
                  bad["trace_id"].n_unique(), selfish.height, bad.height - selfish.height, c._ids(bad))
    return spans.with_columns(pl.when(pl.Series(in_cycle)).then(None).otherwise(pl.col("parent_id"))
                              .alias("parent_id"))


def old_sort_key(df: pl.DataFrame, column: str) -> pl.Expr:
    col = df[column]
    if col.dtype != pl.Utf8 or df.height < 1024:
        return pl.col(column)
    distinct = col.drop_nulls().unique()
    if distinct.len() * 4 > df.height:
        return pl.col(column)
    return pl.col(column).cast(pl.Enum(distinct.sort().to_list()))


def old_finish(frames: list[pl.DataFrame], modality: str, sort_by: list[str]) -> pl.DataFrame:
    if not frames:
        return gaia.empty(modality)
    df = conform(pl.concat([conform(f, modality) for f in frames], how="vertical"), modality)
    return df.sort([old_sort_key(df, k) for k in sort_by], maintain_order=True, nulls_last=True)


def old_read_traces(root: Path, offset_s: float) -> pl.DataFrame | None:
    found = gaia.scan(root)
    files, skipped = found.files["traces"], list(found.skips("traces"))
    audit = c.TimeAudit("traces")
    frames = []
    for p in files:
        frame = conform(old_read_trace_file(p, audit), "traces")
        if frame.height == 0:
            skipped.append((p, "header only, no data row"))
        frames.append(frame)
    c.warn_skipped("traces", skipped, found.unclaimed)
    if not files and not skipped:
        return None
    spans = pl.concat(frames) if frames else gaia.empty("traces")
    c.require_rows("traces", spans, files, skipped)
    audit.finish(spans["start_ts"])
    label = f"gaia traces under {root}"
    spans = old_cut_bad_parents(old_dedupe_spans(spans, label), label)
    return c.shift(old_finish([spans], "traces", ["start_ts", "trace_id", "span_id"]), ["start_ts"], offset_s)


def old_split_messages(df: pl.DataFrame, path: Path) -> pl.DataFrame:
    g = df.with_row_index("_row").with_columns(pl.col("message").fill_null("").str.strip_chars().alias("_m"))
    g = g.with_columns(pl.col("_m").str.extract_groups(gaia._HEADER).alias("_g")).unnest("_g")
    g = g.rename({"1": "_time", "2": "_level", "3": "_instance", "4": "_text"})
    times = old_parse_times(g["_time"], path, "message time")
    return g.with_columns(pl.Series("_ts", times), pl.col("_text").str.replace(gaia._TRACE_PREFIX, "").alias("_text"))


def old_read_log_file(path: Path, audit: c.TimeAudit) -> pl.DataFrame:
    df = c.read_csv(path, ["service", "message"], lossy=True)
    g = old_split_messages(gaia._drop_index(df), path)
    audit.series(path, g["_ts"], "message time", rows=g["_row"])
    head = pl.col("_time").is_not_null()
    out = g.filter(pl.col("_m") != "").with_columns(
        pl.col("_ts").forward_fill().alias("ts"),
        pl.when(head).then(c.normalise_level(pl.col("_level"))).otherwise(None).forward_fill().alias("level"),
        pl.when(head).then(pl.col("_text")).otherwise(pl.col("_m")).alias("message"),
        pl.coalesce(pl.col("service").str.strip_chars().replace("", None), pl.col("_instance")).alias("service"),
    )
    orphans = out["ts"].is_null().sum()
    if orphans:
        gaia.log.warning("%s: %d line(s) before the first timestamped line dropped", path, orphans)
    return out.filter(pl.col("ts").is_not_null())


def old_read_logs(root: Path, offset_s: float) -> pl.DataFrame | None:
    found = gaia.scan(root)
    files, skipped = found.files["logs"], list(found.skips("logs"))
    audit = c.TimeAudit("logs")
    frames = []
    for p in files:
        frame = old_read_log_file(p, audit)
        if frame.height == 0:
            skipped.append((p, "no log line with a time"))
        frames.append(frame)
    c.warn_skipped("logs", skipped, found.unclaimed)
    if not files and not skipped:
        return None
    df = old_finish(frames, "logs", ["ts", "service"])
    c.require_rows("logs", df, files, skipped)
    audit.finish(df["ts"])
    return c.shift(df, ["ts"], offset_s)


def outcome(read, root: Path, caplog, monkeypatch) -> tuple:
    """(frame or error text, warnings) of one read, each file's warnings fresh."""
    monkeypatch.setattr(c, "_WARNED", set())
    caplog.clear()
    with caplog.at_level(logging.INFO):
        try:
            got = read(root, 2.5)
        except c.InputError as exc:
            got = str(exc)
    return got, [(r.levelname, r.getMessage()) for r in caplog.records]


def assert_same_read(new, old, root: Path, caplog, monkeypatch) -> None:
    got, warned = outcome(new, root, caplog, monkeypatch)
    want, want_warned = outcome(old, root, caplog, monkeypatch)
    if isinstance(want, pl.DataFrame):
        assert isinstance(got, pl.DataFrame), got
        assert_frame_equal(got, want, check_exact=True)
    else:
        assert got == want
    assert warned == want_warned


GAIA_T0 = 1_625_097_600  # 2021-07-01T00:00:00Z


def _stamp(rng: np.random.Generator, us: int, shape: str, digits: int) -> str:
    """A GAIA time cell of one shape (a file mixes shapes only in 'mixed'), fractions cut to ``digits``."""
    shape = rng.choice(["str", "ms", "comma", "whole"]) if shape == "mixed" else shape
    if shape == "ms":
        return str(us // 1000)
    text = pl.Series([us], dtype=pl.Int64).cast(pl.Datetime("us")).dt.strftime("%Y-%m-%d %H:%M:%S").item()
    if shape == "whole":
        return text
    return text + ("," if shape == "comma" else ".") + f"{us % US:06d}"[:digits]


def _cell(value: str) -> str:
    return '"' + value.replace('"', '""') + '"' if any(ch in value for ch in ',"\n') else value


def write_trace_table(path: Path, rng: np.random.Generator, rows: int, *, tied: bool, shape: str) -> None:
    """Spans with repeated and clashing ids, self-parents and parent cycles, every null spelling,
    unsorted, times of one shape (or mixed), ties in start time when ``tied``."""
    traces = [f"{t:016x}" for t in rng.integers(0, 2**60, max(1, rows // 6))]
    digits = int(rng.integers(1, 7))
    lines = [",".join(["timestamp", "host_ip", "service_name", "trace_id", "span_id", "parent_id",
                       "start_time", "end_time", "url", "status_code", "message"])]
    for _ in range(rows):
        trace = str(rng.choice(traces))
        span = f"s{int(rng.integers(0, 12))}"
        parent = str(rng.choice(["", "None", " null ", "NaN", "0", "s1", "s2", span, "s3", "s4", trace]))
        start = GAIA_T0 * US + int(rng.integers(0, 50 if tied else 3_600 * US))
        end = start + int(rng.integers(0, 5 * US))
        status = str(rng.choice(["200", "500.0", "", " 404 ", "nan", "302"]))
        message = str(rng.choice(["", "ok", "an Error here", "ERROR, again", 'say "hi"\nthen error', "fine"]))
        lines.append(",".join([str(start // 1000), "0.0.0.1", str(rng.choice(["webservice1", "dbservice2", ""])),
                               trace, span, parent, _cell(_stamp(rng, start, shape, digits)),
                               _cell(_stamp(rng, end, shape, digits)),
                               str(rng.choice(["/index", "", "http://0.0.0.1:9384/x"])), status, _cell(message)]))
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("block_bytes", [None, 4096])  # large tables are parsed a block of records at a time
@pytest.mark.parametrize("seed", range(12))
def test_gaia_traces_match_previous_reader(tmp_path: Path, caplog, monkeypatch, seed: int, block_bytes):
    if block_bytes:
        monkeypatch.setattr(c, "CSV_BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(seed)
    for k in range(int(rng.integers(1, 4))):
        shape = str(rng.choice(["str", "ms", "comma", "whole", "mixed"]))
        rows = int(rng.choice([0, 1, 7, 300, 1500]))
        write_trace_table(tmp_path / "trace" / f"trace_table_svc{k}_2021-07.csv" if k else
                          tmp_path / f"trace_table_svc{k}_2021-07.csv", rng, rows, tied=bool(rng.integers(0, 2)),
                          shape=shape) if (tmp_path / "trace").mkdir(exist_ok=True) is None else None
    assert_same_read(gaia.read_traces, old_read_traces, tmp_path, caplog, monkeypatch)


def test_gaia_traces_distinct_starts_take_the_one_key_sort(tmp_path: Path, caplog, monkeypatch):
    """Distinct start times (the bench's spans) sort by start alone; with ties, by all three keys."""
    rng = np.random.default_rng(99)
    write_trace_table(tmp_path / "trace_table_a_2021-07.csv", rng, 3000, tied=False, shape="str")
    assert_same_read(gaia.read_traces, old_read_traces, tmp_path, caplog, monkeypatch)
    spans = gaia.read_traces(tmp_path, 0.0)
    assert spans["start_ts"].is_sorted() and spans["start_ts"].n_unique() == spans.height
    write_trace_table(tmp_path / "trace_table_a_2021-07.csv", rng, 3000, tied=True, shape="str")
    assert_same_read(gaia.read_traces, old_read_traces, tmp_path, caplog, monkeypatch)


@pytest.mark.parametrize("seed", range(4))
def test_gaia_span_checks_survive_hash_collisions(tmp_path: Path, caplog, monkeypatch, seed: int):
    """A weak id hash (many collisions) sends the duplicate and parent checks to the exact paths."""
    rng = np.random.default_rng(100 + seed)
    write_trace_table(tmp_path / "trace_table_a_2021-07.csv", rng, 400, tied=bool(seed % 2), shape="str")
    weak = c._pair_hash
    monkeypatch.setattr(c, "_pair_hash", lambda a, b: weak(a, b) % (seed + 1))
    assert_same_read(gaia.read_traces, old_read_traces, tmp_path, caplog, monkeypatch)


def test_gaia_parent_rows_hashed_or_joined_alike():
    spans = pl.DataFrame({"trace_id": ["t", "t", "t", None, "u", "u", "t"],
                          "span_id": ["a", "b", None, "a", "a", "b", "c"],
                          "parent_id": [None, "a", "b", "a", "b", "a", "zz"]})
    hashed = c._parent_rows_hashed(spans)
    assert hashed.tolist() == [-1, 0, 1, -1, 5, 4, -1]
    assert c._all_reach_a_root(c.parent_rows(spans)) is False  # u: a <-> b
    assert c._all_reach_a_root(np.array([-1, 0, 1, 2])) is True


@pytest.mark.parametrize("cell,col", [("2021-02-30 00:00:00.5", 6), ("garbage", 7), ("OK", 9), ("631152000000", 6),
                                      ("", 6), ("1625097500000", 7)])
def test_gaia_trace_bad_cells_fail_alike(tmp_path: Path, caplog, monkeypatch, cell: str, col: int):
    rng = np.random.default_rng(5)
    path = tmp_path / "trace_table_a_2021-07.csv"
    write_trace_table(path, rng, 50, tied=False, shape="str")
    with open(path, newline="") as fh:
        records = list(csv.reader(fh))
    row = 22  # the header is record 0: 'row 22' in the messages
    records[row][col] = cell
    with open(path, "w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(records)
    got, _ = outcome(gaia.read_traces, tmp_path, caplog, monkeypatch)
    assert isinstance(got, str) and f"row {row}" in got
    assert_same_read(gaia.read_traces, old_read_traces, tmp_path, caplog, monkeypatch)


HEADER_PIECES = ["2021-07-01 00:00:01,250", "2021-07-01 00:00:02.5", "2021-07-01 00:00:03", "2021-07-01T00:00:04",
                 "٢٠٢١-07-01 00:00:05", " ", "|", " | ", "||", "INFO", "WARN", "error", "x y", "é", "\n", "\t", "a|b",
                 "3a9b7c1d2e3f4a5b", "3A9B7C1D2E3F4A5B0000", "  dbservice1 ", ""]


def _message(rng: np.random.Generator, pieces: list[str] = HEADER_PIECES) -> str:
    kind = int(rng.integers(0, 4))
    pick = lambda: str(rng.choice(pieces))  # noqa: E731
    if kind == 0:  # the documented header, trace id or not
        stamp = f"2021-07-01 {int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}:00,{int(rng.integers(0, 999)):03d}"
        trace = str(rng.choice(["", "3a9b7c1d2e3f4a5b | ", "3a9b | "]))
        return f"{stamp} | {rng.choice(['INFO', 'WARN', 'warning', 'ERR'])} | 0.0.0.1 | 172.17.0.2 | {pick()} | {trace}{pick()}{pick()}"
    if kind == 1:  # header-like pieces joined by pipes
        return " | ".join(pick() for _ in range(int(rng.integers(0, 8))))
    if kind == 2:
        return "".join(pick() for _ in range(int(rng.integers(0, 10))))
    return str(rng.choice(["", "(Background on this error at: http://sqlalche.me/e/14/e3q8)", "  ", "Traceback:"]))


def write_business_table(path: Path, rng: np.random.Generator, rows: int, index: bool) -> None:
    """Documented headers (with and without a trace id), continuation lines, near-misses with pipes,
    tabs, newlines and other digits; the pandas index column or not."""
    head = ",datetime,service,message" if index else "datetime,service,message"
    lines = [head]
    pieces = [p for p in HEADER_PIECES if not p.startswith("٢")]  # a header with other digits: an error
    for i in range(rows):
        service = str(rng.choice(["webservice1", "", " dbservice2 "]))
        lines.append((f"{i}," if index else "") + f"2021-07-01,{service},{_cell(_message(rng, pieces))}")
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(("slice_rows", "block_bytes"), [(100_000, None), (7, None), (1, None), (100_000, 4096),
                                                         (5, 4096)])  # records parsed at a time; bytes per block
@pytest.mark.parametrize("seed", range(12))
def test_gaia_business_logs_match_previous_reader(tmp_path: Path, caplog, monkeypatch, seed: int, slice_rows: int,
                                                  block_bytes):
    monkeypatch.setattr(gaia, "LOG_SLICE_ROWS", slice_rows)
    if block_bytes:
        monkeypatch.setattr(c, "CSV_BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(1000 + seed)
    (tmp_path / "business").mkdir()
    for k in range(int(rng.integers(1, 4))):
        write_business_table(tmp_path / "business" / f"business_table_svc{k}_2021-07.csv", rng,
                             int(rng.choice([0, 20, 400, 1500])), index=bool(rng.integers(0, 2)))
    if seed == 1:  # a header whose time has other digits: the same error
        p = tmp_path / "business" / "business_table_svc0_2021-07.csv"
        p.write_text(p.read_text() + '2021-07-01,a,"٢٠٢١-07-01 00:00:05 | INFO | a | b | c | x"\n')
    if seed == 0:  # one byte that is not UTF-8: replaced, with the same warning
        p = tmp_path / "business" / "business_table_svc0_2021-07.csv"
        p.write_bytes(p.read_bytes() + b'2021-07-01,webservice1,"2021-07-01 00:00:09,1 | INFO | a | b | c | \xff"\n')
    assert_same_read(gaia.read_logs, old_read_logs, tmp_path, caplog, monkeypatch)


def old_msds_read_log_file(path: Path, audit: c.TimeAudit) -> pl.DataFrame:
    """The MSDS export read whole (before it came in blocks)."""
    df = c.read_csv(path, ["@timestamp", "Payload"], lossy=True)
    ts = c.parse_times(df["@timestamp"], path, "@timestamp")
    audit.series(path, ts, "@timestamp")
    blank = pl.lit(None, dtype=pl.Utf8)
    prog = pl.col("programname").str.strip_chars().replace("", None) if "programname" in df.columns else blank
    host = pl.col("Hostname").str.strip_chars().replace("", None) if "Hostname" in df.columns else blank
    level = pl.col("log_level") if "log_level" in df.columns else blank
    out = df.with_columns(
        pl.Series("ts", ts),
        pl.coalesce(prog, host, pl.lit("unknown")).alias("service"),
        c.normalise_level(level).alias("level"),
        pl.col("Payload").fill_null("").str.replace_all(r"\s+", " ").str.strip_chars().alias("message"),
    )
    missing = out["ts"].is_null().sum()
    if missing:
        msds.log.warning("%s: %d row(s) without @timestamp dropped", path, missing)
    return out.filter(pl.col("ts").is_not_null())


def old_msds_read_logs(root: Path, offset_s: float) -> pl.DataFrame | None:
    from stages.formats._log_reading import LogReading, whole

    found = msds.scan(root, "logs")
    return whole(LogReading(files=found.files["logs"], skipped=list(found.skips("logs")), unclaimed=found.unclaimed,
                            read=lambda p, audit: [old_msds_read_log_file(p, audit)],
                            empty="no log line with a time", label="msds logs"), offset_s)


def write_es_export(path: Path, rng: np.random.Generator, rows: int, columns: list[str]) -> None:
    """An Elasticsearch CSV export: blank and padded hosts/programs, multi-line and blank payloads,
    a few rows without a time, times with and without fractions."""
    lines = [",".join(columns)]
    for i in range(rows):
        sec = int(rng.integers(0, 3600))
        stamp = str(rng.choice([f"2019-11-19T18:{sec // 60:02d}:{sec % 60:02d}.{int(rng.integers(0, 999)):03d}Z",
                                f"2019-11-19 18:{sec // 60:02d}:{sec % 60:02d}", ""], p=[0.6, 0.38, 0.02]))
        cells = {"@timestamp": stamp,
                 "Hostname": str(rng.choice(["wally113", " wally117 ", ""])),
                 "programname": str(rng.choice(["nova-compute", "", " neutron-server"])),
                 "log_level": str(rng.choice(["INFO", "warning", "ERROR", ""])),
                 "Payload": str(rng.choice([f"req-{i} GET /v2/servers  200", "Traceback:\n  line 1\tboom",
                                            "", "   ", f'said "hi" {i}']))}
        lines.append(",".join('"' + cells[k].replace('"', '""') + '"' if any(x in cells[k] for x in ',"\n')
                              else cells[k] for k in columns))
    path.write_text("\n".join(lines) + "\n")


def export_row(columns: list[str], stamp: str, payload: str) -> str:
    """One export row with this time and payload, in the order of ``columns``."""
    cells = {"@timestamp": stamp, "Hostname": "wally113", "programname": "nova", "log_level": "INFO", "Payload": payload}
    return ",".join(cells[k] for k in columns)


@pytest.mark.parametrize("block_bytes", [None, 4096, 700])  # bytes of input per block
@pytest.mark.parametrize("seed", range(6))
def test_msds_logs_in_blocks_match_the_whole_read(tmp_path: Path, caplog, monkeypatch, seed: int, block_bytes):
    if block_bytes:
        monkeypatch.setattr(c, "CSV_BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(2000 + seed)
    columns = ["@timestamp", "Hostname", "programname", "log_level", "Payload"]
    if seed % 3 == 1:
        columns = ["Payload", "@timestamp", "Hostname"]  # no program or level column
    for k in range(1 + seed % 2):
        write_es_export(tmp_path / f"logs_aggregated_{k}.csv", rng, int(rng.choice([1, 60, 400])), columns)
    if seed == 4:  # a time decades off, in a later block: the same error, naming the same row
        p = tmp_path / "logs_aggregated_0.csv"
        p.write_text(p.read_text() + export_row(columns, "1990-11-19T18:00:00.000Z", "old") + "\n")
    if seed == 5:  # one byte that is not UTF-8: read whole, replaced, with the same warning
        p = tmp_path / "logs_aggregated_0.csv"
        p.write_bytes(p.read_bytes() + export_row(columns, "2019-11-19T18:00:00.000Z", "").encode() + b"\xff\n")
    assert_same_read(msds.read_logs, old_msds_read_logs, tmp_path, caplog, monkeypatch)


def test_msds_logs_name_a_bad_time_by_its_row_in_the_file(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(c, "CSV_BLOCK_BYTES", 256)
    rows = [f"2019-11-19T18:00:{i % 60:02d}.000Z,wally113,nova,INFO,line {i}" for i in range(200)]
    rows[150] = "2019-11-19T25:00:00.000Z,wally113,nova,INFO,no such hour"
    (tmp_path / "logs.csv").write_text("@timestamp,Hostname,programname,log_level,Payload\n" + "\n".join(rows) + "\n")
    with pytest.raises(InputError, match=r"row 151 column '@timestamp'"):
        msds.read_logs(tmp_path, 0.0)


def test_gaia_header_fields_match_the_capture_regex():
    rng = np.random.default_rng(7)
    messages = [_message(rng) for _ in range(20_000)] + HEADER_PIECES
    m = pl.DataFrame({"_m": messages}).with_columns(pl.col("_m").str.strip_chars())
    want = (m.select(pl.col("_m").str.extract_groups(gaia._HEADER).alias("_g")).unnest("_g")
            .rename({"1": "_time", "2": "_level", "3": "_instance", "4": "_text"}))
    got = m.select(gaia.header_fields(pl.col("_m")))
    assert want["_time"].null_count() < m.height * 0.9  # thousands of headers matched
    assert_frame_equal(got, want, check_exact=True)


@pytest.mark.parametrize("slice_rows", [100_000, 1])
def test_gaia_business_bad_time_fails_alike(tmp_path: Path, caplog, monkeypatch, slice_rows: int):
    monkeypatch.setattr(gaia, "LOG_SLICE_ROWS", slice_rows)
    (tmp_path / "business_table_a_2021-07.csv").write_text(
        'datetime,service,message\n2021-07-01,a,"2021-07-01 00:00:01,250 | INFO | a | b | c | ok"\n'
        '2021-07-01,a,"1990-07-01 00:00:01,250 | INFO | a | b | c | old"\n')
    assert_same_read(gaia.read_logs, old_read_logs, tmp_path, caplog, monkeypatch)
    (tmp_path / "business_table_a_2021-07.csv").write_text(
        'datetime,service,message\n2021-07-01,a,"2021-07-01 00:00:01,250 | INFO | a | b | c | ok"\n'
        '2021-07-01,a,"2021-02-30 00:00:01,250 | INFO | a | b | c | no such day"\n')
    got, _ = outcome(gaia.read_logs, tmp_path, caplog, monkeypatch)
    assert "row 2 column 'message time'" in got
    assert_same_read(gaia.read_logs, old_read_logs, tmp_path, caplog, monkeypatch)


def test_real_gaia_run_tables_split_alike(shared_data: Path, monkeypatch, caplog):
    """The run tables go through the same message split: the real sample's faults are unchanged."""
    got, warned = outcome(gaia.read_faults, shared_data / "gaia", caplog, monkeypatch)
    monkeypatch.setattr(gaia, "split_messages", old_split_messages)
    want, want_warned = outcome(gaia.read_faults, shared_data / "gaia", caplog, monkeypatch)
    assert_frame_equal(got, want, check_exact=True)
    assert warned == want_warned and got.height > 17_000


@pytest.mark.parametrize("name", ["now", "", "^t.*$", "a:fits"])
def test_fixed_time_parse_any_column_name(name: str):
    """The fixed parse runs as an expression: a column name that reads like a regex stays a name."""
    col = pl.Series(name, ["2021-07-01 00:00:01,5", None, "2021-07-01 00:00:02"])
    got = c.parse_times(col, "f.csv", "now")
    assert got.name == name and got.to_list() == [1625097601500000, None, 1625097602000000]
    pair = c.parse_time_columns(pl.DataFrame({"a": col, "b": ["1625097601000", None, "1625097602000"]}), ["a", "b"],
                                "f.csv")
    assert pair[0].to_list() == got.to_list() and pair[1].to_list() == [1625097601000000, None, 1625097602000000]


def test_parse_time_columns_names_the_bad_cell():
    df = pl.DataFrame({"start_time": ["2021-07-01 00:00:01", "2021-07-01 00:00:02"],
                       "end_time": ["2021-07-01 00:00:01", "2021-02-30 00:00:02"]})
    with pytest.raises(c.InputError, match=r"f\.csv: row 2 column 'end_time': expected a date-time"):
        c.parse_time_columns(df, ["start_time", "end_time"], "f.csv")


def test_gaia_parent_cycles_cut_alike(tmp_path: Path, caplog, monkeypatch):
    """A 3-span cycle, a 2-span cycle under a root, a self-parent and a deep chain: the walk that
    settles 'no cycle' falls back to the pointer doubling, with the same cuts and warning."""
    rows = [("t1", "a", "c"), ("t1", "b", "a"), ("t1", "c", "b"), ("t2", "r", ""), ("t2", "x", "y"), ("t2", "y", "x"),
            ("t2", "z", "x"), ("t3", "s", "s")] + [("t4", f"d{i}", f"d{i - 1}" if i else "") for i in range(80)]
    lines = [gaia_trace_line(i, *row) for i, row in enumerate(rows)]
    (tmp_path / "trace_table_a_2021-07.csv").write_text("\n".join([GAIA_TRACE_COLUMNS, *lines]) + "\n")
    assert_same_read(gaia.read_traces, old_read_traces, tmp_path, caplog, monkeypatch)
    assert any("sit on a parent cycle (5)" in m for _, m in outcome(gaia.read_traces, tmp_path, caplog, monkeypatch)[1])
    got = gaia.read_traces(tmp_path, 0.0)
    assert got.filter(pl.col("trace_id") == "t4")["parent_id"].null_count() == 1  # 80 levels deep, no cycle


GAIA_TRACE_COLUMNS = "timestamp,host_ip,service_name,trace_id,span_id,parent_id,start_time,end_time,url,status_code,message"


def gaia_trace_line(i: int, trace: str, span: str, parent: str) -> str:
    start = f"2021-07-01 00:00:{i % 60:02d}.{i:06d}"
    return f"1625097600000,0.0.0.1,webservice1,{trace},{span},{parent},{start},{start},/x,200,"


# ------------------------------------------------------------------ MSDS Glances files read together

_GLANCES_HEAD = "now,cpu.user,mem.used,load.cpucore"


def _glances(root: Path, name: str, rows: list[str], head: str = _GLANCES_HEAD) -> None:
    (root / name).write_text(head + "\n" + "".join(r + "\n" for r in rows))


def _glances_rows(start_s: int, n: int, zone: str = " CEST", repeat_every: int = 3) -> list[str]:
    """Seconds as Glances writes them: some repeated, mixed int and float cells."""
    out = []
    for i in range(n):
        s = start_s + i - i // repeat_every  # every third second repeats
        t = f"2019-11-19 12:{s // 60 % 60:02d}:{s % 60:02d}{zone}"
        out.append(f"{t},{(i * 7) % 13 / 3:.3f},{20_000_000_000 + i * 97},{8 if i % 5 else ''}")
    return out


# (name, files as {file name: rows or (head, rows)}, whether the together path takes them)
_LAYOUTS = [
    ("plain", {"wally113_metrics.csv": _glances_rows(0, 40), "wally117_metrics.csv": _glances_rows(5, 30)}, True),
    ("three nodes, one node in two files", {"wally113_metrics.csv": _glances_rows(0, 20),
                                            "wally113_metrics_2.csv": _glances_rows(10, 20),
                                            "wally124_metrics.csv": _glances_rows(3, 25)}, True),
    ("no zone name", {"wally113_metrics.csv": _glances_rows(0, 12, zone=""),
                      "wally117_metrics.csv": _glances_rows(0, 12, zone="")}, True),
    ("zones differ between files", {"wally113_metrics.csv": _glances_rows(0, 12, zone=" CET"),
                                    "wally117_metrics.csv": _glances_rows(0, 12)}, False),
    ("zone changes within a file", {"wally113_metrics.csv": _glances_rows(0, 6) + _glances_rows(6, 6, zone=" CET"),
                                    "wally117_metrics.csv": _glances_rows(0, 12)}, False),
    ("fractional seconds", {"wally113_metrics.csv": [r.replace(" CEST", ".250 CEST", 1) for r in _glances_rows(0, 9)],
                            "wally117_metrics.csv": _glances_rows(0, 9)}, False),
    ("headers differ", {"wally113_metrics.csv": _glances_rows(0, 9),
                        "wally117_metrics.csv": ("now,cpu.user,mem.used", [r.rsplit(",", 1)[0] for r in _glances_rows(0, 9)])},
     False),
    ("a column empty in one file", {"wally113_metrics.csv": _glances_rows(0, 9),
                                    "wally117_metrics.csv": [r.rsplit(",", 1)[0] + "," for r in _glances_rows(0, 9)]},
     False),
    ("a text column", {"wally113_metrics.csv": ("now,cpu.user,host", [f"2019-11-19 12:00:0{i} CEST,{i},a" for i in range(5)]),
                       "wally117_metrics.csv": ("now,cpu.user,host", [f"2019-11-19 12:00:0{i} CEST,{i},b" for i in range(5)])},
     False),
    ("text 'nan' cells and blanks", {"wally113_metrics.csv": [r + "" for r in _glances_rows(0, 6)] + ["2019-11-19 12:00:09 CEST,nan,,1"],
                                     "wally117_metrics.csv": _glances_rows(0, 6)}, True),
    ("a header-only file", {"wally113_metrics.csv": _glances_rows(0, 6), "wally117_metrics.csv": []}, False),
    ("a row without a time", {"wally113_metrics.csv": _glances_rows(0, 6) + [",1.0,2,3"],
                              "wally117_metrics.csv": _glances_rows(0, 6)}, False),
    ("a day that does not exist", {"wally113_metrics.csv": ["2019-02-30 12:00:00 CEST,1,2,3"] + _glances_rows(0, 5),
                                   "wally117_metrics.csv": _glances_rows(0, 6)}, False),
    ("a name with glob characters", {"wally113_metrics[1].csv": _glances_rows(0, 8),
                                     "wally117_metrics*.csv": _glances_rows(0, 8)}, True),
]


@pytest.mark.parametrize("name,files,together", _LAYOUTS, ids=[x[0] for x in _LAYOUTS])
def test_glances_files_read_together_as_one_by_one(tmp_path: Path, monkeypatch, caplog, name, files, together):
    """Read together, the frame, the warnings and the first error are those of the file-by-file read;
    layouts that path handles differently are left to it whole."""
    for file, rows in files.items():
        head, rows = rows if isinstance(rows, tuple) else (_GLANCES_HEAD, rows)
        _glances(tmp_path, file, rows, head)
    one_by_one: list[Path] = []
    real = msds._read_metric_file
    monkeypatch.setattr(msds, "_read_metric_file", lambda p, *a: one_by_one.append(p) or real(p, *a))

    def read(together_: bool):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            try:
                out = msds.read_metrics(tmp_path, 0.0, together=together_)
            except InputError as exc:
                out = str(exc)
        return out, [r.getMessage() for r in caplog.records if r.name.startswith("stages")]

    fast, fast_logs = read(True)
    took_together = not one_by_one
    one_by_one.clear()
    slow, slow_logs = read(False)
    assert took_together == together
    if isinstance(slow, str):
        assert fast == slow
    else:
        assert_frame_equal(fast, slow)
    assert fast_logs == slow_logs


def test_glances_read_together_in_groups_of_bounded_input(tmp_path: Path, monkeypatch):
    """Input past the group size goes to the next query: the frame is the one-by-one frame."""
    for i in range(5):
        _glances(tmp_path, f"wally11{i}_metrics.csv", _glances_rows(i, 30))
    size = (tmp_path / "wally110_metrics.csv").stat().st_size
    monkeypatch.setattr(msds, "_TOGETHER_BYTES", 2 * size + 1)
    assert [len(g) for g in msds._file_groups(sorted(tmp_path.glob("*.csv")))] == [2, 2, 1]
    assert_frame_equal(msds.read_metrics(tmp_path, 0.0), msds.read_metrics(tmp_path, 0.0, together=False))


@pytest.mark.parametrize("where", ["time", "cell", "header", "bom"])
def test_glances_bad_bytes_fail_as_one_by_one(tmp_path: Path, where: str):
    """Bytes that are not UTF-8 (and a byte-order mark) end as the file-by-file read ends them."""
    rows = _glances_rows(0, 6)
    _glances(tmp_path, "wally117_metrics.csv", rows)
    text = (_GLANCES_HEAD + "\n" + "\n".join(rows) + "\n").encode()
    bad = {"time": text.replace(b"12:00:02 CEST", b"12:00:02 CE\xe9T", 1),
           "cell": text.replace(b",8\n", b",8\xe9\n", 1),
           "header": text.replace(b"cpu.user", b"cpu.\xe9user", 1),
           "bom": b"\xef\xbb\xbf" + text}[where]
    (tmp_path / "wally113_metrics.csv").write_bytes(bad)
    out = []
    for together in (True, False):
        try:
            out.append(msds.read_metrics(tmp_path, 0.0, together=together))
        except InputError as exc:
            out.append(str(exc))
    if isinstance(out[1], str):
        assert out[0] == out[1]
    else:
        assert_frame_equal(out[0], out[1])


@pytest.mark.parametrize("block_bytes", [1, 10, 97, 4096, 10**9])
def test_csv_blocks_are_read_csv_in_whole_records(tmp_path: Path, block_bytes: int):
    """Blocks end between records (never inside quotes: quoted newlines and doubled quotes), carry
    the row of their first record, and together are read_csv's frame; a non-ASCII file is read whole."""
    rng = np.random.default_rng(3)
    cells = ['plain', '"two\nlines"', '"a ""quoted"" word"', '""', '"comma, inside"', '"\n"', "x" * 300]
    rows = [f"{i},{rng.choice(cells)},{rng.choice(cells)}" for i in range(800)]
    path = tmp_path / "t.csv"
    path.write_text("n,a,b\n" + "\n".join(rows) + "\n")
    want = c.read_csv(path, ["n", "a", "b"])
    blocks = list(c.csv_blocks(path, ["n", "a", "b"], block_bytes=block_bytes))
    assert_frame_equal(pl.concat([b for _, b in blocks]), want)
    firsts = [first for first, _ in blocks]
    assert firsts == list(np.cumsum([0] + [b.height for _, b in blocks])[:-1])
    assert (len(blocks) > 1) == (block_bytes < path.stat().st_size)
    path.write_text("n,a,b\n" + "\n".join(rows) + "\n1,é,x\n")
    assert len(list(c.csv_blocks(path, ["n", "a", "b"], block_bytes=block_bytes))) == 1
    with pytest.raises(c.InputError, match="missing"):
        list(c.csv_blocks(path, ["n", "zz"], block_bytes=block_bytes))


@pytest.mark.parametrize("bad", ["1,2,3,4", '1,"never closed,2'])
def test_csv_blocks_name_a_malformed_record(tmp_path: Path, bad: str):
    """A malformed record past the first block fails as read_csv fails, naming the file and a row
    at or before the record (the streaming scan reports it with the block that holds it)."""
    rows = [f"{i},a,b" for i in range(5000)]
    rows[3000] = bad
    path = tmp_path / "t.csv"
    path.write_text("n,a,b\n" + "\n".join(rows) + "\n")
    with pytest.raises(c.InputError, match="a well-formed CSV") as whole:
        c.read_csv(path, ["n", "a", "b"])
    with pytest.raises(c.InputError, match="a well-formed CSV") as blocks:
        list(c.csv_blocks(path, ["n", "a", "b"], block_bytes=4096))
    assert str(path) in str(blocks.value)
    row = int(re.search(r"row (\d+) or after", str(blocks.value)).group(1))
    assert 0 < row <= 3001  # the header is row 0
    assert str(whole.value).split(": ")[-1] == str(blocks.value).split(": ")[-1]  # polars' own reason
