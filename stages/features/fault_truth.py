"""Severity of each labelled step, from the ground-truth sidecar of synthetic dumps.

Native fault records (Eadro fault JSON, GAIA run tables, MSDS Rally hooks) carry no intensity, so
the generator also writes ``synth_truth.json`` beside the dump. When it is there, each label step
gets the severity class (subtle / moderate / severe) of the fault it overlaps; real dumps have no
sidecar and their steps read "" (unknown), which the per-severity tables leave out.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import polars as pl

from stages.core.errors import InputError

log = logging.getLogger(__name__)
SIDECAR = "synth_truth.json"


def read_truth(raw: Path) -> list[dict] | None:
    path = Path(raw) / SIDECAR
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, None, "a JSON ground-truth sidecar", str(exc)) from None
    faults = data.get("faults") if isinstance(data, dict) else None
    if not isinstance(faults, list):
        raise InputError(path, "faults", "a list of faults")
    for i, f in enumerate(faults):
        if not isinstance(f, dict) or not all(isinstance(f.get(k), (int, float)) for k in ("start_ts", "end_ts")):
            raise InputError(path, f"faults[{i}]", "start_ts and end_ts in epoch seconds", f)
    return faults


def add_severity(labels: pl.DataFrame, truth: list[dict] | None, step_s: float) -> pl.DataFrame:
    """``labels`` plus a ``severity`` column ("+"-joined classes of the overlapping truth faults)."""
    if labels.height == 0 or not truth:
        return labels.with_columns(pl.lit("").alias("severity"))
    ts = labels["ts"].to_numpy()
    step = int(round(step_s * 1e6))
    classes: list[set[str]] = [set() for _ in range(len(ts))]
    for f in truth:
        a, b = int(round(f["start_ts"] * 1e6)), int(round(f["end_ts"] * 1e6))
        lo = int(np.searchsorted(ts, a - step, side="right"))  # first step whose [ts, ts+step) reaches a
        hi = int(np.searchsorted(ts, max(b, a + 1), side="left"))
        for i in range(lo, hi):
            classes[i].add(str(f.get("severity") or ""))
    sev = ["+".join(sorted(c - {""})) if lab else "" for c, lab in zip(classes, labels["label"].to_list())]
    return labels.with_columns(pl.Series("severity", sev, dtype=pl.Utf8))
