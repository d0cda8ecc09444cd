"""MSDS (multi-source observability dataset, OpenStack) raw layout → canonical frames.

Files under the root are classified by content, not by folder, so the Zenodo layout, the
public repository samples and the synthetic dump all work:

- metrics: any CSV whose header has Glances' ``now`` column (``wally1NN_metrics*.csv``,
  ``glances_out.csv``). ``now`` carries a zone name (``2019-10-11 21:11:16 CEST`` = UTC+2,
  ``CET`` = UTC+1). Entity = the ``wally1NN`` node named in the file name, else the file stem.
  Every other column holding numbers is a metric; repeated seconds are kept as points (the
  metrics stage aggregates them onto its grid).
- logs: any CSV whose header has ``@timestamp`` (Elasticsearch/Kibana export). **service =
  programname** (the OpenStack service that wrote the line, e.g. ``nova-compute``; the same
  vocabulary as trace services), falling back to Hostname when empty. level = log_level.
- traces: OSProfiler JSON, one trace per file (nested ``children``). trace_id = the profiler
  ``base_id``; span_id = a node's ``trace_id`` and parent_id its ``parent_id`` (null when it is
  the base id: a top-level call). start_ts = ``meta.raw_payload.<name>-start.timestamp``
  (OSProfiler writes UTC), duration = (``finished`` - ``started``) ms. **service = info.project**
  (keystone, glance, nova, ...; falls back to info.service), operation = ``<name> <METHOD> <path>``
  with ids masked. Error = an exception recorded in ``info``/the stop payload.
- faults: Rally report JSON hooks (``tasks[].subtasks[].workloads[].hooks[].results[]``): window =
  [started_at, finished_at] (epoch s), kind = ``container_restart``, entity = the containers the
  hook's script restarted (bare names it printed, e.g. ``nova_compute``), else the script name.
  Hooks that exited non-zero are kept: the restart happened on some nodes (the third-party
  labels include them). Only when a root holds no Rally hook at all are third-party
  ``anomaly_label_*.csv`` files read instead (their epoch columns, kind = anomaly_type,
  entity = node_name or ``openstack``), so the two never double-count one injection.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
from tqdm import tqdm

from stages.core.errors import InputError
from stages.core.frames import MODALITIES, SPAN_SCHEMA, US
from stages.core.params import ClockOffsets
from stages.formats import _common as c
from stages.formats import _osprofiler as osp
from stages.formats._metric_points import MetricPoints
from stages.formats._log_reading import LogReading, whole as whole_logs
from stages.formats._metric_reading import MetricReading, whole
from stages.formats._trace_reading import SORT_KEYS, TraceReading, whole as whole_traces

log = logging.getLogger(__name__)

DEFAULT_OFFSETS = ClockOffsets()

_NODE = re.compile(r"(wally\d+)")
_CONTAINER_LINE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
LABEL_COLUMNS = ["anomaly_type", "start_timestamp", "end_timestamp"]


# ------------------------------------------------------------------ files


def _json_kind(path: Path) -> str | None:
    """'rally' | 'osprofiler' | None, from the first 64 KiB (both formats name their keys early)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536).decode("utf-8", errors="replace")
    except OSError as exc:
        raise InputError(path, None, "a readable file", str(exc)) from None
    if '"rally_version"' in head or '"tasks"' in head:
        return "rally"
    if '"children"' in head or '"meta.raw_payload.' in head:
        return "osprofiler"
    return None


def _guess(name: str) -> str | None:
    """The modality a file that could not be classified by content was probably meant for."""
    low = name.lower()
    if _NODE.search(low) or "metric" in low or "glances" in low:
        return "metrics"
    if low.startswith("anomaly_label"):
        return "faults"
    if "log" in low:
        return "logs"
    return None


def scan(root: Path, modality: str | None = None) -> c.Scan:
    """Classify every CSV / JSON under ``root`` by content; list what is skipped and why.

    With ``modality`` only the files that decide that modality are opened (issue 11): CSV headers
    for metrics and logs, the first 64 KiB of each JSON for traces, whole Rally reports for faults;
    the other modalities' lists stay empty and their files are listed when they are read.
    """
    root = Path(root)
    want = set(MODALITIES if modality is None else (modality,))
    out = c.Scan({"metrics": [], "traces": [], "logs": [], "faults": []})
    odd: list[tuple[Path, str]] = []
    walked = c.walk_text(root)  # once for both patterns: a dump holds thousands of trace files
    csvs = c.find(root, "*.csv", odd=odd, walked=walked)
    for p in csvs if want & {"metrics", "logs"} else ():
        header = c.csv_header(p)
        if "now" in header:
            out.files["metrics"].append(p)
        elif "@timestamp" in header:
            out.files["logs"].append(p)
        elif not p.name.startswith("anomaly_label_"):
            why = "no Glances 'now' and no Elasticsearch '@timestamp' column"
            guess = _guess(p.name)
            if guess in ("metrics", "logs"):
                out.skip(guess, p, why)
            else:
                out.unclaimed.append((p, why))
    rally, labels = [], [p for p in csvs if p.name.startswith("anomaly_label_")]
    # odd JSON entries are named per modality whatever is read; the files are listed only when read
    jsons = c.find(root, "*.json", odd=odd, walked=walked, odd_only=not want & {"traces", "faults"})
    for p in jsons if want & {"traces", "faults"} else ():
        kind = _json_kind(p)
        if kind == "rally":
            rally.append(p)
        elif kind == "osprofiler":
            out.files["traces"].append(p)
        else:
            out.unclaimed.append((p, "neither a Rally report nor an OSProfiler trace"))
    for p, why in odd:
        guess = _guess(p.name) or ("traces" if p.suffix == ".json" else None)
        if guess:
            out.skip(guess, p, why)
        else:
            out.unclaimed.append((p, why))
    if "faults" not in want:
        return out
    if any(_rally_hook_count(p) for p in rally):
        out.files["faults"] = rally
        out.unclaimed += [(p, "not read: the Rally reports' hooks are the fault record") for p in labels]
    else:
        out.files["faults"] = labels
    return out


def list_files(root: Path) -> dict[str, list[Path]]:
    return scan(root).files


def _rally_hook_count(path: Path) -> int:
    return sum(len(h.get("results") or []) for _, h in _rally_hooks(c.load_json(path), path))


# ------------------------------------------------------------------ metrics


def _read_metric_file(path: Path, audit: c.TimeAudit, points: MetricPoints) -> bool:
    """Adds one Glances CSV to ``points``; False when it holds no data row (header only)."""
    df = c.read_csv(path, ["now"], infer=True)
    if df.height == 0:
        return False
    ts = c.parse_times(df["now"], path, "now")
    audit.series(path, ts, "now")
    keep = ts.is_not_null()
    if not keep.all():
        log.warning("%s: %d row(s) without a time dropped", path, int((~keep).sum()))
        df, ts = df.filter(keep), ts.filter(keep)
    c.melt_metrics(df, ts, _node(path), path, skip=["now"], points=points)
    return True


def _time_shape(path: Path) -> tuple[str, str, int] | None:
    """``_common``'s fixed-shape reading (separator, zone suffix, µs to subtract) of a Glances file's
    first time; None when the file has no data line or that time ends in no known zone name."""
    try:
        with open(path, "rb") as fh:
            fh.readline()
            first = fh.readline().decode("utf-8", errors="replace")
    except OSError:
        return None
    value = first.split(",", 1)[0].strip().strip('"')
    return c._fixed_zone(pl.Series([value]), 0.0) if value else None


_TOGETHER_BYTES = 256 * 2**20  # input read per query: memory stays bounded at any dump size


def _file_groups(files: list[Path]) -> list[list[Path]]:
    """Consecutive files, up to ``_TOGETHER_BYTES`` of input and ``c.QUERY_FILES`` files per group."""
    return c.byte_groups(files, [c.file_size(p) for p in files], _TOGETHER_BYTES, c.QUERY_FILES)


def _read_metric_files_together(files: list[Path], headers: list[list[str]], audit: c.TimeAudit,
                                points: MetricPoints) -> bool:
    """Adds these Glances CSVs to ``points`` from one polars query over all of them, or adds nothing
    and returns False so that :func:`_read_metric_file` reads them one by one.

    One ``collect_all`` reads the files in parallel and parses their times as it goes (issue 11:
    per-file reads and time parses were ~45% of a Glances read). It is taken only where the
    file-by-file path would make the same points: the same header in every file, every cell of a
    metric column a number or empty (polars' Float64 parse, the value an Int64 read cast to
    Float64 gives), no column all empty in a file (that path skips it as "not a metric"), at least
    one data row per file, and every time of one fixed shape, the one every file's first time has
    (``_common``'s: ``YYYY-MM-DD`` then `` `` or ``T``, ``HH:MM:SS``, one known zone name, ``Z`` or
    none; no fraction), checked and parsed by ``_common``'s fixed-shape expressions. Anything else,
    and any parse error, goes the file-by-file way, which names the file, row and cell
    (``tests/test_reader_equivalence.py`` compares the two)."""
    if len(files) < 2:
        return False
    head = headers[0]
    if (any(h != head for h in headers) or "now" not in head or len(set(head)) != len(head)
            or any(not h or h.startswith("Unnamed") or "\ufffd" in h or h.startswith("_") for h in head)):
        return False
    shapes = {_time_shape(p) for p in files}
    if len(shapes) != 1 or None in shapes:
        return False
    sep, suffix, shift_us = shapes.pop()
    schema = {h: pl.String if h == "now" else pl.Float64 for h in head}
    # the format of a column without fractions: a time with one parses to null, and the file-by-file path takes it
    times = [c._fixed_parse("now", sep, suffix, shift_us, longest=19 + len(suffix), comma=False).alias("_ts"),
             pl.col("now").str.contains(c._fixed_pattern(sep) + suffix + "$").alias("_fits")]
    try:
        parts = pl.collect_all([pl.scan_csv(p, schema=schema, quote_char='"', glob=False).with_columns(times)
                                for p in files])
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException, OSError):
        return False
    metrics = [h for h in head if h != "now"]
    if not metrics:
        return False
    for part in parts:
        if part.height == 0:  # no data row: the file-by-file path lists the file as skipped
            return False
        nulls = part.null_count().row(0, named=True)
        if nulls["now"] or nulls["_ts"] or not part["_fits"].all():
            return False  # a time missing, of another shape or zone, or no date
        if any(nulls[m] == part.height for m in metrics):
            return False  # a column empty in a file: the file-by-file path skips it there
    names = sorted(metrics)  # the order MetricPoints ranks them in: its rows then need no reordering
    for p, part, block in zip(files, parts, _blocks_in_one_array(parts, names)):
        ts = part["_ts"]
        audit.series(p, ts, "now")
        # as melt_metrics would add them: every column is Float64 by the schema, none all empty
        c.note_dropped(p, points.add_rows(_node(p), ts, names, block))
    return True


def _blocks_in_one_array(parts: list[pl.DataFrame], names: list[str]) -> list[np.ndarray]:
    """Each frame's ``names`` columns as a C-order (rows, metrics) Float64 block, NaN where null,
    the blocks consecutive slices of one NumPy array.

    The columns are copied in chunk by chunk (a read's column comes in several chunks) straight
    into the row layout MetricPoints orders rows in, instead of one ``to_numpy`` copy per column
    and a second copy into rows: that first touched one small array per column, ~2,300 page
    faults per 1.4 M values (NumPy asks for huge pages for an array this size)."""
    buf = np.empty(sum(part.height for part in parts) * len(names), np.float64)
    out, at = [], 0
    for part in parts:
        block = buf[at:at + part.height * len(names)].reshape(part.height, len(names))
        for j, name in enumerate(names):
            pos = 0
            for chunk in part[name].get_chunks():
                block[pos:pos + chunk.len(), j] = chunk.to_numpy()  # a view unless the chunk holds nulls
                pos += chunk.len()
        out.append(block)
        at += block.size
    return out


def _node(path: Path) -> str:
    """The node (entity) a Glances file's points belong to."""
    m = _NODE.search(path.name)
    return m.group(1) if m else path.stem


def metric_reading(root: Path, together: bool = True) -> MetricReading:
    """``together=False``: every file on its own (tests compare the two ways)."""
    found = scan(root, "metrics")
    files = found.files["metrics"]
    headers = {p: c.csv_header(p) for p in files}

    def read(some: list[Path], audit: c.TimeAudit, points: MetricPoints) -> list[tuple[Path, str]]:
        skipped = []
        for group in _file_groups(some) if together else [[p] for p in some]:
            if len(group) > 1 and _read_metric_files_together(group, [headers[p] for p in group], audit, points):
                continue
            for p in tqdm(group, desc="msds metrics", disable=len(group) < 20):
                if not _read_metric_file(p, audit, points):
                    skipped.append((p, "header only, no data row"))
        return skipped

    return MetricReading(files, list(found.skips("metrics")), found.unclaimed, read, key=_node,
                         check=lambda: c.check_columns("metrics", headers, skip=["now"]))


def read_metrics(root: Path, offset_s: float, together: bool = True) -> pl.DataFrame | None:
    """``together=False``: every file on its own (tests compare the two ways)."""
    return whole(metric_reading(root, together), offset_s)


# ------------------------------------------------------------------ logs


def _read_log_file(path: Path, audit: c.TimeAudit) -> Iterator[pl.DataFrame]:
    """One Elasticsearch export's lines, a block of records at a time (:func:`_common.csv_blocks`):
    an export of several GB never sits in memory whole (issue 11), and in the logs stage each
    block goes to the spill as it is parsed. Every step is row by row, so the blocks together are
    the whole file's lines; a bad time is named by its row in the file."""
    missing = 0
    for first, df in c.csv_blocks(path, ["@timestamp", "Payload"], lossy=True):
        def row(i: int, first: int = first) -> str:  # the record's row in the file, not in the block
            return c.row_of(first + i)

        ts = c.parse_times(df["@timestamp"], path, "@timestamp", row_label=row)
        audit.series(path, ts, "@timestamp", row_label=row)
        blank = pl.lit(None, dtype=pl.Utf8)
        prog = pl.col("programname").str.strip_chars().replace("", None) if "programname" in df.columns else blank
        host = pl.col("Hostname").str.strip_chars().replace("", None) if "Hostname" in df.columns else blank
        level = pl.col("log_level") if "log_level" in df.columns else blank
        out = df.with_columns(
            pl.Series("ts", ts),
            pl.coalesce(prog, host, pl.lit("unknown")).alias("service"),
            c.normalise_level(level).alias("level"),
            pl.col("Payload").fill_null("").str.replace_all(r"\s+", " ").str.strip_chars().alias("message"),
        )
        del df
        missing += out["ts"].is_null().sum()
        # the canonical columns only: the export's own (the raw payload, hosts, modules) are not spilled
        yield c.conform(out.filter(pl.col("ts").is_not_null()), "logs")
    if missing:
        log.warning("%s: %d row(s) without @timestamp dropped", path, missing)


def log_reading(root: Path) -> LogReading:
    found = scan(root, "logs")
    return LogReading(files=found.files["logs"], skipped=list(found.skips("logs")), unclaimed=found.unclaimed,
                      read=_read_log_file, empty="no log line with a time", label="msds logs")


def read_logs(root: Path, offset_s: float) -> pl.DataFrame | None:
    return whole_logs(log_reading(root), offset_s)


# ------------------------------------------------------------------ traces


_FRAME_SPANS = 200_000  # spans of consecutive plain files gathered into one frame at most


def _read_trace_files(files: list[Path], audit: c.TimeAudit, skipped: list[tuple[Path, str]]
                      ) -> Iterator[pl.DataFrame]:
    cols: dict[str, list] = {k: [] for k in SPAN_SCHEMA}  # spans of consecutive plain files, one frame

    def flush() -> Iterator[pl.DataFrame]:
        if cols["span_id"]:
            yield pl.DataFrame(cols, schema=SPAN_SCHEMA)
            for v in cols.values():
                v.clear()

    for p in tqdm(files, desc="msds traces", disable=len(files) < 100):
        rows = osp.walk(osp.load(p), p)
        if not rows["span_id"]:
            skipped.append((p, "a trace without spans"))
            continue
        spans = osp.place(rows, p, audit)
        if spans is None:
            yield from flush()
            yield osp.place_polars(rows, p, audit)
        else:
            for k, v in spans.items():
                cols[k] += v
            if len(cols["span_id"]) >= _FRAME_SPANS:
                yield from flush()
    yield from flush()


def trace_reading(root: Path) -> TraceReading:
    found = scan(root, "traces")
    return TraceReading(
        files=found.files["traces"], skipped=list(found.skips("traces")), unclaimed=found.unclaimed,
        read=_read_trace_files, prepare=lambda frames: c.finish(frames, "traces", SORT_KEYS),
        label=f"msds traces under {root}")


def read_traces(root: Path, offset_s: float) -> pl.DataFrame | None:
    return whole_traces(trace_reading(root), offset_s)


# ------------------------------------------------------------------ faults


def _rally_hooks(data, path: Path):
    """(where, hook) for every hook of every workload in a Rally JSON report."""
    tasks = c.expect_key(data, "tasks", path, "")
    for ti, task in enumerate(tasks or []):
        for si, sub in enumerate(c.expect_key(task, "subtasks", path, f"tasks[{ti}]") or []):
            where = f"tasks[{ti}].subtasks[{si}]"
            for wi, work in enumerate(c.expect_key(sub, "workloads", path, where) or []):
                for hi, hook in enumerate(work.get("hooks") or []):
                    yield f"{where}.workloads[{wi}].hooks[{hi}]", hook


def _restarted(hook: dict, result: dict) -> str:
    names: list[str] = []
    for item in ((result.get("output") or {}).get("complete") or []):
        for text in item.get("data") or []:
            if isinstance(text, str) and text.startswith("StdOut:"):
                for line in text[len("StdOut:"):].splitlines():
                    line = line.strip()
                    if _CONTAINER_LINE.match(line) and "_" in line and line not in names:
                        names.append(line)
    if names:
        return ",".join(sorted(names))
    call = str(((hook.get("config") or {}).get("action") or {}).get("sys_call", "hook"))
    stem = Path(call.split()[-1]).stem
    return re.sub(r"^restart_|_(containers?|nodes?)$", "", stem) or stem


def _hook_kind(hook: dict) -> str:
    """Real MSDS hooks restart containers; a hook script named ``inject_<kind>.sh`` names its kind."""
    call = str(((hook.get("config") or {}).get("action") or {}).get("sys_call", ""))
    m = re.search(r"inject_(\w+)\.sh", call)
    return m.group(1) if m else "container_restart"


def _read_rally(path: Path, audit: c.TimeAudit) -> pl.DataFrame:
    rows = {"start_ts": [], "end_ts": [], "entity": [], "kind": []}
    for where, hook in _rally_hooks(c.load_json(path), path):
        for ri, res in enumerate(hook.get("results") or []):
            start, end = res.get("started_at"), res.get("finished_at")
            if start is None:
                start = end
            place = f"{where}.results[{ri}].started_at/finished_at"
            if not isinstance(start, (int, float)) or not isinstance(end, (int, float)) or end < start:
                raise InputError(path, place, "epoch seconds with finished_at >= started_at", (start, end))
            rows["start_ts"].append(int(round(start * US)))
            rows["end_ts"].append(int(round(end * US)))
            audit.value(path, rows["start_ts"][-1], place)
            audit.value(path, rows["end_ts"][-1], place)
            rows["entity"].append(_restarted(hook, res))
            rows["kind"].append(_hook_kind(hook))
    return pl.DataFrame(rows, schema={"start_ts": pl.Int64, "end_ts": pl.Int64, "entity": pl.Utf8, "kind": pl.Utf8})


def _read_labels(path: Path, audit: c.TimeAudit) -> pl.DataFrame:
    df = c.read_csv(path, LABEL_COLUMNS)
    start = c.parse_times(df["start_timestamp"], path, "start_timestamp")
    end = c.parse_times(df["end_timestamp"], path, "end_timestamp")
    audit.series(path, start, "start_timestamp")
    audit.series(path, end, "end_timestamp")
    bad = (end < start).fill_null(False)
    if bad.any():
        i = int(bad.arg_true()[0])
        raise InputError(path, f"{c.row_of(i)} column 'end_timestamp'",
                         f"a time >= start_timestamp ({df['start_timestamp'][i]})", df["end_timestamp"][i])
    entity = pl.col("node_name") if "node_name" in df.columns else pl.lit("openstack")
    return df.with_columns(pl.Series("start_ts", start), pl.Series("end_ts", end), entity.alias("entity"),
                           pl.col("anomaly_type").alias("kind"))


def read_faults(root: Path, offset_s: float) -> pl.DataFrame | None:
    found = scan(root, "faults")
    files, skipped = found.files["faults"], list(found.skips("faults"))
    c.warn_skipped("faults", skipped, found.unclaimed)
    if not files:
        if skipped:
            c.require_rows("faults", None, files, skipped)
        return None
    audit = c.TimeAudit("faults")
    frames = [_read_rally(p, audit) if p.suffix == ".json" else _read_labels(p, audit) for p in files]
    df = c.finish(frames, "faults", ["start_ts", "entity", "kind"]).unique(maintain_order=True)
    audit.finish(df["start_ts"])
    return c.shift(df, ["start_ts", "end_ts"], offset_s)
