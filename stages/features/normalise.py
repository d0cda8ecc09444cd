"""Robust, floored, clipped per-column scaling fitted on the training span only.

Why not a plain z-score: the training span of a real dump holds faults too, so mean and std are
dragged by them, and a channel that is nearly flat in training (an idle service's CPU, a memory
gauge that moves by kilobytes) gets a std so small that any later change becomes |z| ~ 1e5 — one
channel then dominates every reconstruction error and every threshold (seen on the real
TrainTicket chunk: |z| = 87,300). No honest scale alone bounds a fault, though: the idle CPU of
ts-ticketinfo-service goes from 0.001 to 50 under a CPU-load fault, 1e5 spreads by any measure,
hence the clip. The rule here, per column and from observed training cells:

``centre``  the training median (a fault covering less than half the span cannot move it);

``spread``  IQR / 1.349 (equals σ for Gaussian data). When more than half the training steps share
            one value (sparse, bursty or quantised channels: bytes received, error rates) the IQR
            is 0, and the spread falls back to 1.2533 × the mean absolute deviation from the median
            (also σ for Gaussian data), which is positive unless the column is constant;

``scale``   ``max(spread, rel_floor × |centre|, abs_floor)``. The relative floor is unit-free, so it
            means the same for CPU seconds, bytes and latencies: a change of ``rel_floor`` of the
            channel's own typical level is worth at most one unit (default 1 %: a gauge sitting at
            3 GB that moves by kilobytes in training does not turn a 30 MB change into 1e4).
            ``abs_floor`` is in the column's own unit, for features whose unit is known (trace
            error rates, log call counts, latencies); it also gives a column that is exactly
            constant on the training span a scale, so a later change stands out without exploding;

``clip``    the scaled value is clipped to ±``clip`` (default 10). Normal data sits within ±3-4;
            10 leaves a clear margin for anomalies while bounding what one channel can add to a
            squared reconstruction error (≤ 4·clip² per cell), so one saturated channel weighs about
            as much as a hundred normal ones instead of drowning them, and losses stay finite in
            bf16.

A column whose scale is still 0 (constant with a zero centre and no absolute floor) is only
centred (scale 1); the metric matrix drops constant columns before that can happen.

Defaults were checked on development data only (the real TT chunk and the synthetic TT / GAIA
dumps): with them about 3 % of the real chunk's training metric cells sit at the clip (the CPU-load
faults inside its training span), under 0.3 % on the synthetic dumps, and the median of every
training column is 0.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

IQR_TO_SIGMA = 1.349  # IQR of a standard normal
MEANAD_TO_SIGMA = 1.2533  # sqrt(pi / 2): σ / mean absolute deviation of a normal
RULE = (
    "value → clip((value - centre) / scale, -clip, clip); centre = training median; "
    "spread = IQR/1.349, or 1.2533 × mean |value - median| when the IQR is 0; "
    "scale = max(spread, rel_floor × |centre|, abs_floor), or 1 when that is 0; "
    "statistics from observed (non-NaN) cells of training steps (ts < fit_until_ts) only"
)
WHY = (
    "median/IQR: faults inside the training span do not move them; rel_floor: a change of rel_floor × the "
    "channel's own training level is worth at most one unit, whatever the unit (CPU, bytes, latency), so the noise "
    "of a channel flat in training is not blown up; abs_floor: the smallest scale in the column's own unit (also "
    "gives a column constant in training a scale); clip: however far a fault moves a channel (an idle CPU going "
    "from 0.001 to 50 is 1e5 spreads), no value passes ±clip, so one channel cannot dominate a squared error or a "
    "threshold, and losses stay finite"
)


@dataclass(frozen=True)
class ScaleRule:
    """The floors and the clip of one table (see the module docstring)."""

    rel_floor: float = 0.01
    abs_floor: float = 0.0
    clip: float = 10.0

    def describe(self) -> dict:
        return {"rule": RULE, "why": WHY, "rel_floor": self.rel_floor, "abs_floor": self.abs_floor, "clip": self.clip}


@dataclass
class Scaling:
    """Per-column statistics fitted on the training rows only (NaN where a column has no training value)."""

    centre: np.ndarray
    spread: np.ndarray
    scale: np.ndarray
    bound: np.ndarray  # which bound set the scale: "spread", "rel_floor", "abs_floor" or "unit"
    observed: np.ndarray  # observed (non-NaN) training cells per column
    missing_fraction: np.ndarray  # share of training steps without an observation


def _spread(xt: np.ndarray, centre: np.ndarray) -> np.ndarray:
    q25, q75 = np.nanquantile(xt, [0.25, 0.75], axis=0)
    iqr = (q75 - q25) / IQR_TO_SIGMA
    mad = MEANAD_TO_SIGMA * np.nanmean(np.abs(xt - centre), axis=0)
    return np.where(iqr > 0, iqr, mad)


_FIT_COLUMNS = 64  # columns per pass of fit_scaling


def fit_scaling(x: np.ndarray, train_rows: np.ndarray, rule: ScaleRule) -> Scaling:
    """Centre / spread / floored scale per column of ``x`` from the rows where ``train_rows`` holds.

    Wide tables are fitted ``_FIT_COLUMNS`` columns at a time (each column's statistics are its
    own, so the bits are the same): the training rows' copy and its temporaries then stay the
    size of a block, not ~3 copies of the training span (GAIA at 1/10: 283 MB each)."""
    if x.ndim == 2 and x.shape[1] > _FIT_COLUMNS:
        blocks = range(0, x.shape[1], _FIT_COLUMNS)
        return scaling_of_columns([(np.arange(a, min(a + _FIT_COLUMNS, x.shape[1])),
                                    fit_scaling(x[:, a:a + _FIT_COLUMNS], train_rows, rule)) for a in blocks],
                                  x.shape[1])
    xt = x[train_rows]
    n = (~np.isnan(xt)).sum(axis=0)
    rows = max(int(train_rows.sum()), 1)
    centre = np.full(x.shape[1], np.nan)
    spread = np.full(x.shape[1], np.nan)
    seen = n > 0
    if seen.any():
        centre[seen] = np.nanmedian(xt[:, seen], axis=0)
        spread[seen] = _spread(xt[:, seen], centre[seen])
    rel = rule.rel_floor * np.abs(np.nan_to_num(centre))
    candidates = np.stack([np.nan_to_num(spread), rel, np.full_like(rel, rule.abs_floor)])
    scale = candidates.max(axis=0)
    names = np.array(["spread", "rel_floor", "abs_floor"])
    bound = names[candidates.argmax(axis=0)].astype(object)
    unit = ~(scale > 0)
    scale[unit], bound[unit] = 1.0, "unit"
    return Scaling(centre=centre, spread=spread, scale=scale, bound=bound, observed=n,
                   missing_fraction=1.0 - n / rows)


def scaling_of_columns(pieces: list[tuple[np.ndarray, Scaling]], n_columns: int) -> Scaling:
    """One :class:`Scaling` of ``n_columns`` columns from pieces fitted on some of them: each piece
    gives the columns at its indices (every column once)."""
    fields = [f.name for f in dataclasses.fields(Scaling)]
    out = Scaling(**{f: np.empty(n_columns, getattr(pieces[0][1], f).dtype) for f in fields})
    for cols, piece in pieces:
        for f in fields:
            getattr(out, f)[cols] = getattr(piece, f)
    return out


def in_column_blocks(fn, x: np.ndarray, per_column: list[np.ndarray | None], width: int, dtype,
                     out: np.ndarray | None = None) -> np.ndarray:
    """``fn(x[:, block], *per_column[block])`` for blocks of ``width`` columns, gathered into one
    array: a column-wise computation whose temporaries are the size of a block, not of ``x``
    (a 60k × 650 grid is 315 MB per float64 temporary). ``None`` per-column arguments stay None.
    ``out`` (``x`` itself allowed: a block is read before it is written) receives the result; by
    default a new C-ordered array."""
    out = np.empty(x.shape, dtype) if out is None else out
    for a in range(0, x.shape[1], width):
        cols = slice(a, a + width)
        out[:, cols] = fn(x[:, cols], *(None if v is None else np.asarray(v)[cols] for v in per_column))
    return out


_SCALE_COLUMNS = 64  # columns per pass of apply_scaling


def apply_scaling(x: np.ndarray, centre: np.ndarray, scale: np.ndarray, clip: float,
                  order: str = "C") -> np.ndarray:
    """clip((x - centre) / scale) as float32; cells still missing sit at the centre, i.e. 0.
    ``order="F"`` lays a 2-D result out column by column (a table's columns are then its slices)."""
    if x.ndim == 2 and (x.shape[1] > _SCALE_COLUMNS or order == "F") and np.ndim(centre) <= 1 and np.ndim(scale) <= 1:
        return in_column_blocks(lambda xb, c, s: apply_scaling(xb, c, s, clip), x,
                                [np.broadcast_to(centre, x.shape[1:]), np.broadcast_to(scale, x.shape[1:])],
                                _SCALE_COLUMNS, np.float32, out=np.empty(x.shape, np.float32, order=order))
    with np.errstate(invalid="ignore", over="ignore"):
        # (x - centre) / scale with one temporary: each step in the dtype the expression would use
        z = np.subtract(x, centre)
        z = z.astype(np.result_type(z, scale), copy=False)
        np.divide(z, scale, out=z)
    np.nan_to_num(z, copy=False, nan=0.0, posinf=clip, neginf=-clip)
    np.clip(z, -clip, clip, out=z)
    return z.astype(np.float32)


def column_stats(names: list[str], fit: Scaling, idx: np.ndarray, missing: np.ndarray | None = None) -> dict:
    """``{name: {centre, spread, scale, bound, missing_fraction}}`` for columns ``idx`` of ``fit``."""
    miss = fit.missing_fraction if missing is None else missing
    return {names[j]: {"centre": float(np.nan_to_num(fit.centre[j])), "spread": float(np.nan_to_num(fit.spread[j])),
                       "scale": float(fit.scale[j]), "bound": str(fit.bound[j]), "missing_fraction": float(miss[j])}
            for j in idx}


def clipped_share(z: np.ndarray, rows: np.ndarray, clip: float) -> float:
    """Share of the cells in ``rows`` sitting at ±clip (a diagnostic for the stats files)."""
    part = z[rows]
    return float((np.abs(part) >= np.float32(clip)).mean()) if part.size else 0.0
