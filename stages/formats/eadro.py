"""Eadro (ICSE'23) raw layout, TrainTicket / SocialNetwork: chunk folders → canonical frames.

Layout (found recursively, so several chunks under one root are concatenated)::

    <SYS>.<start>D<end>/metrics/<service>.csv   timestamp (epoch s, 1 Hz) + numeric columns
    <SYS>.<start>D<end>/logs.json               service → list of raw log lines
    <SYS>.<start>D<end>/spans.json[.zip]         Jaeger query-API JSON (a list of traces, or {"data": [...]})
    <SYS>.fault-<start>D<end>.json               {"faults": [{name, fault, start, duration}]}

Clocks (checked on the public TT chunk): metric and fault epochs are UTC; log strings are
UTC+8 wall time and equal the end of the span they report, to the millisecond, when parsed
naively; span epochs run 8 h ahead of metrics (auth-service spans slow down exactly inside the
injected network_delay window only with -8 h). Hence ``DEFAULT_OFFSETS`` logs = traces = -28800.
The Jaeger export repeats trace objects and spans (1,900 trace objects, 805 unique traces,
17,673 span records, 4,327 unique spans): spans are deduplicated on (trace_id, span_id).

The JSON files are streamed (ijson): one trace object, or one service's lines, at a time, with spans
built into frames every ``SPAN_CHUNK_TRACES`` traces, so a multi-GB export never sits in memory whole.
"""
from __future__ import annotations

import logging
import re
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl
from tqdm import tqdm

from stages.core.errors import InputError
from stages.core.frames import US
from stages.core.params import ClockOffsets
from stages.formats import _common as c

log = logging.getLogger(__name__)

DEFAULT_OFFSETS = ClockOffsets(metrics=0.0, traces=-28800.0, logs=-28800.0, faults=0.0)

_CHUNK = re.compile(r"^(?P<sys>[^.]+)\.(?P<span>.+D.+)$")
# Spring Boot line: "2022-04-18 16:18:53.138  INFO 1 --- [thread] logger : text"
_LINE = r"^(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?)\s+([A-Za-z]+)\s+(.*)$"
_SPRING_PREFIX = r"^\d+\s+---\s+\[[^\]]*\]\s+"


# ------------------------------------------------------------------ files


def _sibling_fault_files(root: Path) -> list[Path]:
    """When ``root`` is itself a chunk folder, its fault file lives beside it."""
    m = _CHUNK.match(root.name)
    if not m or root.parent == root:
        return []
    p = root.parent / f"{m['sys']}.fault-{m['span']}.json"
    return [p] if p.is_file() else []


def _span_files(root: Path) -> list[Path]:
    """One spans file per folder: the plain JSON when both it and the zip exist."""
    plain = c.find(root, "spans.json")
    have = {p.parent for p in plain}
    zipped = [p for p in c.find(root, "spans.json.zip") if p.parent not in have]
    return sorted(plain + zipped)


def list_files(root: Path) -> dict[str, list[Path]]:
    root = Path(root)
    return {
        "metrics": [p for p in c.find(root, "*.csv") if p.parent.name == "metrics"],
        "traces": _span_files(root),
        "logs": c.find(root, "logs.json"),
        "faults": sorted(set(c.find(root, "*fault*.json") + _sibling_fault_files(root))),
    }


# ------------------------------------------------------------------ metrics


def _read_metric_file(path: Path) -> pl.DataFrame:
    df = c.read_csv(path, ["timestamp"], infer=True)
    ts = c.parse_times(df["timestamp"], path, "timestamp")
    bad_ts = ts.is_null()
    if bad_ts.any():
        log.warning("%s: %d row(s) without a timestamp dropped", path, int(bad_ts.sum()))
        df, ts = df.filter(~bad_ts), ts.filter(~bad_ts)
    return c.melt_metrics(df, ts, path.stem, path, skip=["timestamp"])


def read_metrics(root: Path, offset_s: float) -> pl.DataFrame | None:
    files = list_files(root)["metrics"]
    if not files:
        return None
    frames = [_read_metric_file(p) for p in tqdm(files, desc="eadro metrics", disable=len(files) < 50)]
    return c.shift(c.finish(frames, "metrics", ["ts", "entity", "metric"]), ["ts"], offset_s)


# ------------------------------------------------------------------ logs


def _parse_log_lines(service: str, lines: list[str], path: Path) -> pl.DataFrame:
    """Raw lines → (ts, level, message); continuation lines (stack traces) inherit the previous line's time."""
    df = pl.DataFrame({"raw": pl.Series(lines, dtype=pl.Utf8)})
    parts = df.with_columns(pl.col("raw").str.extract_groups(_LINE).alias("g")).unnest("g")
    parts = parts.rename({"1": "time", "2": "level", "3": "rest"})
    head = pl.col("time").is_not_null()
    times = c.parse_times(parts["time"], path, "line time", row_label=lambda i: f"key '{service}' item {i}")
    out = parts.with_columns(
        pl.Series("ts", times),
        pl.when(head).then(pl.col("rest").str.replace(_SPRING_PREFIX, "")).otherwise(pl.col("raw"))
        .str.replace_all(r"\s+", " ").str.strip_chars().alias("message"),
        pl.when(head).then(c.normalise_level(pl.col("level"))).alias("level"),
    ).with_columns(pl.col("ts").forward_fill(), pl.col("level").forward_fill())
    orphans = out["ts"].is_null().sum()
    if orphans:
        log.warning("%s: key '%s': %d line(s) before the first timestamped line dropped", path, service, orphans)
    return out.filter(pl.col("ts").is_not_null()).with_columns(pl.lit(service).alias("service"))


def _top_level_type(opener: c.Opener, path: Path, first: str) -> str:
    """Type name of a JSON top level that is not an object: parsed only for the error message."""
    if first == "[":
        return "list"
    return type(next(c.stream_json(opener, path, ""), None)).__name__


def _read_log_file(path: Path) -> list[pl.DataFrame]:
    """One service's lines at a time (ijson kvitems), so the file is never held whole."""
    opener = lambda: c.open_binary(path)
    first = c.json_first_byte(opener)
    if first != "{":
        raise InputError(path, "top level", "an object mapping service → list of log lines",
                         _top_level_type(opener, path, first))
    frames: dict[str, pl.DataFrame | None] = {}  # a repeated key replaces the earlier one, as json.load does
    for service, lines in c.stream_json(opener, path, "", kv=True, lossy=True):
        if lines is None or lines == []:
            frames[service] = None  # a service that logged nothing in this chunk (real: 13 of 27 TT services)
            continue
        if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
            raise InputError(path, f"key '{service}'", "a list of log-line strings",
                             type(lines).__name__ if not isinstance(lines, list) else "a list with non-strings")
        frames[service] = _parse_log_lines(service, lines, path)
    return [f for f in frames.values() if f is not None]


def read_logs(root: Path, offset_s: float) -> pl.DataFrame | None:
    files = list_files(root)["logs"]
    if not files:
        return None
    frames = [f for p in files for f in _read_log_file(p)]
    return c.shift(c.finish(frames, "logs", ["ts", "service"]), ["ts"], offset_s)


# ------------------------------------------------------------------ traces


SPAN_CHUNK_TRACES = 5_000  # traces per built frame: bounds the Python lists held at once
_SPAN_SCHEMA = {"trace_id": pl.Utf8, "span_id": pl.Utf8, "parent_id": pl.Utf8, "service": pl.Utf8,
                "operation": pl.Utf8, "start_us": pl.Int64, "duration_us": pl.Float64, "is_error": pl.Boolean}


def _zip_member(path: Path) -> str:
    """The spans member of a zip, skipping macOS resource forks."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(path, None, "a valid zip archive", str(exc)) from None
    members = [n for n in names
               if n.endswith(".json") and not n.startswith("__MACOSX") and "/._" not in n and not n.startswith("._")]
    if not members:
        raise InputError(path, None, "a zip holding a spans .json member", names)
    return members[0]


@contextmanager
def _open_member(path: Path, member: str):
    """The member as a stream, decompressed as it is read (never held whole)."""
    with zipfile.ZipFile(path) as zf, zf.open(member) as fh:
        yield fh


def _span_source(path: Path) -> tuple[str, c.Opener, int]:
    """(name for JSON errors, opener, uncompressed size) of a spans.json or spans.json.zip."""
    if path.suffix != ".zip":
        return str(path), lambda: c.open_binary(path), path.stat().st_size
    member = _zip_member(path)
    with zipfile.ZipFile(path) as zf:
        size = zf.getinfo(member).file_size
    return f"{path}!{member}", lambda: _open_member(path, member), size


def _iter_traces(path: Path, label: str, opener: c.Opener, bar) -> Iterator:
    """Trace objects one at a time from either top level: a list, or an object with 'data'."""
    first = c.json_first_byte(opener)
    if first == "[":
        yield from c.stream_json(opener, label, "item", progress=bar)
        return
    if first != "{":
        raise InputError(path, "top level", "a list of Jaeger traces or an object with 'data'",
                         _top_level_type(opener, label, first))
    n = 0
    for n, trace in enumerate(c.stream_json(opener, label, "data.item", progress=bar), 1):
        yield trace
    if n == 0 and not _data_is_list(opener):
        raise InputError(path, "top level", "a list of Jaeger traces or an object with 'data'", "dict")


def _data_is_list(opener: c.Opener) -> bool:
    """Whether an object's 'data' is a list (checked only when it yielded no trace)."""
    with opener() as raw:
        for prefix, event, _ in c.json_backend().parse(raw):
            if prefix == "data":
                return event == "start_array"
    return False


def _is_error(tags: list) -> bool:
    for t in tags or ():
        key = t.get("key")
        if key == "error":
            val = t.get("value")
            if val is True or str(val).lower() == "true":
                return True
        elif key == "http.status_code":
            try:
                if int(float(t.get("value"))) >= 500:
                    return True
            except (TypeError, ValueError):
                pass
    return False


def _parent(refs: list) -> str | None:
    """CHILD_OF is the parent; a FOLLOWS_FROM-only span hangs off its predecessor (still causal)."""
    by_type = {r.get("refType"): r.get("spanID") for r in refs or () if isinstance(r, dict)}
    return by_type.get("CHILD_OF") or by_type.get("FOLLOWS_FROM")


def _new_columns() -> dict[str, list]:
    return {k: [] for k in _SPAN_SCHEMA}


def _add_trace(cols: dict[str, list], path: Path, ti: int, trace) -> None:
    """Append one trace object's spans to the column lists, naming the span on bad input."""
    where = f"trace[{ti}]"
    spans = c.expect_key(trace, "spans", path, where)
    processes = trace.get("processes") or {}
    for si, s in enumerate(spans):
        try:
            tid, sid, start, dur = s["traceID"], s["spanID"], s["startTime"], s["duration"]
        except (KeyError, TypeError, IndexError):
            for key in ("traceID", "spanID", "startTime", "duration"):
                c.expect_key(s, key, path, f"{where}.spans[{si}]")
            raise
        proc = processes.get(s.get("processID"), {})
        service = proc.get("serviceName") if isinstance(proc, dict) else None
        if not service:
            raise InputError(path, f"{where}.spans[{si}].processID",
                             "a processID listed in the trace's processes with a serviceName", s.get("processID"))
        if not isinstance(start, (int, float)) or not isinstance(dur, (int, float)):
            raise InputError(path, f"{where}.spans[{si}].startTime/duration", "numbers (µs)", (start, dur))
        cols["trace_id"].append(tid)
        cols["span_id"].append(sid)
        cols["parent_id"].append(_parent(s.get("references")))
        cols["service"].append(service)
        cols["operation"].append(s.get("operationName") or "")
        cols["start_us"].append(int(start))
        cols["duration_us"].append(float(dur))
        cols["is_error"].append(_is_error(s.get("tags")))


def _span_chunks(path: Path) -> Iterator[pl.DataFrame]:
    """Raw span frames of at most SPAN_CHUNK_TRACES traces each, streamed from one spans file."""
    label, opener, size = _span_source(path)
    cols, in_chunk = _new_columns(), 0
    with tqdm(total=size, unit="B", unit_scale=True, desc=f"spans {path.name}", disable=size < 50_000_000) as bar:
        try:
            for ti, trace in enumerate(_iter_traces(path, label, opener, bar)):
                _add_trace(cols, path, ti, trace)
                in_chunk += 1
                if in_chunk == SPAN_CHUNK_TRACES:
                    yield pl.DataFrame(cols, schema=_SPAN_SCHEMA)
                    cols, in_chunk = _new_columns(), 0
        except (zipfile.BadZipFile, zlib.error) as exc:
            raise InputError(path, None, "a valid zip archive", str(exc)) from None
    if in_chunk:
        yield pl.DataFrame(cols, schema=_SPAN_SCHEMA)


def read_traces(root: Path, offset_s: float) -> pl.DataFrame | None:
    files = list_files(root)["traces"]
    if not files:
        return None
    key = ["trace_id", "span_id"]
    n, frames = 0, []
    for path in files:
        for raw in _span_chunks(path):  # dropping repeats per chunk keeps only unique spans in memory
            n += raw.height
            frames.append(raw.unique(subset=key, keep="first", maintain_order=True))
    spans = pl.concat(frames) if frames else pl.DataFrame(schema=_SPAN_SCHEMA)
    spans = spans.unique(subset=key, keep="first", maintain_order=True)  # repeats across chunks and files
    log.info("eadro traces: %d span records, %d unique spans, %d unique traces",
             n, spans.height, spans["trace_id"].n_unique())
    spans = spans.with_columns(pl.col("start_us").alias("start_ts"), (pl.col("duration_us") / US).alias("duration_s"))
    return c.shift(c.finish([spans], "traces", ["start_ts", "trace_id", "span_id"]), ["start_ts"], offset_s)


# ------------------------------------------------------------------ faults


def fault_entity(name: str, known: list[str]) -> str:
    """Container name → service: the longest known service named inside it, else strip the
    compose project prefix and the ``_N`` replica suffix (``proj_ts-auth-service_1`` → ``ts-auth-service``)."""
    hits = [k for k in known if k and k in name]
    if hits:
        return max(hits, key=len)
    m = re.match(r"^(?:[^_]+_)?(.+?)(?:_\d+)?$", name)
    return m.group(1) if m else name


def _read_fault_file(path: Path, known: list[str]) -> pl.DataFrame:
    data = c.load_json(path)
    faults = c.expect_key(data, "faults", path, "")
    if not isinstance(faults, list):
        raise InputError(path, "faults", "a list of fault objects", type(faults).__name__)
    rows = {"start_ts": [], "end_ts": [], "entity": [], "kind": []}
    for i, f in enumerate(faults):
        w = f"faults[{i}]"
        for key in ("name", "fault", "start", "duration"):
            c.expect_key(f, key, path, w)
        if not isinstance(f["start"], (int, float)) or not isinstance(f["duration"], (int, float)) or f["duration"] < 0:
            raise InputError(path, f"{w}.start/duration", "an epoch-seconds start and a non-negative duration",
                             (f["start"], f["duration"]))
        start = int(round(f["start"] * US))
        rows["start_ts"].append(start)
        rows["end_ts"].append(start + int(round(f["duration"] * US)))
        rows["entity"].append(fault_entity(str(f["name"]), known))
        rows["kind"].append(str(f["fault"]))
    return pl.DataFrame(rows, schema={"start_ts": pl.Int64, "end_ts": pl.Int64, "entity": pl.Utf8, "kind": pl.Utf8})


def read_faults(root: Path, offset_s: float) -> pl.DataFrame | None:
    files = list_files(root)
    if not files["faults"]:
        return None
    known = sorted({p.stem for p in files["metrics"]})
    frames = [_read_fault_file(p, known) for p in files["faults"]]
    df = c.finish(frames, "faults", ["start_ts", "entity", "kind"]).unique(maintain_order=True)
    return c.shift(df, ["start_ts", "end_ts"], offset_s)
