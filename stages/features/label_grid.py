"""Faults → per-step labels on the dataset's grid.

A step [ts, ts+step) is anomalous when it overlaps any fault interval [start, end). The grid
spans [min(start) - margin, max(end) + margin]; steps outside it are normal by convention
(the windows stage fills them with 0).
"""
from __future__ import annotations

import logging
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


def label_grid(faults: pl.DataFrame, step_s: float, margin_s: float) -> pl.DataFrame:
    """``labels.parquet``: ts, label (Int8), kind and entity ("+"-joined, sorted, "" when normal).

    A zero-length fault marks the step holding its start.
    """
    if faults.height == 0:
        log.warning("no faults: the label table is empty (every step counts as normal)")
        return pl.DataFrame(schema=LABEL_SCHEMA)
    step = int(round(step_s * 1_000_000))
    margin = int(round(margin_s * 1_000_000))
    g = grid(int(faults["start_ts"].min()) - margin, int(faults["end_ts"].max()) + margin, step_s)
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
