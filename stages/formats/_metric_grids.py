"""Metric points ordered as a transpose when no file repeats a time (issue 11).

Each file holds one entity's metric columns over its own time array (its grid). When every file's
times are strictly increasing, the canonical order at any one time (entity, metric; ties in file
order) is one fixed order of all the files' columns, the *slots*: by entity rank, metric rank, file.
The frame is then the slots' values transposed: one row per time, the slots present at that time in
slot order. No key is built and nothing is sorted: GAIA (hundreds of one-series files on one 30 s
grid) and Eadro (chunks of services on the chunk's 1 s grid) cost a copy of their values.

Grids whose time ranges overlap form one *block* on the union of their times, absent cells NaN and
dropped like missing values; blocks whose ranges do not overlap follow one another in time. A union
much sparser than its cells (interleaved grids) is left to the row path of :mod:`._metric_points`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from stages.core.frames import METRIC_SCHEMA, key_column

_BLOCK_ROWS = 2048  # times per transposed stripe: a stripe's rows stay in cache while its slots are written
_MAX_HOLES = 0.25  # absent cells a block may hold, as a share of its present cells


@dataclass
class _Block:
    """One run of overlapping grids: its times and slots (in slot order)."""

    times: np.ndarray  # distinct times, increasing
    e: np.ndarray  # entity rank of each slot
    m: np.ndarray  # metric rank of each slot
    values: list[np.ndarray] | None  # each slot's values (None once copied out)
    rows: list[np.ndarray] | None  # each slot's row among ``times``; None when the block is one grid
    holes: int  # absent cells

    @property
    def size(self) -> int:
        return len(self.times) * len(self.e)

    def fill(self, values: np.ndarray, ts: np.ndarray) -> None:
        """Writes the block's cells (time-major) into ``values`` and ``ts``, then lets go of its inputs."""
        n_t, n_s = len(self.times), len(self.e)
        ts.reshape(n_t, n_s)[:] = self.times[:, None]
        out = values.reshape(n_t, n_s)
        if self.rows is None:  # in stripes of rows: column writes that stay in cache
            for a in range(0, n_t, _BLOCK_ROWS):
                stripe = out[a:a + _BLOCK_ROWS]
                for j, v in enumerate(self.values):
                    stripe[:, j] = v[a:a + _BLOCK_ROWS]
        else:
            out[:] = np.nan
            for j, (rows, v) in enumerate(zip(self.rows, self.values)):
                out[rows, j] = v
        self.values = self.rows = None

    def spread(self, per_slot: np.ndarray, out: np.ndarray) -> None:
        """``out`` (time-major cells) gets each slot's ``per_slot`` value at every time."""
        out.reshape(len(self.times), len(self.e))[:] = per_slot


@dataclass
class GridPlan:
    """The blocks in time order; :meth:`frame` builds the canonical frame from them."""

    blocks: list[_Block]

    def frame(self, entities: list[str], metrics: list[str], missing: int) -> pl.DataFrame:
        """The canonical metric frame; missing/NaN values and absent cells dropped."""
        n = sum(b.size for b in self.blocks)
        values, ts = np.empty(n, np.float64), np.empty(n, np.int64)
        self._each(lambda b, part: b.fill(values[part], ts[part]))
        keep = None
        if missing or any(b.holes for b in self.blocks):
            keep = ~np.isnan(values)
            values, ts = values[keep], ts[keep]
        return pl.DataFrame({
            "ts": pl.Series(ts, dtype=pl.Int64),
            "entity": self._names(entities, "e", keep),
            "metric": self._names(metrics, "m", keep),
            "value": pl.Series(values, dtype=pl.Float64),
        }, schema=METRIC_SCHEMA)

    def _each(self, write) -> None:
        """``write(block, slice)`` for each block and its slice of the cells."""
        start = 0
        for b in self.blocks:
            write(b, slice(start, start + b.size))
            start += b.size

    def _names(self, names: list[str], rank: str, keep: np.ndarray | None) -> pl.Series:
        """The Categorical column of each cell's entity (``rank='e'``) or metric, gathered from ``names``."""
        idx = np.empty(sum(b.size for b in self.blocks), np.min_scalar_type(max(len(names) - 1, 0)))
        self._each(lambda b, part: b.spread(getattr(b, rank), idx[part]))
        if keep is not None:
            idx = idx[keep]
        return key_column(names, idx)


def grid_plan(files: list, grids: list[np.ndarray], e_rank: np.ndarray, m_rank: np.ndarray) -> GridPlan | None:
    """The blocks of ``files`` (MetricPoints' ``_File``s), or None when a file repeats a time or a
    block would be too sparse: then the row path orders them."""
    if any(f.grid is None for f in files):
        return None
    members: dict[int, list[int]] = {}
    for i, f in enumerate(files):
        members.setdefault(f.grid, []).append(i)
    blocks = []
    for group in _overlapping(sorted(members, key=lambda g: int(grids[g][0])), grids):
        block = _block(group, grids, [(i, files[i]) for g in group for i in members[g]], e_rank, m_rank)
        if block is None:
            return None
        blocks.append(block)
    return GridPlan(blocks)


def _overlapping(order: list[int], grids: list[np.ndarray]) -> list[list[int]]:
    """Grids (given by first time) in runs whose time ranges overlap or touch."""
    runs: list[list[int]] = []
    end = None
    for g in order:
        if end is None or int(grids[g][0]) > end:
            runs.append([])
            end = int(grids[g][-1])
        runs[-1].append(g)
        end = max(end, int(grids[g][-1]))
    return runs


def _block(group: list[int], grids: list[np.ndarray], members: list, e_rank: np.ndarray,
           m_rank: np.ndarray) -> _Block | None:
    """The block of one run of grids; None when its union of times leaves too many absent cells."""
    slots = sorted(((int(e_rank[f.entity]), int(m_rank[code]), i, f.grid, v)
                    for i, f in members for code, v in f.columns), key=lambda s: s[:3])
    times = grids[group[0]] if len(group) == 1 else np.unique(np.concatenate([grids[g] for g in group]))
    present = sum(len(grids[s[3]]) for s in slots)
    holes = len(times) * len(slots) - present
    if holes > _MAX_HOLES * present:
        return None
    rows = None
    if len(group) > 1:
        at = {g: np.searchsorted(times, grids[g]) for g in group}
        rows = [at[s[3]] for s in slots]
    return _Block(times, np.array([s[0] for s in slots], np.uint32), np.array([s[1] for s in slots], np.uint32),
                  [s[4] for s in slots], rows, holes)
