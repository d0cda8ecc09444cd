"""OSProfiler trace files (MSDS): one JSON parse and one tree walk per file, in plain Python.

A trace file holds a few dozen spans, so per-file polars queries (time parsing, anchoring) cost
far more than the spans themselves (issue 11). Here each file is parsed once (orjson when
installed), walked once, and its start times are computed in Python when every absolute stamp
is a plain ISO time (what OSProfiler writes); :mod:`stages.formats.msds` builds one frame for
all files. A file whose stamps take any other form goes through :func:`place_polars`, the
general path (epoch numbers, zones, errors naming the node), so results and messages agree.
"""
from __future__ import annotations

import functools
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from stages.core.errors import InputError
from stages.formats import _common as c

try:  # several times faster than json on these small documents
    import orjson
except ImportError:  # pragma: no cover - the venv has it
    orjson = None

_ID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|\b[0-9a-fA-F]{32}\b|\b\d+\b"
_ISO = re.compile(r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?", re.ASCII)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_BOM = b"\xef\xbb\xbf"
STAMP = "meta.raw_payload.*-start.timestamp"  # the column name errors use
_PER_MS = 1 / 1000.0
DURATION_S = ((pl.col("finished_ms") - pl.col("started_ms")) / 1000.0).alias("duration_s")
COLUMNS = ("trace_id", "span_id", "parent_id", "service", "operation", "abs_us", "started_ms", "finished_ms",
           "is_error", "where")


def load(path: Path) -> Any:
    """The parsed file; anything orjson refuses goes through :func:`_common.load_json_bytes`, which
    either names the file, line and column or accepts what ``json`` accepts (NaN, huge numbers)."""
    data = c.read_bytes(path)
    if orjson is not None and not data.startswith(_BOM):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return c.load_json_bytes(data, path)


def walk(data: Any, path: Path) -> dict[str, list]:
    """Per node, depth first in file order: ids, service, operation, raw start stamp, offsets, place."""
    c.expect_key(data, "children", path, "")
    rows: dict[str, list] = {k: [] for k in COLUMNS}
    stack = [(child, f"children[{i}]") for i, child in reversed(list(enumerate(data["children"])))]
    while stack:
        node, where = stack.pop()
        info = c.expect_key(node, "info", path, where)
        span_id = c.expect_key(node, "trace_id", path, where)
        for key in ("started", "finished"):
            if isinstance(info.get(key), bool) or not isinstance(info.get(key), (int, float)):
                raise InputError(path, f"{where}.info.{key}", "a number of milliseconds", info.get(key))
        if info["finished"] < info["started"]:
            raise InputError(path, f"{where}.info.finished", f"a time >= info.started ({info['started']})",
                             info["finished"])
        start, stop = _payloads(info)
        base = (start or stop or {}).get("base_id")
        rows["trace_id"].append(base)
        rows["span_id"].append(str(span_id))
        parent = node.get("parent_id")
        rows["parent_id"].append(None if parent in (None, "", base) else str(parent))
        rows["service"].append(str(info.get("project") or info.get("service") or "unknown"))
        rows["operation"].append(_operation(info, start))
        rows["abs_us"].append((start or {}).get("timestamp"))
        rows["started_ms"].append(float(info["started"]))
        rows["finished_ms"].append(float(info["finished"]))
        rows["is_error"].append(_is_error(info, stop))
        rows["where"].append(where)
        stack.extend((ch, f"{where}.children[{i}]") for i, ch in reversed(list(enumerate(node.get("children") or []))))
    return rows


def place(rows: dict[str, list], path: Path, audit: c.TimeAudit) -> dict[str, list] | None:
    """Canonical span columns of one walked file, times computed in Python; None when a stamp or
    offset is not the plain kind (then :func:`place_polars` reads the file, errors included)."""
    bases = rows["trace_id"]
    if any(b is not None and type(b) is not str for b in bases):
        return None
    stamps = []
    for raw in rows["abs_us"]:
        us = None if raw is None else _iso_us(raw)
        if raw is not None and us is None:
            return None
        stamps.append(us)
    rel = []
    for ms in rows["started_ms"]:
        x = ms * 1000
        if not math.isfinite(x) or abs(x) >= 2**62:
            return None
        rel.append(round(x))  # half to even, as polars' round
    anchors = [a - r for a, r in zip(stamps, rel) if a is not None]
    if not anchors:
        return None
    anchor = min(anchors)
    start = [r + anchor if a is None else a for a, r in zip(stamps, rel)]
    audit.values(path, start, STAMP, rows["where"])
    trace_id = next((b for b in bases if b is not None), path.stem)
    return {
        "trace_id": [trace_id] * len(start), "span_id": rows["span_id"], "parent_id": rows["parent_id"],
        "service": rows["service"], "operation": rows["operation"], "start_ts": start,
        "duration_s": _durations(rows["started_ms"], rows["finished_ms"]), "is_error": rows["is_error"],
    }


def _durations(started: list[float], finished: list[float]) -> list[float]:
    """Seconds, rounded exactly as :data:`DURATION_S` rounds them on a frame of this many spans."""
    if _true_division(min(len(started), 2)):
        return [(f - s) / 1000.0 for s, f in zip(started, finished)]
    return [(f - s) * _PER_MS for s, f in zip(started, finished)]


@functools.cache
def _true_division(n: int) -> bool:
    """Whether polars divides an ``n``-row column by 1000.0 exactly (it multiplies columns of two or
    more rows by the reciprocal, 1 ulp apart for e.g. 9 ms); probed once, so both paths agree."""
    probe = pl.DataFrame({"started_ms": [0.0] * n, "finished_ms": [9.0] * n}).select(DURATION_S)
    return probe["duration_s"][0] == 9.0 / 1000.0


def place_polars(rows: dict[str, list], path: Path, audit: c.TimeAudit) -> pl.DataFrame:
    """The general path: any stamp :func:`_common.parse_times` reads, errors naming the node."""
    df = pl.DataFrame(rows, schema_overrides={"abs_us": pl.Utf8, "trace_id": pl.Utf8})
    places = df["where"]
    abs_us = c.parse_times(df["abs_us"], path, STAMP, row_label=lambda i: places[i])
    # Nodes without a start payload are placed from the trace's anchor (absolute - relative start).
    anchor = (abs_us - (df["started_ms"] * 1000).round(0).cast(pl.Int64)).drop_nulls()
    if anchor.len() == 0:
        raise InputError(path, "meta.raw_payload.*-start", "at least one span with an absolute start timestamp")
    base_ids = df["trace_id"].drop_nulls()
    trace_id = base_ids[0] if base_ids.len() else path.stem
    start = abs_us.fill_null((df["started_ms"] * 1000).round(0).cast(pl.Int64) + int(anchor.min()))
    audit.series(path, start, STAMP, row_label=lambda i: places[i])
    return df.with_columns(
        pl.lit(trace_id).alias("trace_id"),
        start.alias("start_ts"),
        DURATION_S,
    )


def _iso_us(text: Any) -> int | None:
    """Epoch µs of ``YYYY-MM-DD[T ]HH:MM:SS[.ffffff]`` read as UTC, else None."""
    m = _ISO.fullmatch(text) if type(text) is str else None
    if m is None:
        return None
    y, mo, d, h, mi, s, frac = m.groups()
    try:
        t = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=timezone.utc)
    except ValueError:
        return None
    delta = t - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + (int(frac.ljust(6, "0")) if frac else 0)


def _payloads(info: dict) -> tuple[dict | None, dict | None]:
    start = stop = None
    for key, val in info.items():
        if key.startswith("meta.raw_payload.") and isinstance(val, dict):
            if key.endswith("-start"):
                start = val
            elif key.endswith("-stop"):
                stop = val
    return start, stop


def _operation(info: dict, start: dict | None) -> str:
    name = str(info.get("name", ""))
    req = ((start or {}).get("info") or {}).get("request") or {}
    if isinstance(req, dict) and req.get("path") is not None:
        path = re.sub(_ID, "<id>", str(req.get("path")))
        return f"{name} {req.get('method', '')} {path}".strip()
    db = ((start or {}).get("info") or {}).get("db") or {}
    if isinstance(db, dict) and db.get("statement"):
        return f"{name} {str(db['statement']).split(' ', 1)[0].upper()}"
    fn = ((start or {}).get("info") or {}).get("function") or {}
    if isinstance(fn, dict) and fn.get("name"):
        return f"{name} {fn['name']}"
    return name


def _is_error(info: dict, stop: dict | None) -> bool:
    exc = info.get("exception")
    if exc not in (None, "", "None"):
        return True
    stop_info = (stop or {}).get("info") or {}
    return isinstance(stop_info, dict) and ("etype" in stop_info or "error" in stop_info)
