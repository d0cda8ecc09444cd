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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from stages.core.frames import conform, key_column
from stages.core.memory import require_disk, require_memory
from stages.core.params import SplitParams
from stages.core.splits import grid, train_cutoff_us
from stages.features.normalise import (ScaleRule, Scaling, apply_scaling, clipped_share, column_stats, fit_scaling,
                                      in_column_blocks, scaling_of_columns)
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


_FILL_COLUMNS = 64  # columns per pass of forward_fill


def forward_fill(x: np.ndarray, limit: int | None, seed: np.ndarray | None = None,
                 seed_age: np.ndarray | None = None, in_place: bool = False) -> np.ndarray:
    """Forward-fill NaNs down each column, bridging at most ``limit`` steps (None: unbounded).

    ``seed`` / ``seed_age`` (per column, NaN seed = none) carry the last value observed *before*
    row 0 and how many steps before row 0 it was (>= 1): a stream scored chunk by chunk fills the
    head of a chunk exactly as one long matrix would (:mod:`stages.scoring.features`).
    ``in_place``: the result is written into ``x`` (float64) and returned; no second matrix.
    """
    if x.size == 0 or (limit is not None and limit <= 0):
        return x if in_place else x.copy()
    if x.shape[1] > _FILL_COLUMNS or in_place:  # each pass holds ~5 arrays of its size
        return in_column_blocks(lambda xb, sb, ab: forward_fill(xb, limit, sb, ab), x, [seed, seed_age],
                                _FILL_COLUMNS, np.float64, out=x if in_place else None)
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
    """Columns whose observed training values are all equal (up to float noise); wide tables in
    blocks of columns, so the training rows' copy stays the size of a block."""
    if x.shape[1] > _FILL_COLUMNS:
        return np.concatenate([is_constant(x[:, a:a + _FILL_COLUMNS], train_rows, centre[a:a + _FILL_COLUMNS])
                               for a in range(0, x.shape[1], _FILL_COLUMNS)])
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

    The name is made once per distinct (entity, metric) pair and given to the points by their
    category codes: writing the text per point took ~0.1 s per 1.4 M points (MSDS Glances at full
    size), mapping the pairs in polars 1.2 s per 26 M (GAIA). Null keys take the per-point text
    path (a null reads as empty text)."""
    pts = conform(points, "metrics")
    if pts["entity"].null_count() or pts["metric"].null_count():
        return pts.with_columns((pl.col("entity").cast(pl.Utf8).fill_null("") + "/"
                                 + pl.col("metric").cast(pl.Utf8).fill_null("")).cast(pl.Categorical).alias("column"))
    entities, metrics = (pts[k].unique().cast(pl.Utf8).to_list() for k in ("entity", "metric"))
    e, m = _category_codes(pts["entity"], entities), _category_codes(pts["metric"], metrics)
    n_pairs = len(entities) * len(metrics)
    pair = e.astype(_small_uint(n_pairs))  # the smallest codes that hold every pair: a quarter of Int64's memory
    pair *= len(metrics)
    pair += m.astype(pair.dtype)  # every value is among the names: no -1
    seen = np.zeros(n_pairs, bool)
    seen[pair] = True
    present = np.flatnonzero(seen)
    names = [f"{entities[p // len(metrics)]}/{metrics[p % len(metrics)]}" for p in present.tolist()]
    rank = np.empty(n_pairs, _small_uint(len(names)))
    rank[present[np.argsort(names, kind="stable")]] = np.arange(len(names))
    return pts.with_columns(key_column(sorted(names), rank[pair]).alias("column"))


def _small_uint(n: int) -> np.dtype:
    """The smallest unsigned dtype holding 0 .. n-1."""
    return np.min_scalar_type(max(n - 1, 0))


def _category_codes(col: pl.Series, names: list[str]) -> np.ndarray:
    """Each row's index in ``names`` (a Categorical column), -1 where its value is not among them:
    a lookup on category ids, in the smallest signed dtype that holds the indices."""
    known = pl.Series(names, dtype=pl.Categorical).to_physical().to_numpy()
    phys = col.to_physical().to_numpy()
    lut = np.full(int(max(phys.max(initial=0), known.max(initial=0))) + 1, -1, np.min_scalar_type(-max(len(names), 1)))
    lut[known] = np.arange(len(names))
    return lut[phys]


_STEP_MEAN_ROWS = 2_000_000  # points per pass of step_means: its arrays stay ~50 MB at any dump size


def step_means(finite: pl.DataFrame, col_index: dict[str, int], g0: int, n_steps: int, step: int) -> np.ndarray:
    """(n_steps, C) mean of the finite points of each column inside [ts, ts+step) of the grid from ``g0``;
    NaN where a step has none. ``finite`` holds ``ts``, ``column`` (a key of ``col_index``) and ``value``.

    Each cell's mean is its points' Kahan-compensated sum, taken in row order, over their count:
    the bits polars' ``group_by(...).mean()`` gives where it is repeatable. It was not, run to
    run, once cells held ~20 points (MSDS Glances at 1 Hz on a 20 s grid gave another
    ``metrics.parquet`` in each process), and its hash tables peaked at ~2.7 GB over 26 M GAIA
    points. Points sorted by time (every reader's frame) are taken a slice of whole steps at a time."""
    out = np.full(n_steps * len(col_index), np.nan)
    for part in _whole_step_slices(finite, step):
        if part.height == 0:
            continue
        cell = grid_cells(part["ts"].to_numpy(), _column_codes(part, col_index), g0, step, len(col_index))
        first, count, total = cell_kahan_sums(cell, part["value"].to_numpy())
        out[first] = total / count
    return out.reshape(n_steps, len(col_index))


def _column_codes(df: pl.DataFrame, col_index: dict[str, int]) -> np.ndarray:
    """``col_index`` of each row's ``column`` (Int64); an error names a column it lacks."""
    if df["column"].dtype == pl.Categorical and col_index:
        at = _category_codes(df["column"], list(col_index))
        if not (at < 0).any():
            return np.fromiter(col_index.values(), np.int64, len(col_index))[at]
    return df.select(pl.col("column").replace_strict(col_index, return_dtype=pl.Int64)).to_series().to_numpy()


def grid_cells(ts: np.ndarray, column: np.ndarray, g0: int, step: int, n_columns: int) -> np.ndarray:
    """Flat (step, column) cell of each row on the grid from ``g0``: step * n_columns + column."""
    return (ts // step * step - g0) // step * n_columns + column


def cell_kahan_sums(cell: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cell, count, compensated sum) of each distinct cell, summing its values in row order: the
    bits of polars' group_by mean/sum where that is repeatable (it was not on groups of ~20+ values
    called twice in one process), the same bits every time here.

    Cells are ordered longest first, so at each position within a cell the cells still running
    are a prefix: the loop runs once per position of the longest cell, vectorised across cells."""
    order = np.argsort(cell, kind="stable")
    by_cell = cell[order]
    starts = np.flatnonzero(np.r_[True, by_cell[1:] != by_cell[:-1]])
    count = np.diff(np.r_[starts, len(by_cell)])
    longest = np.argsort(-count, kind="stable")
    starts, count = starts[longest], count[longest]
    ordered = value[order]
    total = ordered[starts]
    carry = np.zeros_like(total)
    running = np.searchsorted(-count, -np.arange(1, int(count.max(initial=1))), side="left")  # cells with count > k
    for k, n in enumerate(running.tolist(), start=1):
        y = ordered[starts[:n] + k] - carry[:n]
        t = total[:n] + y
        carry[:n] = (t - total[:n]) - y
        total[:n] = t
    return by_cell[starts], count, total


def _whole_step_slices(df: pl.DataFrame, step: int, rows: int = _STEP_MEAN_ROWS) -> list[pl.DataFrame]:
    """Row slices of ``df`` of about ``rows`` points that cut only between two grid steps; the
    whole frame when its times are not sorted."""
    if df.height <= rows or df["ts"].null_count() or not df["ts"].is_sorted():
        return [df]
    ts = df["ts"].to_numpy()
    cuts = [0]
    for at in range(rows, len(ts), rows):
        cut = int(np.searchsorted(ts, (ts[at] // step) * step, side="left"))  # first row of row at's step
        if cut > cuts[-1]:
            cuts.append(cut)
    cuts.append(len(ts))
    return [df.slice(a, b - a) for a, b in zip(cuts, cuts[1:])]


def _rows_where(df: pl.DataFrame, keep: pl.Expr) -> pl.DataFrame:
    """``df.filter(keep)``, or ``df`` itself when every row is kept: a filter copies every column
    (26 M GAIA points: ~0.7 GB per copy), and readers' frames usually keep all their rows."""
    mask = df.select(keep.alias("keep")).to_series()
    return df if mask.all() else df.filter(mask)


def metric_matrix(points: pl.DataFrame, step_s: float, split: SplitParams,
                  params: MetricsParams) -> tuple[pl.DataFrame, dict]:
    """Canonical metric points → (``metrics.parquet`` frame, ``metrics_stats.json`` dict).

    The grid covers the selected points' own [min, max] ts; statistics come from grid steps
    with ``ts < train_cutoff_us(grid[0], grid[-1], split)`` only.
    """
    return metric_matrix_parts([points], step_s, split, params)


@dataclass
class PartMeans:
    """One part's step means on its own stretch of the grid (rows from ``g0``): held in ``x``, or
    spilled to ``path`` (``np.save``) and read back when needed."""

    names: list[str]
    g0: int | None  # None: no point with a time
    x: np.ndarray | None
    path: Path | None = None
    steps: int = 0  # rows of the part's stretch

    def held(self, mmap: bool = False) -> np.ndarray | None:
        """The step means; a spilled part's read back (memory-mapped: only the rows sliced are read)."""
        return np.load(self.path, mmap_mode="r" if mmap else None) if self.path is not None else self.x

    def spill(self, path: Path) -> None:
        require_disk(path.parent, self.x.nbytes, "the metrics stage's spilled step means")
        np.save(path, self.x, allow_pickle=False)
        self.path, self.x = path, None


def _part_means(points: pl.DataFrame, step_s: float, params: MetricsParams) -> tuple[PartMeans, int, int, int]:
    """(step means, points null/NaN/inf, min ts, max ts) of one part's selected columns."""
    pts = with_column_names(points)
    names = select_channels(sorted(pts["column"].unique().to_list()), params)
    pts = _rows_where(pts, pl.col("column").is_in(names) & pl.col("ts").is_not_null())
    if pts.height == 0:
        return PartMeans(names, None, None), 0, None, None
    lo, hi = int(pts["ts"].min()), int(pts["ts"].max())
    g = grid(lo, hi, step_s)
    finite = _rows_where(pts, pl.col("value").is_not_null() & pl.col("value").is_finite())
    skipped = pts.height - finite.height
    x = step_means(finite, {n: i for i, n in enumerate(names)}, int(g[0]), len(g), step_us(step_s))
    return PartMeans(names, int(g[0]), x, steps=len(g)), skipped, lo, hi


def on_grid(part: PartMeans, g: np.ndarray, step: int, rows: range | None = None) -> np.ndarray:
    """Rows ``rows`` (default: all) of the whole grid ``g`` of the part's step means, NaN outside
    its stretch; its own array when it covers the whole grid. A spilled part reads only those rows."""
    r0, r1 = (0, len(g)) if rows is None else (rows.start, rows.stop)
    if rows is None and part.g0 is not None and part.g0 == int(g[0]) and part.steps == len(g):
        return part.held()
    out = np.full((r1 - r0, len(part.names)), np.nan)
    if part.g0 is not None:
        p0 = (part.g0 - int(g[0])) // step  # the part's first row on the grid
        a, b = max(r0, p0), min(r1, p0 + part.steps)
        if a < b:
            src = part.held(mmap=True)
            out[a - r0:b - r0] = src[a - p0:b - p0]
            del src
    return out


class CollectedMeans:
    """Every part's step means and the points' time range: held in memory up to ``hold_bytes`` of
    float64, every part spilled under ``spill`` past that (``spill`` None: all held)."""

    def __init__(self, parts: Iterable[pl.DataFrame], step_s: float, params: MetricsParams,
                 spill: Path | None = None, hold_bytes: int | None = None) -> None:
        self.means: list[PartMeans] = []
        self.lo = self.hi = None
        self.skipped = 0
        self.spilled = False
        held = 0
        for points in parts:
            part, bad, p_lo, p_hi = _part_means(points, step_s, params)
            self.means.append(part)
            self.skipped += bad
            if p_lo is not None:
                self.lo, self.hi = (p_lo, p_hi) if self.lo is None else (min(self.lo, p_lo), max(self.hi, p_hi))
            held += part.x.nbytes if part.x is not None else 0
            if spill is not None and hold_bytes is not None and (self.spilled or held > hold_bytes):
                for i, m in enumerate(self.means):
                    if m.x is not None:
                        m.spill(spill / f"means_{i:05d}.npy")
                self.spilled, held = True, 0


@dataclass
class TableLayout:
    """The whole table's grid, columns and training fit, decided before any cell is filled."""

    names: list[str]
    part_cols: list[np.ndarray]  # each part's columns among ``names``
    g: np.ndarray
    step: int
    cutoff: int
    train_rows: np.ndarray
    rule: ScaleRule
    fit: Scaling
    keep: np.ndarray
    stats: dict

    @property
    def kept(self) -> list[str]:
        return [n for n, k in zip(self.names, self.keep) if k]

    @property
    def kept_at(self) -> np.ndarray:  # a kept column's place in the table
        return np.cumsum(self.keep) - 1

    @property
    def cells(self) -> int:  # of the grid, every column
        return len(self.g) * len(self.names)


def empty_stats(step_s: float) -> dict:
    return {"fit_until_ts": None, "step_s": step_s, "normalisation": None, "columns": {}, "dropped": [],
            "gap_fill": METRIC_GAP_FILL}


def table_layout(collected: CollectedMeans, step_s: float, split: SplitParams, params: MetricsParams) -> TableLayout:
    """The grid over every part's points, the training cutoff, each column's fit (part by part)
    and which columns are kept."""
    means, step = collected.means, step_us(step_s)
    names = sorted(n for part in means for n in part.names)
    if len(set(names)) != len(names):
        raise ValueError("metric parts must hold disjoint columns")
    at = {n: j for j, n in enumerate(names)}
    part_cols = [np.array([at[n] for n in part.names], np.int64) for part in means]
    g = grid(collected.lo, collected.hi, step_s)
    cutoff = train_cutoff_us(int(g[0]), int(g[-1]), split)
    if collected.skipped:
        log.info("%d metric points are null/NaN/inf and count as missing", collected.skipped)
    train_rows = g < cutoff
    rule = ScaleRule(rel_floor=params.rel_floor, abs_floor=params.abs_floor, clip=params.clip)
    # statistics of every column, part by part, into whole-table arrays
    pieces = []
    constant = np.zeros(len(names), bool)
    for part, cols in zip(means, part_cols):
        x = on_grid(part, g, step)
        part_fit = fit_scaling(x, train_rows, rule)
        pieces.append((cols, part_fit))
        constant[cols] = ~(part_fit.observed == 0) & is_constant(x, train_rows, part_fit.centre)
        del x
    fit = scaling_of_columns(pieces, len(names))
    del pieces
    no_train = fit.observed == 0
    keep = ~(no_train | constant)
    stats = empty_stats(step_s)
    for j, name in enumerate(names):
        if no_train[j]:
            stats["dropped"].append({"column": name, "reason": "no finite value in the training span"})
        elif constant[j]:
            stats["dropped"].append({"column": name, "reason": "constant on the training span"})
    if stats["dropped"]:
        log.info("dropped %d of %d metric columns (constant or without training data): %s", len(stats["dropped"]),
                 len(names), ", ".join(d["column"] for d in stats["dropped"][:10]))
    return TableLayout(names, part_cols, g, step, cutoff, train_rows, rule, fit, keep, stats)


def finish_stats(layout: TableLayout, clipped_train: float, clipped_after: float) -> dict:
    """The stats file's dict once the table's cells are known (only the training share is stored:
    the stats file must not depend on later steps)."""
    stats, rule = layout.stats, layout.rule
    stats["fit_until_ts"] = layout.cutoff
    stats["normalisation"] = {**rule.describe(), "clipped_share_train": clipped_train}
    log.info("metric cells at ±%g: %.2f%% of training steps, %.2f%% after", rule.clip, 100 * clipped_train,
             100 * clipped_after)
    stats["columns"] = column_stats(layout.names, layout.fit, np.flatnonzero(layout.keep))
    return stats


def metric_matrix_parts(parts: Iterable[pl.DataFrame], step_s: float, split: SplitParams,
                        params: MetricsParams) -> tuple[pl.DataFrame, dict]:
    """:func:`metric_matrix` of points given as parts with disjoint columns (``formats.read_metric_parts``):
    the same table and stats, bit for bit, as of the parts concatenated, since everything here is
    computed column by column. Only each part's step means are kept, never the points of all parts:
    the peak is about 12 bytes per grid cell plus one part (:mod:`stages.features.metric_table`
    writes a table of any size in time chunks)."""
    collected = CollectedMeans(parts, step_s, params)
    if collected.lo is None:
        log.warning("no metric points (after include/exclude): empty metric table")
        return empty_table(), empty_stats(step_s)
    return whole_table(collected, table_layout(collected, step_s, split, params), params)


def whole_table(collected: CollectedMeans, layout: TableLayout, params: MetricsParams) -> tuple[pl.DataFrame, dict]:
    """The table and stats held in memory: each part filled in place, and the table's columns
    slices of one column-major float32 array (at GAIA's size, 1/10: 121k steps × 650 columns,
    each float64 copy of the grid is 630 MB)."""
    means, g, fit, keep, clip = collected.means, layout.g, layout.fit, layout.keep, layout.rule.clip
    kept, kept_at = layout.kept, layout.kept_at
    # the float64 step means and the float32 table exist together: 12 bytes per cell at least
    require_memory(12 * layout.cells, f"a metric grid of {len(g):,} steps × {len(layout.names):,} columns",
                   "datasets.<name>.step_s / datasets.<name>.metrics.include / exclude",
                   "a longer step or fewer columns; 12 bytes per cell")
    z = None
    for i, (part, cols) in enumerate(zip(means, layout.part_cols)):
        part_keep = keep[cols]
        if not part_keep.any():
            means[i] = None
            continue
        x = on_grid(part, g, layout.step)
        means[i] = part = None  # its step means go once filled
        filled = forward_fill(x if part_keep.all() else x[:, part_keep], params.max_gap_steps, in_place=True)
        del x
        mine = cols[part_keep]
        if len(means) == 1:  # its kept columns are the table's, in order: scaled straight into it
            z = apply_scaling(filled, fit.centre[mine], fit.scale[mine], clip, order="F")
        else:
            z = np.empty((len(g), len(kept)), np.float32, order="F") if z is None else z
            z[:, kept_at[mine]] = apply_scaling(filled, fit.centre[mine], fit.scale[mine], clip)
        del filled
    if z is None:
        z = np.empty((len(g), 0), np.float32, order="F")
    stats = finish_stats(layout, clipped_share(z, layout.train_rows, clip), clipped_share(z, ~layout.train_rows, clip))
    frame = pl.DataFrame([pl.Series("ts", g, dtype=pl.Int64)]
                         + [pl.Series(n, z[:, j], dtype=pl.Float32) for j, n in enumerate(kept)])
    return frame, stats
