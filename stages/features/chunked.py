"""Time-chunked spills and sorted Parquet written a chunk at a time (issue 11: bounded memory).

A stage that reads its input in buckets (of traces, of services) but must write tables sorted by
time spills each bucket's rows by chunk of the step grid (:class:`TimeChunks`), then reads one
chunk at a time, sorts it and appends it (:class:`SortedParquet`). A table small enough is held
and written as one frame, so it has the same bytes as the whole-frame path's ``write_parquet``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from stages.core.io import atomic_path, write_parquet
from stages.formats._buckets import PartFiles

HOLD_BYTES = 64 * 2**20  # a sorted table held to be written as one frame; a larger one goes out chunk by chunk


class TimeChunks:
    """Consecutive row ranges of the step grid, about ``n`` of them, and the frames spilled per range."""

    def __init__(self, g0: int, steps: int, step: int, n: int) -> None:
        self.g0, self.steps, self.step = g0, steps, step
        self.size = max(1, math.ceil(steps / max(n, 1)))  # steps per chunk
        self.n = math.ceil(steps / self.size)
        self.files: dict[str, PartFiles] = {}

    def ranges(self) -> Iterable[tuple[int, range]]:
        for k in range(self.n):
            yield k, range(k * self.size, min((k + 1) * self.size, self.steps))

    def spill(self, frame: pl.DataFrame, ts: str, folder: Path) -> None:
        """``frame``'s rows into ``folder``, by the chunk of their ``ts`` column (one file per call)."""
        if frame.height == 0:
            return
        folder.mkdir(exist_ok=True)
        files = self.files.setdefault(folder.name, PartFiles(folder, "chunks"))
        chunk = ((pl.col(ts) - self.g0) // (self.size * self.step)).alias("_chunk")
        parts = frame.with_columns(chunk).partition_by("_chunk", as_dict=True, include_key=False)
        files.write((k, part) for (k,), part in parts.items())

    def read(self, folder: Path, k: int, order: list[str]) -> pl.DataFrame | None:
        """Chunk ``k``'s frames from ``folder``, sorted by ``order`` (None: nothing there)."""
        files = self.files.get(folder.name)
        frames = files.read(k) if files is not None else []
        if not frames:
            return None
        return pl.concat(frames).sort(order)


class SortedParquet:
    """One Parquet file from frames added in order: held and written as one frame (``write_parquet``'s
    bytes) while they stay under :data:`HOLD_BYTES`, past that a row group per frame. Written
    atomically when the ``with`` block ends without an error."""

    def __init__(self, path: Path, schema: dict) -> None:
        self.path, self.schema = Path(path), schema
        self.held: list[pl.DataFrame] = []
        self.size = 0
        self.writer: pq.ParquetWriter | None = None

    def __enter__(self) -> SortedParquet:
        self._atomic = atomic_path(self.path)
        self.tmp = self._atomic.__enter__()
        return self

    def add(self, frame: pl.DataFrame | None) -> None:
        if frame is None:
            return
        frame = frame.select(list(self.schema))
        if self.writer is not None:
            self.writer.write_table(frame.to_arrow())
            return
        self.held.append(frame)
        self.size += frame.estimated_size()
        if self.size > HOLD_BYTES:
            self.writer = pq.ParquetWriter(self.tmp, self.held[0].to_arrow().schema, compression="zstd",
                                           compression_level=3)
            for held in self.held:
                self.writer.write_table(held.to_arrow())
            self.held = []

    def __exit__(self, kind, exc, tb) -> bool | None:
        try:
            if self.writer is not None:
                self.writer.close()
            elif kind is None:
                write_parquet(pl.concat(self.held, rechunk=True) if self.held else pl.DataFrame(schema=self.schema),
                              self.tmp)
        finally:
            self.held = []
        return self._atomic.__exit__(kind, exc, tb)
