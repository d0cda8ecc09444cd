"""The logs stage's tables from lines in buckets of whole services: never every line at once.

:func:`stages.features.log_templates.mine_templates` holds the dump's lines, their events and
counts together (issue 11). Drain3 mines each service on its own, so here the lines come as
buckets of whole services (:func:`stages.formats.read_log_buckets`) and:

1. each bucket is cleaned and mined service by service (:func:`mine_services`); its clusters'
   line counts are kept, and its lines (time, service, level, cluster, order within the bucket)
   are spilled;
2. the templates are numbered over every service in sorted order (:func:`number_templates`), as
   the whole path numbers them;
3. the spilled lines are split by time chunk of the step grid; each chunk, sorted by time, service
   and mining order (the whole path's event order), gives its events (written a chunk at a time)
   and its rows of the per-step template counts.

The tables and the saved miners are the whole path's (tested, and the committed dumps, read as
one bucket, run the whole path itself).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from stages.core.frames import empty
from stages.core.io import write_parquet
from stages.core.splits import grid
from stages.features.chunked import SortedParquet, TimeChunks
from stages.features.log_templates import (
    EVENT_SCHEMA, MinedLogs, clean_logs, cluster_counts, count_columns, label_events, log_counts, mine_services,
    mine_templates, number_templates, save_miners, template_lookup,
)
from stages.features.params import LogsParams

EVENT_ORDER = ["ts", "service", "_rank"]  # _rank: a line's place in its bucket's mining order


@dataclass
class LogTables:
    """What the logs stage reports besides the files (its summary)."""

    lines: int
    services: int
    templates: int
    steps: int


def write_log_tables(buckets: Iterable[pl.DataFrame], out: Path, spill: Path, params: LogsParams,
                     step_s: float) -> LogTables:
    """Write ``log_templates.parquet``, ``log_counts.parquet``, ``log_events.parquet`` and the miners'
    state (``drain3/``) into ``out`` from the dump's line buckets, spilling through ``spill`` (an
    empty folder the caller removes). A dump read as one bucket goes the whole-frame way."""
    buckets = iter(buckets)
    first = next(buckets, None)
    second = next(buckets, None) if first is not None else None
    if second is None:
        return _write_whole(empty("logs") if first is None else first, out, params, step_s)
    return _write_in_buckets(_chain(first, second, buckets), out, spill, params, step_s)


def _chain(first: pl.DataFrame, second: pl.DataFrame, rest: Iterable[pl.DataFrame]):
    yield first
    yield second
    yield from rest


def _write_whole(lines: pl.DataFrame, out: Path, params: LogsParams, step_s: float) -> LogTables:
    mined = mine_templates(lines, params, step_s)
    counts = log_counts(mined.events, mined.templates, step_s)
    write_parquet(mined.templates, out / "log_templates.parquet")
    write_parquet(counts, out / "log_counts.parquet")
    write_parquet(mined.events, out / "log_events.parquet")
    save_miners(mined, params, out / "drain3")
    return LogTables(lines=mined.events.height, services=len(mined.miners), templates=mined.templates.height,
                     steps=counts.height)


def _write_in_buckets(buckets: Iterable[pl.DataFrame], out: Path, spill: Path, params: LogsParams,
                      step_s: float) -> LogTables:
    miners: dict = {}
    per_cluster: list[pl.DataFrame] = []
    mined: list[Path] = []
    lo = hi = None
    for b, bucket in enumerate(buckets):  # 1. mine each bucket's services, spill its lines
        df = clean_logs(bucket)
        del bucket
        if df.height == 0:
            continue
        bucket_miners, cluster_ids = mine_services(df, params)
        miners.update(bucket_miners)
        per_cluster.append(cluster_counts(df, cluster_ids))
        a, z = int(df["ts"].min()), int(df["ts"].max())
        lo, hi = (a, z) if lo is None else (min(lo, a), max(hi, z))
        path = spill / f"lines_{b:05d}.arrow"
        (df.select("ts", "service", "level")
         .with_columns(pl.Series("cluster", cluster_ids), pl.int_range(pl.len(), dtype=pl.Int64).alias("_rank"))
         .write_ipc(path, compression="lz4"))
        mined.append(path)
    if not mined:  # every line without a time: the whole path's empty tables
        return _write_whole(empty("logs"), out, params, step_s)
    templates, mapping, other = number_templates(  # 2. ids over every service, in sorted order
        pl.concat(per_cluster).sort(["service", "cluster"]), miners, params)
    lookup = template_lookup(mapping)
    step = int(round(step_s * 1_000_000))
    g = grid(lo, hi, step_s)
    chunks = TimeChunks(int(g[0]), len(g), step, len(mined))
    for path in mined:
        chunks.spill(pl.read_ipc(path), "ts", spill / "lines")
        path.unlink()
    K = templates.height
    counts = np.zeros((len(g), K), dtype=np.float32)  # whole numbers, exact in float32 below 2**24 per cell
    lines = 0
    with SortedParquet(out / "log_events.parquet", EVENT_SCHEMA) as events_out:  # 3. events and counts by chunk
        for k, rows in chunks.ranges():
            chunk = chunks.read(spill / "lines", k, EVENT_ORDER)
            if chunk is None:
                continue
            events = label_events(chunk, lookup, step_s)
            lines += events.height
            t = (events["step_ts"].to_numpy() - int(g[rows.start])) // step
            counts[rows] += np.bincount(t * K + events["template_id"].to_numpy(),
                                        minlength=len(rows) * K).reshape(len(rows), K)
            events_out.add(events)
    write_parquet(templates, out / "log_templates.parquet")
    write_parquet(count_columns(g, counts, templates), out / "log_counts.parquet")
    save_miners(MinedLogs(templates=templates, events=pl.DataFrame(schema=EVENT_SCHEMA), miners=miners,
                          cluster_to_template=mapping, other_template=other), params, out / "drain3")
    return LogTables(lines=lines, services=len(miners), templates=K, steps=len(g))
