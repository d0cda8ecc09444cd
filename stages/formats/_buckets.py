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

SPILL_BYTES = 16 * 2**20  # raw frames a reader holds before it splits and spills them
BUCKET_BYTES = 64 * 2**20  # input (uncompressed) per bucket
MAX_BUCKETS = 1024  # past this many, buckets grow instead (spill files stay few)
_SEED = 0x5EED
_BUCKET = "_bucket"


def bucket_count(total_bytes: int, bucket_bytes: int = BUCKET_BYTES) -> int:
    """Buckets for ``total_bytes`` of input: one per ``bucket_bytes``, at least one, at most :data:`MAX_BUCKETS`."""
    return min(MAX_BUCKETS, max(1, math.ceil(total_bytes / bucket_bytes)))


class Spill:
    """Frames split by ``key`` (an expression) into ``n`` buckets of Arrow files under ``root``."""

    def __init__(self, root: Path, n: int, key: pl.Expr) -> None:
        self.root, self.n, self.key = root, n, key
        self.files: list[list[Path]] = [[] for _ in range(n)]

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
            for (b,), part in keyed.partition_by(_BUCKET, as_dict=True, maintain_order=True,
                                                 include_key=False).items():
                path = self.root / f"b{b:05d}_{len(self.files[b]):06d}.arrow"
                part.write_ipc(path, compression="lz4")
                self.files[b].append(path)

    def frames(self, b: int) -> list[pl.DataFrame]:
        """Bucket ``b``'s frames in the order they were added; their files are removed once read."""
        out = []
        for path in self.files[b]:
            out.append(pl.read_ipc(path))
            path.unlink()
        self.files[b] = []
        return out


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
