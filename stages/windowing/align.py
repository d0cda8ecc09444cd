"""Put the per-modality feature tables of one dataset on one time grid and split it honestly.

Why a separate library: the windows stage is the only place where the modalities meet, so the
common grid, the chronological splits with their purge gaps, and the leakage check against the
normalisation statistics all live here, where they can be tested without DVC.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from stages.core.errors import InputError
from stages.core.memory import require_memory
from stages.core.params import SplitParams

log = logging.getLogger(__name__)
EDGE_FEATURES = ("latency", "count", "error_rate")


@dataclass(frozen=True)
class WindowParams:
    """Sliding windows over the common grid (lengths in grid steps)."""

    length: int = 32
    stride: int = 4
    modalities: tuple[str, ...] = ("metrics", "traces", "logs")
    grid: str = "intersection"  # 'intersection' of the modalities' spans, or 'union' (gaps → training mean)

    def validate(self) -> None:
        if self.length < 2 or self.stride < 1:
            raise InputError("params.yaml", "windows", "length >= 2 and stride >= 1", (self.length, self.stride))
        bad = set(self.modalities) - {"metrics", "traces", "logs"}
        if bad:
            raise InputError("params.yaml", "windows.modalities", "a subset of metrics, traces, logs", sorted(bad))
        if self.grid not in ("intersection", "union"):
            raise InputError("params.yaml", "windows.grid", "'intersection' or 'union'", self.grid)


@dataclass
class Aligned:
    ts: np.ndarray
    metric: np.ndarray
    metric_channels: list[str]
    trace: np.ndarray
    edges: list[tuple[str, str]]
    log: np.ndarray
    log_columns: list[tuple[str, int]]
    labels: np.ndarray
    kinds: np.ndarray
    severity: np.ndarray  # per step: the fault's severity class (synthetic ground truth) or ""
    spans: dict[str, tuple[int, int] | None]  # modality → (first ts, last ts) before alignment


def _span(df: pl.DataFrame | None) -> tuple[int, int] | None:
    if df is None or df.height == 0:
        return None
    return int(df["ts"].min()), int(df["ts"].max())


def common_grid(spans: dict[str, tuple[int, int] | None], step_us: int, how: str) -> np.ndarray:
    present = [s for s in spans.values() if s is not None]
    if not present:
        raise InputError(None, "windows", "at least one modality with data (metrics, traces or logs)")
    if how == "intersection":
        lo, hi = max(s[0] for s in present), min(s[1] for s in present)
        if hi <= lo:
            detail = ", ".join(f"{m}: {s}" for m, s in spans.items() if s)
            raise InputError(None, "datasets.<name>.offsets",
                             f"modalities that overlap in time after the clock offsets (spans in µs: {detail})")
    else:
        lo, hi = min(s[0] for s in present), max(s[1] for s in present)
    return np.arange(lo, hi + step_us, step_us, dtype=np.int64)


def overlap_report(spans: dict[str, tuple[int, int] | None]) -> dict[str, float | None]:
    """Seconds each pair of modalities overlaps, and the fraction of their union."""
    out: dict[str, float | None] = {}
    names = [m for m, s in spans.items() if s is not None]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            (a0, a1), (b0, b1) = spans[a], spans[b]
            inter = max(0, min(a1, b1) - max(a0, b0))
            union = max(a1, b1) - min(a0, b0)
            out[f"{a}~{b}_overlap_s"] = inter / 1e6
            out[f"{a}~{b}_overlap_fraction"] = inter / union if union else 0.0
    return out


def _reindex(df: pl.DataFrame, grid_ts: np.ndarray, columns: list[str], fill: float = 0.0) -> np.ndarray:
    g = pl.DataFrame({"ts": grid_ts})
    joined = g.join(df.select(["ts", *columns]), on="ts", how="left").sort("ts")
    return joined.select(columns).fill_null(fill).fill_nan(fill).to_numpy().astype(np.float32, copy=False)


def _parquet_on_grid(path: Path, grid_ts: np.ndarray, columns: list[str], fill: float = 0.0) -> np.ndarray | None:
    """:func:`_reindex` of a Parquet table of Float32 columns with distinct times, read a row group
    at a time into the one array it returns (the same values and the same column-major layout);
    None for any other table. The metric table at GAIA's full size is 2.9 GiB, and the frame, the
    join and the copies of ``_reindex`` peaked at 3.3 times that (issue 11)."""
    source = pq.ParquetFile(path)
    schema = source.schema_arrow  # built anew on every access
    if any(schema.field(c).type != pa.float32() for c in columns):
        return None
    out = np.zeros((len(grid_ts), len(columns)), np.float32, order="F")  # pages mapped as they are written
    if fill:
        out.fill(fill)
    seen = np.zeros(len(grid_ts), bool)
    for group in range(source.num_row_groups):
        frame = pl.from_arrow(source.read_row_group(group, columns=["ts", *columns]))
        ts = frame["ts"].to_numpy()
        at = np.minimum(np.searchsorted(grid_ts, ts), len(grid_ts) - 1)
        hit = grid_ts[at] == ts if len(grid_ts) else np.zeros(len(ts), bool)
        rows = at[hit]
        if seen[rows].any() or len(np.unique(rows)) < len(rows):
            return None  # a time twice: the join gives that grid step twice, so leave it to the join
        seen[rows] = True
        values = frame.select(columns).to_numpy()  # nulls come as NaN
        del frame
        if not rows.size:
            continue
        if hit.all() and rows[-1] - rows[0] + 1 == len(rows):  # consecutive steps: one slab, in place
            slab = out[rows[0]:rows[-1] + 1]
            slab[:] = values
            np.copyto(slab, np.float32(fill), where=np.isnan(slab))
        else:
            picked = values[hit]
            np.copyto(picked, np.float32(fill), where=np.isnan(picked))
            out[rows] = picked
        del values
    return out


def align(features: Path, step_s: float, params: WindowParams) -> Aligned:
    """Load the feature tables of ``features`` and put them on the common grid."""
    step_us = int(round(step_s * 1e6))
    use = set(params.modalities)
    metrics_path = features / "metrics.parquet"
    # the metric table's times only: its values are read onto the grid below, a row group at a time
    metrics = pl.read_parquet(metrics_path, columns=["ts"]) if "metrics" in use else None
    traces = pl.read_parquet(features / "trace_series.parquet") if "traces" in use else None
    logs = pl.read_parquet(features / "log_counts.parquet") if "logs" in use else None
    metric_cols = [c for c in pl.read_parquet_schema(metrics_path) if c != "ts"] if metrics is not None else []
    log_cols = [c for c in logs.columns if c != "ts"] if logs is not None else []
    graph = json.loads((features / "call_graph.json").read_text()) if traces is not None else {"edges": []}
    edges = [tuple(e) for e in graph.get("edges", [])]
    trace_cols = [f"{a}->{b}/{f}" for a, b in edges for f in EDGE_FEATURES]
    if traces is not None:
        missing = [c for c in trace_cols if c not in traces.columns]
        if missing:
            raise InputError(features / "trace_series.parquet", f"column {missing[0]}",
                             "one latency/count/error_rate column per call-graph edge")
    spans = {
        "metrics": _span(metrics) if metric_cols else None,
        "traces": _span(traces) if trace_cols else None,
        "logs": _span(logs) if log_cols else None,
    }
    grid_ts = common_grid(spans, step_us, params.grid)
    T = len(grid_ts)
    width = len(metric_cols) + len(trace_cols) + len(log_cols)
    require_memory(4 * T * width, f"a common grid of {T:,} steps × {width:,} float32 columns",  # the arrays alone
                   "datasets.<name>.step_s / datasets.<name>.metrics.include / exclude / windows.modalities",
                   "a longer step, fewer metric columns or fewer modalities")
    metric = np.zeros((T, 0), np.float32)
    if metric_cols:
        metric = _parquet_on_grid(metrics_path, grid_ts, metric_cols)
        if metric is None:
            metric = _reindex(pl.read_parquet(metrics_path), grid_ts, metric_cols)
    trace = (_reindex(traces, grid_ts, trace_cols).reshape(T, len(edges), len(EDGE_FEATURES))
             if trace_cols else np.zeros((T, 0, len(EDGE_FEATURES)), np.float32))
    log_arr = np.log1p(_reindex(logs, grid_ts, log_cols)) if log_cols else np.zeros((T, 0), np.float32)
    log_columns = [(c.rsplit("/", 1)[0], int(c.rsplit("/", 1)[1])) for c in log_cols]

    labels_df = pl.read_parquet(features / "labels.parquet")
    g = pl.DataFrame({"ts": grid_ts})
    if "severity" not in labels_df.columns:
        labels_df = labels_df.with_columns(pl.lit("").alias("severity"))
    lab = g.join(labels_df.select("ts", "label", "kind", "severity"), on="ts", how="left").sort("ts")
    labels = lab["label"].fill_null(0).to_numpy().astype(np.int8)
    kinds = lab["kind"].fill_null("").to_numpy().astype(str)
    severity = lab["severity"].fill_null("").to_numpy().astype(str)
    return Aligned(grid_ts, metric, metric_cols, trace.astype(np.float32), edges, log_arr.astype(np.float32),
                   log_columns, labels, kinds, severity, spans)


def fewshot_blocks(train_steps: int, window: int, split: SplitParams) -> list[list[int]]:
    """[start, end) blocks of the few-shot subset inside the training span [0, train_steps).

    ``spread`` lays ``fewshot_blocks`` equal blocks evenly from the first to the last training step,
    so the subset sees every part of the daily cycle instead of one nightly trough; each block
    holds at least one window (fewer, longer blocks when the budget is too small). ``head`` is the
    first ``fewshot_percent`` of the span in one block.
    """
    budget = min(train_steps, max(window, math.ceil(train_steps * split.fewshot_percent / 100.0)))
    n_blocks = 1 if split.fewshot_layout == "head" else max(1, min(split.fewshot_blocks, budget // window))
    length = budget // n_blocks
    if n_blocks == 1:
        return [[0, budget]]
    gap = (train_steps - length * n_blocks) / (n_blocks - 1)
    starts = [int(round(i * (length + gap))) for i in range(n_blocks)]
    return [[s, min(s + length, train_steps)] for s in starts]


def split_ranges(n_steps: int, window: int, split: SplitParams) -> dict[str, list[int]]:
    """Chronological [start, end) step ranges with a purge gap of ``purge_windows`` windows between them.

    ``fewshot`` is the hull of the few-shot blocks (see :func:`fewshot_blocks`, stored apart).
    """
    purge = split.purge_windows * window
    a = int(n_steps * split.train)
    b = int(n_steps * (split.train + split.val))
    ranges = {
        "train": [0, a],
        "val": [min(a + purge, b), b],
        "test": [min(b + purge, n_steps), n_steps],
    }
    for name, (s, e) in ranges.items():
        if e - s < window:
            raise InputError("params.yaml", "split / windows.length",
                             f"split '{name}' to hold at least one window of {window} steps "
                             f"(it has {e - s} of {n_steps} grid steps): use a longer dump, a shorter window "
                             "or other split fractions (per dataset: datasets.<name>.split / .windows)")
    blocks = fewshot_blocks(a, window, split)
    ranges["fewshot"] = [blocks[0][0], blocks[-1][1]]
    return ranges


def check_split_labels(labels: np.ndarray, ranges: dict[str, list[int]],
                       blocks: list[list[int]] | None = None) -> dict[str, dict[str, int]]:
    """Counts per split; refuse a split with no normal step (nothing to learn or calibrate from)."""
    out = {}
    for name, (s, e) in ranges.items():
        lab = (np.concatenate([labels[a:b] for a, b in blocks]) if name == "fewshot" and blocks
               else labels[s:e])
        normal = int((lab == 0).sum())
        if normal == 0:
            key = "split.fewshot_percent" if name == "fewshot" else f"split.{name}"
            raise InputError("params.yaml", key,
                             f"split '{name}' to contain normal (label 0) steps; all {len(lab)} are anomalous — "
                             "give this dataset other fractions (datasets.<name>.split) or a dump with "
                             "fault-free time")
        out[name] = {"steps": int(len(lab)), "anomalous_steps": int(lab.sum()), "normal_steps": normal}
    return out


def check_no_leak(features: Path, grid_ts: np.ndarray, ranges: dict[str, list[int]]) -> None:
    """Normalisation statistics must not have seen the test span (they are fitted per table)."""
    test_start = int(grid_ts[ranges["test"][0]])
    for name in ("metrics_stats.json", "trace_stats.json"):
        path = features / name
        if not path.exists():
            continue
        fit_until = json.loads(path.read_text()).get("fit_until_ts")
        if fit_until is not None and int(fit_until) > test_start:
            raise InputError(path, "fit_until_ts",
                             f"normalisation fitted before the test span starts (≤ {test_start} µs) — "
                             "the modalities' time ranges differ too much; check datasets.<name>.offsets", fit_until)
