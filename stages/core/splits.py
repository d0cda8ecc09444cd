"""Chronological splits, shared so that normalisation and windows agree on the training span."""
from __future__ import annotations

import numpy as np

from stages.core.params import SplitParams


def train_cutoff_us(ts_min: int, ts_max: int, split: SplitParams) -> int:
    """Last timestamp (µs, exclusive) of the training span of a range: statistics fit before it."""
    return int(ts_min + split.train * (ts_max - ts_min))


def grid(ts_min_us: int, ts_max_us: int, step_s: float) -> np.ndarray:
    """Regular grid of epoch µs aligned to multiples of the step (so tables of one dataset join)."""
    step = int(round(step_s * 1_000_000))
    start = (ts_min_us // step) * step
    stop = (ts_max_us // step) * step
    return np.arange(start, stop + step, step, dtype=np.int64)
