"""The metrics stage's table written a chunk of time steps at a time (issue 11: bounded memory at any grid).

:func:`~stages.features.metric_matrix.metric_matrix_parts` holds the whole grid, ~12 bytes per
cell (the float64 step means and the float32 table): GAIA at full size on a 10 s grid (6,500
series × 120,958 steps) peaked at 7.0 GB. Here the parts' step means are spilled to ``.npy``
files once they pass :data:`MEANS_HOLD_BYTES`; the columns are fitted part by part on the training
rows as before (one part's means in memory at a time); then the table is filled, scaled and
written a chunk of rows at a time, one Parquet row group per chunk. Each chunk's forward fill
starts from the last value observed before it and how many steps back it was (``forward_fill``'s
seed), so every cell has the bits the whole table gives it.

A table that fits (nothing spilled, grid under :data:`WHOLE_BYTES` at 12 bytes per cell) is made
whole and written by ``write_parquet``: the bytes the stage wrote before.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from stages.core.io import atomic_path, write_parquet
from stages.core.memory import require_memory
from stages.core.params import SplitParams
from stages.features.metric_matrix import (CollectedMeans, TableLayout, empty_stats, empty_table, finish_stats,
                                           forward_fill, last_observed, on_grid, table_layout, whole_table)
from stages.features.normalise import apply_scaling
from stages.features.params import MetricsParams

log = logging.getLogger(__name__)

MEANS_HOLD_BYTES = 256 * 2**20  # float64 step means held in memory; past that every part is spilled
WHOLE_BYTES = 768 * 2**20  # a grid under this (12 bytes per cell) is made whole and written as one frame
CHUNK_BYTES = 128 * 2**20  # float32 cells of one chunk of rows (one row group)


@dataclass
class MetricTable:
    """What :func:`write_metric_table` wrote."""

    stats: dict
    steps: int
    columns: int
    ts_min: int | None
    ts_max: int | None
    row_groups: int  # 0: made whole and written as one frame


def write_metric_table(parts: Iterable[pl.DataFrame], path: Path, spill: Path, step_s: float, split: SplitParams,
                       params: MetricsParams) -> MetricTable:
    """The metric table of ``parts`` (disjoint columns, ``formats.read_metric_parts``) written to
    ``path``, and its stats: :func:`~stages.features.metric_matrix.metric_matrix_parts`' cells and
    stats, bit for bit, with the step means spilled under ``spill`` when they are large."""
    collected = CollectedMeans(parts, step_s, params, spill, MEANS_HOLD_BYTES)
    if collected.lo is None:
        log.warning("no metric points (after include/exclude): empty metric table")
        write_parquet(empty_table(), path)
        return MetricTable(empty_stats(step_s), 0, 0, None, None, 0)
    layout = table_layout(collected, step_s, split, params)
    g = layout.g
    if not collected.spilled and 12 * layout.cells <= WHOLE_BYTES:
        frame, stats = whole_table(collected, layout, params)
        write_parquet(frame, path)
        return MetricTable(stats, frame.height, frame.width - 1, int(g[0]), int(g[-1]), 0)
    stats, groups = _write_in_chunks(collected, layout, params, path)
    return MetricTable(stats, len(g), int(layout.keep.sum()), int(g[0]), int(g[-1]), groups)


def _chunk_rows(layout: TableLayout, widest_part: int) -> int:
    """Rows per chunk: its float32 cells within :data:`CHUNK_BYTES`; the memory it needs checked."""
    kept = max(int(layout.keep.sum()), 1)
    rows = max(1, min(len(layout.g), CHUNK_BYTES // (4 * kept)))
    # the chunk's table and the previous one being written, one part's float64 rows and their
    # fill/scale temporaries (~3 copies)
    require_memory(2 * 4 * rows * kept + 3 * 8 * rows * widest_part + 8 * len(layout.g) * widest_part,
                   f"a metric table of {len(layout.g):,} steps × {kept:,} columns in chunks of {rows:,} steps",
                   "datasets.<name>.step_s / datasets.<name>.metrics.include / exclude", "a longer step or fewer columns")
    return rows


def _write_in_chunks(collected: CollectedMeans, layout: TableLayout, params: MetricsParams,
                     path: Path) -> tuple[dict, int]:
    g, fit, clip = layout.g, layout.fit, layout.rule.clip
    kept, kept_at = layout.kept, layout.kept_at
    filling = [(part, cols, layout.keep[cols]) for part, cols in zip(collected.means, layout.part_cols)
               if layout.keep[cols].any()]
    rows = _chunk_rows(layout, max((len(cols) for _, cols, _ in filling), default=1))
    # the last observed value of each column before the chunk, and its step (-1: none yet)
    seed, seed_k = np.full(len(layout.names), np.nan), np.full(len(layout.names), -1, np.int64)
    at_clip = {True: [0, 0], False: [0, 0]}  # training rows / after: cells at ±clip, cells
    schema = pa.schema([("ts", pa.int64())] + [(n, pa.float32()) for n in kept])
    starts = range(0, len(g), rows)
    log.info("metric table of %d steps × %d columns: %d chunks of %d steps (step means %s)", len(g), len(kept),
             len(starts), rows, "spilled" if collected.spilled else "held")
    # A row group is encoded and compressed (pyarrow, one thread, ~40% of the stage at GAIA's full
    # size) while the next chunk is computed; the writes stay one at a time, in order.
    with (atomic_path(path) as tmp,
          pq.ParquetWriter(tmp, schema, compression="zstd", compression_level=3,
                           use_dictionary=False) as out,  # floats: plain, as polars
          ThreadPoolExecutor(max_workers=1, thread_name_prefix="metric-table") as writer):
        pending: Future | None = None
        for r0 in tqdm(starts, desc="metric table", unit="chunk", disable=len(starts) < 4):
            chunk = range(r0, min(r0 + rows, len(g)))
            z = np.empty((len(chunk), len(kept)), np.float32, order="F")
            for part, cols, part_keep in filling:
                x = on_grid(part, g, layout.step, chunk)
                x = x if part_keep.all() else x[:, part_keep]
                mine = cols[part_keep]
                before, before_k = seed[mine], seed_k[mine]
                seed[mine], seed_k[mine] = last_observed(x, r0, before, before_k)  # before x is filled in place
                filled = forward_fill(x, params.max_gap_steps, before, r0 - before_k, in_place=True)
                z[:, kept_at[mine]] = apply_scaling(filled, fit.centre[mine], fit.scale[mine], clip)
                del x, filled
            n_train = int(layout.train_rows[r0:chunk.stop].sum())  # training rows are the grid's first rows
            for is_train, cells in ((True, z[:n_train]), (False, z[n_train:])):
                at_clip[is_train][0] += int(np.count_nonzero(np.abs(cells) >= np.float32(clip)))
                at_clip[is_train][1] += cells.size
            table = pa.Table.from_arrays([pa.array(g[r0:chunk.stop])] + [pa.array(z[:, j]) for j in range(len(kept))],
                                         schema=schema)
            if pending is not None:
                pending.result()  # the previous row group is written (its error raised here)
            pending = writer.submit(out.write_table, table)
            del z, table
        if pending is not None:
            pending.result()
    share = {k: (c / n if n else 0.0) for k, (c, n) in at_clip.items()}
    return finish_stats(layout, share[True], share[False]), len(starts)
