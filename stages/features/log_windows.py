"""Log windows as template-id sequences: from the pipeline's WindowSet and from loghub data.

Both log detectors consume :class:`LogSequences`, so they run unchanged inside the pipeline
(one sequence per grid window, or per window and service) and on their home data (fixed
line windows, optionally per node, or HDFS block sessions). Everything here is vectorised:
sequences are built from flat (unit, template) arrays, never by appending row by row.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy import sparse

from stages.core.errors import InputError
from stages.core.windowset import WindowSet
from stages.formats.loghub import block_events

log = logging.getLogger(__name__)
PAD = -1  # padding id in ``LogSequences.ids``


@dataclass
class LogSequences:
    """Labelled log units (a window, a window × service, or a session) in chronological order.

    ``ids`` keeps the *last* ``max_len`` template ids of each unit (the most recent events);
    ``counts`` keeps all of them, for count-based features.
    """

    ids: np.ndarray  # (U, max_len) int64 template index, PAD after ``lengths``
    lengths: np.ndarray  # (U,) int64 number of ids kept (0 = a unit with no log line)
    counts: sparse.csr_matrix  # (U, K) float32 template counts of each unit
    labels: np.ndarray  # (U,) int8
    templates: list[str]  # template text by template index (K)
    window: np.ndarray  # (U,) int64: the grid window (pipeline) or the unit itself (loghub)
    name: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_windows(self) -> int:
        return int(self.window.max()) + 1 if len(self.window) else 0

    def subset(self, idx: np.ndarray, renumber: bool = True) -> "LogSequences":
        idx = np.asarray(idx, dtype=np.int64)
        window = self.window[idx]
        if renumber:
            _, window = np.unique(window, return_inverse=True)
        return LogSequences(self.ids[idx], self.lengths[idx], self.counts[idx], self.labels[idx], self.templates,
                            window.astype(np.int64), self.name)

    def window_max(self, unit_scores: np.ndarray, n_windows: int | None = None) -> np.ndarray:
        """Per-window score = max over the window's units (a window is as anomalous as its worst service)."""
        out = np.full(self.n_windows if n_windows is None else n_windows, -np.inf)
        np.maximum.at(out, self.window, np.asarray(unit_scores, np.float64))
        return out


def pack(unit: np.ndarray, template: np.ndarray, n_units: int, n_templates: int, max_len: int
         ) -> tuple[np.ndarray, np.ndarray, sparse.csr_matrix]:
    """Flat events (``unit`` non-decreasing, chronological within a unit) → padded ids, lengths, counts."""
    unit = np.asarray(unit, np.int64)
    template = np.asarray(template, np.int64)
    if len(unit) and np.any(np.diff(unit) < 0):
        raise ValueError("pack: events must be grouped by unit (non-decreasing unit index)")
    full = np.bincount(unit, minlength=n_units).astype(np.int64)
    first = np.cumsum(full) - full
    pos = np.arange(len(unit), dtype=np.int64) - first[unit]
    drop = np.maximum(full - max_len, 0)  # keep the most recent max_len events
    keep = pos >= drop[unit]
    ids = np.full((n_units, max_len), PAD, np.int64)
    ids[unit[keep], (pos - drop[unit])[keep]] = template[keep]
    counts = sparse.csr_matrix((np.ones(len(unit), np.float32), (unit, template)),
                               shape=(n_units, n_templates), dtype=np.float32)
    counts.sum_duplicates()
    return ids, np.minimum(full, max_len), counts


# ------------------------------------------------------------------ from the pipeline's WindowSet


def require_logs(ws: WindowSet, detector: str) -> None:
    """A detector of logs on a dataset without log columns is a configuration error, said plainly."""
    if ws.schema.n_log == 0 or not ws.schema.templates:
        raise InputError(f"dataset {ws.schema.dataset}", "schema.log_columns",
                         f"log templates ({detector} is a log detector; drop it from this dataset's "
                         "detectors or give the dataset logs)", "no log columns")


def from_windowset(ws: WindowSet, max_len: int = 64, per_service: bool = False) -> LogSequences:
    """One unit per grid window (or per window and service with events in it), labelled like the window.

    A window without any log line is kept as one empty unit, so every window gets a score.
    """
    ev = np.asarray(ws.log_events, np.int64).reshape(-1, 3)
    starts = np.asarray(ws.starts, np.int64)
    W = len(starts)
    lo = np.searchsorted(ev[:, 0], starts, side="left")
    hi = np.searchsorted(ev[:, 0], starts + ws.window, side="left")
    n_per = hi - lo
    win = np.repeat(np.arange(W, dtype=np.int64), n_per)
    offset = np.arange(int(n_per.sum()), dtype=np.int64) - np.repeat(np.cumsum(n_per) - n_per, n_per)
    event = np.repeat(lo, n_per) + offset
    K = len(ws.schema.templates)
    labels = ws.window_labels(starts).astype(np.int8) if W else np.zeros(0, np.int8)
    if not per_service:
        ids, lengths, counts = pack(win, ev[event, 2], W, K, max_len)
        return LogSequences(ids, lengths, counts, labels, list(ws.schema.templates), np.arange(W, dtype=np.int64),
                            ws.name)
    S = max(len(ws.schema.services), int(ev[:, 1].max()) + 1 if len(ev) else 1)
    key = win * S + ev[event, 1]
    order = np.argsort(key, kind="stable")  # stable: chronological within each (window, service)
    key, event = key[order], event[order]
    uniq, unit = np.unique(key, return_inverse=True)
    empty = np.setdiff1d(np.arange(W, dtype=np.int64), uniq // S)  # windows without any line
    unit_window = np.concatenate([uniq // S, empty])
    ids, lengths, counts = pack(unit, ev[event, 2], len(unit_window), K, max_len)
    order = np.argsort(unit_window, kind="stable")
    unit_window = unit_window[order]
    return LogSequences(ids[order], lengths[order], counts[order], labels[unit_window], list(ws.schema.templates),
                        unit_window, ws.name)


def steps_from_units(ws: WindowSet, seqs: LogSequences, unit_scores: np.ndarray) -> np.ndarray:
    """Per-step scores: each window takes the max of its units, then ``ws.steps_from_windows``."""
    if len(ws) == 0:
        return np.full(ws.n_steps, np.nan)
    return ws.steps_from_windows(seqs.window_max(unit_scores, len(ws)))


# ------------------------------------------------------------------ from loghub lines


def _template_index(lines: pl.DataFrame) -> tuple[np.ndarray, list[str]]:
    templates = lines["template"].unique(maintain_order=True)
    index = pl.DataFrame({"template": templates, "tid": np.arange(len(templates), dtype=np.int64)})
    tid = lines.select("template").join(index, on="template", how="left", maintain_order="left")["tid"].to_numpy()
    return tid, templates.to_list()


def fixed_windows(lines: pl.DataFrame, length: int, by_node: bool = False, max_len: int = 64,
                  name: str = "") -> LogSequences:
    """Non-overlapping windows of ``length`` lines (per node when ``by_node``), ordered by their first line.

    Label = 1 when any line of the window is an alert. Lines must carry labels.
    """
    if length < 1:
        raise InputError(None, "window length", "a positive number of lines", length)
    if lines["label"].null_count():
        i = int(lines["label"].is_null().arg_max())
        raise InputError(name or None, f"line {lines['line'][i]}", "a Label on every line ('-' = normal)", None)
    tid, templates = _template_index(lines)
    df = lines.select("line", "label", "node").with_columns(pl.Series("tid", tid))
    group = pl.col("node").fill_null("") if by_node else pl.lit("")
    df = df.with_columns(group.alias("g")).with_columns(
        (pl.int_range(pl.len(), dtype=pl.Int64).over("g") // length).alias("chunk"))
    units = (df.group_by("g", "chunk").agg(pl.col("line").min().alias("first"), pl.col("label").max().alias("y"))
             .sort("first").with_row_index("unit"))
    df = df.join(units.select("g", "chunk", "unit"), on=["g", "chunk"], how="left").sort(["unit", "line"])
    ids, lengths, counts = pack(df["unit"].to_numpy().astype(np.int64), df["tid"].to_numpy(), len(units),
                                len(templates), max_len)
    labels = units["y"].to_numpy().astype(np.int8)
    return LogSequences(ids, lengths, counts, labels, templates, np.arange(len(units), dtype=np.int64), name)


def sessions(lines: pl.DataFrame, block_labels: pl.DataFrame, max_len: int = 64, name: str = "",
             labels_path: str | None = None) -> LogSequences:
    """HDFS-style sessions: all lines naming a block id, ordered by the block's first line.

    Blocks missing from the label file are an error (their label is unknown, not normal).
    """
    tid, templates = _template_index(lines)
    ev = block_events(lines.with_columns(pl.Series("tid", tid)))
    if len(ev) == 0:
        raise InputError(name or None, "column Content", "lines naming HDFS block ids (blk_...)")
    units = (ev.group_by("block_id").agg(pl.col("line").min().alias("first")).sort("first").with_row_index("unit")
             .join(block_labels, on="block_id", how="left", maintain_order="left"))
    if units["label"].null_count():
        missing = units.filter(pl.col("label").is_null())["block_id"][0]
        raise InputError(labels_path, f"BlockId {missing}", "a label for every block id in the log",
                         f"{units['label'].null_count()} unlabelled blocks")
    ev = ev.join(units.select("block_id", "unit"), on="block_id", how="left").sort(["unit", "line"])
    ids, lengths, counts = pack(ev["unit"].to_numpy().astype(np.int64), ev["tid"].to_numpy(), len(units),
                                len(templates), max_len)
    return LogSequences(ids, lengths, counts, units["label"].to_numpy().astype(np.int8), templates,
                        np.arange(len(units), dtype=np.int64), name)


def chronological_split(seqs: LogSequences, train: float = 0.6, val: float = 0.2
                        ) -> tuple[LogSequences, LogSequences, LogSequences]:
    """First ``train`` of the units for training, the next ``val`` for validation, the rest for test.

    Units never overlap (fixed windows / sessions), so a contiguous cut cannot leak lines.
    """
    if not (0 < train < 1 and 0 <= val < 1 and train + val < 1):
        raise InputError(None, "split fractions", "0 < train, 0 <= val, train + val < 1", (train, val))
    n = len(seqs)
    a, b = int(round(n * train)), int(round(n * (train + val)))
    if a == 0 or b >= n:
        raise InputError(seqs.name or None, None, "enough log windows for a train/val/test split", n)
    idx = np.arange(n)
    return seqs.subset(idx[:a]), seqs.subset(idx[a:b]), seqs.subset(idx[b:])


def load_loghub(path: str, labels: str | None = None, style: str | None = None, window: int = 20,
                by_node: bool = False, max_len: int = 64, node_column: str | None = None) -> LogSequences:
    """One loghub system as log units: HDFS-style sessions when a block label file is given,
    fixed line windows (optionally per node) from per-line labels otherwise."""
    from stages.formats.loghub import read_block_labels, read_lines

    lines = read_lines(path, style, needs_label=labels is None, node_column=node_column)
    if labels is not None:
        seqs = sessions(lines, read_block_labels(labels), max_len, name=str(path), labels_path=str(labels))
    else:
        seqs = fixed_windows(lines, window, by_node, max_len, name=str(path))
    log.info("%s: %d lines → %d %s (%d anomalous), %d templates", path, len(lines), len(seqs),
             "sessions" if labels else f"windows of {window} lines", int(seqs.labels.sum()), len(seqs.templates))
    return seqs
