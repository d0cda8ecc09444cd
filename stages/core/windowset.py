"""The detector input contract: aligned grid arrays of one split and the window geometry.

``windows@ds`` writes ``data/windows/<ds>/`` (``grid.npz``, ``schema.json``, ``splits.json``);
:func:`load_split` turns it into a :class:`WindowSet`. Windows are index ranges over the grid,
never materialised copies, so long spans with small strides cost no extra memory.
"""
from __future__ import annotations

import mmap
import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from stages.core.errors import InputError
from stages.core.io import read_json


@dataclass
class FeatureSchema:
    """What the columns of the grid arrays mean; shared by all splits of one dataset."""

    dataset: str
    step_s: float
    metric_channels: list[str]  # "<entity>/<metric>"
    metric_entities: list[str]  # entity of each metric channel
    edges: list[tuple[str, str]]  # call graph (caller, callee), discovered from spans
    edge_features: list[str]  # e.g. ["latency", "count", "error_rate"]
    services: list[str]  # services seen in traces or logs (sorted)
    log_columns: list[tuple[str, int]]  # (service, template index) of each log count column
    templates: list[str]  # template text by template index
    template_embeddings: np.ndarray | None = None  # (K, H) LLM embedding per template
    word_pca: np.ndarray | None = None  # (P, H) principal word embeddings of the backbone

    @property
    def n_metric(self) -> int:
        return len(self.metric_channels)

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    @property
    def n_log(self) -> int:
        return len(self.log_columns)

    def to_json(self) -> dict:
        return {
            "dataset": self.dataset,
            "step_s": self.step_s,
            "metric_channels": self.metric_channels,
            "metric_entities": self.metric_entities,
            "edges": [list(e) for e in self.edges],
            "edge_features": self.edge_features,
            "services": self.services,
            "log_columns": [list(c) for c in self.log_columns],
            "templates": self.templates,
        }

    @classmethod
    def from_json(cls, d: dict) -> "FeatureSchema":
        return cls(
            dataset=d["dataset"],
            step_s=float(d["step_s"]),
            metric_channels=list(d["metric_channels"]),
            metric_entities=list(d["metric_entities"]),
            edges=[tuple(e) for e in d["edges"]],
            edge_features=list(d["edge_features"]),
            services=list(d["services"]),
            log_columns=[(str(s), int(k)) for s, k in d["log_columns"]],
            templates=list(d["templates"]),
        )


@dataclass
class WindowSet:
    """One contiguous span of the grid (a split) plus its window start indices.

    Arrays are indexed by grid step ``t`` in ``[0, T)`` relative to the span.
    """

    schema: FeatureSchema
    ts: np.ndarray  # (T,) int64 epoch µs
    metric: np.ndarray  # (T, C) float32, normalised with training statistics
    trace: np.ndarray  # (T, E, F) float32, normalised with training statistics
    log: np.ndarray  # (T, L) float32 template counts per step (log1p), per log_columns
    labels: np.ndarray  # (T,) int8, 0 normal / 1 anomalous; only evaluation reads it
    kinds: np.ndarray  # (T,) object: fault kind or "" per step
    log_events: np.ndarray  # (N, 3) int64 rows [t, service index, template index], sorted by t
    window: int
    stride: int
    name: str = ""
    starts: np.ndarray = field(default=None)  # (W,) window start indices
    severity: np.ndarray | None = None  # (T,) fault severity class per step ("" = normal or unknown)
    # absolute grid step (ts // step) of t = 0 when the span is part of a longer stream scored piece by
    # piece (stages.score): detectors that draw random numbers key them by origin + t, so a step scores
    # the same whichever piece it is in. None (splits of one dataset): keys are positions in the span.
    origin: int | None = None

    def __post_init__(self) -> None:
        if self.severity is None:
            self.severity = np.full(len(self.ts), "", dtype="<U16")
        if self.starts is None:
            T = len(self.ts)
            self.starts = np.arange(0, max(T - self.window + 1, 0), self.stride, dtype=np.int64)

    @classmethod
    def from_arrays(cls, metric: np.ndarray, labels: np.ndarray | None = None, *, window: int, stride: int = 1,
                    ts: np.ndarray | None = None, step_s: float = 1.0, name: str = "",
                    channels: list[str] | None = None, dataset: str = "adhoc") -> "WindowSet":
        """A metric-only WindowSet from plain arrays (home-format replays, tests)."""
        metric = np.asarray(metric, dtype=np.float32)
        if metric.ndim == 1:
            metric = metric[:, None]
        T, C = metric.shape
        channels = channels or [f"series/{i}" for i in range(C)]
        schema = FeatureSchema(dataset=dataset, step_s=step_s, metric_channels=channels,
                               metric_entities=[c.split("/")[0] for c in channels], edges=[],
                               edge_features=["latency", "count", "error_rate"], services=[], log_columns=[],
                               templates=[])
        labels = np.zeros(T, np.int8) if labels is None else np.asarray(labels, dtype=np.int8)
        ts = np.arange(T, dtype=np.int64) * int(step_s * 1_000_000) if ts is None else np.asarray(ts, np.int64)
        return cls(schema=schema, ts=ts, metric=metric, trace=np.zeros((T, 0, 3), np.float32),
                   log=np.zeros((T, 0), np.float32), labels=labels, kinds=np.where(labels > 0, "anomaly", ""),
                   log_events=np.zeros((0, 3), np.int64), window=window, stride=stride, name=name)

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def n_steps(self) -> int:
        return len(self.ts)

    def batches(self, batch_size: int, shuffle: bool = False, rng: np.random.Generator | None = None
                ) -> Iterator[np.ndarray]:
        """Yield arrays of window start indices."""
        order = self.starts.copy()
        if shuffle:
            (rng or np.random.default_rng(0)).shuffle(order)
        for i in range(0, len(order), batch_size):
            yield order[i:i + batch_size]

    def take(self, array: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """Stack windows of ``array`` (time on axis 0) → (B, window, ...)."""
        idx = starts[:, None] + np.arange(self.window)[None, :]
        return array[idx]

    def window_labels(self, starts: np.ndarray | None = None) -> np.ndarray:
        """1 when any step of the window is anomalous (for few-shot labelled methods)."""
        starts = self.starts if starts is None else starts
        return self.take(self.labels, starts).max(axis=1)

    def steps_from_windows(self, window_scores: np.ndarray, starts: np.ndarray | None = None) -> np.ndarray:
        """Map per-window, per-step scores (W, window) to one score per grid step.

        A step takes its score from the latest-ending window that covers it, i.e. each window
        scores its newest ``stride`` steps (what an online detector would know at that time).
        Steps before the first window's tail are NaN and are excluded from evaluation.
        """
        starts = self.starts if starts is None else starts
        window_scores = np.asarray(window_scores, dtype=np.float64)
        if window_scores.ndim == 1:
            window_scores = np.repeat(window_scores[:, None], self.window, axis=1)
        out = np.full(self.n_steps, np.nan)
        tail = min(self.stride, self.window)
        for s, row in zip(starts, window_scores):
            e = s + self.window
            out[e - tail:e] = row[self.window - tail:]
        if len(starts):  # steps after the last window end (stride remainder) take its last score
            last_end = starts[-1] + self.window
            out[last_end:] = window_scores[-1, -1]
        return out


def windows_dir(dataset: str, root: str | Path = "data/windows") -> Path:
    return Path(root) / dataset


def load_schema(wdir: Path) -> FeatureSchema:
    schema = FeatureSchema.from_json(read_json(Path(wdir) / "schema.json"))
    emb = Path(wdir) / "template_embeddings.npy"
    if emb.exists():
        schema.template_embeddings = np.load(emb)
    return schema


def _block_starts(blocks: list[tuple[int, int]], window: int, stride: int) -> np.ndarray:
    """Window starts of blocks laid end to end: no window crosses from one block into the next."""
    out, offset = [], 0
    for a, b in blocks:
        n = b - a
        if n >= window:
            out.append(offset + np.arange(0, n - window + 1, stride, dtype=np.int64))
        offset += n
    return np.concatenate(out) if out else np.zeros(0, np.int64)


_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")  # a zip member's local file header (30 bytes)


@dataclass(frozen=True)
class _Stored:
    """Where an uncompressed ``.npy`` member's data lies in the ``.npz`` file, and its layout."""

    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool


def _stored_member(fh, info: zipfile.ZipInfo) -> _Stored | None:
    """The data layout of one member (``fh``: the archive, open), or None when it is compressed, empty or not plain numbers/text."""
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    fh.seek(info.header_offset)
    head = _LOCAL_HEADER.unpack(fh.read(_LOCAL_HEADER.size))
    if head[0] != 0x04034B50:
        return None
    fh.seek(info.header_offset + _LOCAL_HEADER.size + head[9] + head[10])
    major, _minor = np.lib.format.read_magic(fh)
    read_header = {1: np.lib.format.read_array_header_1_0, 2: np.lib.format.read_array_header_2_0}.get(major)
    if read_header is None:
        return None
    shape, fortran_order, dtype = read_header(fh)
    offset = fh.tell()
    if dtype.hasobject or len(shape) == 0 or 0 in shape:  # nothing to read: np.load gives its layout
        return None
    return _Stored(offset, tuple(shape), dtype, bool(fortran_order))


def _lazy_buffer(nbytes: int):
    """Zeroed memory whose pages are committed only when written: an anonymous map (no huge pages
    asked for, unlike numpy's large allocations), so reading a few rows of a big array costs those rows."""
    return mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) if nbytes else bytearray(0)


class GridArrays:
    """``grid.npz``'s arrays by name, for reading row ranges without reading the whole file.

    ``np.load`` reads a member whole even to slice a few rows of it, and the slice keeps the whole
    array alive; the few-shot split, eight blocks, read the whole grid eight times. :meth:`rows`
    reads only rows ``[a, b)`` of an uncompressed member (what ``windows@ds`` writes) into an
    array laid out like the whole one, so the result has the values, dtype and strides of
    ``np.load(...)[key][a:b]`` and the memory of the rows. Compressed members are read whole.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._npz = np.load(self.path, allow_pickle=False)
        except (zipfile.BadZipFile, EOFError, ValueError) as e:
            raise InputError(self.path, None, "the .npz archive the windows stage writes (rerun it for this dataset)",
                             got=f"{type(e).__name__}: {e}") from e
        self._infos = {i.filename[:-len(".npy")]: i for i in self._npz.zip.infolist() if i.filename.endswith(".npy")}
        self.files = list(self._npz.files)
        self._fh = open(self.path, "rb")  # one handle for the members' layouts and every row read
        self._stored = {key: _stored_member(self._fh, info) for key, info in self._infos.items()}

    def __getitem__(self, key: str) -> np.ndarray:
        return self._npz[key]

    def __contains__(self, key: str) -> bool:
        return key in self.files

    def rows(self, key: str, a: int, b: int) -> np.ndarray:
        """``np.load(path)[key][a:b]``: the same values, dtype and strides, reading only those rows."""
        stored = self._stored.get(key)
        if stored is None:
            return self._npz[key][a:b]
        steps = stored.shape[0]
        a, b, _ = slice(a, b).indices(steps)
        b = max(a, b)
        item = stored.dtype.itemsize
        per_step = int(np.prod(stored.shape[1:], dtype=np.int64))  # values of one step (row)
        buf = _lazy_buffer(steps * per_step * item)
        whole = np.ndarray(stored.shape, dtype=stored.dtype, buffer=buf, order="F" if stored.fortran_order else "C")
        view = memoryview(buf).cast("B") if len(buf) else memoryview(buf)
        fd = self._fh.fileno()
        if stored.fortran_order and len(stored.shape) > 1:  # each column's rows a..b are contiguous
            for j in range(per_step):
                lo, hi = (j * steps + a) * item, (j * steps + b) * item
                self._read(fd, view[lo:hi], stored.offset + lo, key)
        else:
            lo, hi = a * per_step * item, b * per_step * item
            self._read(fd, view[lo:hi], stored.offset + lo, key)
        return whole[a:b]

    def _read(self, fd: int, into: memoryview, pos: int, key: str) -> None:
        done = 0
        while done < len(into):
            n = os.preadv(fd, [into[done:]], pos + done)
            if n == 0:
                raise InputError(self.path, f"member {key}.npy",
                                 f"{len(into)} bytes from offset {pos} (the file ends early: rerun the windows stage)")
            done += n

    def close(self) -> None:
        self._fh.close()
        self._npz.close()

    def __enter__(self) -> "GridArrays":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_split(wdir: str | Path, split: str, word_pca: np.ndarray | None = None) -> WindowSet:
    """Load split ``train``, ``fewshot``, ``val`` or ``test`` of a windows directory.

    ``fewshot`` is its blocks (``splits.json`` → ``fewshot_blocks``) laid end to end, so a detector
    sees nothing of the training span outside them; windows never straddle two blocks.
    """
    wdir = Path(wdir)
    meta = read_json(wdir / "splits.json")
    if split not in meta["ranges"]:
        raise KeyError(f"{wdir}/splits.json has no split {split!r}; has {sorted(meta['ranges'])}")
    blocks = [tuple(b) for b in meta.get("fewshot_blocks", [])] if split == "fewshot" else []
    blocks = blocks or [tuple(meta["ranges"][split])]
    schema = load_schema(wdir)
    schema.word_pca = word_pca
    window, stride = int(meta["window"]), int(meta["stride"])
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("ts", "metric", "trace", "log", "labels", "kinds",
                                                           "severity", "events")}
    with GridArrays(wdir / "grid.npz") as z:
        ev = z["log_events"]
        offset = 0
        for a, b in blocks:
            sel = (ev[:, 0] >= a) & (ev[:, 0] < b)
            events = ev[sel].copy()
            events[:, 0] += offset - a
            parts["events"].append(events)
            for key in ("ts", "metric", "trace", "log", "labels"):
                parts[key].append(z.rows(key, a, b))
            parts["kinds"].append(z.rows("kinds", a, b).astype(str))
            parts["severity"].append(z.rows("severity", a, b).astype(str) if "severity" in z
                                     else np.full(b - a, "", dtype="<U16"))
            offset += b - a
    cat = {k: (v[0] if len(v) == 1 else np.concatenate(v)) for k, v in parts.items()}
    return WindowSet(
        schema=schema, ts=cat["ts"], metric=cat["metric"], trace=cat["trace"], log=cat["log"],
        labels=cat["labels"], kinds=cat["kinds"], log_events=cat["events"], window=window, stride=stride,
        name=split, starts=_block_starts(blocks, window, stride) if len(blocks) > 1 else None,
        severity=cat["severity"],
    )
