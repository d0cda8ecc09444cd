"""One log reader for every format: the whole modality as one frame, or in buckets of whole services.

A format says which files hold log lines and how to read one into frames. :func:`whole` gives the
canonical frame, as the readers always did. :func:`buckets` gives the same lines as several
canonical frames, each holding every line of its services and no other (issue 11: a logs stage
that never holds a month of lines at once; Drain3 mines each service on its own, so a bucket of
whole services is all a miner needs). The frames are split by a hash of the service as the logs
stage names it (blank → ``unknown``) and spilled to disk as they are read; each bucket, read back,
is the whole frame's rows of its services, in the same order.

The checks are the whole read's, with the same errors: each file's own when it is read, the row
check once all files are read, and the time audit against the median of every line's time, taken
from each bucket's distinct times and their counts.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from tqdm import tqdm

from stages.formats import _buckets
from stages.formats import _common as c
from stages.formats._buckets import BUCKET_BYTES, Spill, spill_all
from stages.formats._metric_reading import RAW_TIMES, _TimeCounts

SORT_KEYS = ["ts", "service"]
UNKNOWN_SERVICE = "unknown"  # what the logs stage names a blank service (stages.features.log_templates)


@dataclass
class LogReading:
    """A format's log files and how to read one (module docstring)."""

    files: list[Path]
    skipped: list[tuple[Path, str]]
    unclaimed: list[tuple[Path, str]]
    read: Callable[[Path, c.TimeAudit], Iterable[pl.DataFrame]]  # one file's lines, in one or more frames
    empty: str  # why a file that gives no line is skipped
    label: str  # progress bar


def _read_all(reading: LogReading, audit: c.TimeAudit, skipped: list[tuple[Path, str]]) -> Iterator[pl.DataFrame]:
    for p in tqdm(reading.files, desc=reading.label, disable=len(reading.files) < 20):
        lines = 0
        for frame in reading.read(p, audit):  # a large file comes block by block: each is passed on as read
            lines += frame.height
            yield frame
        if not lines:
            skipped.append((p, reading.empty))


def whole(reading: LogReading, offset_s: float) -> pl.DataFrame | None:
    """Every line of the dump as one canonical frame (None: the dump has no log file)."""
    audit = c.TimeAudit("logs")
    skipped = list(reading.skipped)
    frames = list(_read_all(reading, audit, skipped))
    c.warn_skipped("logs", skipped, reading.unclaimed)
    if not reading.files and not skipped:
        return None
    df = c.finish(frames, "logs", SORT_KEYS)
    c.require_rows("logs", df, reading.files, skipped)
    audit.finish(df["ts"])
    return c.shift(df, ["ts"], offset_s)


def service_key() -> pl.Expr:
    """The service as the logs stage mines it: blank or missing → ``unknown``."""
    s = pl.col("service").cast(pl.Utf8)
    return pl.when(s.is_null() | (s.str.strip_chars() == "")).then(pl.lit(UNKNOWN_SERVICE)).otherwise(s)


def bucket_count(reading: LogReading, bucket_bytes: int = BUCKET_BYTES) -> int:
    return _buckets.bucket_count(sum(c.file_size(p) for p in reading.files), bucket_bytes)


def buckets(reading: LogReading, offset_s: float, spill_dir: Path,
            bucket_bytes: int = BUCKET_BYTES) -> Iterator[pl.DataFrame]:
    """:func:`whole`'s lines as canonical frames of disjoint sets of services, about ``bucket_bytes``
    of input each, spilling through ``spill_dir`` (an existing folder the caller removes). With one
    bucket nothing is spilled. Errors are raised after the last bucket: a consumer publishes
    nothing until the iterator is exhausted."""
    n = bucket_count(reading, bucket_bytes)
    if n == 1:
        df = whole(reading, offset_s)
        if df is not None and df.height:
            yield df
        return
    audit = c.TimeAudit("logs")
    skipped = list(reading.skipped)
    spill = Spill(Path(spill_dir), n, service_key())
    spill_all(_read_all(reading, audit, skipped), spill)
    c.warn_skipped("logs", skipped, reading.unclaimed)
    if not reading.files and not skipped:
        return
    rows, times = 0, _TimeCounts(raw_values=RAW_TIMES)
    for b in range(n):
        df = c.finish(spill.frames(b), "logs", SORT_KEYS)
        if df.height == 0:
            continue
        rows += df.height
        if df["ts"].null_count() < df.height:
            times.add(df["ts"].drop_nulls().to_numpy())
        yield c.shift(df, ["ts"], offset_s)
    c.require_row_count("logs", rows, reading.files, skipped)
    if rows:
        audit.finish_median(times.median())
