"""Metric points → a wide, gap-filled, training-normalised matrix on the dataset's grid.

Normalisation is :mod:`stages.features.normalise` (training median, robust spread, a floor of
``metrics.rel_floor`` × |median| and ``metrics.abs_floor``, clipped to ±``metrics.clip``), so no
channel can explode however flat it was in training; ``metrics_stats.json`` records the rule, each
column's centre / spread / scale and which bound set the scale. Also holds the small grid helpers
the trace series reuse (scatter onto the grid, bounded forward fill), so both tables fill and
normalise the same way.
"""
from __future__ import annotations

import logging
import re

import numpy as np
import polars as pl

from stages.core.frames import conform
from stages.core.params import SplitParams
from stages.core.splits import grid, train_cutoff_us
from stages.features.normalise import ScaleRule, apply_scaling, clipped_share, column_stats, fit_scaling
from stages.features.params import MetricsParams

log = logging.getLogger(__name__)

METRIC_GAP_FILL = (
    "per step: mean of the finite points inside [ts, ts+step); a missing step is forward-filled from the last "
    "observed step for at most metrics.max_gap_steps steps; longer gaps and leading gaps take the training median "
    "(0 after scaling)"
)
CONSTANT_RANGE = 1e-12  # a training range (max - min) at or below this (relative to |median|) carries no signal


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


def forward_fill(x: np.ndarray, limit: int | None, seed: np.ndarray | None = None,
                 seed_age: np.ndarray | None = None) -> np.ndarray:
    """Forward-fill NaNs down each column, bridging at most ``limit`` steps (None: unbounded).

    ``seed`` / ``seed_age`` (per column, NaN seed = none) carry the last value observed *before*
    row 0 and how many steps before row 0 it was (>= 1): a stream scored chunk by chunk fills the
    head of a chunk exactly as one long matrix would (:mod:`stages.scoring.features`).
    """
    if x.size == 0 or (limit is not None and limit <= 0):
        return x.copy()
    t = np.arange(x.shape[0])[:, None]
    none = np.iinfo(np.int64).min // 2  # "never observed": farther back than any limit
    last = np.where(~np.isnan(x), t, none)
    np.maximum.accumulate(last, axis=0, out=last)
    seeded = np.zeros(x.shape[1], dtype=bool)
    if seed is not None:
        seeded = ~np.isnan(seed)
        last = np.maximum(last, np.where(seeded, -np.asarray(seed_age, np.int64), none)[None, :])
    ok = last > none
    if limit is not None:
        ok &= (t - last) <= limit
    filled = np.take_along_axis(x, np.maximum(last, 0), axis=0)
    if seeded.any():
        filled = np.where(last < 0, np.asarray(seed, np.float64)[None, :], filled)
    return np.where(ok, filled, np.nan)


def last_observed(x: np.ndarray, k0: int, seed: np.ndarray | None = None,
                  seed_k: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per column: the last non-NaN value of ``x`` and its absolute step (row 0 = step ``k0``),
    falling back to ``seed`` / ``seed_k`` (the carry of a previous chunk) where a column has none."""
    C = x.shape[1]
    value = np.full(C, np.nan) if seed is None else np.asarray(seed, np.float64).copy()
    k = np.full(C, -1, np.int64) if seed_k is None else np.asarray(seed_k, np.int64).copy()
    if x.shape[0]:
        seen = ~np.isnan(x)
        any_ = seen.any(axis=0)
        row = x.shape[0] - 1 - np.argmax(seen[::-1], axis=0)
        value[any_] = x[row[any_], np.flatnonzero(any_)]
        k[any_] = k0 + row[any_]
    return value, k


def is_constant(x: np.ndarray, train_rows: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Columns whose observed training values are all equal (up to float noise)."""
    xt = x[train_rows]
    seen = ~np.isnan(xt)
    hi = np.where(seen, xt, -np.inf).max(axis=0, initial=-np.inf)
    lo = np.where(seen, xt, np.inf).min(axis=0, initial=np.inf)
    return seen.any(axis=0) & (hi - lo <= CONSTANT_RANGE * np.maximum(1.0, np.abs(np.nan_to_num(centre))))


def select_channels(names: list[str], params: MetricsParams) -> list[str]:
    keep = names
    if params.include:
        inc = [re.compile(p) for p in params.include]
        keep = [n for n in keep if any(r.search(n) for r in inc)]
    if params.exclude:
        exc = [re.compile(p) for p in params.exclude]
        keep = [n for n in keep if not any(r.search(n) for r in exc)]
    return keep


def with_column_names(points: pl.DataFrame) -> pl.DataFrame:
    """Canonical metric points plus their ``<entity>/<metric>`` column name (Categorical).

    The name is made once per distinct (entity, metric) pair and mapped onto the points by the
    pair's category codes: writing the text per point took ~0.1 s per 1.4 M points (MSDS Glances
    at full size). Null keys take the per-point text path (a null reads as empty text)."""
    pts = conform(points, "metrics")
    if pts["entity"].null_count() or pts["metric"].null_count():
        return pts.with_columns((pl.col("entity").cast(pl.Utf8).fill_null("") + "/"
                                 + pl.col("metric").cast(pl.Utf8).fill_null("")).cast(pl.Categorical).alias("column"))
    pair = pl.col("entity").to_physical().cast(pl.UInt64) * 2**32 + pl.col("metric").to_physical().cast(pl.UInt64)
    pairs = pts.select("entity", "metric", pair.alias("pair")).unique("pair")
    names = dict(zip(pairs["pair"].to_list(),
                     (pairs["entity"].cast(pl.Utf8) + "/" + pairs["metric"].cast(pl.Utf8)).to_list()))
    return pts.with_columns(pair.replace_strict(names, return_dtype=pl.Categorical).alias("column"))


def step_means(finite: pl.DataFrame, col_index: dict[str, int], g0: int, n_steps: int, step: int) -> np.ndarray:
    """(n_steps, C) mean of the finite points of each column inside [ts, ts+step) of the grid from ``g0``;
    NaN where a step has none. ``finite`` holds ``ts``, ``column`` (a key of ``col_index``) and ``value``."""
    means = (finite.with_columns(((pl.col("ts") // step) * step).alias("step_ts"))
             .group_by(["step_ts", "column"]).agg(pl.col("value").mean())
             .with_columns(((pl.col("step_ts") - g0) // step).alias("t"),
                           pl.col("column").replace_strict(col_index, return_dtype=pl.Int64).alias("c")))
    return scatter_on_grid(means["t"].to_numpy(), means["c"].to_numpy(), means["value"].to_numpy(),
                           (n_steps, len(col_index)))


def metric_matrix(points: pl.DataFrame, step_s: float, split: SplitParams,
                  params: MetricsParams) -> tuple[pl.DataFrame, dict]:
    """Canonical metric points → (``metrics.parquet`` frame, ``metrics_stats.json`` dict).

    The grid covers the selected points' own [min, max] ts; statistics come from grid steps
    with ``ts < train_cutoff_us(grid[0], grid[-1], split)`` only.
    """
    step = step_us(step_s)
    pts = with_column_names(points)
    names = select_channels(sorted(pts["column"].unique().to_list()), params)
    pts = pts.filter(pl.col("column").is_in(names) & pl.col("ts").is_not_null())
    stats: dict = {"fit_until_ts": None, "step_s": step_s, "normalisation": None, "columns": {}, "dropped": [],
                   "gap_fill": METRIC_GAP_FILL}
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
    x = step_means(finite, col_index, int(g[0]), len(g), step)

    train_rows = g < cutoff
    rule = ScaleRule(rel_floor=params.rel_floor, abs_floor=params.abs_floor, clip=params.clip)
    fit = fit_scaling(x, train_rows, rule)
    no_train = fit.observed == 0
    constant = ~no_train & is_constant(x, train_rows, fit.centre)
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
    z = apply_scaling(filled, fit.centre[keep], fit.scale[keep], rule.clip)
    stats["fit_until_ts"] = cutoff
    # only the training share is stored: the stats file must not depend on later steps
    stats["normalisation"] = {**rule.describe(), "clipped_share_train": clipped_share(z, train_rows, rule.clip)}
    log.info("metric cells at ±%g: %.2f%% of training steps, %.2f%% after", rule.clip,
             100 * stats["normalisation"]["clipped_share_train"], 100 * clipped_share(z, ~train_rows, rule.clip))
    stats["columns"] = column_stats(names, fit, np.flatnonzero(keep))
    frame = pl.DataFrame([pl.Series("ts", g, dtype=pl.Int64)]
                         + [pl.Series(n, z[:, j], dtype=pl.Float32) for j, n in enumerate(kept)])
    return frame, stats
