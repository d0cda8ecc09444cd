"""GAIA MicroSS (CloudWise) raw layout → canonical frames.

Files are found by name anywhere under the root:

- metrics ``<instance>_<ip>_<metric>_<from>_<to>.csv`` (``timestamp,value``, epoch ms); the metric
  name may contain underscores, so the name is split on the dotted IP and the two trailing dates;
- traces ``trace_table_<instance>_<month>.csv``; times may be epoch numbers or date-time strings;
  an empty / ``None`` parent is a root; operation = url; error = status_code >= 400 or a
  message containing "error";
- business logs ``business_table_<instance>_<month>.csv`` (``datetime,service,message``); time and
  level come from the message ``time | LEVEL | ip | ip | instance | [trace id |] text``; lines
  without that header (continuations) inherit the previous line's time and level;
- faults ``run_table_<month>.csv`` (with or without the leading unnamed index column).

Fault messages in the run tables and what they become (kind; start; end). All start/end times
are parsed from the text; the entity is the ``service`` column (the instance, e.g. dbservice1):

=====================================================================  =================  =======================================
message pattern                                                        kind               window
=====================================================================  =================  =======================================
``[memory_anomalies] ... start at T and lasts N seconds ...``          memory_anomaly     [T, T+N]
``[cpu_anomalies] ... start at T and lasts N seconds``                 cpu_anomaly        [T, T+N]
``trigger the file moving program, start with T, last for N seconds``  file_moving        [T, T+N]
``trigger an access permission denied exception, will lasts an hour``  access_denied      [logged time, +3600 s]
``wait for N seconds ... login failure of the QR code expired``        login_failure      [logged time, +N s]
=====================================================================  =================  =======================================

Windows longer than a day are logging errors (some August ``cpu_anomalies`` rows claim ~30
days); they are clipped to the median duration of their kind, with a warning.

Skipped (not injections, ``NOT_FAULTS``): ``[normal ... label]`` lines, uploads of logs, redis
requests and ``write success`` lines, service lists / downstream calls, ``exception injection
failed`` errors (the injection did not happen), SQL error continuation rows and empty messages.
Any other row is an injection of unknown kind: kept as kind ``other`` (its own "start at/with T"
or the logged time; its "lasts N seconds" or 0) with a warning naming the rows. A negative
duration is an error naming the row.

Clocks: the public samples hold only run tables, so the relation between the naive date-time
strings and the epoch-ms metric/trace numbers cannot be checked here; strings are read as UTC
and every offset defaults to 0 (set ``datasets.<name>.offsets`` if a dump shows otherwise).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import polars as pl
from tqdm import tqdm

from stages.core.errors import InputError
from stages.core.frames import US, empty
from stages.core.params import ClockOffsets
from stages.formats import _common as c
from stages.formats._metric_points import MetricPoints
from stages.formats._log_reading import LogReading, whole as whole_logs
from stages.formats._metric_reading import MetricReading, whole
from stages.formats._trace_reading import TraceReading, whole as whole_traces

log = logging.getLogger(__name__)

DEFAULT_OFFSETS = ClockOffsets()
MAX_FAULT_S = 86_400  # longer injection windows are logging errors (see clip_implausible)

METRIC_NAME = re.compile(
    r"^(?P<instance>.+?)_(?P<ip>\d{1,3}(?:\.\d{1,3}){3})_(?P<metric>.+)_(?P<start>\d{4}-\d\d-\d\d)_(?P<end>\d{4}-\d\d-\d\d)\.csv$"
)
TRACE_COLUMNS = ["service_name", "trace_id", "span_id", "parent_id", "start_time", "end_time", "url", "status_code", "message"]
# "2021-07-01 11:54:27,616 | WARNING | 0.0.0.4 | 172.17.0.3 | dbservice1 | [trace |] text"
_HEADER = r"^\s*(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:[.,]\d+)?) \| (\w+) \| [^|]* \| [^|]* \| ([^|]*?) \| (.*)$"
_TRACE_PREFIX = r"^[0-9a-fA-F]{16,32} \| "
_TIME = r"(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:\.\d+)?)"
_SECONDS = r"(-?[0-9]+(?:\.[0-9]+)?)"  # signed: a negative duration is an error, not a skipped row

# (kind, regex on the text, group holding the start time or None = logged time, duration: group or constant)
FAULT_PATTERNS: tuple[tuple[str, str, bool, float | None], ...] = (
    ("memory_anomaly", rf"\[memory_anomalies\].*?start at {_TIME} and lasts {_SECONDS} seconds", True, None),
    ("cpu_anomaly", rf"\[cpu_anomalies\].*?start at {_TIME} and lasts {_SECONDS} seconds", True, None),
    ("file_moving", rf"file moving program, start with {_TIME}, last for {_SECONDS} seconds", True, None),
    ("access_denied", r"trigger an access permission denied exception()()", False, 3600.0),
    ("login_failure", rf"()wait for {_SECONDS} seconds.*login failure", False, None),
)
# Any other injection written in the same style ("[<kind>] trigger ..., start at T and lasts N seconds");
# the kind is the bracketed tag. Tags already covered above are excluded so no fault counts twice.
GENERIC_FAULT = rf"\[(\w+)\] trigger .*?, start at {_TIME} and lasts {_SECONDS} seconds"
SPECIFIC_TAGS = ("memory_anomalies", "cpu_anomalies")
# Run-table rows that are not injections (see the module docstring); searched in the message text.
NOT_FAULTS = (
    r"^\[normal [^\]]*label\]",  # end-of-fault markers
    r"upload \S+ logs on ",  # log shipping, successful or not
    r"exception injection failed",  # the injection did not happen
    r"the list of all available services",
    r"now call service:",
    r"write success$",
    r"request http://\S+ and param=",  # redis get/set requests
)
OTHER_KIND = "other"
# Window of a row of unknown kind: its own "start at/with T" (else the logged time) and "lasts N seconds" (else 0).
_OTHER_START = rf"start(?:s|ed)? (?:at|with|from) {_TIME}"
_OTHER_SECONDS = rf"(?:lasts?|last for|for) {_SECONDS} seconds"


# ------------------------------------------------------------------ files


_IP = re.compile(r"_\d{1,3}(?:\.\d{1,3}){3}_")
_PREFIXES = {"traces": "trace_table_", "logs": "business_table_", "faults": "run_table_"}
_PATTERNS = "<instance>_<ip>_<metric>_<from>_<to>.csv, trace_table_*, business_table_*, run_table_*"


def _modality(name: str) -> str | None:
    if METRIC_NAME.match(name):
        return "metrics"
    return next((m for m, prefix in _PREFIXES.items() if name.startswith(prefix)), None)


def scan(root: Path) -> c.Scan:
    """Files by name; a CSV named like none of the patterns is listed as skipped (a metric file
    when its name holds an IP, as GAIA metric names do), never silently ignored."""
    root = Path(root)
    out = c.Scan({"metrics": [], "traces": [], "logs": [], "faults": []})
    odd: list[tuple[Path, str]] = []
    for p in c.find(root, "*.csv", odd=odd):
        modality = _modality(p.name)
        if modality:
            out.files[modality].append(p)
        elif _IP.search(p.name):
            out.skip("metrics", p, "name outside the pattern <instance>_<ip>_<metric>_<YYYY-MM-DD>_<YYYY-MM-DD>.csv")
        else:
            out.unclaimed.append((p, f"name outside the GAIA patterns ({_PATTERNS})"))
    for p, why in odd:
        modality = _modality(p.name) or ("metrics" if _IP.search(p.name) else None)
        if modality:
            out.skip(modality, p, why)
        else:
            out.unclaimed.append((p, why))
    return out


def list_files(root: Path) -> dict[str, list[Path]]:
    return scan(root).files


def _drop_index(df: pl.DataFrame) -> pl.DataFrame:
    """August run tables carry pandas' unnamed index column; July ones do not."""
    unnamed = [col for col in df.columns if col == "" or col.startswith("Unnamed") or col.startswith("_duplicated")]
    return df.drop(unnamed)


# ------------------------------------------------------------------ metrics


def _read_metric_file(path: Path, audit: c.TimeAudit, points: MetricPoints, direct: pl.DataFrame | None = None) -> bool:
    """Adds one metric CSV to ``points``; False when it holds no data row (header only)."""
    m = METRIC_NAME.match(path.name)
    df = c.read_csv(path, ["timestamp", "value"], infer=True, direct=direct)
    if df.height == 0:
        return False
    ts = c.parse_times(df["timestamp"], path, "timestamp")
    audit.series(path, ts, "timestamp")
    value = df["value"].cast(pl.Float64) if df["value"].dtype.is_numeric() else c.to_float(df["value"], path, "value")
    if ts.null_count():
        keep = ts.is_not_null()
        ts, value = ts.filter(keep), value.filter(keep)
    points.add(m["instance"], ts, {m["metric"]: value})
    return True


def _read_metric_files(files: list[Path], audit: c.TimeAudit, points: MetricPoints) -> list[tuple[Path, str]]:
    skipped = []
    for p, direct in tqdm(c.direct_csvs(files), desc="gaia metrics", total=len(files), disable=len(files) < 50):
        if not _read_metric_file(p, audit, points, direct):
            skipped.append((p, "header only, no data row"))
    return skipped


def _series_key(path: Path) -> tuple[str, str] | str:
    """The one series a metric file holds (its files of other date ranges share it)."""
    m = METRIC_NAME.match(path.name)
    return (m["instance"], m["metric"]) if m else path.name


def metric_reading(root: Path) -> MetricReading:
    found = scan(root)
    return MetricReading(found.files["metrics"], list(found.skips("metrics")), found.unclaimed,
                         _read_metric_files, _series_key)


def read_metrics(root: Path, offset_s: float) -> pl.DataFrame | None:
    return whole(metric_reading(root), offset_s)


# ------------------------------------------------------------------ traces


def _read_trace_file(path: Path, audit: c.TimeAudit) -> Iterator[pl.DataFrame]:
    """One trace table's spans, a block of records at a time (:func:`_common.csv_blocks`): a table
    of several GB is never held as text and frame at once. Errors name the file's own rows."""
    for first, df in c.csv_blocks(path, TRACE_COLUMNS):
        yield c.conform(_trace_rows(df, first, path, audit), "traces")


def _trace_rows(df: pl.DataFrame, first: int, path: Path, audit: c.TimeAudit) -> pl.DataFrame:
    """Spans of the file's records from row ``first`` (``df``)."""
    def row(i: int) -> str:
        return c.row_of(first + i)

    start, end = c.parse_time_columns(df, ["start_time", "end_time"], path, row_label=row)
    for name, series in (("start_time", start), ("end_time", end)):
        if series.is_null().any():
            i = int(series.is_null().arg_true()[0])
            raise InputError(path, f"{row(i)} column '{name}'", "a time", df[name][i])
        audit.series(path, series, name, row_label=row)
    backwards = end < start
    if backwards.any():
        i = int(backwards.arg_true()[0])
        raise InputError(path, f"{row(i)} column 'end_time'", f"a time >= start_time ({df['start_time'][i]})",
                         df["end_time"][i])
    status = c.to_float(df["status_code"], path, "status_code", row_label=row)
    parent = pl.col("parent_id").str.strip_chars()
    return df.with_columns(
        pl.Series("start_ts", start),
        ((end - start) / US).alias("duration_s"),
        pl.when(parent.is_null() | parent.str.to_lowercase().is_in(["", "none", "null", "nan", "0"]))
        .then(None).otherwise(parent).alias("parent_id"),
        pl.col("service_name").alias("service"),
        pl.col("url").fill_null("").alias("operation"),
        ((pl.Series(status).fill_null(0) >= 400)
         | pl.col("message").fill_null("").str.to_lowercase().str.contains("error")).alias("is_error"),
    )


def _read_trace_files(files: list[Path], audit: c.TimeAudit, skipped: list[tuple[Path, str]]
                      ) -> Iterator[pl.DataFrame]:
    for p in files:
        rows = 0
        for frame in _read_trace_file(p, audit):
            rows += frame.height
            yield frame
        if rows == 0:
            skipped.append((p, "header only, no data row"))


def trace_reading(root: Path) -> TraceReading:
    found = scan(root)
    return TraceReading(
        files=found.files["traces"], skipped=list(found.skips("traces")), unclaimed=found.unclaimed,
        read=_read_trace_files, prepare=lambda frames: pl.concat(frames) if frames else empty("traces"),
        label=f"gaia traces under {root}")


def read_traces(root: Path, offset_s: float) -> pl.DataFrame | None:
    return whole_traces(trace_reading(root), offset_s)


# ------------------------------------------------------------------ message parsing


def header_fields(m: pl.Expr) -> list[pl.Expr]:
    """``_time``, ``_level``, ``_instance``, ``_text``: the groups of :data:`_HEADER` on the stripped
    message ``m``, null where it does not match, without the regex's capture engine (most of a
    business-log read, issue 11). A whole-message ``contains`` (no captures) decides the match;
    no header field may hold a ``|``, so on a match the groups are the text between the first
    five ``|``: time + " ", " " + level + " ", two fields, " " + instance + " ", " " + text."""
    match = m.str.contains(_HEADER)
    part = m.str.splitn("|", 6)

    def field(i: int) -> pl.Expr:
        return pl.when(match).then(part.struct.field(f"field_{i}"))

    return [
        field(0).str.strip_suffix(" ").alias("_time"),
        field(1).str.strip_prefix(" ").str.strip_suffix(" ").alias("_level"),
        field(4).str.strip_prefix(" ").str.strip_suffix(" ").alias("_instance"),
        field(5).str.strip_prefix(" ").alias("_text"),
    ]


def split_messages(df: pl.DataFrame, path: Path, first_row: int = 0) -> pl.DataFrame:
    """Add time (µs), level, instance and text parsed from the ``message`` header; ``_row`` is each
    record's 0-based row in the file (``df`` holds the file's rows from ``first_row``)."""
    g = (df.with_row_index("_row", offset=first_row)
         .with_columns(pl.col("message").fill_null("").str.strip_chars().alias("_m")))
    g = g.with_columns(header_fields(pl.col("_m")))
    times = c.parse_times(g["_time"], path, "message time", row_label=lambda i: c.row_of(first_row + i))
    return g.with_columns(
        pl.Series("_ts", times),
        pl.col("_text").str.replace(_TRACE_PREFIX, "").alias("_text"),
    )


# ------------------------------------------------------------------ logs


LOG_SLICE_ROWS = 100_000  # records parsed at a time: the parse's helper columns stay small (issue 11)


def _read_log_file(path: Path, audit: c.TimeAudit) -> Iterator[pl.DataFrame]:
    """One business table's lines, parsed :data:`LOG_SLICE_ROWS` records at a time (the parse held
    ~5× the file at once) and passed on slice by slice (in the logs stage, to the spill: a table
    of several GB is never whole in memory); a continuation line takes the time and level of the
    header before it, in its slice or the ones before."""
    last_ts, last_level, orphans = None, None, 0
    for first, block in c.csv_blocks(path, ["service", "message"], lossy=True):
        for g in _parsed_slices(_drop_index(block), path, first, audit):
            head = pl.col("_time").is_not_null()
            ts = pl.col("_ts").forward_fill()
            level = pl.when(head).then(c.normalise_level(pl.col("_level"))).otherwise(None).forward_fill()
            if last_ts is not None:  # lines continuing the last header of the slice before
                ts, level = ts.fill_null(last_ts), level.fill_null(pl.lit(last_level, pl.Utf8))
            out = g.filter(pl.col("_m") != "").with_columns(
                ts.alias("ts"),
                level.alias("level"),
                pl.when(head).then(pl.col("_text")).otherwise(pl.col("_m")).alias("message"),
                pl.coalesce(pl.col("service").str.strip_chars().replace("", None), pl.col("_instance"))
                .alias("service"),
            )
            if out.height:
                last_ts, last_level = out["ts"][-1], out["level"][-1]
            orphans += out["ts"].is_null().sum()
            # the canonical columns only: the parse's helper columns are freed slice by slice
            yield c.conform(out.filter(pl.col("ts").is_not_null()), "logs")
    if orphans:
        log.warning("%s: %d line(s) before the first timestamped line dropped", path, orphans)


def _parsed_slices(df: pl.DataFrame, path: Path, first: int, audit: c.TimeAudit) -> Iterator[pl.DataFrame]:
    """:func:`split_messages` of :data:`LOG_SLICE_ROWS` records at a time, each audited."""
    for start in range(0, max(df.height, 1), LOG_SLICE_ROWS):
        g = split_messages(df.slice(start, LOG_SLICE_ROWS), path, first + start)
        audit.series(path, g["_ts"], "message time", rows=g["_row"])
        yield g


def log_reading(root: Path) -> LogReading:
    found = scan(root)
    return LogReading(files=found.files["logs"], skipped=list(found.skips("logs")), unclaimed=found.unclaimed,
                      read=_read_log_file, empty="no log line with a time", label="gaia logs")


def read_logs(root: Path, offset_s: float) -> pl.DataFrame | None:
    return whole_logs(log_reading(root), offset_s)


# ------------------------------------------------------------------ faults


def _window(hit: pl.DataFrame, start: pl.Series, dur: pl.Series, path: Path, kind, audit: c.TimeAudit
            ) -> pl.DataFrame:
    """Fault rows from parsed starts and durations; a negative duration is an error naming the row."""
    negative = (dur < 0).fill_null(False)
    if negative.any():
        i = int(negative.arg_true()[0])
        raise InputError(path, f"{c.row_of(int(hit['_row'][i]))} column 'message'",
                         "a non-negative fault duration", hit["_text"][i])
    audit.series(path, start, "message start time", rows=hit["_row"])
    entity = pl.coalesce(pl.col("service").str.strip_chars().replace("", None), pl.col("_instance").str.strip_chars())
    return hit.select(entity.alias("entity")).with_columns(
        pl.Series("start_ts", start),
        (pl.Series(start) + (dur * US).round(0).cast(pl.Int64)).alias("end_ts"),
        (kind if isinstance(kind, pl.Series) else pl.lit(kind)).alias("kind"),
    )


def _faults_of(g: pl.DataFrame, path: Path, audit: c.TimeAudit) -> pl.DataFrame:
    frames = []
    claimed = pl.Series([False] * g.height, dtype=pl.Boolean)
    for kind, pattern, has_start, constant in FAULT_PATTERNS:
        matches = g["_text"].str.contains(pattern).fill_null(False)
        claimed = claimed | matches
        hit = g.filter(matches).with_columns(pl.col("_text").str.extract_groups(pattern).alias("_f")).unnest("_f")
        if hit.height == 0:
            continue
        if has_start:
            rows = hit["_row"]
            start = c.parse_times(hit["1"], path, f"message start time ({kind})",
                                  row_label=lambda i: c.row_of(int(rows[i])))
        else:
            start = hit["_ts"]
        dur = pl.Series([constant] * hit.height, dtype=pl.Float64) if constant is not None else hit["2"].cast(pl.Float64)
        frames.append(_window(hit, start, dur, path, kind, audit))
    generic_rows = g["_text"].str.contains(GENERIC_FAULT).fill_null(False)
    claimed = claimed | generic_rows
    generic = g.filter(generic_rows).with_columns(
        pl.col("_text").str.extract_groups(GENERIC_FAULT).alias("_f")
    ).unnest("_f").filter(~pl.col("1").is_in(SPECIFIC_TAGS))
    if generic.height:
        rows = generic["_row"]
        start = c.parse_times(generic["2"], path, "message start time",
                              row_label=lambda i: c.row_of(int(rows[i])))
        frames.append(_window(generic, start, generic["3"].cast(pl.Float64), path, generic["1"], audit))
    skip = pl.any_horizontal([pl.col("_text").str.contains(p) for p in NOT_FAULTS]).fill_null(False)
    other = g.filter(~claimed).filter(~skip & (pl.col("_text").str.strip_chars() != ""))
    if other.height:
        frames.append(_other_faults(other, path, audit))
    return pl.concat(frames) if frames else pl.DataFrame(schema={"entity": pl.Utf8, "start_ts": pl.Int64,
                                                                  "end_ts": pl.Int64, "kind": pl.Utf8})


def _other_faults(other: pl.DataFrame, path: Path, audit: c.TimeAudit) -> pl.DataFrame:
    """Rows that are neither a known injection nor a known non-injection: kept as kind 'other'."""
    rows = other["_row"]
    named = other["_text"].str.extract(_OTHER_START, 1)
    start = c.parse_times(named, path, "message start time", row_label=lambda i: c.row_of(int(rows[i])))
    start = start.fill_null(other["_ts"])
    dur = other["_text"].str.extract(_OTHER_SECONDS, 1).cast(pl.Float64).fill_null(0.0)
    listed = ", ".join(c.row_of(int(r)) for r in rows.head(10))
    log.warning("%s: %d row(s) name no known fault kind and are kept as kind '%s' (%s%s; first: %r)", path,
                other.height, OTHER_KIND, listed, ", ..." if other.height > 10 else "", other["_text"][0][:120])
    return _window(other, start, dur, path, OTHER_KIND, audit)


def _read_run_table(path: Path, audit: c.TimeAudit) -> pl.DataFrame:
    df = _drop_index(c.read_csv(path, ["service", "message"]))
    g = split_messages(df, path).filter(pl.col("_time").is_not_null())
    return _faults_of(g, path, audit)


def clip_implausible(df: pl.DataFrame) -> pl.DataFrame:
    """Windows longer than MAX_FAULT_S are mis-logged (real August run table: 'cpu_anomalies ... lasts
    2654764.7 seconds' for a sort that runs ~3 s); they get the median plausible duration of their kind."""
    dur = pl.col("end_ts") - pl.col("start_ts")
    bad = dur > MAX_FAULT_S * US
    n = df.filter(bad).height
    if n == 0:
        return df
    typical = df.filter(~bad).group_by("kind").agg(dur.median().round(0).cast(pl.Int64).alias("_typ"))
    out = df.join(typical, on="kind", how="left", maintain_order="left")
    log.warning("gaia faults: %d window(s) longer than %d s clipped to their kind's median duration", n, MAX_FAULT_S)
    out = out.with_columns(pl.when(bad).then(pl.col("start_ts") + pl.col("_typ")).otherwise(pl.col("end_ts")).alias("end_ts"))
    return out.filter(pl.col("end_ts").is_not_null()).drop("_typ")


def read_faults(root: Path, offset_s: float) -> pl.DataFrame | None:
    found = scan(root)
    files, skipped = found.files["faults"], list(found.skips("faults"))
    c.warn_skipped("faults", skipped, found.unclaimed)
    if not files:
        if skipped:
            c.require_rows("faults", None, files, skipped)
        return None
    audit = c.TimeAudit("faults")
    df = c.finish([_read_run_table(p, audit) for p in files], "faults", ["start_ts", "entity", "kind"])
    audit.finish(df["start_ts"])
    df = clip_implausible(df)
    n = df.height
    df = df.unique(maintain_order=True)
    if n != df.height:
        log.info("gaia faults: %d duplicate fault rows (same window, entity, kind) merged", n - df.height)
    return c.shift(df, ["start_ts", "end_ts"], offset_s)
