"""One metric reader for every format: the whole modality as one frame, or in parts of its series.

A format says which files hold metrics, how to read some of them into a :class:`MetricPoints`,
which series a file holds (its *key*: every file of one ``<entity>/<metric>`` column has the same
key) and what it checks across all files. :func:`whole` then gives the canonical frame, as the
readers always did. :func:`parts` gives the same points as several canonical frames, each holding
every point of its columns and no other (issue 11: a metrics stage that never holds the whole
dump's points at once). Per column, a part's points are the whole frame's, in the same order, so
anything computed column by column (the metrics stage's step means, fill and scaling) is the same.

The checks are the whole read's, with the same errors: each file's own when it is read, the
header and row checks once all files are read, and the time audit against the median of every
point's time, taken from each part's distinct times and their counts.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from stages.formats import _common as c
from stages.formats._metric_points import MetricPoints

PART_BYTES = 64 * 2**20  # input per part of parts(); files of one key are never split


@dataclass
class MetricReading:
    """A format's metric files and how to read them (module docstring)."""

    files: list[Path]
    skipped: list[tuple[Path, str]]
    unclaimed: list[tuple[Path, str]]
    read: Callable[[list[Path], c.TimeAudit, MetricPoints], list[tuple[Path, str]]]  # → files skipped
    key: Callable[[Path], Hashable]
    check: Callable[[], None] = field(default=lambda: None)


def whole(reading: MetricReading, offset_s: float) -> pl.DataFrame | None:
    """Every metric point of the dump as one canonical frame (None: the dump has no metric file)."""
    audit = c.TimeAudit("metrics")
    points = MetricPoints()
    skipped = reading.skipped + reading.read(reading.files, audit, points)
    _after_reading(reading, skipped)
    if not reading.files and not skipped:
        return None
    df = points.frame()
    c.require_rows("metrics", df, reading.files, skipped)
    audit.finish(df["ts"])
    return c.shift(df, ["ts"], offset_s)


def parts(reading: MetricReading, offset_s: float, part_bytes: int = PART_BYTES) -> Iterator[pl.DataFrame]:
    """:func:`whole`'s points as canonical frames of disjoint sets of columns, about ``part_bytes``
    of input each. Errors are raised after the last part, as :func:`whole` raises them after its
    read: a consumer publishes nothing until the iterator is exhausted."""
    audit = c.TimeAudit("metrics")
    skipped = list(reading.skipped)
    rows = 0
    times = _TimeCounts()
    for files in _parts(reading.files, reading.key, part_bytes):
        points = MetricPoints()
        skipped += reading.read(files, audit, points)
        df = points.frame()
        if df.height == 0:
            continue
        rows += df.height
        times.add(df["ts"].to_numpy())
        yield c.shift(df, ["ts"], offset_s)
    _after_reading(reading, skipped)
    if not reading.files and not skipped:
        return
    c.require_row_count("metrics", rows, reading.files, skipped)
    if rows:
        audit.finish_median(times.median())


def _after_reading(reading: MetricReading, skipped: list[tuple[Path, str]]) -> None:
    c.warn_skipped("metrics", skipped, reading.unclaimed)
    reading.check()


def _parts(files: list[Path], key: Callable[[Path], Hashable], part_bytes: int) -> list[list[Path]]:
    """Files grouped by key (keys in order of first file), keys packed up to ``part_bytes`` of input
    per part; each part's files in the dump's file order."""
    by_key: dict[Hashable, list[int]] = {}
    for i, p in enumerate(files):
        by_key.setdefault(key(p), []).append(i)
    members = list(by_key.values())
    sizes = [sum(c.file_size(files[i]) for i in m) for m in members]
    return [[files[i] for i in sorted(i for m in part for i in m)] for part in c.byte_groups(members, sizes, part_bytes)]


RAW_TIMES = 16_000_000  # span / log times held as they come (128 MB) before they are counted


def _distinct_counts(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(ts, return_counts=True)``; times already in order (every canonical frame's) are
    counted by their runs instead of sorted again (a sort of each part was half of GAIA's metric
    read at full size: 14.4 of 30 s)."""
    ts = np.asarray(ts)
    if ts.size < 2 or not bool(np.all(ts[1:] >= ts[:-1])):
        return np.unique(ts, return_counts=True)
    starts = np.flatnonzero(np.concatenate(([True], ts[1:] != ts[:-1])))
    return ts[starts], np.diff(np.append(starts, ts.size))


class _TimeCounts:
    """The multiset of the points' times as distinct values and counts, merged as parts come: parts
    on one time grid (GAIA's series, Eadro's services) then cost one grid, not one per part.

    ``raw_values``: hold up to that many times as they come instead, and take the median by
    selection: span and log times are nearly all distinct, so counting them was two sorts of every
    time for nothing (4 of the 39 s of GAIA's traces stage at full size). Past that many the held
    times are counted too."""

    _MERGE_EVERY = 16  # parts held before a merge

    def __init__(self, raw_values: int = 0) -> None:
        self._held: list[tuple[np.ndarray, np.ndarray]] = []
        self._raw: list[np.ndarray] = []
        self._raw_left = raw_values

    def add(self, ts: np.ndarray) -> None:
        if self._raw_left >= len(ts) and not self._held:
            self._raw.append(np.asarray(ts, np.int64))
            self._raw_left -= len(ts)
            return
        self._raw_left = 0
        self._held += [_distinct_counts(r) for r in self._raw] + [_distinct_counts(ts)]
        self._raw = []
        if len(self._held) >= self._MERGE_EVERY:
            self._held = [self._merged()]

    def _merged(self) -> tuple[np.ndarray, np.ndarray]:
        values, inverse = np.unique(np.concatenate([v for v, _ in self._held]), return_inverse=True)
        return values, np.bincount(inverse, weights=np.concatenate([k for _, k in self._held]),
                                   minlength=len(values)).astype(np.int64)

    def median(self) -> int:
        """``_common._median`` of the multiset: the middle value, or the mean of the two middle ones."""
        if not self._held:
            ts = np.concatenate(self._raw)
            middle = [(len(ts) - 1) // 2, len(ts) // 2]
            lo, hi = (int(v) for v in np.partition(ts, middle)[middle])
        else:
            values, counts = self._merged()
            cum = np.cumsum(counts)
            n = int(cum[-1])
            lo, hi = (int(values[np.searchsorted(cum, k, side="right")]) for k in ((n - 1) // 2, n // 2))
        return int(float(lo) if lo == hi else (float(lo) + float(hi)) / 2)
