"""The traces stage's tables from spans in buckets of whole traces: never every span at once.

:func:`stages.features.trace_features.trace_features` holds the dump's spans, their calls and
aggregates together: ~5 GiB for a full GAIA month (issue 11). Here the spans come as buckets
(:func:`stages.formats.read_trace_buckets`) and every step keeps only what it must:

1. each bucket is cleaned (ids checked, repeats dropped) and spilled; its start times are kept as
   runs no more than ``max_gap_s`` apart, so the main body (:func:`drop_stray_spans`) is found
   from the merged runs of every bucket: a time range;
2. each cleaned bucket is read back, cut to that range, and gives its traces' aggregates and
   calls, spilled by time chunk of the step grid; the call graph comes from the summed edge counts;
3. each time chunk's calls give its rows of the per-edge step features, in the one call order
   (:data:`CALL_ORDER`), so the latency means sum as in the whole frame; the scaling is the whole
   path's (:func:`scaled_series`) on the assembled grid, which grows with time, not with spans;
4. the aggregates are written chunk by chunk, each chunk sorted.

Everything decided trace by trace is decided within a bucket, everything else from sums or the
merged runs, so the tables are the whole path's (tested, and the committed dumps read as one
bucket, the whole path itself).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from stages.core.frames import empty
from stages.core.io import write_json, write_parquet
from stages.core.params import SplitParams
from stages.core.splits import grid
from stages.features.chunked import SortedParquet, TimeChunks
from stages.features.metric_matrix import step_us
from stages.features.params import TracesParams
from stages.features.trace_features import (
    AGGREGATE_SCHEMA, CALL_ORDER, EDGE_FEATURES, clean_spans, edge_names, edge_step_features, graph_of,
    scaled_series, service_calls, trace_aggregates, trace_features, with_callers,
)

log = logging.getLogger(__name__)


@dataclass
class TraceTables:
    """What the traces stage reports besides the files (its summary)."""

    spans_read: int = 0
    spans: int = 0
    stray_spans: int = 0
    traces: int = 0
    error_traces: int = 0
    calls: int = 0
    graph: dict = field(default_factory=dict)
    steps: int = 0
    stats: dict = field(default_factory=dict)


def write_trace_tables(buckets: Iterable[pl.DataFrame], out: Path, spill: Path, step_s: float, split: SplitParams,
                       params: TracesParams, source: str | Path | None = None) -> TraceTables:
    """Write ``trace_aggregates.parquet``, ``call_graph.json``, ``trace_series.parquet`` and
    ``trace_stats.json`` into ``out`` from the dump's span buckets, spilling through ``spill`` (an
    empty folder the caller removes). A dump read as one bucket goes the whole-frame way."""
    buckets = iter(buckets)
    first = next(buckets, None)
    second = next(buckets, None) if first is not None else None
    if second is None:  # one bucket (or none): the whole frame is here already
        return _write_whole(first, out, step_s, split, params, source)
    return _write_in_buckets(_chain(first, second, buckets), out, spill, step_s, split, params, source)


def _chain(first: pl.DataFrame, second: pl.DataFrame, rest: Iterable[pl.DataFrame]):
    yield first
    yield second
    yield from rest


def _write_whole(spans: pl.DataFrame | None, out: Path, step_s: float, split: SplitParams, params: TracesParams,
                 source) -> TraceTables:
    spans = empty("traces") if spans is None else spans
    got = trace_features(spans, step_s, split, params.max_gap_s, params.min_edge_count, source=source, params=params)
    agg = got["aggregates"]
    write_parquet(agg, out / "trace_aggregates.parquet")
    _write_rest(got["graph"], got["series"], got["stats"], out)
    return TraceTables(spans_read=spans.height, spans=got["spans"], stray_spans=got["stray_spans"], traces=agg.height,
                       error_traces=int(agg["is_error"].sum()) if agg.height else 0, calls=got["calls"],
                       graph=got["graph"], steps=got["series"].height, stats=got["stats"])


def _write_rest(graph: dict, series: pl.DataFrame, stats: dict, out: Path) -> None:
    write_json(graph, out / "call_graph.json")
    write_parquet(series, out / "trace_series.parquet")
    write_json(stats, out / "trace_stats.json")


def _write_in_buckets(buckets: Iterable[pl.DataFrame], out: Path, spill: Path, step_s: float, split: SplitParams,
                      params: TracesParams, source) -> TraceTables:
    got = TraceTables()
    gap = int(round(params.max_gap_s * 1_000_000))
    cleaned, runs = [], []
    for b, bucket in enumerate(buckets):  # 1. clean, spill, keep the runs of start times
        got.spans_read += bucket.height
        clean = clean_spans(bucket, source)
        del bucket
        if clean.height == 0:
            continue
        path = spill / f"clean_{b:05d}.arrow"
        clean.write_ipc(path, compression="lz4")
        cleaned.append(path)
        runs.append(time_runs(clean["start_ts"].to_numpy(), gap))
    lo, hi, body, total = main_body(runs, gap)
    got.stray_spans = total - body
    if got.stray_spans:
        log.warning("dropped %d stray spans separated from the main body (%d spans) by gaps over %.0f s",
                    got.stray_spans, body, params.max_gap_s)
    step = step_us(step_s)
    g = grid(lo, hi, step_s)
    chunks = TimeChunks(int(g[0]), len(g), step, len(cleaned))
    edge_counts: list[pl.DataFrame] = []
    services: set[str] = set()
    for path in cleaned:  # 2. the body's aggregates and calls, spilled by time chunk
        spans = pl.read_ipc(path).filter(pl.col("start_ts").is_between(lo, hi))
        path.unlink()
        got.spans += spans.height
        services.update(spans["service"].unique().to_list())
        linked = with_callers(spans)
        agg = trace_aggregates(spans, linked)
        got.traces += agg.height
        got.error_traces += int(agg["is_error"].sum())
        chunks.spill(agg, "start_ts", spill / "agg")
        calls = service_calls(spans, with_ids=True, linked=linked)
        del spans, linked
        got.calls += calls.height
        edge_counts.append(calls.group_by(["caller", "callee"]).len())
        chunks.spill(calls, "ts", spill / "calls")
    counts = (pl.concat(edge_counts).group_by(["caller", "callee"]).agg(pl.col("len").sum()) if edge_counts
              else pl.DataFrame(schema={"caller": pl.Utf8, "callee": pl.Utf8, "len": pl.UInt32}))
    got.graph = graph_of(list(services), counts, params.min_edge_count)
    edges = edge_names(got.graph)
    features = {"latency": np.full((len(g), len(edges)), np.nan), "count": np.zeros((len(g), len(edges))),
                "error_rate": np.zeros((len(g), len(edges)))}
    for k, rows in chunks.ranges():  # 3. each chunk's rows of the step features, in the one call order
        calls = chunks.read(spill / "calls", k, CALL_ORDER)
        if calls is None:
            continue  # no call in these steps: the defaults (no latency, count 0, error rate 0) stand
        part = edge_step_features(calls, edges, int(g[rows.start]), len(rows), step)
        for name in EDGE_FEATURES:
            features[name][rows] = part[name]
    series, got.stats = scaled_series(features, g, edges, step_s, split, params)
    got.stats["stray_spans_dropped"] = got.stray_spans
    got.steps = series.height
    with SortedParquet(out / "trace_aggregates.parquet", AGGREGATE_SCHEMA) as table:  # 4. the aggregates
        for k, _ in chunks.ranges():
            table.add(chunks.read(spill / "agg", k, ["start_ts", "trace_id"]))
    _write_rest(got.graph, series, got.stats, out)
    return got


def time_runs(ts: np.ndarray, gap: int) -> np.ndarray:
    """Sorted start times as runs whose consecutive times are at most ``gap`` apart: rows (first, last, spans)."""
    breaks = np.flatnonzero(np.diff(ts) > gap) + 1
    starts, ends = np.r_[0, breaks], np.r_[breaks, len(ts)]
    return np.stack([ts[starts], ts[ends - 1], ends - starts], axis=1).astype(np.int64)


def main_body(runs: list[np.ndarray], gap: int) -> tuple[int, int, int, int]:
    """(first, last, spans, all spans) of the main body: :func:`drop_stray_spans`'s largest segment,
    the earliest on a tie, from the runs of every bucket merged where they are at most ``gap`` apart."""
    every = np.concatenate(runs)
    every = every[np.argsort(every[:, 0], kind="stable")]
    segments: list[list[int]] = []
    for first, last, n in every.tolist():
        if segments and first - segments[-1][1] <= gap:
            segments[-1][1] = max(segments[-1][1], last)
            segments[-1][2] += n
        else:
            segments.append([first, last, n])
    best = max(range(len(segments)), key=lambda i: (segments[i][2], -i))
    first, last, n = segments[best]
    return first, last, n, int(every[:, 2].sum())
