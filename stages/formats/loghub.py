"""Readers for loghub-style log data (BGL, Thunderbird, Spirit, HDFS), the home data of the log detectors.

Two label styles exist:

* per line (BGL / Thunderbird / Spirit): a ``Label`` column, ``-`` for a normal line and an alert
  tag otherwise;
* per session (HDFS): block ids ``blk_...`` inside the content, labels in ``anomaly_label.csv``
  (``BlockId,Label`` with ``Normal`` / ``Anomaly``).

Input is either loghub's structured CSV (``LineId, [Label,] ..., Content, EventId, EventTemplate``)
or a raw ``.log`` file, whose lines are split with the style's header pattern and whose
templates are mined with Drain3 — or a loghub system *folder*, searched for its one structured
CSV (else its one raw log) and its ``anomaly_label.csv`` (:func:`resolve_input`). Every reader
returns one frame, :data:`LINE_SCHEMA`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from stages.core.errors import InputError

log = logging.getLogger(__name__)

LINE_SCHEMA = {"line": pl.Int64, "label": pl.Int8, "node": pl.Utf8, "content": pl.Utf8, "template": pl.Utf8}
BLOCK_ID = r"(blk_-?\d+)"
NODE_COLUMNS = ("Node", "User")  # BGL names the reporting node "Node", Thunderbird/Spirit "User"

# Header patterns of loghub's raw files; ``Content`` is what Drain3 parses.
RAW_STYLES = {
    "bgl": r"^(?P<Label>\S+) (?P<Timestamp>\S+) (?P<Date>\S+) (?P<Node>\S+) (?P<Time>\S+) (?P<NodeRepeat>\S+) "
           r"(?P<Type>\S+) (?P<Component>\S+) (?P<Level>\S+) (?P<Content>.*)$",
    "thunderbird": r"^(?P<Label>\S+) (?P<Timestamp>\S+) (?P<Date>\S+) (?P<Node>\S+) (?P<Month>\S+) +(?P<Day>\S+) "
                   r"(?P<Time>\S+) (?P<Location>\S+) (?P<Component>[^\[:]+)(?:\[\d+\])?: ?(?P<Content>.*)$",
    "hdfs": r"^(?P<Date>\d+) (?P<Time>\d+) (?P<Pid>\d+) (?P<Level>\S+) (?P<Component>[^:]+): (?P<Content>.*)$",
}
RAW_STYLES["spirit"] = RAW_STYLES["thunderbird"]


def mine_templates(contents: pl.Series, params=None) -> pl.Series:
    """Drain3 template of each content line, with the pipeline's miner settings (``LogsParams``:
    same similarity, depth and masks as the ``logs`` stage). Each distinct message is parsed once,
    in order of appearance (a repeated message never changes a template)."""
    from stages.features.log_templates import new_miner
    from stages.features.params import LogsParams

    miner = new_miner(params if params is not None else LogsParams())
    distinct = contents.fill_null("").unique(maintain_order=True)
    cluster_ids = [miner.add_log_message(msg)["cluster_id"] for msg in distinct.to_list()]
    final = {c.cluster_id: c.get_template() for c in miner.drain.clusters}
    lookup = pl.DataFrame({"content": distinct, "template": [final[c] for c in cluster_ids]})
    log.info("Drain3: %d distinct messages → %d templates", len(distinct), len(final))
    return pl.DataFrame({"content": contents.fill_null("")}).join(
        lookup, on="content", how="left", maintain_order="left")["template"]


def _line_labels(df: pl.DataFrame) -> pl.Expr:
    """``-`` means normal; any other non-empty tag is an alert (anomalous line)."""
    tag = pl.col("Label").str.strip_chars()
    return pl.when(tag.is_null() | (tag == "")).then(None).otherwise((tag != "-").cast(pl.Int8)).alias("label")


def _node_expr(df: pl.DataFrame, node_column: str | None) -> pl.Expr:
    if node_column:
        return pl.col(node_column).cast(pl.Utf8).alias("node")
    for name in NODE_COLUMNS:
        if name in df.columns:
            return pl.col(name).cast(pl.Utf8).alias("node")
    return pl.lit(None, dtype=pl.Utf8).alias("node")


def _to_lines(df: pl.DataFrame, path: Path, needs_label: bool, node_column: str | None) -> pl.DataFrame:
    """Shared tail of both readers: check columns, derive labels/nodes, mine templates if absent."""
    if "Content" not in df.columns:
        raise InputError(path, "column Content", "a loghub log with a Content column", sorted(df.columns))
    if needs_label and "Label" not in df.columns:
        raise InputError(path, "column Label", "per-line labels ('-' = normal, an alert tag otherwise) or an "
                         "HDFS-style anomaly_label.csv passed as labels", sorted(df.columns))
    if node_column and node_column not in df.columns:
        raise InputError(path, f"column {node_column}", "the node column named by the parameters",
                         sorted(df.columns))
    if len(df) == 0:
        raise InputError(path, None, "at least one log line")
    if "LineId" in df.columns:
        line = pl.col("LineId").str.strip_chars().cast(pl.Int64, strict=False)
        bad = df.select(line.is_null().arg_max().alias("i"), line.is_null().any().alias("any")).row(0)
        if bad[1]:
            raise InputError(path, f"row {bad[0] + 2} column LineId", "an integer line id",
                             df["LineId"][bad[0]])
    else:
        line = pl.int_range(1, pl.len() + 1, dtype=pl.Int64)
    out = df.select(
        line.alias("line"),
        _line_labels(df) if "Label" in df.columns else pl.lit(None, dtype=pl.Int8).alias("label"),
        _node_expr(df, node_column),
        pl.col("Content").alias("content"),
        *([pl.col("EventTemplate").alias("template")] if "EventTemplate" in df.columns else []),
    )
    if "template" not in out.columns or out["template"].null_count() == len(out):
        log.info("%s: no EventTemplate column; mining templates with Drain3", path)
        out = out.with_columns(mine_templates(out["content"]).alias("template"))
    out = out.with_columns(pl.col("template").fill_null("<empty>"))
    return out.select([pl.col(c).cast(t) for c, t in LINE_SCHEMA.items()]).sort("line", maintain_order=True)


def read_structured(path: str | Path, needs_label: bool = True, node_column: str | None = None) -> pl.DataFrame:
    """loghub ``*_structured.csv`` → :data:`LINE_SCHEMA` (every column read as text, then checked)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "an existing loghub structured CSV file")
    try:
        df = pl.read_csv(path, infer_schema=False, encoding="utf8-lossy", quote_char='"')
    except pl.exceptions.ComputeError as exc:
        raise InputError(path, None, f"a readable CSV ({str(exc).splitlines()[0]})") from None
    return _to_lines(df, path, needs_label, node_column)


def read_raw(path: str | Path, style: str, needs_label: bool = True, node_column: str | None = None
             ) -> pl.DataFrame:
    """A raw loghub ``.log`` of ``style`` (bgl, thunderbird, spirit, hdfs) → :data:`LINE_SCHEMA`.

    Lines that do not fit the style's header (rare wrapped lines in real dumps) are dropped with a
    warning; a file where no line fits is an error.
    """
    path = Path(path)
    if style not in RAW_STYLES:
        raise InputError(None, "--style", f"one of {sorted(RAW_STYLES)}", style)
    if not path.is_file():
        raise InputError(path, None, "an existing raw log file")
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = pl.Series("raw", text.splitlines(), dtype=pl.Utf8)
    parts = pl.DataFrame({"raw": lines}).select(pl.col("raw").str.extract_groups(RAW_STYLES[style])).unnest("raw")
    parts = parts.with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int64).cast(pl.Utf8).alias("LineId"))
    ok = parts["Content"].is_not_null()
    if not ok.any():
        raise InputError(path, "line 1", f"lines in the {style} log layout", lines[0] if len(lines) else "")
    if not ok.all():
        first = int((~ok).arg_max())
        log.warning("%s: %d of %d lines do not fit the %s layout (first: line %d); dropped",
                    path, int((~ok).sum()), len(lines), style, first + 1)
    return _to_lines(parts.filter(ok), path, needs_label, node_column)


@dataclass(frozen=True)
class LoghubInput:
    """What one ``--loghub`` argument resolves to."""

    path: Path  # the structured CSV or raw log
    style: str | None  # raw-log layout (None for a structured CSV)
    labels: Path | None  # HDFS-style anomaly_label.csv, when given or found in the folder


def guess_style(path: Path) -> str | None:
    """Raw-log layout from the file or folder name (``BGL_2k.log`` → bgl); None when no name fits."""
    names = [p.lower() for p in (path.name, path.parent.name)]
    for style in sorted(RAW_STYLES, key=len, reverse=True):
        if any(style in n for n in names):
            return style
    return None


def _visible(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.rglob(pattern)
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))


def resolve_input(path: str | Path, style: str | None = None, labels: str | Path | None = None) -> LoghubInput:
    """A loghub file or system folder → the file to read, its layout and its block-label file.

    In a folder: the one ``*structured*.csv``, else the one raw ``*.log``; an ``anomaly_label.csv``
    found there is used as the HDFS block labels when ``labels`` is not given. A raw log's
    ``style`` defaults to the one its file or folder name spells (bgl, thunderbird, spirit, hdfs).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "an existing loghub structured CSV, raw log or system folder")
    if path.is_dir():
        found = _visible(path, "*structured*.csv")
        if not found:
            found = _visible(path, "*.log")
        if len(found) != 1:
            raise InputError(path, None, "a folder holding exactly one loghub *_structured.csv (or else exactly one "
                             "raw *.log); name the file instead", [p.name for p in found] or "none")
        if labels is None:
            label_files = _visible(path, "anomaly_label.csv")
            if label_files:
                labels = label_files[0]
                log.info("%s: block labels from %s", path, labels)
        log.info("%s: reading %s", path, found[0])
        path = found[0]
    if path.suffix.lower() != ".csv" and style is None:
        style = guess_style(path)
        if style is not None:
            log.info("%s: raw log layout %r (from its name)", path, style)
    return LoghubInput(path, style if path.suffix.lower() != ".csv" else None,
                       Path(labels) if labels is not None else None)


def read_lines(path: str | Path, style: str | None = None, needs_label: bool = True,
               node_column: str | None = None) -> pl.DataFrame:
    """Structured CSV when the file ends in ``.csv``; otherwise a raw log of ``style`` (a folder is
    resolved first, see :func:`resolve_input`)."""
    path = Path(path)
    if path.is_dir() or style is None:
        resolved = resolve_input(path, style)
        path, style = resolved.path, resolved.style
    if path.suffix.lower() == ".csv":
        return read_structured(path, needs_label, node_column)
    if style is None:
        raise InputError(path, None, "a structured .csv, or a raw log together with --style "
                         f"({', '.join(sorted(RAW_STYLES))})")
    return read_raw(path, style, needs_label, node_column)


def read_block_labels(path: str | Path) -> pl.DataFrame:
    """HDFS ``anomaly_label.csv`` (``BlockId,Label`` = ``Normal``/``Anomaly``) → ``block_id, label`` (Int8)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "an existing anomaly_label.csv (BlockId,Label)")
    df = pl.read_csv(path, infer_schema=False, encoding="utf8-lossy")
    for col in ("BlockId", "Label"):
        if col not in df.columns:
            raise InputError(path, f"column {col}", "columns BlockId and Label", sorted(df.columns))
    tag = df["Label"].str.strip_chars()
    bad = ~tag.is_in(["Normal", "Anomaly"]).fill_null(False)
    if bad.any():
        i = int(bad.arg_max())
        raise InputError(path, f"row {i + 2} column Label", "'Normal' or 'Anomaly'", df["Label"][i])
    return pl.DataFrame({"block_id": df["BlockId"].str.strip_chars(), "label": (tag == "Anomaly").cast(pl.Int8)})


def block_events(lines: pl.DataFrame) -> pl.DataFrame:
    """One row per (line, block id) mentioned in its content; lines naming no block are dropped."""
    return (lines.with_columns(pl.col("content").str.extract_all(BLOCK_ID).list.unique(maintain_order=True)
                               .alias("block_id"))
            .explode("block_id").drop_nulls("block_id"))
