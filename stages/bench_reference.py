"""Plain reference readers for ``stages.bench ingest``: the library call on the same files, nothing more.

They give the speed a reader could reach on those bytes (issue 11) — no canonical schema, no
time parsing, no checks, no sorting — so the project/reference ratio shows what the readers'
own work costs:

- CSV files (metric files of every format, MSDS log exports): ``polars.read_csv`` per file and
  one ``polars.concat`` (diagonal, for differing columns);
- GAIA trace tables: the same, plus the one parse a span needs: ``start_time`` / ``end_time``
  strings to epoch µs (``str.to_datetime``) and the duration;
- GAIA business tables: the same, plus the message header a log line needs: one regex
  (``str.extract_groups``: time, level, text) and its time to epoch µs;
- MSDS OSProfiler traces: ``json.loads`` per file, a walk of the ``children`` tree collecting
  ids and offsets, one DataFrame at the end;
- Eadro ``spans.json[.zip]`` (Jaeger): ``json.loads`` and one DataFrame of the spans (ids, times,
  operation);
- Eadro ``logs.json``: ``json.loads``, one DataFrame of the (service, line) pairs, and the header
  parse a log line needs, as for GAIA business (one regex: time, level, text; time to epoch µs).
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import polars as pl


def read(fmt: str, modality: str, files: list[Path]) -> pl.DataFrame:
    """The reference frame of one modality's files."""
    if fmt == "msds" and modality == "traces":
        return osprofiler(files)
    if fmt == "eadro" and modality == "traces":
        return jaeger(files)
    if fmt == "eadro" and modality == "logs":
        return log_lines(files)
    if fmt == "gaia" and modality == "traces":
        return gaia_traces(files)
    if fmt == "gaia" and modality == "logs":
        return gaia_business(files)
    return csvs(files)


def _epoch_us(col: pl.Expr) -> pl.Expr:
    return col.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", strict=False, time_unit="us").dt.epoch("us")


def gaia_traces(files: list[Path]) -> pl.DataFrame:
    start, end = _epoch_us(pl.col("start_time")), _epoch_us(pl.col("end_time"))
    return csvs(files).with_columns(start.alias("start_ts"), ((end - start) / 1e6).alias("duration_s"))


_GAIA_HEADER = r"(?s)^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),?(\d*) \| (\w+) \| (?:[^|]* \| ){3}(.*)$"


def gaia_business(files: list[Path]) -> pl.DataFrame:
    g = csvs(files).with_columns(pl.col("message").str.extract_groups(_GAIA_HEADER).alias("_g")).unnest("_g")
    ms = pl.col("2").replace("", None).cast(pl.Int64, strict=False).fill_null(0)
    return g.with_columns((_epoch_us(pl.col("1")) + ms * 1000).alias("ts"), pl.col("3").alias("level"),
                          pl.col("4").alias("text"))


def csvs(files: list[Path]) -> pl.DataFrame:
    frames = []
    for p in files:
        try:
            frames.append(pl.read_csv(p))
        except pl.exceptions.PolarsError:  # a column polars cannot type from its first rows
            frames.append(pl.read_csv(p, infer_schema=False))
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def osprofiler(files: list[Path]) -> pl.DataFrame:
    cols: dict[str, list] = {"span_id": [], "parent_id": [], "name": [], "started": [], "finished": []}
    for p in files:
        stack = list(json.loads(p.read_bytes()).get("children") or [])
        while stack:
            node = stack.pop()
            info = node.get("info") or {}
            cols["span_id"].append(node.get("trace_id"))
            cols["parent_id"].append(node.get("parent_id"))
            cols["name"].append(info.get("name"))
            cols["started"].append(info.get("started"))
            cols["finished"].append(info.get("finished"))
            stack.extend(node.get("children") or [])
    return pl.DataFrame(cols, strict=False)


def _json(path: Path):
    if path.suffix != ".zip":
        return json.loads(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        member = next(n for n in zf.namelist() if n.endswith(".json") and "__MACOSX" not in n)
        return json.loads(zf.read(member))


def jaeger(files: list[Path]) -> pl.DataFrame:
    cols: dict[str, list] = {"trace_id": [], "span_id": [], "operation": [], "start": [], "duration": []}
    for p in files:
        data = _json(p)
        for trace in data.get("data", []) if isinstance(data, dict) else data:
            for s in trace.get("spans") or []:
                cols["trace_id"].append(s.get("traceID"))
                cols["span_id"].append(s.get("spanID"))
                cols["operation"].append(s.get("operationName"))
                cols["start"].append(s.get("startTime"))
                cols["duration"].append(s.get("duration"))
    return pl.DataFrame(cols, strict=False)


def log_lines(files: list[Path]) -> pl.DataFrame:
    """(service, line) pairs plus the header a log line needs, as for GAIA business: the reader's own
    line regex (time, level, text) and its time to epoch µs (``str.to_datetime``)."""
    from stages.formats.eadro import _LINE

    service, line = [], []
    for p in files:
        for svc, lines in _json(p).items():
            service += [svc] * len(lines or [])
            line += list(lines or [])
    g = pl.DataFrame({"service": service, "line": line}).with_columns(
        pl.col("line").str.extract_groups(_LINE).alias("_g")).unnest("_g")
    ts = pl.col("1").str.replace(",", ".", literal=True).str.replace("T", " ", literal=True)
    return g.with_columns(_epoch_us(ts).alias("ts"), pl.col("2").alias("level"), pl.col("3").alias("text"))
