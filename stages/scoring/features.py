"""A new dump's grid features, built with the training dataset's frozen state only.

The feature stages' own functions do the work (step means and bounded forward fill of
:mod:`stages.features.metric_matrix`, per-edge series of :mod:`stages.features.trace_features`,
the saved Drain3 miners of :mod:`stages.features.log_templates`), with every statistic taken from
:class:`~stages.scoring.frozen.FrozenState`: the channels, edges and templates are the training
ones, centres/scales/clip are the training ones, and nothing computed here flows back.

Grid: absolute steps ``k = ts // step`` of the training step, so a dump scored in pieces lands on
the same steps as scored whole. Gap fill is carried across pieces (:class:`Carry`), and so are the
spans near the end of a piece, so a span whose parent span lies in the previous piece keeps its
call edge (:func:`carried_parents`). A modality outside its own first..last data step of the dump
(or absent) sits at its training median.
"""
from __future__ import annotations

import logging
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from stages.core.errors import InputError
from stages.core.io import read_json
from stages.features.log_templates import UNKNOWN_SERVICE, clean_logs
from stages.features.metric_matrix import forward_fill, last_observed, step_means, with_column_names
from stages.features.trace_features import clean_spans, edge_step_features, service_calls
from stages.formats import read_modality
from stages.scoring import drift as drift_mod
from stages.scoring.frozen import FrozenState
from stages.windowing.align import EDGE_FEATURES

log = logging.getLogger(__name__)
SCORED_MODALITIES = ("metrics", "traces", "logs")
# Spans carried to the next piece as possible parents: those running within one window of the cut
# (a parent outlives its synchronous children; the window's slack covers clock skew between
# services and spans a piece holds past its metrics' end), at most this many (the latest-ending).
# ~300 bytes each in context.npz.
MAX_CARRIED_PARENTS = 50_000
PARENT_COLUMNS = ("trace_id", "span_id", "service", "end_ts")


@dataclass
class Frames:
    """The new dump read once (canonical frames; None = the dump lacks the modality)."""

    source: str
    metrics: pl.DataFrame | None
    traces: pl.DataFrame | None  # clean spans
    logs: pl.DataFrame | None  # clean log lines

    def span_steps(self, modality: str, step_us: int) -> tuple[int, int] | None:
        """[first, last] absolute grid step holding data of ``modality``."""
        df = getattr(self, modality)
        if df is None or df.height == 0:
            return None
        col = "start_ts" if modality == "traces" else "ts"
        return int(df[col].min()) // step_us, int(df[col].max()) // step_us

    def data_steps(self, step_us: int) -> tuple[int, int] | None:
        """The span a dump is scored over by default: its metrics' (the regular, always-on signal),
        else the union of the other modalities (traces can hold stray spans far off the dump)."""
        m = self.span_steps("metrics", step_us)
        if m is not None:
            return m
        spans = [s for s in (self.span_steps(x, step_us) for x in ("traces", "logs")) if s is not None]
        if not spans:
            return None
        return min(s[0] for s in spans), max(s[1] for s in spans)


def read_frames(fmt: str, dump: Path, offsets) -> Frames:
    """Read the dump's metrics, spans and log lines with the format's reader (faults are not read)."""
    got = {m: read_modality(fmt, dump, m, offsets) for m in SCORED_MODALITIES}
    if all(df is None or df.height == 0 for df in got.values()):
        raise InputError(dump, None, "a dump with metrics, traces or logs to score (it has none)")
    spans = clean_spans(got["traces"], dump) if got["traces"] is not None and got["traces"].height else None
    logs = clean_logs(got["logs"]) if got["logs"] is not None and got["logs"].height else None
    metrics = got["metrics"] if got["metrics"] is not None and got["metrics"].height else None
    return Frames(str(dump), metrics, spans, logs)


def _no_strings() -> np.ndarray:
    return np.zeros(0, "<U1")


@dataclass
class Carry:
    """The last raw value seen before a piece, per metric channel and per edge latency, and its step;
    and the spans of the previous pieces that may still be parents (``parent_*``, see
    :func:`carried_parents`)."""

    metric_value: np.ndarray
    metric_k: np.ndarray
    latency_value: np.ndarray
    latency_k: np.ndarray
    parent_trace_id: np.ndarray = field(default_factory=_no_strings)
    parent_span_id: np.ndarray = field(default_factory=_no_strings)
    parent_service: np.ndarray = field(default_factory=_no_strings)
    parent_end_ts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @classmethod
    def empty(cls, n_metric: int, n_edges: int) -> "Carry":
        return cls(np.full(n_metric, np.nan), np.full(n_metric, -1, np.int64), np.full(n_edges, np.nan),
                   np.full(n_edges, -1, np.int64))

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"carry_{k}": v for k, v in self.__dict__.items()}

    @classmethod
    def from_arrays(cls, z) -> "Carry":
        """Also reads a state saved before parents were carried (it has none)."""
        return cls(**{f.name: np.asarray(z[f"carry_{f.name}"]) for f in dataclasses.fields(cls)
                      if f"carry_{f.name}" in z or not f.name.startswith("parent_")})

    def parents(self) -> pl.DataFrame:
        return pl.DataFrame({c: getattr(self, f"parent_{c}") for c in PARENT_COLUMNS},
                            schema={"trace_id": pl.Utf8, "span_id": pl.Utf8, "service": pl.Utf8, "end_ts": pl.Int64})

    def with_parents(self, parents: pl.DataFrame) -> "Carry":
        cols = {f"parent_{c}": parents[c].to_numpy() for c in PARENT_COLUMNS[:3]}
        cols = {k: v.astype(str) if len(v) else _no_strings() for k, v in cols.items()}
        return dataclasses.replace(self, **cols, parent_end_ts=parents["end_ts"].to_numpy().astype(np.int64))


@dataclass
class StepBlock:
    """Features of steps [k0, k0 + T) in the schema's layout, plus what a report needs."""

    k0: int
    metric: np.ndarray  # (T, C) float32, frozen scaling
    trace: np.ndarray  # (T, E, 3) float32, frozen scaling
    log: np.ndarray  # (T, L) float32 log1p counts
    log_events: np.ndarray  # (N, 3) int64 [t, service index, template index], sorted
    unseen_lines: np.ndarray  # (T,) int64 log lines no saved template matched
    carry: Carry
    drift: dict

    @property
    def n_steps(self) -> int:
        return len(self.metric)


def _in_range(df: pl.DataFrame, col: str, lo_us: int, hi_us: int) -> pl.DataFrame:
    return df.filter((pl.col(col) >= lo_us) & (pl.col(col) < hi_us))


def _outside(span: tuple[int, int] | None, k0: int, T: int, margin: int = 0) -> np.ndarray:
    """Rows of [k0, k0+T) more than ``margin`` steps outside a modality's own [first, last] data steps
    (all of them when the modality is absent). The margin (one window) keeps quiet stretches at a dump's
    edges — no request in the last minute of a chunk — as they are: steps without calls."""
    k = k0 + np.arange(T)
    if span is None:
        return np.ones(T, dtype=bool)
    return (k < span[0] - margin) | (k > span[1] + margin)


def _metric_interval(points: pl.DataFrame) -> float | None:
    """Median over channels of the median spacing (s) of their distinct timestamps."""
    if points.height < 2:
        return None
    per = (points.select("column", "ts").unique().sort(["column", "ts"])
           .group_by("column").agg(pl.col("ts").diff().median().alias("d")))
    d = per["d"].drop_nulls()
    return float(d.median()) / 1e6 if len(d) else None


def metric_block(frozen: FrozenState, frames: Frames, k0: int, T: int, carry: Carry
                 ) -> tuple[np.ndarray, Carry, dict]:
    schema, step = frozen.schema, frozen.step_us
    C = schema.n_metric
    drift: dict = {}
    if frames.metrics is None:
        x = np.full((T, C), np.nan)
        seen: set[str] = set()
        interval = None
    else:
        pts = _in_range(with_column_names(frames.metrics), "ts", k0 * step, (k0 + T) * step)
        seen = set(pts["column"].unique().to_list())
        known = pts.filter(pl.col("column").is_in(schema.metric_channels))
        finite = known.filter(pl.col("value").is_not_null() & pl.col("value").is_finite())
        x = step_means(finite, {c: i for i, c in enumerate(schema.metric_channels)}, k0 * step, T, step)
        interval = _metric_interval(finite)
    age = np.where(carry.metric_k >= 0, k0 - carry.metric_k, 0)
    filled = forward_fill(x, frozen.max_gap_steps, carry.metric_value, age) if C else x
    z = frozen.metric_scaling.apply(filled)
    value, k = last_observed(x, k0, carry.metric_value, carry.metric_k)
    stats = read_json(frozen.paths.features / "metrics_stats.json")
    dropped = [d.get("column") for d in stats.get("dropped") or [] if isinstance(d, dict)]
    drift["metrics"] = drift_mod.metric_drift(seen, schema, ~np.isnan(x).all(axis=0) if T else np.zeros(C, bool),
                                              dropped)
    train_share = _train_observed_share(stats, schema.metric_channels)
    drift["grid"] = drift_mod.grid_drift(schema.step_s, interval, train_share)
    new_carry = dataclasses.replace(carry, metric_value=value, metric_k=k)
    return z, new_carry, drift


def _train_observed_share(stats: dict, channels: list[str]) -> float | None:
    """Median share of training grid steps the model's metric channels had a point in."""
    cols = stats.get("columns") or {}
    miss = [float(cols[n].get("missing_fraction", 0.0)) for n in channels if isinstance(cols.get(n), dict)]
    return 1.0 - float(np.median(miss)) if miss else None


def calls_with_parents(spans: pl.DataFrame, parents: pl.DataFrame) -> pl.DataFrame:
    """:func:`service_calls` of ``spans``, with the carried spans of earlier pieces as parents only."""
    extra = parents.join(spans.select("trace_id", "span_id"), on=["trace_id", "span_id"], how="anti")
    if extra.height == 0:
        return service_calls(spans)
    stubs = extra.select("trace_id", "span_id", "service")  # no parent_id, no start: they add no call themselves
    return service_calls(pl.concat([spans, stubs], how="diagonal"))


def carried_parents(spans: pl.DataFrame | None, parents: pl.DataFrame, cut_us: int, slack_us: int,
                    cap: int = MAX_CARRIED_PARENTS) -> pl.DataFrame:
    """Spans (this piece's and the carried ones) running within ``slack_us`` of ``cut_us`` (started
    before ``cut_us + slack_us``, ended at or after ``cut_us - slack_us``): the possible parents of a
    span of the next piece; the latest-ending ``cap``."""
    frames = [parents]
    if spans is not None and spans.height:
        frames.insert(0, spans.filter(pl.col("start_ts") < cut_us + slack_us).select(
            "trace_id", "span_id", "service",
            (pl.col("start_ts") + (pl.col("duration_s") * 1e6).round().cast(pl.Int64)).alias("end_ts")))
    both = pl.concat(frames, how="vertical_relaxed").unique(["trace_id", "span_id"], keep="first",
                                                            maintain_order=True)
    kept = both.filter(pl.col("end_ts") >= cut_us - slack_us)
    return kept.sort(["end_ts", "trace_id", "span_id"], descending=[True, False, False]).head(cap)


def trace_block(frozen: FrozenState, frames: Frames, k0: int, T: int, carry: Carry
                ) -> tuple[np.ndarray, Carry, dict]:
    schema, step = frozen.schema, frozen.step_us
    edges = [f"{a}->{b}" for a, b in schema.edges]
    E = len(edges)
    out = np.zeros((T, E, len(EDGE_FEATURES)), np.float32)
    parents = carry.parents()
    carry = carry.with_parents(carried_parents(frames.traces, parents, (k0 + T) * step, frozen.window * step))
    if frames.traces is None:
        return out, carry, {"traces": drift_mod.trace_drift({}, [], schema)}
    calls = _in_range(calls_with_parents(frames.traces, parents), "ts", k0 * step, (k0 + T) * step)
    feats = edge_step_features(calls, edges, k0 * step, T, step)
    raw_latency = feats["latency"]
    age = np.where(carry.latency_k >= 0, k0 - carry.latency_k, 0)
    feats["latency"] = forward_fill(raw_latency, None, carry.latency_value, age) if E else raw_latency
    for i, feat in enumerate(EDGE_FEATURES):
        out[:, :, i] = frozen.edge_scaling[feat].apply(feats[feat])
    out[_outside(frames.span_steps("traces", step), k0, T, frozen.window)] = 0.0  # no trace data: training median
    value, k = last_observed(raw_latency, k0, carry.latency_value, carry.latency_k)
    per_edge = calls.group_by(["caller", "callee"]).len()
    edge_calls = {f"{a}->{b}": int(n) for a, b, n in per_edge.iter_rows()}
    services = _in_range(frames.traces, "start_ts", k0 * step, (k0 + T) * step)["service"].unique().to_list()
    new_carry = dataclasses.replace(carry, latency_value=value, latency_k=k)
    return out, new_carry, {"traces": drift_mod.trace_drift(edge_calls, services, schema)}


def log_block(frozen: FrozenState, frames: Frames, k0: int, T: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(log1p counts (T, L), events (N, 3), unseen lines per step (T,), drift)."""
    schema, step = frozen.schema, frozen.step_us
    L = schema.n_log
    counts = np.zeros((T, max(L, 0)), np.float64)
    unseen_steps = np.zeros(T, np.int64)
    events = np.zeros((0, 3), np.int64)
    known = set(frozen.miners.miners) if frozen.miners is not None else set()
    if frames.logs is None:
        fill = np.broadcast_to(frozen.log_fill, (T, L)).astype(np.float32)
        return fill, events, unseen_steps, {"logs": drift_mod.log_drift({}, {}, known)}
    lines = _in_range(frames.logs, "ts", k0 * step, (k0 + T) * step)
    K = len(schema.templates)
    column: dict[str, np.ndarray] = {}  # service → log column of each template id (-1: not its template)
    for j, (svc, k) in enumerate(schema.log_columns):
        column.setdefault(svc, np.full(K, -1, np.int64))[k] = j
    svc_index = {s: i for i, s in enumerate(schema.services)}
    n_lines: dict[str, int] = {}
    n_unmatched: dict[str, int] = {}
    rows = []
    for (service,), part in lines.group_by(["service"], maintain_order=True):
        service = service or UNKNOWN_SERVICE
        t = (part["ts"].to_numpy() // step) - k0
        tid = (frozen.miners.match_many(service, part["message"].to_list()) if frozen.miners is not None
               else np.full(part.height, -1, np.int64))
        n_lines[service] = part.height
        n_unmatched[service] = int((tid < 0).sum())
        np.add.at(unseen_steps, t[tid < 0], 1)
        ok = tid >= 0
        if not ok.any():
            continue
        cols = column[service][tid[ok]] if service in column else np.full(int(ok.sum()), -1, np.int64)
        keep = cols >= 0
        np.add.at(counts, (t[ok][keep], cols[keep]), 1.0)
        if service in svc_index:
            rows.append(np.stack([t[ok], np.full(int(ok.sum()), svc_index[service]), tid[ok]], axis=1))
    if rows:
        ev = np.concatenate(rows).astype(np.int64)
        events = ev[np.lexsort((ev[:, 2], ev[:, 1], ev[:, 0]))]
    feats = np.log1p(counts).astype(np.float32)
    outside = _outside(frames.span_steps("logs", step), k0, T, frozen.window)
    feats[outside] = frozen.log_fill
    return feats, events, unseen_steps, {"logs": drift_mod.log_drift(n_lines, n_unmatched, known)}


def build_block(frozen: FrozenState, frames: Frames, k0: int, k1: int, carry: Carry) -> StepBlock:
    """Features of absolute steps [k0, k1) of the dump, gap fill continued from ``carry``."""
    T = k1 - k0
    metric, carry, drift = metric_block(frozen, frames, k0, T, carry)
    trace, carry, d = trace_block(frozen, frames, k0, T, carry)
    drift.update(d)
    logs, events, unseen, d = log_block(frozen, frames, k0, T)
    drift.update(d)
    drift["missing_modalities"] = [m for m in SCORED_MODALITIES if getattr(frames, m) is None]
    coverage = {}
    for m in SCORED_MODALITIES:
        span = frames.span_steps(m, frozen.step_us)
        coverage[m] = 0.0 if span is None or T == 0 else float((~_outside(span, k0, T)).mean())  # no margin
    drift["coverage"] = coverage
    return StepBlock(k0, metric.astype(np.float32), trace, logs, events, unseen, carry, drift)
