"""One trace reader for every format: the whole modality as one frame, or in buckets of whole traces.

A format says which files hold spans, how to read some of them into raw span frames and how to
turn the raw frames of a set of traces into canonical spans (its own de-duplication and time
column). :func:`whole` then gives the canonical frame, as the readers always did. :func:`buckets`
gives the same spans as several canonical frames, each holding every span of its traces and no
other (issue 11: a traces stage that never holds a month of spans at once). The raw frames are
split by a hash of the trace id as they are read and spilled to disk, one Arrow file per bucket
and batch, then each bucket is read back and finished on its own: a trace's spans always meet in
one bucket, in the order the whole read sees them, so everything decided trace by trace (repeated
spans, parent cycles) is decided the same way, and each bucket is the whole frame's rows of its
traces, in the same order.

The checks are the whole read's, with the same errors: each file's own when it is read, the row
check once all files are read, and the time audit against the median of every span's start,
taken from each bucket's distinct times and their counts. The repeated-span and parent-cycle
warnings come per bucket.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from stages.formats import _common as c
from stages.formats import _buckets
from stages.formats._buckets import BUCKET_BYTES, Spill, spill_all
from stages.formats._metric_reading import RAW_TIMES, _TimeCounts

log = logging.getLogger(__name__)

SORT_KEYS = ["start_ts", "trace_id", "span_id"]


@dataclass
class TraceReading:
    """A format's span files and how to read them (module docstring)."""

    files: list[Path]
    skipped: list[tuple[Path, str]]
    unclaimed: list[tuple[Path, str]]
    read: Callable[[list[Path], c.TimeAudit, list[tuple[Path, str]]], Iterator[pl.DataFrame]]  # appends skips
    prepare: Callable[[list[pl.DataFrame]], pl.DataFrame]  # raw frames → canonical spans, times as audited
    label: str  # names the dump in the repeated-span and parent-cycle warnings
    size: Callable[[Path], int] = field(default=c.file_size)  # bytes a file holds once unpacked


def whole(reading: TraceReading, offset_s: float) -> pl.DataFrame | None:
    """Every span of the dump as one canonical frame (None: the dump has no span file)."""
    audit = c.TimeAudit("traces")
    skipped = list(reading.skipped)
    frames = list(reading.read(reading.files, audit, skipped))
    c.warn_skipped("traces", skipped, reading.unclaimed)
    if not reading.files and not skipped:
        return None
    spans = reading.prepare(frames)
    c.require_rows("traces", spans, reading.files, skipped)
    audit.finish(spans["start_ts"])
    return _finished(spans, reading.label, offset_s)


def bucket_count(reading: TraceReading, bucket_bytes: int = BUCKET_BYTES) -> int:
    """How many buckets :func:`buckets` splits the dump's traces into: one per ``bucket_bytes`` of input."""
    return _buckets.bucket_count(sum(reading.size(p) for p in reading.files), bucket_bytes)


def buckets(reading: TraceReading, offset_s: float, spill_dir: Path,
            bucket_bytes: int = BUCKET_BYTES) -> Iterator[pl.DataFrame]:
    """:func:`whole`'s spans as canonical frames of disjoint sets of traces, about ``bucket_bytes``
    of input each, spilling through ``spill_dir`` (an existing folder the caller removes). With one
    bucket nothing is spilled. Errors are raised after the last bucket, as :func:`whole` raises them
    after its read: a consumer publishes nothing until the iterator is exhausted."""
    n = bucket_count(reading, bucket_bytes)
    if n == 1:
        spans = whole(reading, offset_s)
        if spans is not None and spans.height:
            yield spans
        return
    audit = c.TimeAudit("traces")
    skipped = list(reading.skipped)
    spill = Spill(Path(spill_dir), n, pl.col("trace_id"))
    spill_all(reading.read(reading.files, audit, skipped), spill)
    c.warn_skipped("traces", skipped, reading.unclaimed)
    if not reading.files and not skipped:
        return
    rows, times = 0, _TimeCounts(raw_values=RAW_TIMES)
    for b in range(n):
        spans = reading.prepare(spill.frames(b))
        if spans.height == 0:
            continue
        rows += spans.height
        times.add(spans["start_ts"].to_numpy())
        yield _finished(spans, reading.label, offset_s)
    c.require_row_count("traces", rows, reading.files, skipped)
    if rows:
        audit.finish_median(times.median())


def _finished(spans: pl.DataFrame, label: str, offset_s: float) -> pl.DataFrame:
    """What every format does last: repeated spans and parent cycles out, canonical order, clock offset."""
    spans = spans.rechunk()  # one chunk: a sort's gather over the concatenated blocks took twice as long
    spans = c.cut_bad_parents(c.dedupe_spans(spans, label), label)
    return c.shift(c.finish([spans], "traces", SORT_KEYS), ["start_ts"], offset_s)
