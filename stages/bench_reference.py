"""Plain reference readers for ``stages.bench ingest``: the library call on the same files, and the
one parse each line or span needs, nothing more.

They give the speed a reader could reach on those bytes (issue 11) — no canonical schema, no
checks, no sorting, and no time parsing beyond what the list below names — so the
project/reference ratio shows what the readers' own work costs:

- CSV files (metric files of every format): ``polars.read_csv`` per file and one ``polars.concat``
  (diagonal, for differing columns);
- MSDS log exports: the same, plus the one parse a line needs: ``@timestamp`` to epoch µs
  (``str.to_datetime``);
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

:func:`metric_stage` is the plain counterpart of the whole ``metrics`` stage (the issue's "read,
10 s means, bounded ffill, z-score, Parquet in ~60 lines of polars"): per file, its first column
to epoch µs and the others unpivoted under ``<file stem>/<column>``; one ``group_by`` mean per
(step, column); a pivot onto the full grid; ``forward_fill(limit)``; mean/std z-scores fitted on
the training share of the grid; Float32; one Parquet file.
"""
from __future__ import annotations

import json
import math
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
    if fmt == "msds" and modality == "logs":
        return msds_logs(files)
    return csvs(files)


def _epoch_us(col: pl.Expr) -> pl.Expr:
    return col.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", strict=False, time_unit="us").dt.epoch("us")


def gaia_traces(files: list[Path]) -> pl.DataFrame:
    start, end = _epoch_us(pl.col("start_time")), _epoch_us(pl.col("end_time"))
    return csvs(files).with_columns(start.alias("start_ts"), ((end - start) / 1e6).alias("duration_s"))


def msds_logs(files: list[Path]) -> pl.DataFrame:
    """Elasticsearch exports: ``@timestamp`` (``2019-11-19T10:00:01.578Z``) to epoch µs."""
    ts = pl.col("@timestamp").str.to_datetime("%Y-%m-%dT%H:%M:%S%.fZ", strict=False, time_unit="us")
    return csvs(files).with_columns(ts.dt.epoch("us").alias("ts"))


_GAIA_HEADER = r"(?s)^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),?(\d*) \| (\w+) \| (?:[^|]* \| ){3}(.*)$"


def gaia_business(files: list[Path]) -> pl.DataFrame:
    g = csvs(files).with_columns(pl.col("message").str.extract_groups(_GAIA_HEADER).alias("_g")).unnest("_g")
    ms = pl.col("2").replace("", None).cast(pl.Int64, strict=False).fill_null(0)
    return g.with_columns((_epoch_us(pl.col("1")) + ms * 1000).alias("ts"), pl.col("3").alias("level"),
                          pl.col("4").alias("text"))


TOGETHER_FILES = 256  # scans per collect_all: one of GAIA's 6,500 hung in polars 2.1 (5,764 files open, all idle)


def csvs_together(files: list[Path]) -> pl.DataFrame:
    """:func:`csvs` by ``collect_all`` of the files' ``scan_csv`` (parallel, one query per 256
    files: polars opens each scan on a blocking thread, at most 512): the fastest plain polars
    read of many small CSVs here, reported beside the issue's reference."""
    frames = []
    try:
        for i in range(0, len(files), TOGETHER_FILES):
            frames += pl.collect_all([pl.scan_csv(p, glob=False) for p in files[i:i + TOGETHER_FILES]])
    except pl.exceptions.PolarsError:
        return csvs(files)
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


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


def _time_us(col: pl.Series) -> pl.Series:
    """A metric file's time column to epoch µs: numbers are epoch s or ms (by magnitude), text is
    ``YYYY-MM-DD HH:MM:SS`` with any trailing zone name dropped (the project's readers apply zones
    and offsets; the reference only pays for the parse)."""
    if col.dtype.is_numeric():
        unit = 1_000 if col.abs().max() > 1e11 else 1_000_000
        return (col.cast(pl.Float64) * unit).round().cast(pl.Int64)
    return col.str.slice(0, 19).str.to_datetime("%Y-%m-%d %H:%M:%S", time_unit="us").dt.epoch("us")


def metric_stage(files: list[Path], step_s: float, out: Path, max_gap_steps: int, train_share: float) -> pl.DataFrame:
    """Wide metric files → the ``metrics.parquet`` a plain polars pipeline would write (module doc)."""
    step = int(round(step_s * 1_000_000))
    long = []
    for p in files:
        wide = pl.read_csv(p)
        t = wide.columns[0]
        wide = wide.with_columns(_time_us(wide[t]).alias(t))
        values = [c for c in wide.columns[1:] if wide[c].dtype.is_numeric()]
        long.append(wide.unpivot(values, index=t, variable_name="_column", value_name="_value")
                    .select((pl.col(t) // step * step).alias("ts"),
                            (pl.lit(p.stem + "/") + pl.col("_column")).alias("column"),
                            pl.col("_value").cast(pl.Float64).alias("value")))
    means = (pl.concat(long).filter(pl.col("value").is_finite())
             .group_by("ts", "column").agg(pl.col("value").mean()))
    wide = means.pivot(on="column", index="ts", values="value")
    lo, hi = wide["ts"].min(), wide["ts"].max()
    grid = pl.DataFrame({"ts": pl.int_range(lo, hi + step, step, dtype=pl.Int64, eager=True)})
    cols = sorted(c for c in wide.columns if c != "ts")
    wide = grid.join(wide, on="ts", how="left").sort("ts").select("ts", *cols)
    cutoff = lo + math.floor(train_share * (hi - lo))
    filled = wide.with_columns(pl.col(cols).forward_fill(limit=max_gap_steps))
    train = filled.filter(pl.col("ts") < cutoff)
    mean, std = train.select(pl.col(cols).mean()).row(0), train.select(pl.col(cols).std()).row(0)
    keep = [(c, m, s) for c, m, s in zip(cols, mean, std) if m is not None and s]
    z = filled.select("ts", *[((pl.col(c) - m) / s).fill_null(0.0).cast(pl.Float32).alias(c) for c, m, s in keep])
    z.write_parquet(out)
    return z
