"""Canonical frames every reader produces (DESIGN §4), so nothing downstream knows the format.

Time is UTC epoch microseconds (Int64) everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

METRIC_SCHEMA = {"ts": pl.Int64, "entity": pl.Utf8, "metric": pl.Utf8, "value": pl.Float64}
SPAN_SCHEMA = {
    "trace_id": pl.Utf8,
    "span_id": pl.Utf8,
    "parent_id": pl.Utf8,  # null for a root span
    "service": pl.Utf8,
    "operation": pl.Utf8,
    "start_ts": pl.Int64,
    "duration_s": pl.Float64,
    "is_error": pl.Boolean,
}
LOG_SCHEMA = {"ts": pl.Int64, "service": pl.Utf8, "level": pl.Utf8, "message": pl.Utf8}
FAULT_SCHEMA = {"start_ts": pl.Int64, "end_ts": pl.Int64, "entity": pl.Utf8, "kind": pl.Utf8}

MODALITIES = ("metrics", "traces", "logs", "faults")
SCHEMAS = {"metrics": METRIC_SCHEMA, "traces": SPAN_SCHEMA, "logs": LOG_SCHEMA, "faults": FAULT_SCHEMA}

US = 1_000_000  # microseconds per second


def empty(modality: str) -> pl.DataFrame:
    return pl.DataFrame(schema=SCHEMAS[modality])


def conform(df: pl.DataFrame, modality: str) -> pl.DataFrame:
    """Select and cast to the canonical schema (column order fixed); raises if a column is missing."""
    schema = SCHEMAS[modality]
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise ValueError(f"{modality} frame lacks canonical columns {missing}")
    return df.select([pl.col(c).cast(t) for c, t in schema.items()])


@dataclass
class Dump:
    """All modalities of one raw dump in canonical form; a missing modality is ``None``."""

    format: str
    path: Path
    metrics: pl.DataFrame | None = None
    traces: pl.DataFrame | None = None
    logs: pl.DataFrame | None = None
    faults: pl.DataFrame | None = None
    files: dict[str, list[Path]] = field(default_factory=dict)  # modality → files read
