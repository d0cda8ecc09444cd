"""Univariate KPI CSVs (AIOps-challenge / Yahoo S5 layout): KAD-Disformer's home data.

One CSV per KPI with ``value`` and optionally ``timestamp`` and ``label``; the column spellings
of the public sets are accepted (``timestamps``, ``is_anomaly``, ``anomaly``). A file with a
``KPI ID`` column (the AIOps-challenge bundle) holds many KPIs and is split by that column.
Real KPI exports have duplicated, out-of-order and missing points: rows are sorted by
timestamp, duplicates keep the last row, and missing values are linearly interpolated (the
count is logged, the steps are remembered in ``filled``) — never silently dropped, because the
step index is what labels and scores align on. Rows absent from a regular series are re-inserted
the same way (``regrid``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from stages.core.errors import InputError

log = logging.getLogger(__name__)

TIMESTAMP_COLUMNS = ("timestamp", "timestamps", "time")
LABEL_COLUMNS = ("label", "is_anomaly", "anomaly")
KPI_ID_COLUMNS = ("KPI ID", "kpi_id", "kpi id")


@dataclass
class KPISeries:
    """One KPI: values on its own step index, labels 0/1 (all 0 when the file has none)."""

    name: str
    path: Path
    value: np.ndarray  # (T,) float64, gaps interpolated
    label: np.ndarray  # (T,) int8
    timestamp: np.ndarray | None  # (T,) int64 as written in the file (seconds for the public sets)
    has_labels: bool
    filled: np.ndarray  # (T,) bool: value was missing and interpolated

    def __len__(self) -> int:
        return len(self.value)


def _pick(columns: list[str], candidates: tuple[str, ...]) -> str | None:
    lower = {c.strip().lower(): c for c in columns}
    for cand in candidates:
        if cand.lower() in lower:
            return lower[cand.lower()]
    return None


def _numeric(df: pl.DataFrame, column: str, path: Path, expected: str, dtype) -> pl.Series:
    """Cast a column, naming the first row that does not parse."""
    raw = df[column]
    cast = raw.cast(dtype, strict=False)
    bad = cast.is_null() & raw.is_not_null() & (raw.cast(pl.Utf8).str.strip_chars() != "")
    if bad.any():
        row = int(bad.arg_max())
        raise InputError(path, f"row {row + 2} column {column!r}", expected, raw[row])
    return cast


def regrid(ts: np.ndarray, vals: np.ndarray, labels: np.ndarray, path: Path, max_growth: float = 2.0
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-insert absent rows of a regular series (the AIOps KPIs drop missing points) as NaN values
    with label 0, so one step means one interval; irregular series are returned as they are."""
    if len(ts) < 3:
        return ts, vals, labels
    step = int(np.median(np.diff(ts)))
    offsets = ts - ts[0]
    if step <= 0 or np.any(offsets % step):
        return ts, vals, labels
    idx = offsets // step
    n = int(idx[-1]) + 1
    if n == len(ts):
        return ts, vals, labels
    if n > max_growth * len(ts):
        log.warning("%s: %d absent rows would more than double the series; left as is", path, n - len(ts))
        return ts, vals, labels
    log.info("%s: re-inserted %d absent rows (interval %d)", path, n - len(ts), step)
    full_v = np.full(n, np.nan)
    full_l = np.zeros(n, np.int8)
    full_v[idx] = vals
    full_l[idx] = labels
    return ts[0] + np.arange(n, dtype=np.int64) * step, full_v, full_l


def series_from_frame(df: pl.DataFrame, path: Path, name: str, value_col: str, ts_col: str | None,
                       label_col: str | None) -> KPISeries:
    """One KPI from a frame of text columns: sorted, de-duplicated, re-gridded, gaps interpolated."""
    value = _numeric(df, value_col, path, "a number (or an empty cell for a missing point)", pl.Float64)
    cols = {"value": value}
    if ts_col is not None:
        ts = _numeric(df, ts_col, path, "an integer or numeric timestamp", pl.Float64)
        if ts.is_null().any():
            row = int(ts.is_null().arg_max())
            raise InputError(path, f"row {row + 2} column {ts_col!r}", "a timestamp on every row", None)
        cols["ts"] = ts.cast(pl.Int64)
    if label_col is not None:
        lab = _numeric(df, label_col, path, "a 0/1 label", pl.Float64).fill_null(0.0)
        if not lab.is_in([0.0, 1.0]).all():
            row = int((~lab.is_in([0.0, 1.0])).arg_max())
            raise InputError(path, f"row {row + 2} column {label_col!r}", "a 0/1 label", lab[row])
        cols["label"] = lab.cast(pl.Int8)
    frame = pl.DataFrame(cols)
    if ts_col is not None:
        n = frame.height
        frame = frame.sort("ts", maintain_order=True).unique("ts", keep="last", maintain_order=True)
        if frame.height < n:
            log.warning("%s: %d duplicated timestamps (kept the last row of each)", path, n - frame.height)
    if frame.height == 0:
        raise InputError(path, None, "at least one data row")
    vals = frame["value"].to_numpy().astype(np.float64)
    labels = frame["label"].to_numpy().astype(np.int8) if label_col is not None else np.zeros(len(vals), np.int8)
    ts = frame["ts"].to_numpy() if ts_col is not None else None
    if ts is not None:
        ts, vals, labels = regrid(ts, vals, labels, path)
    filled = ~np.isfinite(vals)
    if filled.all():
        raise InputError(path, f"column {value_col!r}", "at least one non-missing value")
    if filled.any():
        idx = np.arange(len(vals))
        vals[filled] = np.interp(idx[filled], idx[~filled], vals[~filled])
        log.info("%s: interpolated %d missing values", path, int(filled.sum()))
    return KPISeries(name=name, path=path, value=vals, label=labels, timestamp=ts,
                     has_labels=label_col is not None, filled=filled)


def read_kpi_csv(path: str | Path, require_labels: bool = False) -> list[KPISeries]:
    """All KPIs of one CSV (one, or several when it has a ``KPI ID`` column)."""
    path = Path(path)
    try:
        df = pl.read_csv(path, infer_schema=False, encoding="utf8-lossy")
    except FileNotFoundError:
        raise InputError(path, None, "an existing KPI CSV file") from None
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError) as exc:
        raise InputError(path, None, f"a CSV with a header row ({exc})") from None
    value_col = _pick(df.columns, ("value",))
    if value_col is None:
        raise InputError(path, "header", "a 'value' column", df.columns)
    ts_col = _pick(df.columns, TIMESTAMP_COLUMNS)
    label_col = _pick(df.columns, LABEL_COLUMNS)
    if require_labels and label_col is None:
        raise InputError(path, "header", f"a label column (one of {list(LABEL_COLUMNS)})", df.columns)
    id_col = _pick(df.columns, KPI_ID_COLUMNS)
    if id_col is None:
        return [series_from_frame(df, path, path.stem, value_col, ts_col, label_col)]
    out = []
    for kpi_id in sorted(df[id_col].unique().drop_nulls().to_list()):
        part = df.filter(pl.col(id_col) == kpi_id)
        out.append(series_from_frame(part, path, f"{path.stem}:{kpi_id}", value_col, ts_col, label_col))
    return out


def read_kpi_dir(directory: str | Path, require_labels: bool = False) -> list[KPISeries]:
    """Every KPI of every ``*.csv`` in a folder (sorted by file name, recursive)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(directory, None, "an existing folder of KPI CSV files")
    files = sorted(directory.rglob("*.csv"))
    if not files:
        raise InputError(directory, None, "at least one *.csv KPI file")
    series = [s for f in files for s in read_kpi_csv(f, require_labels=require_labels)]
    log.info("%s: %d KPIs from %d files", directory, len(series), len(files))
    return series
