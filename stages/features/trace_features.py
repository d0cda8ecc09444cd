"""Spans → per-trace aggregates, the call graph, and per-edge latency/count/error series on the grid.

The call graph is discovered from parent→child spans whose services differ; nothing is listed
in code. Series are scaled with training-span statistics only, by the same bounded rule as the
metric matrix (:mod:`stages.features.normalise`), with absolute floors in each feature's own unit
(``traces.abs_floor``: seconds, log1p calls, error fraction) so an edge that was flat in training
(always one call, never an error) gets a sensible scale instead of a near-zero one.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl

from stages.core.errors import InputError
from stages.core.frames import conform
from stages.core.params import SplitParams
from stages.core.splits import grid, train_cutoff_us
from stages.features.metric_matrix import cell_kahan_sums, empty_table, forward_fill, grid_cells, step_us
from stages.features.normalise import ScaleRule, apply_scaling, clipped_share, column_stats, fit_scaling
from stages.features.params import TracesParams
from stages.formats._common import parent_rows, span_ids_unique

log = logging.getLogger(__name__)

EDGE_FEATURES = ("latency", "count", "error_rate")
UNKNOWN_SERVICE = "unknown"
TRACE_GAP_FILL = (
    "per step and edge: latency = mean duration of the callee spans starting in [ts, ts+step), count = calls, "
    "error_rate = erroneous calls / calls; steps without calls: count 0, error_rate 0, latency forward-filled from "
    "the last step with calls, leading gaps the training median; count is log1p-transformed before scaling; "
    "columns without any training observation (latency of an edge first called after the training span) are only "
    "centred (centre 0, scale 1) so every edge keeps its three columns"
)
CALL_ORDER = ["ts", "caller", "callee", "trace_id", "span_id"]  # a total order: (trace, span) ids are unique
AGGREGATE_SCHEMA = {
    "trace_id": pl.Utf8, "root_service": pl.Utf8, "root_operation": pl.Utf8, "start_ts": pl.Int64,
    "duration_s": pl.Float64, "span_count": pl.Int64, "error_count": pl.Int64, "is_error": pl.Boolean,
    "n_services": pl.Int64,
}


def clean_spans(spans: pl.DataFrame, source: str | Path | None = None) -> pl.DataFrame:
    """Canonical spans with ids checked, empty services named, exact duplicates (trace, span) dropped."""
    df = conform(spans, "traces").with_row_index("_row")
    for col in ("trace_id", "span_id", "start_ts"):
        bad = df.filter(pl.col(col).is_null() | (pl.col(col).cast(pl.Utf8) == ""))
        if bad.height:  # named by its ids: the traces stage reads spans in buckets, whose rows are not the dump's
            raise InputError(source, f"span {bad['span_id'][0]!r} of trace {bad['trace_id'][0]!r} column {col}",
                             f"a non-empty {col}", None)
    bad = df.filter(pl.col("duration_s") < 0)
    if bad.height:
        raise InputError(source, f"span {bad['span_id'][0]} of trace {bad['trace_id'][0]} duration_s",
                         "a non-negative duration", float(bad["duration_s"][0]))
    df = df.with_columns(
        pl.when(pl.col("service").is_null() | (pl.col("service").str.strip_chars() == ""))
        .then(pl.lit(UNKNOWN_SERVICE)).otherwise(pl.col("service")).alias("service"),
        pl.col("operation").fill_null(""),
        pl.col("parent_id").replace("", None),
        pl.col("duration_s").fill_null(0.0),
        pl.col("is_error").fill_null(False),
    )
    if span_ids_unique(df) and _in_start_order(df):  # the readers' spans: nothing to drop, already in order
        return df.drop("_row")
    unique = df.sort(["trace_id", "span_id", "start_ts", "_row"]).unique(["trace_id", "span_id"], keep="first",
                                                                          maintain_order=True)
    if unique.height < df.height:
        log.info("dropped %d duplicate spans (same trace_id and span_id)", df.height - unique.height)
    return unique.sort(["start_ts", "trace_id", "span_id"]).drop("_row")


def _in_start_order(spans: pl.DataFrame) -> bool:
    """Whether rows with unique (trace_id, span_id) ids are in (start_ts, trace_id, span_id) order:
    start times never fall, and rows that share one are in id order (text order, as a sort puts them)."""
    if spans.height < 2:
        return True
    step = np.diff(spans["start_ts"].to_numpy())
    if bool((step < 0).any()):
        return False
    tied = np.flatnonzero(step == 0)
    if not tied.size:
        return True
    a, b = spans.select("trace_id", "span_id")[tied], spans.select("trace_id", "span_id")[tied + 1]
    ta, tb, sa, sb = a["trace_id"], b["trace_id"], a["span_id"], b["span_id"]
    return bool(((ta < tb) | ((ta == tb) & (sa < sb))).all())


def drop_stray_spans(spans: pl.DataFrame, max_gap_s: float) -> tuple[pl.DataFrame, int]:
    """Keep the largest body of spans whose consecutive start times are at most ``max_gap_s`` apart."""
    if spans.height == 0:
        return spans, 0
    gap = int(round(max_gap_s * 1_000_000))
    seg = (spans.sort("start_ts", maintain_order=True)
           .with_columns((pl.col("start_ts").diff().fill_null(0) > gap).cum_sum().alias("_segment")))
    sizes = seg.group_by("_segment").len().sort(["len", "_segment"], descending=[True, False])
    main = sizes["_segment"][0]
    kept = seg.filter(pl.col("_segment") == main).drop("_segment")
    dropped = spans.height - kept.height
    if dropped:
        log.warning("dropped %d stray spans separated from the main body (%d spans) by gaps over %.0f s",
                    dropped, kept.height, max_gap_s)
    return kept.sort(["start_ts", "trace_id", "span_id"]), dropped


def with_callers(spans: pl.DataFrame) -> pl.DataFrame:
    """``spans`` with ``caller``: the service of each span's parent in its trace (null: none there).

    With unique (trace, span) ids the parent is found by row (:func:`parent_rows`, a join on one
    hash per id pair) and the rows keep their order; otherwise by a join on the ids, in no
    particular order (every caller of this sorts on a total order after)."""
    if spans.height and span_ids_unique(spans):
        row = pl.Series("_parent", parent_rows(spans))
        return spans.with_columns(pl.when(row >= 0).then(pl.col("service").gather(row.clip(lower_bound=0)))
                                  .alias("caller"))
    parents = spans.select("trace_id", pl.col("span_id").alias("parent_id"), pl.col("service").alias("caller"))
    return spans.join(parents, on=["trace_id", "parent_id"], how="left")


def trace_aggregates(spans: pl.DataFrame, linked: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per trace; the root is the earliest span (then the lowest span id) whose parent is
    null or not in the trace, or the trace's earliest span when none is. ``linked``: this
    function's own ``with_callers(spans)``, when the caller has it already."""
    if spans.height == 0:
        return pl.DataFrame(schema=AGGREGATE_SCHEMA)
    linked = (with_callers(spans) if linked is None else linked).with_columns(
        pl.col("caller").is_null().alias("_root"))
    root = _roots(linked).select("trace_id", pl.col("service").alias("root_service"),
                                 pl.col("operation").alias("root_operation"))
    end = pl.col("start_ts") + (pl.col("duration_s") * 1_000_000).round().cast(pl.Int64)
    agg = spans.group_by("trace_id").agg(
        pl.col("start_ts").min().alias("start_ts"),
        # times the reciprocal: polars' division by a number, but also for a single trace (issue 11: buckets)
        ((end.max() - pl.col("start_ts").min()) * (1 / 1_000_000)).cast(pl.Float64).alias("duration_s"),
        pl.len().cast(pl.Int64).alias("span_count"),
        pl.col("is_error").cast(pl.Int64).sum().alias("error_count"),
        pl.col("service").n_unique().cast(pl.Int64).alias("n_services"),
    )
    out = agg.join(root, on="trace_id", how="left").with_columns((pl.col("error_count") > 0).alias("is_error"))
    return out.select(list(AGGREGATE_SCHEMA)).sort(["start_ts", "trace_id"])


def _roots(linked: pl.DataFrame) -> pl.DataFrame:
    """The first row of each trace in (``_root`` first, start_ts, span_id) order. Rows already in
    start order (the traces stage's) need no sort: each trace's first root row in that order, and
    its first row for a trace without a root (a sort of every span on four keys, issue 11)."""
    if not (span_ids_unique(linked) and _in_start_order(linked)):
        return (linked.sort(["trace_id", "_root", "start_ts", "span_id"], descending=[False, True, False, False])
                .group_by("trace_id", maintain_order=True).first())
    found = linked.filter(pl.col("_root")).group_by("trace_id", maintain_order=True).first()
    rootless = linked.join(found.select("trace_id"), on="trace_id", how="anti")
    if rootless.height == 0:
        return found
    return pl.concat([found, rootless.group_by("trace_id", maintain_order=True).first()])


def service_calls(spans: pl.DataFrame, with_ids: bool = False, linked: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per parent→child span pair across two services: (ts, caller, callee, latency_s, is_error),
    in order of (ts, caller, callee) then the callee's (trace_id, span_id): one order however the spans
    came (the per-step latency means sum in it). ``with_ids`` keeps those two id columns; ``linked``
    is ``with_callers(spans)`` when the caller has it already."""
    linked = (with_callers(spans) if linked is None else linked).filter(
        pl.col("caller").is_not_null() & (pl.col("caller") != pl.col("service")))
    calls = linked.select(pl.col("start_ts").alias("ts"), "caller", pl.col("service").alias("callee"),
                          pl.col("duration_s").alias("latency_s"), "is_error", "trace_id", "span_id")
    calls = calls.sort(CALL_ORDER)
    return calls if with_ids else calls.drop("trace_id", "span_id")


def call_graph(spans: pl.DataFrame, calls: pl.DataFrame, min_edge_count: int = 1) -> dict:
    """``{services, edges, edge_counts}``: edges with at least ``min_edge_count`` calls, sorted."""
    counts = calls.group_by(["caller", "callee"]).len()
    return graph_of(spans["service"].unique().to_list() if spans.height else [], counts, min_edge_count)


def graph_of(services: list[str], counts: pl.DataFrame, min_edge_count: int = 1) -> dict:
    """:func:`call_graph` from the services seen and the calls per (caller, callee) (column ``len``)."""
    counts = counts.sort(["caller", "callee"])
    kept = counts.filter(pl.col("len") >= min_edge_count)
    if kept.height < counts.height:
        log.info("call graph: %d of %d edges have fewer than %d calls and are left out",
                 counts.height - kept.height, counts.height, min_edge_count)
    edges = [[a, b] for a, b in zip(kept["caller"].to_list(), kept["callee"].to_list())]
    return {
        "services": sorted(services),
        "edges": edges,
        "edge_counts": {f"{a}->{b}": int(n) for a, b, n in zip(kept["caller"], kept["callee"], kept["len"])},
    }


def edge_step_features(calls: pl.DataFrame, edges: list[str], g0: int, n_steps: int, step: int
                       ) -> dict[str, np.ndarray]:
    """Unscaled (n_steps, E) ``latency`` (mean callee duration, NaN without calls), ``count`` (log1p calls)
    and ``error_rate`` of each ``caller->callee`` edge on the grid from ``g0``; calls on other edges are ignored.

    The mean latency is each cell's Kahan sum in row order over its count (``cell_kahan_sums``):
    polars' group_by mean gave other bits when called again in one process on cells of a few
    hundred calls, and the same bits as this where it was repeatable."""
    on_edges = (calls.with_columns((pl.col("caller") + "->" + pl.col("callee")).alias("edge"))
                .filter(pl.col("edge").is_in(edges)))
    shape = (n_steps, len(edges))
    count, errors = np.zeros(n_steps * len(edges)), np.zeros(n_steps * len(edges))
    latency = np.full(n_steps * len(edges), np.nan)
    if on_edges.height:
        c = on_edges.select(pl.col("edge").replace_strict({e: i for i, e in enumerate(edges)}, return_dtype=pl.Int64))
        cell = grid_cells(on_edges["ts"].to_numpy(), c.to_series().to_numpy(), g0, step, len(edges))
        first, n, total = cell_kahan_sums(cell, on_edges["latency_s"].cast(pl.Float64).to_numpy())
        count[first], latency[first] = n, total / n
        errors += np.bincount(cell, weights=on_edges["is_error"].fill_null(False).cast(pl.Float64).to_numpy(), minlength=len(errors))
    count, errors, latency = count.reshape(shape), errors.reshape(shape), latency.reshape(shape)
    error_rate = np.divide(errors, count, out=np.zeros_like(errors), where=count > 0)
    return {"latency": latency, "count": np.log1p(count), "error_rate": error_rate}


def trace_series(calls: pl.DataFrame, graph: dict, ts_min: int, ts_max: int, step_s: float,
                 split: SplitParams, params: TracesParams | None = None) -> tuple[pl.DataFrame, dict]:
    """Per-edge latency / count / error_rate on the grid over [ts_min, ts_max], scaled on the training span."""
    g = grid(ts_min, ts_max, step_s)
    edges = edge_names(graph)
    return scaled_series(edge_step_features(calls, edges, int(g[0]), len(g), step_us(step_s)), g, edges, step_s,
                         split, params)


def edge_names(graph: dict) -> list[str]:
    return [f"{a}->{b}" for a, b in graph["edges"]]


def scaled_series(features: dict[str, np.ndarray], g: np.ndarray, edges: list[str], step_s: float,
                  split: SplitParams, params: TracesParams | None = None) -> tuple[pl.DataFrame, dict]:
    """:func:`trace_series` given the unscaled :func:`edge_step_features` on the grid ``g``."""
    params = params or TracesParams()
    cutoff = train_cutoff_us(int(g[0]), int(g[-1]), split)
    stats: dict = {"fit_until_ts": cutoff, "step_s": step_s, "normalisation": {}, "columns": {}, "dropped": [],
                   "centred_only": [], "gap_fill": TRACE_GAP_FILL,
                   "transforms": {"count": "log1p", "latency": "seconds", "error_rate": "fraction"}}
    E = len(edges)
    train_rows = g < cutoff
    # training steps without calls
    missing = 1.0 - (features["count"][train_rows] > 0).sum(axis=0) / max(int(train_rows.sum()), 1)
    z = {}
    stats["normalisation"] = {**ScaleRule(params.rel_floor, 0.0, params.clip).describe(),
                              "abs_floor": {f: getattr(params.abs_floor, f) for f in EDGE_FEATURES}}
    for feat, x in features.items():
        rule = ScaleRule(rel_floor=params.rel_floor, abs_floor=getattr(params.abs_floor, feat), clip=params.clip)
        fit = fit_scaling(x, train_rows, rule)
        no_train = fit.observed == 0
        fit.centre[no_train], fit.scale[no_train], fit.bound[no_train] = 0.0, 1.0, "unit"
        stats["centred_only"] += [f"{edges[j]}/{feat}" for j in np.flatnonzero(fit.bound == "unit")]
        if feat == "latency":
            x = forward_fill(x, None)
        z[feat] = apply_scaling(x, fit.centre, fit.scale, rule.clip)
        stats["columns"].update(column_stats([f"{e}/{feat}" for e in edges], fit, np.arange(E), missing))
    every = np.concatenate(list(z.values()), axis=1)  # only the training share is stored (see metric_matrix)
    stats["normalisation"]["clipped_share_train"] = clipped_share(every, train_rows, params.clip)
    log.info("edge-series cells at ±%g: %.2f%% of training steps, %.2f%% after", params.clip,
             100 * stats["normalisation"]["clipped_share_train"], 100 * clipped_share(every, ~train_rows, params.clip))
    stats["columns"] = dict(sorted(stats["columns"].items()))
    stats["centred_only"].sort()
    series = [pl.Series("ts", g, dtype=pl.Int64)]
    for j, e in enumerate(edges):
        series += [pl.Series(f"{e}/{feat}", z[feat][:, j], dtype=pl.Float32) for feat in EDGE_FEATURES]
    return pl.DataFrame(series), stats


def trace_features(spans: pl.DataFrame, step_s: float, split: SplitParams, max_gap_s: float = 3600.0,
                   min_edge_count: int = 1, source: str | Path | None = None,
                   params: TracesParams | None = None) -> dict:
    """Everything the traces stage writes: aggregates, call graph, series, stats (plus counts for the summary).

    ``params`` carries the scaling knobs (``rel_floor``, ``abs_floor``, ``clip``; defaults when None);
    ``max_gap_s`` and ``min_edge_count`` are passed on their own for the existing callers.
    """
    clean = clean_spans(spans, source)
    body, stray = drop_stray_spans(clean, max_gap_s)
    linked = with_callers(body)
    calls = service_calls(body, linked=linked)
    graph = call_graph(body, calls, min_edge_count)
    if body.height == 0:
        log.warning("no spans: empty trace tables")
        series = empty_table()
        stats = {"fit_until_ts": None, "step_s": step_s, "normalisation": {}, "columns": {}, "dropped": [],
                 "centred_only": [], "gap_fill": TRACE_GAP_FILL}
    else:
        series, stats = trace_series(calls, graph, int(body["start_ts"].min()), int(body["start_ts"].max()),
                                     step_s, split, params)
    stats["stray_spans_dropped"] = stray
    return {"aggregates": trace_aggregates(body, linked), "graph": graph, "series": series, "stats": stats,
            "spans": body.height, "stray_spans": stray, "calls": calls.height}
