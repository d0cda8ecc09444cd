"""Helpers every native-format writer shares: vectorised time strings, hex ids, the writer contract."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from stages.simulate.faults import Fault
from stages.simulate.params import SynthParams
from stages.simulate.system import System
from stages.simulate.templates import TemplateBook
from stages.simulate.traffic import Chunk


def time_strings(epoch_s: np.ndarray, pattern: str, shift_s: float = 0.0) -> list[str]:
    """Format epoch seconds (plus a clock shift) with a chrono pattern, vectorised through polars."""
    us = np.round((np.asarray(epoch_s, dtype=np.float64) + shift_s) * 1e6).astype(np.int64)
    return pl.from_epoch(pl.Series(us), time_unit="us").dt.strftime(pattern).to_list()


def time_string(epoch_s: float, pattern: str, shift_s: float = 0.0) -> str:
    return time_strings(np.asarray([epoch_s]), pattern, shift_s)[0]


def hex_ids(values: np.ndarray, width: int = 0) -> list[str]:
    """Lower-case hex ids; Jaeger (eadro) prints them unpadded, GAIA as 16 digits."""
    fmt = f"{{:0{width}x}}" if width else "{:x}"
    return [fmt.format(v) for v in np.asarray(values, dtype=np.uint64).tolist()]


def uuid_ids(a: np.ndarray, salt: int = 0x9E3779B97F4A7C15) -> list[str]:
    """UUID-looking ids from 64-bit random words (the second half is a mixed copy of the first)."""
    out = []
    for v in np.asarray(a, dtype=np.uint64).tolist():
        w = (v * salt) & 0xFFFFFFFFFFFFFFFF
        h = f"{v:016x}{w:016x}"
        out.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}")
    return out


@dataclass
class WriterContext:
    root: Path
    system: System
    book: TemplateBook
    faults: list[Fault]
    t_start: float
    t_end: float
    params: SynthParams


class Writer:
    """Writes one native dump chunk by chunk; ``finish`` closes files and returns counts for the summary."""

    def __init__(self, ctx: WriterContext) -> None:
        self.ctx = ctx
        self.counts = {"traces": 0, "spans": 0, "log_lines": 0, "metric_rows": 0, "faults": 0}

    def write_chunk(self, chunk: Chunk, rng: np.random.Generator) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def finish(self) -> dict:
        return dict(self.counts)
