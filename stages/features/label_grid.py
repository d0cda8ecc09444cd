"""Faults → per-step labels on the dataset's grid.

A step [ts, ts+step) is anomalous when it overlaps any fault interval [start, end). The grid
spans [min(start) - margin, max(end) + margin]; steps outside it are normal by convention
(the windows stage fills them with 0). Given the data's time range, the grid never extends past
it: faults wholly outside are dropped and faults crossing an edge are clipped, each with a
warning naming them (a fault a year away would otherwise build millions of empty steps).
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl

from stages.core.errors import InputError
from stages.core.frames import conform
from stages.core.splits import grid

log = logging.getLogger(__name__)

LABEL_SCHEMA = {"ts": pl.Int64, "label": pl.Int8, "kind": pl.Utf8, "entity": pl.Utf8}


def clean_faults(faults: pl.DataFrame, source: str | Path | None = None) -> pl.DataFrame:
    """Canonical faults, checked (start ≤ end, both present) and sorted; null kind/entity become ""."""
    df = conform(faults, "faults").with_row_index("_row")
    bad = df.filter(pl.col("start_ts").is_null() | pl.col("end_ts").is_null())
    if bad.height:
        raise InputError(source, f"fault row {int(bad['_row'][0])}", "both start_ts and end_ts")
    bad = df.filter(pl.col("end_ts") < pl.col("start_ts"))
    if bad.height:
        row = bad.row(0, named=True)
        raise InputError(source, f"fault row {row['_row']} ({row['entity']}, {row['kind']})",
                         "end_ts >= start_ts", (row["start_ts"], row["end_ts"]))
    return (df.with_columns(pl.col("entity").fill_null(""), pl.col("kind").fill_null(""))
            .sort(["start_ts", "end_ts", "entity", "kind"]).drop("_row"))


def _joined(col: str) -> pl.Expr:
    return pl.col(col).filter(pl.col(col) != "").unique().sort().str.join("+").alias(col)


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def _named(df: pl.DataFrame, n: int = 5) -> str:
    rows = [f"{r['kind'] or '?'} on {r['entity'] or '?'} at {_iso(r['start_ts'])}" for r in df.head(n).iter_rows(named=True)]
    return "; ".join(rows) + (f"; ... (+{df.height - n})" if df.height > n else "")


def fit_to_data(faults: pl.DataFrame, data_range: tuple[int, int]) -> pl.DataFrame:
    """Faults inside [first, last] data time (µs): those wholly outside dropped, the rest clipped; warned."""
    lo, hi = int(data_range[0]), int(data_range[1])
    if hi < lo:
        raise ValueError(f"data_range {data_range}: the end is before the start")
    outside = (pl.col("end_ts") < lo) | (pl.col("start_ts") > hi)
    dropped = faults.filter(outside)
    if dropped.height:
        log.warning("%d fault(s) lie wholly outside the data (%s .. %s) and are dropped: %s",
                    dropped.height, _iso(lo), _iso(hi), _named(dropped))
    kept = faults.filter(~outside)
    crossing = kept.filter((pl.col("start_ts") < lo) | (pl.col("end_ts") > hi))
    if crossing.height:
        log.warning("%d fault(s) cross the edge of the data (%s .. %s) and are clipped to it: %s",
                    crossing.height, _iso(lo), _iso(hi), _named(crossing))
    return kept.with_columns(pl.col("start_ts").clip(lo, hi), pl.col("end_ts").clip(lo, hi))


def label_grid(faults: pl.DataFrame, step_s: float, margin_s: float,
               data_range: tuple[int, int] | None = None) -> pl.DataFrame:
    """``labels.parquet``: ts, label (Int8), kind and entity ("+"-joined, sorted, "" when normal).

    A zero-length fault marks the step holding its start. ``data_range`` ([first, last] µs of the
    dataset's metrics/traces/logs): the grid stays inside it (see :func:`fit_to_data`).
    """
    if faults.height and data_range is not None:
        faults = fit_to_data(faults, data_range)
    if faults.height == 0:
        log.warning("no faults%s: the label table is empty (every step counts as normal)",
                    " inside the data" if data_range is not None else "")
        return pl.DataFrame(schema=LABEL_SCHEMA)
    step = int(round(step_s * 1_000_000))
    margin = int(round(margin_s * 1_000_000))
    first, last = int(faults["start_ts"].min()) - margin, int(faults["end_ts"].max()) + margin
    if data_range is not None:
        first, last = max(first, int(data_range[0])), min(last, int(data_range[1]))
    g = grid(first, last, step_s)
    g0 = int(g[0])
    # steps whose [ts, ts+step) intersects [start, max(end, start+1µs))
    covered = (faults.with_columns(pl.max_horizontal(pl.col("end_ts"), pl.col("start_ts") + 1).alias("_end"))
               .with_columns(((pl.col("start_ts") - g0) // step).alias("_first"),
                             ((pl.col("_end") - 1 - g0) // step).alias("_last"))
               .with_columns(pl.int_ranges(pl.col("_first"), pl.col("_last") + 1).alias("t"))
               .explode("t")
               .group_by("t").agg(_joined("kind"), _joined("entity")))
    labels = np.zeros(len(g), dtype=np.int8)
    labels[covered["t"].to_numpy()] = 1
    frame = pl.DataFrame({"ts": g, "label": labels}, schema={"ts": pl.Int64, "label": pl.Int8})
    frame = frame.with_row_index("t").with_columns(pl.col("t").cast(pl.Int64))
    out = (frame.join(covered.with_columns(pl.col("t").cast(pl.Int64)), on="t", how="left")
           .sort("t")
           .with_columns(pl.col("kind").fill_null(""), pl.col("entity").fill_null(""))
           .select(list(LABEL_SCHEMA)))
    return out
