"""Long metric points gathered file by file and ordered once, on integer keys (issue 11).

Sorting the long metric frame on its text keys (``ts, entity, metric``) with a stable sort took
most of a metric read and its peak memory. Here each file stays NumPy arrays until the end; names
become the ranks of the sorted distinct names, so integer order is text order.

Ordering works on the files' *rows* (one time of one entity, several metrics): rows are sorted
on ``(ts, entity, first metric)``, and each row's points follow in metric order. That equals
the stable point sort whenever rows sharing a time and entity hold disjoint, non-interleaved
metric sets (one file per entity, or one file per metric as in GAIA). Otherwise (a time repeated
within a file, two files of one entity with the same metric) every point is sorted on one Int64
key ``(ts, entity, metric)``; ties keep file order, then row order, as the old stable sort did.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.ma  # noqa: F401 - polars' Series-from-NumPy imports it on first use (~17 ms inside a read)
import polars as pl

from stages.core.frames import METRIC_SCHEMA, empty, key_column
from stages.formats._metric_grids import grid_plan

_KEY_LIMIT = 2**62  # a composite key must fit an Int64 with room to spare
_MAX_GRIDS = 16  # distinct time arrays among the files for the counting order (_Rows._grid_order)


@dataclass
class _File:
    entity: int  # entity code (first-seen order)
    ts: np.ndarray  # Int64 µs per row (one array object per distinct strictly increasing time array)
    columns: list[tuple[int, np.ndarray]]  # (metric code, Float64 values with NaN for missing)
    grid: int | None  # index of ``ts`` in MetricPoints' grids; None when its times are not strictly increasing
    block: np.ndarray | None = None  # (rows, metrics) C-order array whose columns ``columns`` views, if any


class MetricPoints:
    """Accumulates metric files; :meth:`frame` returns the canonical frame sorted by (ts, entity, metric)."""

    grid_path = True  # False: always the row path (tests compare the two)

    def __init__(self) -> None:
        self._files: list[_File] = []
        self._entities: dict[str, int] = {}  # name → code in first-seen order
        self._metrics: dict[str, int] = {}
        self._missing = 0  # NaN/missing values among the files' cells
        self._grids = _Grids()

    def add(self, entity: str, ts: pl.Series, columns: Mapping[str, pl.Series | np.ndarray], *,
            copy: bool = True) -> int:
        """Points of one file: ``ts`` (Int64 µs, no nulls) and numeric ``columns`` by metric name
        (polars Series, or Float64 NumPy arrays with NaN for missing).

        ``copy=False`` keeps the arrays, or NumPy views of the Series' polars buffers, for a caller
        that holds them until :meth:`frame` anyway (MSDS files read together).
        Missing and NaN values are left out of the frame; returns how many."""
        if ts.null_count():
            raise ValueError("metric times must not be null: drop those rows first")
        # NumPy-owned copies: the file's polars buffers are freed (and reused for the next file) now,
        # and these are handed back to the system once copied out, not held by polars' allocator
        own = _owned if copy else np.asarray
        cols = [(self._metrics.setdefault(name, len(self._metrics)),
                 own(col if isinstance(col, np.ndarray) else col.cast(pl.Float64).to_numpy()))
                for name, col in columns.items()]
        e = self._entities.setdefault(entity, len(self._entities))
        if cols and ts.len():
            grid, t = self._grids.add(ts.cast(pl.Int64).to_numpy())
            self._files.append(_File(e, t, cols, grid))
        missing = sum(_missing(col, v) for col, (_, v) in zip(columns.values(), cols))
        self._missing += missing
        return missing

    def add_rows(self, entity: str, ts: pl.Series, names: list[str], block: np.ndarray) -> int:
        """:meth:`add` of a file given as one C-order (rows, metrics) Float64 ``block`` (NaN for
        missing) whose columns are ``names``, kept without a copy. With ``names`` in text order
        the row path takes each row as it is, where it otherwise copies column by column."""
        files = len(self._files)
        missing = self.add(entity, ts, {n: block[:, j] for j, n in enumerate(names)}, copy=False)
        if len(self._files) > files:  # not a file without rows or columns
            self._files[-1].block = block
        return missing

    def frame(self) -> pl.DataFrame:
        """The canonical metric frame; missing/NaN values dropped."""
        if not self._files:
            return empty("metrics")
        entities, e_rank = _ranks(self._entities)
        metrics, m_rank = _ranks(self._metrics)
        if self.grid_path:
            plan = grid_plan(self._files, self._grids.arrays, e_rank, m_rank)
            if plan is not None:
                self._files, self._grids = [], _Grids()
                return plan.frame(entities, metrics, self._missing)
        rows = _Rows(self._files, e_rank, m_rank)
        self._files = []
        ts, e, m, values = rows.points(len(entities), len(metrics))
        del rows  # its arrays, before the text columns are built
        if self._missing:
            keep = ~np.isnan(values)
            ts, e, m, values = ts[keep], e[keep], m[keep], values[keep]
        return pl.DataFrame({
            "ts": pl.Series(ts, dtype=pl.Int64),
            "entity": key_column(entities, e),
            "metric": key_column(metrics, m),
            "value": pl.Series(values, dtype=pl.Float64),
        }, schema=METRIC_SCHEMA)


def _consecutive_blocks(files: list[_File]) -> np.ndarray | None:
    """The one flat array the files' blocks are, in file order, back to back and filling it (MSDS
    Glances files read together), so that the rows need no copy; None otherwise."""
    owner = files[0].block.base
    if owner is None or owner.ndim != 1 or owner.dtype != np.float64 or not owner.flags.c_contiguous:
        return None
    at = owner.__array_interface__["data"][0]
    end = at + owner.nbytes
    for f in files:
        b = f.block
        if b.base is not owner or not b.flags.c_contiguous or b.__array_interface__["data"][0] != at:
            return None
        at += b.nbytes
    return owner if at == end else None


def _increasing(values: list) -> bool:
    """Strictly increasing."""
    return all(a < b for a, b in zip(values, values[1:]))


def _owned(a: np.ndarray) -> np.ndarray:
    """``a``, or a copy when it views memory NumPy does not own (a polars buffer)."""
    return a if a.flags.owndata else a.copy()


def _missing(col: pl.Series | np.ndarray, values: np.ndarray) -> int:
    """Missing cells of a column: its nulls, and NaN too when it is a float column (ints hold none)."""
    if isinstance(col, np.ndarray) or col.dtype.is_float():
        return int(np.isnan(values).sum())  # nulls are NaN in ``values``
    return col.null_count()


class _Grids:
    """The distinct strictly increasing time arrays among the files: files on one grid share one
    array (GAIA: hundreds of series on one 30 s grid), so only one copy of their times is held."""

    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []
        self._by_ends: dict[tuple[int, int, int], list[int]] = {}  # (rows, first, last) → indices

    def add(self, ts: np.ndarray) -> tuple[int | None, np.ndarray]:
        """(grid index, the shared array) of a file's times; (None, ts) when not strictly increasing."""
        if len(ts) > 1 and not bool(np.all(ts[1:] > ts[:-1])):
            return None, _owned(ts)
        same = self._by_ends.setdefault((len(ts), int(ts[0]), int(ts[-1])), [])
        for g in same:
            if np.array_equal(self.arrays[g], ts):
                return g, self.arrays[g]
        same.append(len(self.arrays))
        self.arrays.append(_owned(ts))
        return len(self.arrays) - 1, self.arrays[-1]


def _ranks(codes: dict[str, int]) -> tuple[list[str], np.ndarray]:
    """Sorted names and the rank of each code (smallest unsigned dtype that fits)."""
    names = sorted(codes)
    rank = np.empty(len(codes), np.min_scalar_type(max(len(names) - 1, 0)))
    for r, name in enumerate(names):
        rank[codes[name]] = r
    return names, rank


class _Rows:
    """All files' rows: per row its time, entity rank, slots (one per metric column, in metric
    order) in one flat array ``values`` with the metric rank of each slot in ``metric``."""

    def __init__(self, files: list[_File], e_rank: np.ndarray, m_rank: np.ndarray):
        n = np.array([len(f.ts) for f in files], np.int64)
        k = np.array([len(f.columns) for f in files], np.int64)
        self.ts = np.concatenate([f.ts for f in files])
        self.e = _runs(e_rank[[f.entity for f in files]], n)
        self.k = _runs(k.astype(np.min_scalar_type(int(k.max()))), n)
        # files whose block (add_rows) holds their columns in rank order: rows that need no reordering
        in_order = [f.block is not None and _increasing([m_rank[code] for code, _ in f.columns]) for f in files]
        shared = _consecutive_blocks(files) if all(in_order) else None
        self.values = shared if shared is not None else np.empty(int((n * k).sum()), np.float64)
        self._file_ranks: list[np.ndarray] = []  # each file's metric ranks, for ``metric`` when it is asked for
        self._rank_dtype = m_rank.dtype
        lo_m, hi_m = np.empty(len(files), m_rank.dtype), np.empty(len(files), m_rank.dtype)
        layouts = set()  # each file's metric ranks: one layout lets rows move as whole blocks
        base = 0
        for i, f in enumerate(files):
            cols = sorted(((m_rank[code], v) for code, v in f.columns), key=lambda c: c[0])
            block = self.values[base:base + n[i] * k[i]].reshape(n[i], k[i])
            if shared is not None:
                pass  # the files' blocks are these rows already
            elif in_order[i]:
                block[:] = f.block  # one contiguous copy
            else:
                for j, (_, v) in enumerate(cols):
                    block[:, j] = v
            ranks = np.array([r for r, _ in cols], m_rank.dtype)
            self._file_ranks.append(ranks)
            lo_m[i], hi_m[i] = ranks[0], ranks[-1]
            layouts.add(ranks.tobytes())
            base += int(n[i] * k[i])
        self.m_lo, self.m_hi = _runs(lo_m, n), _runs(hi_m, n)
        self.file_n, self.file_e, self.file_m = n, e_rank[[f.entity for f in files]], lo_m
        self.layout = ranks if len(layouts) == 1 else None  # the ranks every row holds, if one layout

    @functools.cached_property
    def metric(self) -> np.ndarray:
        """The metric rank of each slot of ``values``; built only where a path reads it (rows that
        all hold one layout of metrics move as whole rows and never do)."""
        out = np.empty(len(self.values), self._rank_dtype)
        base = 0
        for rows, ranks in zip(self.file_n.tolist(), self._file_ranks):
            out[base:base + rows * len(ranks)].reshape(rows, len(ranks))[:] = ranks
            base += rows * len(ranks)
        return out

    def points(self, n_e: int, n_m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(ts, entity rank, metric rank, value) of every slot in (ts, entity, metric) order."""
        found = self._row_order(n_e, n_m)
        if found is False:
            return self._sorted_points(n_e, n_m)
        order, ties = found
        if ties is not None:
            return self._untangled_points(order, ties)
        if order is None:
            return _each(self.ts, self.k), _each(self.e, self.k), self.metric, self.values
        k = self.k[order]
        if self.layout is not None:  # every row holds the same metrics: whole rows move
            width = len(self.layout)
            values = self.values.reshape(-1, width)[order].reshape(-1)
            metric = np.broadcast_to(self.layout, (len(order), width)).reshape(-1)
            return _each(self.ts[order], width), _each(self.e[order], width), metric, values
        if int(k.max()) == 1:  # one metric per row (GAIA files): slots are rows
            values, metric = self.values[order], self.metric[order]
        else:
            slots = self._slots(order, k)
            values, metric = self.values[slots], self.metric[slots]
        return _each(self.ts[order], k), _each(self.e[order], k), metric, values

    def _slots(self, order: np.ndarray, k: np.ndarray) -> np.ndarray:
        """The slot (index into ``values``) of each point when rows come in ``order`` (``k``: their widths)."""
        first = np.cumsum(self.k, dtype=np.int64) - self.k  # first slot of each row
        shift = _each(first[order] - (np.cumsum(k, dtype=np.int64) - k), k)
        return np.arange(len(self.values), dtype=np.int64) + shift

    def _untangled_points(self, order: np.ndarray | None, ties: np.ndarray):
        """Rows in (ts, entity) order where some rows share a (ts, entity) and their metric sets
        overlap (a second repeated within a Glances file): every point stays where its row puts it,
        except those of rows sharing a (ts, entity), which are sorted within their group on
        (metric, arrival): the stable point sort, with a sort of the tied points only."""
        if order is None:
            k = self.k
            ts, e, metric, values = _each(self.ts, k), _each(self.e, k), self.metric.copy(), self.values.copy()
            at = np.flatnonzero(_each(ties, k))  # points of tied rows (a group's points are contiguous)
            slots = at
        elif self.layout is not None:  # whole rows move; a point's slot follows from its row's
            width = len(self.layout)
            k = width
            ts, e = _each(self.ts[order], width), _each(self.e[order], width)
            values = self.values.reshape(-1, width)[order].reshape(-1)
            metric = np.tile(self.layout, len(order))  # written below: a fresh array, not a broadcast view
            tied = np.flatnonzero(ties)[:, None]  # the tied rows' points, without a mask over every point
            at = (tied * width + np.arange(width)).reshape(-1)
            slots = (order[tied].astype(np.int64) * width + np.arange(width)).reshape(-1)
        else:
            k = self.k[order]
            every = self._slots(order, k)
            ts, e = _each(self.ts[order], k), _each(self.e[order], k)
            metric, values = self.metric[every], self.values[every]
            at = np.flatnonzero(_each(ties, k))
            slots = every[at]
        perm = np.lexsort((slots, metric[at], e[at], ts[at]))
        metric[at], values[at] = metric[at][perm], values[at][perm]
        return ts, e, metric, values

    def _row_order(self, n_e: int, n_m: int) -> tuple[np.ndarray | None, np.ndarray | None] | bool:
        """(row permutation or None when already in order, None or a mask over the ordered rows
        of those sharing a (ts, entity) whose metric sets overlap or interleave with another's),
        or False when the Int64 key cannot hold (ts, entity, metric)."""
        lo = int(self.ts.min())
        if (int(self.ts.max()) - lo + 1) * n_e * n_m >= _KEY_LIMIT:
            return False
        key = (self.ts - lo) * n_e
        key += self.e
        key *= n_m
        key += self.m_lo
        order = None
        if not bool(np.all(key[1:] >= key[:-1])):
            order = self._grid_order()
            if order is None:
                order = np.argsort(key, kind="stable")
        if int(self.k.max()) == 1:
            return order, None  # one point per row: the row order is the point order, ties included
        if order is not None:
            key = key[order]
        group = key // n_m  # (ts, entity) of each row
        tied = np.flatnonzero(group[1:] == group[:-1])  # rows followed by one at the same (ts, entity)
        del group
        if tied.size:
            hi = self.m_hi[tied if order is None else order[tied]]
            if bool(np.any(hi >= key[tied + 1] % n_m)):  # their metric sets overlap or interleave
                ties = np.zeros(len(key), bool)
                ties[tied] = True
                ties[tied + 1] = True
                return order, ties
        return order, None

    def _grid_order(self) -> np.ndarray | None:
        """``argsort(key, kind="stable")`` without a comparison sort, when the files' times come from
        a few shared grids (GAIA: hundreds of one-series files every 30 s), each strictly increasing
        within its file; None otherwise. Files ranked (stably) on (entity, first metric), then each
        row placed by counting on its time's rank among the distinct times: rows at one time come
        in file rank, then file order, as the stable sort on (ts, entity, first metric) puts them."""
        starts = np.cumsum(self.file_n) - self.file_n
        grids: list[np.ndarray] = []  # distinct time arrays
        grid_of = np.empty(len(starts), np.int64)
        seen: dict[tuple[int, int, int], list[int]] = {}  # (rows, first, last) → indices into grids
        for f, (a, n) in enumerate(zip(starts.tolist(), self.file_n.tolist())):
            t = self.ts[a:a + n]
            if n > 1 and not bool(np.all(t[1:] > t[:-1])):
                return None
            same = seen.setdefault((n, int(t[0]), int(t[-1])), [])
            g = next((g for g in same if np.array_equal(grids[g], t)), None)
            if g is None:
                if len(grids) == _MAX_GRIDS:
                    return None
                g = len(grids)
                grids.append(t)
                same.append(g)
            grid_of[f] = g
        rank = np.lexsort((self.file_m, self.file_e))
        if len(grids) == 1:  # one grid: at each time every file in rank order, a transpose
            return (starts[rank][None, :] + np.arange(len(grids[0]), dtype=np.int64)[:, None]).reshape(-1)
        times = np.unique(np.concatenate(grids))
        codes = [np.searchsorted(times, t) for t in grids]
        counts = np.zeros(len(times), np.int64)
        for g, c in zip(*np.unique(grid_of, return_counts=True)):
            counts[codes[g]] += c
        cursor = np.cumsum(counts) - counts  # next free place of each time
        del counts
        order = np.empty(len(self.ts), np.int64)
        for f in rank.tolist():
            c = codes[grid_of[f]]
            order[cursor[c]] = np.arange(starts[f], starts[f] + self.file_n[f], dtype=np.int64)
            cursor[c] += 1
        return order

    def _sorted_points(self, n_e: int, n_m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every slot sorted on its own (ts, entity, metric) key; stable, so ties keep arrival order."""
        ts, e = _each(self.ts, self.k), _each(self.e, self.k)
        lo = int(ts.min())
        if (int(ts.max()) - lo + 1) * n_e * n_m < _KEY_LIMIT:
            key = (ts - lo) * n_e
            key += e
            key *= n_m
            key += self.metric
            order = np.argsort(key, kind="stable")
        else:
            keys = pl.DataFrame({"ts": ts, "e": e, "m": self.metric}).with_row_index("i")
            order = keys.sort(["ts", "e", "m"], maintain_order=True)["i"].to_numpy()
        return ts[order], e[order], self.metric[order], self.values[order]


def _runs(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``np.repeat`` for few values with long runs (one per file): a fill per run."""
    out = np.empty(int(counts.sum()), values.dtype)
    start = 0
    for v, c in zip(values, counts.tolist()):
        out[start:start + c] = v
        start += c
    return out


def _each(values: np.ndarray, counts: np.ndarray | int) -> np.ndarray:
    """``np.repeat`` for many values with short runs: a broadcast copy when every run has one length
    (``np.repeat`` copies element by element, several times slower)."""
    if isinstance(counts, np.ndarray):
        if len(counts) == 0 or counts.min() != counts.max():
            return np.repeat(values, counts)
        counts = int(counts[0])
    return np.broadcast_to(values[:, None], (len(values), counts)).reshape(-1)
