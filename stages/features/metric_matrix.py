"""Metric points → a wide, gap-filled, training-normalised matrix on the dataset's grid.

Also holds the small grid helpers the trace series reuse (scatter onto the grid, bounded
forward fill, training-span statistics), so both tables fill and normalise the same way.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np
import polars as pl

from stages.core.frames import conform
from stages.core.params import SplitParams
from stages.core.splits import grid, train_cutoff_us
from stages.features.params import MetricsParams

log = logging.getLogger(__name__)

METRIC_GAP_FILL = (
    "per step: mean of the finite points inside [ts, ts+step); a missing step is forward-filled from the last "
    "observed step for at most metrics.max_gap_steps steps; longer gaps and leading gaps take the training mean "
    "(0 after z-scoring)"
)
CONSTANT_STD = 1e-12  # a training std at or below this (relative to |mean|) means the channel carries no signal


def step_us(step_s: float) -> int:
    return int(round(step_s * 1_000_000))


def empty_table(columns: list[str] | None = None) -> pl.DataFrame:
    """A table with the grid layout but no rows (a dump without this modality)."""
    return pl.DataFrame(schema={"ts": pl.Int64, **{c: pl.Float32 for c in (columns or [])}})


def scatter_on_grid(t_index: np.ndarray, c_index: np.ndarray, values: np.ndarray, shape: tuple[int, int],
                    fill: float = np.nan) -> np.ndarray:
    """Dense (T, C) float64 array holding ``values`` at (t, c); cells without a value hold ``fill``."""
    out = np.full(shape, fill, dtype=np.float64)
    out[t_index, c_index] = values
    return out


def forward_fill(x: np.ndarray, limit: int | None) -> np.ndarray:
    """Forward-fill NaNs down each column, bridging at most ``limit`` steps (None: unbounded)."""
    if x.size == 0 or (limit is not None and limit <= 0):
        return x.copy()
    t = np.arange(x.shape[0])[:, None]
    last = np.where(~np.isnan(x), t, -1)
    np.maximum.accumulate(last, axis=0, out=last)
    ok = last >= 0
    if limit is not None:
        ok &= (t - last) <= limit
    filled = np.take_along_axis(x, np.where(ok, last, 0), axis=0)
    return np.where(ok, filled, np.nan)


@dataclass
class TrainStats:
    """Per-column statistics fitted on the training rows only."""

    mean: np.ndarray
    std: np.ndarray
    observed: np.ndarray  # number of observed (non-NaN) training cells per column
    missing_fraction: np.ndarray  # share of training steps without an observation


def fit_train_stats(x: np.ndarray, train_rows: np.ndarray) -> TrainStats:
    """Mean / population std of the observed training cells (NaN = not observed)."""
    xt = x[train_rows]
    seen = ~np.isnan(xt)
    n = seen.sum(axis=0)
    safe_n = np.maximum(n, 1)
    vals = np.where(seen, xt, 0.0)
    mean = vals.sum(axis=0) / safe_n
    var = (np.where(seen, xt - mean, 0.0) ** 2).sum(axis=0) / safe_n
    mean = np.where(n > 0, mean, np.nan)
    std = np.where(n > 0, np.sqrt(var), np.nan)
    rows = max(int(train_rows.sum()), 1)
    return TrainStats(mean=mean, std=std, observed=n, missing_fraction=1.0 - n / rows)


def is_constant(stats: TrainStats) -> np.ndarray:
    return stats.std <= CONSTANT_STD * np.maximum(1.0, np.abs(np.nan_to_num(stats.mean)))


def zscore(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(x - mean) / std with remaining gaps at the mean, i.e. 0."""
    z = (x - mean) / std
    return np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def select_channels(names: list[str], params: MetricsParams) -> list[str]:
    keep = names
    if params.include:
        inc = [re.compile(p) for p in params.include]
        keep = [n for n in keep if any(r.search(n) for r in inc)]
    if params.exclude:
        exc = [re.compile(p) for p in params.exclude]
        keep = [n for n in keep if not any(r.search(n) for r in exc)]
    return keep


def metric_matrix(points: pl.DataFrame, step_s: float, split: SplitParams,
                  params: MetricsParams) -> tuple[pl.DataFrame, dict]:
    """Canonical metric points → (``metrics.parquet`` frame, ``metrics_stats.json`` dict).

    The grid covers the selected points' own [min, max] ts; statistics come from grid steps
    with ``ts < train_cutoff_us(grid[0], grid[-1], split)`` only.
    """
    step = step_us(step_s)
    pts = conform(points, "metrics").with_columns(
        (pl.col("entity").fill_null("") + "/" + pl.col("metric").fill_null("")).alias("column"))
    names = select_channels(sorted(pts["column"].unique().to_list()), params)
    pts = pts.filter(pl.col("column").is_in(names) & pl.col("ts").is_not_null())
    stats: dict = {"fit_until_ts": None, "step_s": step_s, "columns": {}, "dropped": [], "gap_fill": METRIC_GAP_FILL}
    if pts.height == 0:
        log.warning("no metric points (after include/exclude): empty metric table")
        return empty_table(), stats

    g = grid(int(pts["ts"].min()), int(pts["ts"].max()), step_s)
    cutoff = train_cutoff_us(int(g[0]), int(g[-1]), split)
    col_index = {n: i for i, n in enumerate(names)}
    finite = pts.filter(pl.col("value").is_not_null() & pl.col("value").is_finite())
    skipped = pts.height - finite.height
    if skipped:
        log.info("%d metric points are null/NaN/inf and count as missing", skipped)
    means = (finite.with_columns(((pl.col("ts") // step) * step).alias("step_ts"))
             .group_by(["step_ts", "column"]).agg(pl.col("value").mean())
             .with_columns(((pl.col("step_ts") - int(g[0])) // step).alias("t"),
                           pl.col("column").replace_strict(col_index, return_dtype=pl.Int64).alias("c")))
    x = scatter_on_grid(means["t"].to_numpy(), means["c"].to_numpy(), means["value"].to_numpy(), (len(g), len(names)))

    train_rows = g < cutoff
    fit = fit_train_stats(x, train_rows)
    no_train = fit.observed == 0
    constant = ~no_train & is_constant(fit)
    keep = ~(no_train | constant)
    for j, name in enumerate(names):
        if no_train[j]:
            stats["dropped"].append({"column": name, "reason": "no finite value in the training span"})
        elif constant[j]:
            stats["dropped"].append({"column": name, "reason": "constant on the training span"})
    if stats["dropped"]:
        log.info("dropped %d of %d metric columns (constant or without training data): %s", len(stats["dropped"]),
                 len(names), ", ".join(d["column"] for d in stats["dropped"][:10]))

    kept = [n for n, k in zip(names, keep) if k]
    filled = forward_fill(x[:, keep], params.max_gap_steps)
    z = zscore(filled, fit.mean[keep], fit.std[keep])
    stats["fit_until_ts"] = cutoff
    stats["columns"] = {
        n: {"mean": float(m), "std": float(s), "missing_fraction": float(mf)}
        for n, m, s, mf in zip(kept, fit.mean[keep], fit.std[keep], fit.missing_fraction[keep])
    }
    frame = pl.DataFrame([pl.Series("ts", g, dtype=pl.Int64)]
                         + [pl.Series(n, z[:, j], dtype=pl.Float32) for j, n in enumerate(kept)])
    return frame, stats
