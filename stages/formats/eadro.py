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

import bisect
import itertools
import logging
import re
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import polars as pl
from tqdm import tqdm

from stages.core.errors import InputError
from stages.core.frames import US
from stages.core.params import ClockOffsets
from stages.formats import _common as c
from stages.formats._metric_points import MetricPoints
from stages.formats._log_reading import LogReading, whole as whole_logs
from stages.formats._metric_reading import MetricReading, whole
from stages.formats._trace_reading import TraceReading, whole as whole_traces

log = logging.getLogger(__name__)

DEFAULT_OFFSETS = ClockOffsets(metrics=0.0, traces=-28800.0, logs=-28800.0, faults=0.0)

_CHUNK = re.compile(r"^(?P<sys>[^.]+)\.(?P<span>.+D.+)$")
# Spring Boot line: "2022-04-18 16:18:53.138  INFO 1 --- [thread] logger : text"
_LINE = r"^(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?)\s+([A-Za-z]+)\s+(.*)$"
# _LINE's head alone (group 1: all of it, 2: time, 3: level): the text is the rest of the line, and
# _LINE matches exactly when the head does and that rest holds no newline ('.' stops at one, '$' is
# the end of the text). Capturing a long tail costs the regex engine 3x more (issue 11).
_HEAD = r"^((\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?)\s+([A-Za-z]+)\s+)"
_SPRING_PREFIX = r"^\d+\s+---\s+\[[^\]]*\]\s+"
# r"\s+" → " " without rewriting the single spaces that make up most of a line: a run of two or
# more blanks, or one blank that is not a space, becomes one space (same text, half the time)
_BLANK_RUNS = r"\s\s+|[^\S ]"


# ------------------------------------------------------------------ files


def _sibling_fault_files(root: Path) -> list[Path]:
    """When ``root`` is itself a chunk folder, its fault file lives beside it."""
    m = _CHUNK.match(root.name)
    if not m or root.parent == root:
        return []
    p = root.parent / f"{m['sys']}.fault-{m['span']}.json"
    return [p] if p.is_file() else []


def _span_files(root: Path, odd: list[tuple[Path, str]]) -> list[Path]:
    """One spans file per folder: the plain JSON when both it and the zip exist."""
    plain = c.find(root, "spans.json", odd=odd)
    have = {p.parent for p in plain}
    zipped = [p for p in c.find(root, "spans.json.zip", odd=odd) if p.parent not in have]
    return sorted(plain + zipped)


def scan(root: Path) -> c.Scan:
    """Files by place and name; data-like files nothing reads, and unreadable entries, are listed."""
    root = Path(root)
    odd: dict[str, list[tuple[Path, str]]] = {m: [] for m in ("metrics", "traces", "logs", "faults")}
    csvs = c.find(root, "*.csv", odd=odd["metrics"])
    out = c.Scan({
        "metrics": [p for p in csvs if p.parent.name == "metrics"],
        "traces": _span_files(root, odd["traces"]),
        "logs": c.find(root, "logs.json", odd=odd["logs"]),
        "faults": sorted(set(c.find(root, "*fault*.json", odd=odd["faults"]) + _sibling_fault_files(root))),
    })
    for modality, items in odd.items():
        for p, why in items:
            if modality != "metrics" or p.parent.name == "metrics":
                out.skip(modality, p, why)
    read = {p for files in out.files.values() for p in files}
    for p in csvs:
        if p not in read:
            out.unclaimed.append((p, "a CSV outside a metrics/ folder"))
    for p in c.find(root, "*.json", "*.zip"):
        if p in read:
            continue
        if p.name == "spans.json.zip":
            out.unclaimed.append((p, "not read: the spans.json beside it is"))
        else:
            out.unclaimed.append((p, "not metrics/<service>.csv, logs.json, spans.json[.zip] or a *fault*.json"))
    return out


def list_files(root: Path) -> dict[str, list[Path]]:
    return scan(root).files


# ------------------------------------------------------------------ metrics


def _read_metric_file(path: Path, audit: c.TimeAudit, points: MetricPoints, direct: pl.DataFrame | None = None) -> bool:
    """Adds one service's CSV to ``points``; False when it holds no data row (header only)."""
    df = c.read_csv(path, ["timestamp"], infer=True, direct=direct)
    if df.height == 0:
        return False
    ts = c.parse_times(df["timestamp"], path, "timestamp")
    audit.series(path, ts, "timestamp")
    bad_ts = ts.is_null()
    if bad_ts.any():
        log.warning("%s: %d row(s) without a timestamp dropped", path, int(bad_ts.sum()))
        df, ts = df.filter(~bad_ts), ts.filter(~bad_ts)
    c.melt_metrics(df, ts, path.stem, path, skip=["timestamp"], points=points)
    return True


def _read_metric_files(files: list[Path], audit: c.TimeAudit, points: MetricPoints) -> list[tuple[Path, str]]:
    skipped = []
    for p, direct in tqdm(c.direct_csvs(files), desc="eadro metrics", total=len(files), disable=len(files) < 50):
        if not _read_metric_file(p, audit, points, direct):
            skipped.append((p, "header only, no data row"))
    return skipped


def metric_reading(root: Path) -> MetricReading:
    found = scan(root)
    files = found.files["metrics"]
    return MetricReading(files, list(found.skips("metrics")), found.unclaimed, _read_metric_files,
                         key=lambda p: p.stem,  # the service: its file in every chunk holds its columns
                         check=lambda: c.check_columns("metrics", {p: c.csv_header(p) for p in files},
                                                       skip=["timestamp"]))


def read_metrics(root: Path, offset_s: float) -> pl.DataFrame | None:
    return whole(metric_reading(root), offset_s)


# ------------------------------------------------------------------ logs


def _split_head(df: pl.DataFrame) -> pl.DataFrame:
    """``raw`` → ``time``, ``level``, ``rest``: the groups of :data:`_LINE`, null where it does not match."""
    g = df.with_columns(pl.col("raw").str.extract_groups(_HEAD).alias("_g")).unnest("_g")
    rest = pl.col("raw").str.slice(pl.col("1").str.len_chars())
    ok = pl.col("1").is_not_null() & ~rest.str.contains("\n", literal=True)
    return g.select("raw", pl.when(ok).then(pl.col("2")).alias("time"), pl.when(ok).then(pl.col("3")).alias("level"),
                    pl.when(ok).then(rest).alias("rest"))


def _parse_log_lines(service: str, lines: list[str], path: Path, audit: c.TimeAudit | None = None) -> pl.DataFrame:
    """Raw lines → (ts, level, message); continuation lines (stack traces) inherit the previous line's time."""
    return _parse_services({service: lines}, path, audit)


def _top_level_type(opener: c.Opener, path: Path, first: str) -> str:
    """Type name of a JSON top level that is not an object: parsed only for the error message."""
    if first == "[":
        return "list"
    return type(next(c.stream_json(opener, path, ""), None)).__name__


LOG_BATCH_LINES = 100_000  # lines parsed in one polars pass: bounds the Python strings held at once


def _parse_services(batch: dict[str, list[str]], path: Path, audit: c.TimeAudit | None) -> pl.DataFrame:
    """:func:`_parse_log_lines` of several services in one pass (issue 11: a dump has hundreds of
    small services per file, and per-call polars overhead dominated). Same rows, times, messages,
    warnings and errors as one service at a time: a parse error re-runs the services one by one so
    the first one met in file order raises it, and the time audit runs per service, in order."""
    names = list(batch)
    sizes = [len(batch[n]) for n in names]
    starts = [0, *itertools.accumulate(sizes)][:-1]
    key = pl.Series("_k", np.repeat(np.arange(len(names), dtype=np.uint32), sizes))

    def label(i: int) -> str:
        k = bisect.bisect_right(starts, i) - 1
        return f"key '{names[k]}' item {i - starts[k]}"

    parts = _split_head(pl.DataFrame({"raw": pl.Series([x for n in names for x in batch[n]], dtype=pl.Utf8)}))
    try:
        times = c.parse_times(parts["time"], path, "line time", row_label=label)
    except InputError:
        if len(names) > 1:
            for n in names:  # raises the error the one-service-at-a-time order meets first
                _parse_log_lines(n, batch[n], path, audit)
        raise
    if audit is not None:
        for start, size in zip(starts, sizes):
            audit.series(path, times.slice(start, size), "line time", row_label=lambda i, start=start: label(start + i))
    head = pl.col("time").is_not_null()
    out = parts.with_columns(
        pl.Series("ts", times),
        pl.when(head).then(pl.col("rest").str.replace(_SPRING_PREFIX, "")).otherwise(pl.col("raw"))
        .str.replace_all(_BLANK_RUNS, " ").str.strip_chars().alias("message"),
        pl.when(head).then(c.normalise_level(pl.col("level"))).alias("level"),
        key,
    ).with_columns(pl.col("ts").forward_fill().over("_k"), pl.col("level").forward_fill().over("_k"))
    orphans = out.group_by("_k", maintain_order=True).agg(pl.col("ts").null_count().alias("n")).filter(pl.col("n") > 0)
    for k, n in orphans.iter_rows():
        log.warning("%s: key '%s': %d line(s) before the first timestamped line dropped", path, names[k], n)
    kept = out.filter(pl.col("ts").is_not_null())
    return kept.with_columns(pl.Series("service", names, dtype=pl.Utf8).gather(kept["_k"])).drop("_k")


def _read_log_file(path: Path, audit: c.TimeAudit | None = None) -> list[pl.DataFrame]:
    """Services' lines streamed (ijson kvitems) and parsed in batches of ~LOG_BATCH_LINES lines, so
    the file is never held whole."""
    opener = lambda: c.open_binary(path)
    first = c.json_first_byte(opener)
    if first != "{":
        raise InputError(path, "top level", "an object mapping service → list of log lines",
                         _top_level_type(opener, path, first))
    frames: list[pl.DataFrame] = []
    pending: dict[str, list[str]] = {}
    seen: set[str] = set()

    def flush() -> None:
        if pending:  # the canonical columns only: the raw line and its parsed pieces are not spilled
            frames.append(c.conform(_parse_services(pending, path, audit), "logs"))
            pending.clear()

    for service, lines in c.stream_json(opener, path, "", kv=True, lossy=True):
        bad = lines is not None and lines != [] and (
            not isinstance(lines, list) or not all(isinstance(x, str) for x in lines))
        if bad or service in pending:
            flush()  # what came before is parsed (and may raise) first, as one service at a time would be
        if bad:
            raise InputError(path, f"key '{service}'", "a list of log-line strings",
                             type(lines).__name__ if not isinstance(lines, list) else "a list with non-strings")
        if service in seen:  # a repeated key replaces the earlier one, as json.load does
            frames[:] = [f.filter(pl.col("service") != service) for f in frames]
        seen.add(service)
        if lines is None or lines == []:
            continue  # a service that logged nothing in this chunk (real: 13 of 27 TT services)
        pending[service] = lines
        if sum(map(len, pending.values())) >= LOG_BATCH_LINES:
            flush()
    flush()
    return frames


def log_reading(root: Path) -> LogReading:
    found = scan(root)
    return LogReading(files=found.files["logs"], skipped=list(found.skips("logs")), unclaimed=found.unclaimed,
                      read=_read_log_file, empty="no service with a timestamped line", label="eadro logs")


def read_logs(root: Path, offset_s: float) -> pl.DataFrame | None:
    return whole_logs(log_reading(root), offset_s)


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


_PLACE = {"_ti": pl.Int64, "_si": pl.Int64}  # where each span sits in its file, for messages


def _new_columns() -> dict[str, list]:
    return {k: [] for k in {**_SPAN_SCHEMA, **_PLACE}}


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
        if isinstance(start, bool) or isinstance(dur, bool) or not isinstance(start, (int, float)) \
                or not isinstance(dur, (int, float)):
            raise InputError(path, f"{where}.spans[{si}].startTime/duration", "numbers (µs)", (start, dur))
        if dur < 0:
            raise InputError(path, f"{where}.spans[{si}].duration", "a non-negative duration (µs)", dur)
        cols["trace_id"].append(tid)
        cols["span_id"].append(sid)
        cols["parent_id"].append(_parent(s.get("references")))
        cols["service"].append(service)
        cols["operation"].append(s.get("operationName") or "")
        cols["start_us"].append(int(start))
        cols["duration_us"].append(float(dur))
        cols["is_error"].append(_is_error(s.get("tags")))
        cols["_ti"].append(ti)
        cols["_si"].append(si)


def _chunk_frame(cols: dict[str, list], path: Path, audit: c.TimeAudit) -> pl.DataFrame:
    """The built chunk, its start times checked (naming trace and span), exact repeats dropped."""
    df = pl.DataFrame(cols, schema={**_SPAN_SCHEMA, **_PLACE})
    ti, si = df["_ti"], df["_si"]
    audit.series(path, df["start_us"], "startTime", row_label=lambda i: f"trace[{ti[i]}].spans[{si[i]}]")
    return df.drop(list(_PLACE)).unique(maintain_order=True)


def _span_chunks(path: Path, audit: c.TimeAudit) -> Iterator[pl.DataFrame]:
    """Span frames of at most SPAN_CHUNK_TRACES traces each, streamed from one spans file.

    Exact repeats are dropped per chunk, so only distinct records are held; records that share a
    (trace, span) id but differ are kept for :func:`stages.formats._common.dedupe_spans` to report."""
    label, opener, size = _span_source(path)
    cols, in_chunk = _new_columns(), 0
    with tqdm(total=size, unit="B", unit_scale=True, desc=f"spans {path.name}", disable=size < 50_000_000) as bar:
        try:
            for ti, trace in enumerate(_iter_traces(path, label, opener, bar)):
                _add_trace(cols, path, ti, trace)
                in_chunk += 1
                if in_chunk == SPAN_CHUNK_TRACES:
                    yield _chunk_frame(cols, path, audit)
                    cols, in_chunk = _new_columns(), 0
        except (zipfile.BadZipFile, zlib.error) as exc:
            raise InputError(path, None, "a valid zip archive", str(exc)) from None
    if in_chunk:
        yield _chunk_frame(cols, path, audit)


def _read_span_files(files: list[Path], audit: c.TimeAudit, skipped: list[tuple[Path, str]]
                     ) -> Iterator[pl.DataFrame]:
    for path in files:
        spans = 0
        for frame in _span_chunks(path, audit):
            spans += frame.height
            yield frame
        if not spans:
            skipped.append((path, "no span"))


def _canonical_spans(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Raw span chunks → canonical spans: exact repeats across chunks and files dropped first."""
    spans = pl.concat(frames).unique(maintain_order=True) if frames else pl.DataFrame(schema=_SPAN_SCHEMA)
    # times the reciprocal: what polars' division by a number does to two or more rows, but to a
    # single row too, so a bucket of one span gets the whole frame's bits
    return c.conform(spans.with_columns(pl.col("start_us").alias("start_ts"),
                                        (pl.col("duration_us") * (1 / US)).alias("duration_s")), "traces")


def _unpacked_size(path: Path) -> int:
    try:
        return _span_source(path)[2]
    except (OSError, InputError, zipfile.BadZipFile):
        return c.file_size(path)  # the read names the problem


def trace_reading(root: Path) -> TraceReading:
    found = scan(root)
    return TraceReading(
        files=found.files["traces"], skipped=list(found.skips("traces")), unclaimed=found.unclaimed,
        read=_read_span_files, prepare=_canonical_spans, label=f"eadro traces under {root}", size=_unpacked_size)


def read_traces(root: Path, offset_s: float) -> pl.DataFrame | None:
    return whole_traces(trace_reading(root), offset_s)


# ------------------------------------------------------------------ faults


def fault_entity(name: str, known: list[str]) -> str:
    """Container name → service: the longest known service named inside it, else strip the
    compose project prefix and the ``_N`` replica suffix (``proj_ts-auth-service_1`` → ``ts-auth-service``)."""
    hits = [k for k in known if k and k in name]
    if hits:
        return max(hits, key=len)
    m = re.match(r"^(?:[^_]+_)?(.+?)(?:_\d+)?$", name)
    return m.group(1) if m else name


def _read_fault_file(path: Path, known: list[str], audit: c.TimeAudit) -> pl.DataFrame:
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
        audit.value(path, start, f"{w}.start")
        rows["start_ts"].append(start)
        rows["end_ts"].append(start + int(round(f["duration"] * US)))
        rows["entity"].append(fault_entity(str(f["name"]), known))
        rows["kind"].append(str(f["fault"]))
    return pl.DataFrame(rows, schema={"start_ts": pl.Int64, "end_ts": pl.Int64, "entity": pl.Utf8, "kind": pl.Utf8})


def read_faults(root: Path, offset_s: float) -> pl.DataFrame | None:
    found = scan(root)
    files, skipped = found.files, found.skips("faults")
    c.warn_skipped("faults", skipped, found.unclaimed)
    if not files["faults"]:
        if skipped:
            c.require_rows("faults", None, [], skipped)
        return None
    known = sorted({p.stem for p in files["metrics"]})
    audit = c.TimeAudit("faults")
    frames = [_read_fault_file(p, known, audit) for p in files["faults"]]
    df = c.finish(frames, "faults", ["start_ts", "entity", "kind"]).unique(maintain_order=True)
    audit.finish(df["start_ts"])
    return c.shift(df, ["start_ts", "end_ts"], offset_s)
