"""Frames split by a hash of a key column into buckets on disk, in read order (issue 11).

A reader that must see every row of one trace (or of one service) together, without holding the
whole dump, writes its raw frames here as it reads them and reads each bucket back afterwards:
rows of one key always land in one bucket, in the order they were added.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc

SPILL_BYTES = 16 * 2**20  # raw frames a reader holds before it splits and spills them
BUCKET_BYTES = 64 * 2**20  # input (uncompressed) per bucket
MAX_BUCKETS = 1024  # past this many, buckets grow instead (spill files stay few)
SPILL_COMPRESSION = "lz4"  # Arrow IPC codec of the spill files
_SEED = 0x5EED
_BUCKET = "_bucket"


def bucket_count(total_bytes: int, bucket_bytes: int = BUCKET_BYTES) -> int:
    """Buckets for ``total_bytes`` of input: one per ``bucket_bytes``, at least one, at most :data:`MAX_BUCKETS`."""
    return min(MAX_BUCKETS, max(1, math.ceil(total_bytes / bucket_bytes)))


class PartFiles:
    """Frames written as parts of Arrow IPC files (lz4), one file per call of :meth:`write` holding
    each part as its own run of record batches, and read back a part at a time.

    One file per batch of parts, not per part: a GAIA trace read at full size spilled 1,610 files of
    ~0.7 MB, and ``write_ipc``'s per-call cost made the spill a third of the traces stage. A file is
    removed once every part in it has been read."""

    def __init__(self, root: Path, stem: str) -> None:
        self.root, self.stem = root, stem
        self.parts: dict[object, list[tuple[Path, int, int, pl.Schema]]] = {}
        self._unread: dict[Path, int] = {}

    def write(self, parts: Iterable[tuple[object, pl.DataFrame]]) -> None:
        parts = [(key, frame) for key, frame in parts if frame.height]
        if not parts:
            return
        path = self.root / f"{self.stem}_{len(self._unread):06d}.arrow"
        tables = [(key, frame.schema, frame.to_arrow()) for key, frame in parts]
        options = ipc.IpcWriteOptions(compression=SPILL_COMPRESSION)
        at = 0
        with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, tables[0][2].schema, options=options) as out:
            for key, schema, table in tables:
                batches = table.to_batches()
                for batch in batches:
                    out.write_batch(batch)
                self.parts.setdefault(key, []).append((path, at, at + len(batches), schema))
                at += len(batches)
        self._unread[path] = len(tables)

    def read(self, key: object) -> list[pl.DataFrame]:
        """``key``'s frames in the order they were written, each with its own polars schema."""
        out = []
        for path, a, z, schema in self.parts.pop(key, []):
            with pa.memory_map(str(path)) as source:
                reader = ipc.open_file(source)
                table = pa.Table.from_batches([reader.get_batch(i) for i in range(a, z)], schema=reader.schema)
                frame = pl.from_arrow(table, rechunk=False)
            out.append(frame if frame.schema == schema else frame.cast(dict(schema)))
            self._unread[path] -= 1
            if self._unread[path] == 0:
                path.unlink()
        return out


class Spill:
    """Frames split by ``key`` (an expression) into ``n`` buckets of Arrow files under ``root``."""

    def __init__(self, root: Path, n: int, key: pl.Expr) -> None:
        self.n, self.key = n, key
        self.files = PartFiles(root, "b")

    def add(self, frames: list[pl.DataFrame]) -> None:
        runs: list[list[pl.DataFrame]] = []  # consecutive frames of one schema, spilled as one
        for frame in frames:
            if frame.height == 0:
                continue
            if runs and runs[-1][0].schema == frame.schema:
                runs[-1].append(frame)
            else:
                runs.append([frame])
        for run in runs:
            frame = pl.concat(run, how="vertical", rechunk=False) if len(run) > 1 else run[0]
            keyed = frame.with_columns((self.key.hash(_SEED) % self.n).alias(_BUCKET))
            parts = keyed.partition_by(_BUCKET, as_dict=True, maintain_order=True, include_key=False)
            self.files.write((b, part) for (b,), part in parts.items())

    def frames(self, b: int) -> list[pl.DataFrame]:
        """Bucket ``b``'s frames in the order they were added; a file is removed once all its buckets are read."""
        return self.files.read(b)


def spill_all(frames: Iterable[pl.DataFrame], spill: Spill) -> None:
    """Every frame into ``spill``, about :data:`SPILL_BYTES` held at a time."""
    held: list[pl.DataFrame] = []
    size = 0
    for frame in frames:
        held.append(frame)
        size += frame.estimated_size()
        if size >= SPILL_BYTES:
            spill.add(held)
            held, size = [], 0
    spill.add(held)
