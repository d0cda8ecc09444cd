"""Trace features: aggregates, call graph from spans, stray spans, per-edge series and their statistics."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from stages.core.errors import InputError
from stages.core.params import SplitParams, build
from stages.features.params import TracesParams
from stages.features.trace_features import (
    call_graph, clean_spans, drop_stray_spans, service_calls, trace_aggregates, trace_features,
)

S = 1_000_000
SPLIT = SplitParams(train=0.5, val=0.25, test=0.25)
SCHEMA = {"trace_id": pl.Utf8, "span_id": pl.Utf8, "parent_id": pl.Utf8, "service": pl.Utf8, "operation": pl.Utf8,
          "start_ts": pl.Int64, "duration_s": pl.Float64, "is_error": pl.Boolean}

# (trace, span, parent, service, start s, duration s, error)
ROWS = [
    ("t0", "s0", None, "fe", -10_000.0, 1.0, False),  # stray leftovers far before the main body
    ("t0", "s1", "s0", "be", -9_999.5, 0.2, False),
    ("t1", "a", None, "fe", 0.0, 5.0, False),
    ("t1", "b", "a", "be", 1.0, 2.0, True),
    ("t1", "c", "b", "be", 2.0, 1.0, False),  # be → be: a service calling itself is no edge
    ("t1", "d", "c", "db", 3.0, 0.5, False),
    ("t2", "x", "gone", "fe", 12.0, 3.0, False),  # parent not in the trace → root
    ("t2", "y", "x", "be", 13.0, 4.0, False),
    ("t3", "z", None, "fe", 25.0, 1.0, False),
    ("t3", "w", "z", "be", 25.5, 1.0, True),
    ("t3", "v", "z", "be", 26.0, 3.0, False),
    ("t4", "q", None, "fe", 45.0, 1.0, False),
    ("t4", "r", "q", "be", 45.0, 2.0, False),
]


def spans(rows=ROWS) -> pl.DataFrame:
    return pl.DataFrame(
        [(t, s, p, svc, f"op-{s}", int(round(st * S)), d, e) for t, s, p, svc, st, d, e in rows],
        schema=SCHEMA, orient="row")


def raw(series: pl.DataFrame, stats: dict, col: str) -> np.ndarray:
    c = stats["columns"][col]
    return series[col].to_numpy().astype(np.float64) * c["scale"] + c["centre"]


def test_stray_spans_far_from_the_main_body_are_dropped(caplog):
    with caplog.at_level("WARNING"):
        body, dropped = drop_stray_spans(clean_spans(spans()), max_gap_s=3600)
    assert dropped == 2
    assert "t0" not in body["trace_id"].to_list() and body.height == len(ROWS) - 2
    assert "dropped 2 stray spans" in caplog.text
    _, none = drop_stray_spans(clean_spans(spans()), max_gap_s=20_000)
    assert none == 0


def test_trace_aggregates_hand_checked():
    body, _ = drop_stray_spans(clean_spans(spans()), 3600)
    agg = trace_aggregates(body)
    assert agg["trace_id"].to_list() == ["t1", "t2", "t3", "t4"]
    rows = {r["trace_id"]: r for r in agg.iter_rows(named=True)}
    assert rows["t1"] == {"trace_id": "t1", "root_service": "fe", "root_operation": "op-a", "start_ts": 0,
                          "duration_s": 5.0, "span_count": 4, "error_count": 1, "is_error": True, "n_services": 3}
    assert rows["t2"]["root_operation"] == "op-x" and rows["t2"]["duration_s"] == pytest.approx(5.0)
    assert rows["t3"]["duration_s"] == pytest.approx(4.0) and rows["t3"]["error_count"] == 1
    assert rows["t4"]["is_error"] is False and rows["t4"]["n_services"] == 2


def test_call_graph_comes_from_spans_and_ignores_self_calls():
    body, _ = drop_stray_spans(clean_spans(spans()), 3600)
    calls = service_calls(body)
    graph = call_graph(body, calls)
    assert graph == {"services": ["be", "db", "fe"], "edges": [["be", "db"], ["fe", "be"]],
                     "edge_counts": {"be->db": 1, "fe->be": 5}}
    assert call_graph(body, calls, min_edge_count=2)["edges"] == [["fe", "be"]]


def test_edge_series_hand_checked():
    out = trace_features(spans(), 10, SPLIT, max_gap_s=3600)
    series, stats = out["series"], out["stats"]
    assert series["ts"].to_list() == [0, 10 * S, 20 * S, 30 * S, 40 * S]
    assert series.columns[1:4] == ["be->db/latency", "be->db/count", "be->db/error_rate"]
    assert series.columns[4:] == ["fe->be/latency", "fe->be/count", "fe->be/error_rate"]
    assert all(series.schema[c] == pl.Float32 for c in series.columns[1:])
    assert stats["fit_until_ts"] == 20 * S and stats["stray_spans_dropped"] == 2
    # fe→be: step 0 one erroneous 2 s call; step 10 one 4 s call; step 20 two calls (1 s error, 3 s);
    # step 30 none (latency forward-filled); step 40 one 2 s call
    np.testing.assert_allclose(raw(series, stats, "fe->be/latency"), [2, 4, 2, 2, 2], rtol=1e-6)
    np.testing.assert_allclose(raw(series, stats, "fe->be/count"), np.log1p([1, 1, 2, 0, 1]), atol=1e-6)
    np.testing.assert_allclose(raw(series, stats, "fe->be/error_rate"), [1, 0, 0.5, 0, 0], atol=1e-6)
    # training steps 0 and 10: latency 2, 4 → median 3, IQR 2.5..3.5 → scale 1 / 1.349
    assert stats["columns"]["fe->be/latency"] == {"centre": 3.0, "spread": pytest.approx(1 / 1.349),
                                                  "scale": pytest.approx(1 / 1.349), "bound": "spread",
                                                  "missing_fraction": 0.0}
    assert stats["columns"]["fe->be/error_rate"]["centre"] == pytest.approx(0.5)
    # a column constant on the training span (one call per step) takes the feature's absolute floor
    assert stats["columns"]["fe->be/count"] == {"centre": pytest.approx(np.log1p(1)), "spread": 0.0, "scale": 0.5,
                                                "bound": "abs_floor", "missing_fraction": 0.0}
    assert stats["centred_only"] == []
    # be->db: a single training call of 0.5 s → scale = 1 % of it; forward-filled, so always at the centre
    assert stats["columns"]["be->db/latency"]["bound"] == "rel_floor"
    np.testing.assert_allclose(series["be->db/latency"].to_numpy(), 0.0)
    assert stats["transforms"]["count"] == "log1p"


def test_series_statistics_ignore_the_test_span():
    changed = [r if r[1] != "r" else (*r[:5], 100.0, True) for r in ROWS]  # the step-40 call only
    a = trace_features(spans(), 10, SPLIT)
    b = trace_features(spans(changed), 10, SPLIT)
    assert a["stats"] == b["stats"]
    train = pl.col("ts") < a["stats"]["fit_until_ts"]
    assert a["series"].filter(train).equals(b["series"].filter(train))
    assert not a["series"].equals(b["series"])


def test_duplicate_spans_and_input_order_do_not_change_anything():
    a = trace_features(spans(), 10, SPLIT)
    b = trace_features(spans(ROWS[::-1] + ROWS[3:6]), 10, SPLIT)
    assert a["series"].equals(b["series"]) and a["aggregates"].equals(b["aggregates"]) and a["graph"] == b["graph"]


def test_blank_service_and_null_error_flag_are_handled():
    rows = [("t", "a", None, "fe", 0.0, 1.0, None), ("t", "b", "a", "", 0.5, 0.2, None)]
    out = trace_features(spans(rows), 10, SPLIT)
    assert out["graph"]["edges"] == [["fe", "unknown"]]
    assert out["aggregates"]["error_count"].to_list() == [0]


def test_bad_spans_are_named_by_their_ids():
    rows = list(ROWS)
    rows[4] = (None, *rows[4][1:])
    with pytest.raises(InputError, match=r"dump/spans: span .c. of trace None column trace_id: expected a non-empty trace_id"):
        trace_features(spans(rows), 10, SPLIT, source="dump/spans")
    rows = list(ROWS)
    rows[3] = (*rows[3][:5], -1.0, False)
    with pytest.raises(InputError, match="non-negative duration"):
        trace_features(spans(rows), 10, SPLIT)
    with pytest.raises(InputError, match="traces.max_gap_s"):
        build(TracesParams, {"max_gap_s": 0}, where="traces")
    with pytest.raises(InputError, match=r"traces.abs_floor.count: expected a non-negative number"):
        build(TracesParams, {"abs_floor": {"count": -1}}, where="traces")
    with pytest.raises(InputError, match="traces.abs_floor.latncy"):
        build(TracesParams, {"abs_floor": {"latncy": 0.01}}, where="traces")


def test_no_spans_give_empty_tables():
    out = trace_features(spans([]), 10, SPLIT)
    assert out["series"].height == 0 and out["aggregates"].height == 0
    assert out["graph"] == {"services": [], "edges": [], "edge_counts": {}}


def test_edge_latency_means_are_row_order_kahan_means_every_call():
    """Several hundred calls per (step, edge): each mean is the compensated sum in row order over the
    count, the same bits on every call (polars' group_by mean gave other bits on a second call)."""
    from stages.features.trace_features import edge_step_features

    rng = np.random.default_rng(3)
    n = 20_000
    calls = pl.DataFrame({"ts": np.sort(rng.integers(0, 600, n)) * 1_000_000, "caller": rng.choice(["a", "b"], n),
                          "callee": ["c"] * n, "latency_s": rng.lognormal(-3, 1.5, n), "is_error": rng.random(n) < 0.05})
    step = 60_000_000
    runs = [edge_step_features(calls, ["a->c", "b->c"], 0, 10, step) for _ in range(3)]
    cells: dict = {}
    for t, a, v, err in zip(calls["ts"], calls["caller"], calls["latency_s"], calls["is_error"]):
        cells.setdefault((t // step, 0 if a == "a" else 1), []).append((v, err))
    latency, count, errors = np.full((10, 2), np.nan), np.zeros((10, 2)), np.zeros((10, 2))
    for (k, c), vs in cells.items():
        total, carry = vs[0][0], 0.0
        for v, _ in vs[1:]:
            y = v - carry
            t = total + y
            carry = (t - total) - y
            total = t
        latency[k, c], count[k, c], errors[k, c] = total / len(vs), len(vs), sum(e for _, e in vs)
    for run in runs:
        assert np.array_equal(run["latency"].view(np.int64), latency.view(np.int64))
        assert np.array_equal(run["count"], np.log1p(count)) and np.array_equal(run["error_rate"], errors / count)
