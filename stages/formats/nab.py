"""Numenta Anomaly Benchmark (NAB) layout: ``data/<group>/<kpi>.csv`` + ``labels/combined_*.json``.

Each KPI file holds ``timestamp,value`` (``YYYY-MM-DD HH:MM:SS``, naive, read as UTC). Labels come
from one of NAB's two label files, keyed by ``<group>/<kpi>.csv``:

* ``points`` — ``combined_labels.json``: the anomaly timestamps themselves (one step each);
* ``windows`` — ``combined_windows.json``: NAB's scoring windows ``[start, end]`` around them
  (every step inside is anomalous). NAB scores detectors on windows, so this is the default.

A label key naming a KPI absent from ``data/``, a KPI without a label entry (its labels would be
unknown, not normal), a point label that matches no timestamp and an unparsable timestamp are all
:class:`InputError` s naming the file and the row or key. Series go through the KPI reader's
cleaning (sort, keep the last of duplicated timestamps, re-insert absent rows, interpolate gaps).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from stages.core.errors import InputError
from stages.formats.kpi import KPISeries, series_from_frame

log = logging.getLogger(__name__)

LabelKind = Literal["windows", "points"]
LABEL_FILES = {"windows": "combined_windows.json", "points": "combined_labels.json"}
TS_FORMAT = "%Y-%m-%d %H:%M:%S%.f"


def _epoch_s(text: str, path: Path, where: str) -> int:
    """A NAB label timestamp (optionally with fractional seconds) → epoch seconds, UTC."""
    try:
        when = datetime.fromisoformat(str(text).strip())
    except ValueError:
        raise InputError(path, where, "a timestamp like '2014-02-26 22:05:00'", text) from None
    return int(when.replace(tzinfo=timezone.utc).timestamp())


def read_nab_csv(path: str | Path, name: str | None = None) -> KPISeries:
    """One NAB KPI file (``timestamp,value``) → an unlabelled :class:`KPISeries` (timestamps in epoch s)."""
    path = Path(path)
    try:
        df = pl.read_csv(path, infer_schema=False, encoding="utf8-lossy")
    except FileNotFoundError:
        raise InputError(path, None, "an existing NAB KPI CSV") from None
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError) as exc:
        raise InputError(path, None, f"a CSV with a header row ({str(exc).splitlines()[0]})") from None
    if not {"timestamp", "value"} <= set(df.columns):
        raise InputError(path, "header", "columns 'timestamp,value'", df.columns)
    raw = df["timestamp"].str.strip_chars()
    parsed = raw.str.to_datetime(TS_FORMAT, strict=False, time_unit="us")
    bad = parsed.is_null()
    if bad.any():
        row = int(bad.arg_max())
        raise InputError(path, f"row {row + 2} column 'timestamp'", "a timestamp like '2014-02-14 14:30:00'",
                         df["timestamp"][row])
    frame = pl.DataFrame({"ts": (parsed.dt.epoch("s")).cast(pl.Utf8), "value": df["value"]})
    series = series_from_frame(frame, path, name or path.stem, "value", "ts", None)
    return series


def _kpi_files(root: Path) -> dict[str, Path]:
    """``<group>/<kpi>.csv`` → file, for every KPI under ``root/data``."""
    data = root / "data"
    if not data.is_dir():
        raise InputError(root, "data/", "a NAB folder with data/<group>/<kpi>.csv and labels/")
    files = {p.relative_to(data).as_posix(): p for p in sorted(data.rglob("*.csv"))
             if not any(part.startswith(".") for part in p.relative_to(data).parts)}
    if not files:
        raise InputError(data, None, "at least one <group>/<kpi>.csv KPI file")
    return files


def read_label_file(path: Path) -> dict[str, list]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, None, "NAB's label file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, None, f"valid JSON ({exc})") from None
    if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
        raise InputError(path, None, "an object mapping '<group>/<kpi>.csv' to a list of labels",
                         type(raw).__name__)
    return raw


def label_steps(series: KPISeries, entries: list, kind: LabelKind, path: Path, key: str) -> np.ndarray:
    """0/1 per step of ``series`` from one KPI's label entries (points or [start, end] windows)."""
    ts = series.timestamp
    out = np.zeros(len(series), np.int8)
    for i, entry in enumerate(entries):
        where = f"key {key!r} entry {i}"
        if kind == "points":
            if not isinstance(entry, str):
                raise InputError(path, where, "an anomaly timestamp string", entry)
            t = _epoch_s(entry, path, where)
            hit = np.flatnonzero(ts == t)
            if not len(hit):
                raise InputError(path, where, f"a timestamp present in {series.path.name}", entry)
            out[hit] = 1
        else:
            if not (isinstance(entry, list) and len(entry) == 2):
                raise InputError(path, where, "a [start, end] window", entry)
            a, b = (_epoch_s(x, path, where) for x in entry)
            if b < a:
                raise InputError(path, where, "a window whose end is not before its start", entry)
            out[(ts >= a) & (ts <= b)] = 1
    return out


def read_nab(root: str | Path, labels: LabelKind = "windows") -> list[KPISeries]:
    """Every KPI of a NAB folder, labelled from ``labels/`` (``windows`` or ``points``), sorted by key.

    Series names are the label keys without ``.csv`` (``realAWSCloudwatch/ec2_cpu_utilization_24ae8d``).
    """
    root = Path(root)
    if labels not in LABEL_FILES:
        raise InputError(None, "--labels", f"one of {sorted(LABEL_FILES)}", labels)
    files = _kpi_files(root)
    label_path = root / "labels" / LABEL_FILES[labels]
    table = read_label_file(label_path)
    absent = sorted(set(table) - set(files))
    if absent:
        raise InputError(label_path, f"key {absent[0]!r}", f"a KPI file data/{absent[0]}", "no such file")
    missing = sorted(set(files) - set(table))
    if missing:
        raise InputError(label_path, f"key {missing[0]!r}", "a label entry for every KPI file (unknown labels "
                         "are not 'normal')", "no entry")
    out = []
    for key, path in files.items():
        series = read_nab_csv(path, key.removesuffix(".csv"))
        lab = label_steps(series, table[key], labels, label_path, key)
        out.append(dataclasses.replace(series, label=lab, has_labels=True))
        log.info("%s: %d points, %d labelled %s (%d anomalous steps)", key, len(series), len(table[key]), labels,
                 int(lab.sum()))
    return out
