"""Raw dump readers: one module per format, each turning a native layout into canonical frames.

Every format module exposes the same functions, each returning a canonical frame
(``stages.core.frames``) or ``None`` when the dump lacks that modality:

    read_metrics(root: Path, offset_s: float) -> pl.DataFrame | None
    read_traces(root: Path, offset_s: float) -> pl.DataFrame | None
    read_logs(root: Path, offset_s: float) -> pl.DataFrame | None
    read_faults(root: Path, offset_s: float) -> pl.DataFrame | None
    metric_reading(root: Path) -> _metric_reading.MetricReading   # metrics, whole or in parts
    trace_reading(root: Path) -> _trace_reading.TraceReading      # traces, whole or in buckets of traces
    log_reading(root: Path) -> _log_reading.LogReading            # logs, whole or in buckets of services
    list_files(root: Path) -> dict[str, list[Path]]      # modality -> files that would be read
    scan(root: Path) -> _common.Scan                       # the same, plus what is skipped and why
    DEFAULT_OFFSETS: ClockOffsets                          # offsets that fit the public data

Nothing is dropped silently (issue 10): every file a reader skips is named in a warning with the
reason; a modality whose files exist but yield no row is an error; times before 2000 or more than
a year from the modality's median are errors naming file and row; see ``_common``.
"""
from __future__ import annotations

import importlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import polars as pl

from stages.core.errors import InputError
from stages.core.frames import MODALITIES, Dump
from stages.core.params import ClockOffsets

FORMATS = ("msds", "gaia", "eadro")


def reader(fmt: str) -> ModuleType:
    if fmt not in FORMATS:
        raise InputError(None, "--format / datasets.<name>.format", f"one of {', '.join(FORMATS)}", fmt)
    return importlib.import_module(f"stages.formats.{fmt}")


def check_root(root: Path) -> Path:
    """The dump folder, checked: it exists, is a folder (``raw:`` naming one file reads nothing) and is listable."""
    root = Path(root)
    if not root.exists():
        raise InputError(root, None, "an existing raw dump folder")
    if not root.is_dir():
        raise InputError(root, None, "a raw dump folder", "a file" if root.is_file() else "not a folder")
    try:
        empty = not any(root.iterdir())
    except OSError as exc:
        raise InputError(root, None, "a readable raw dump folder", exc.strerror or str(exc)) from None
    if empty:
        raise InputError(root, None, "a non-empty raw dump folder")
    return root


def read_modality(fmt: str, root: Path, modality: str, offsets: ClockOffsets | None = None) -> pl.DataFrame | None:
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}")
    mod = reader(fmt)
    offsets = offsets if offsets is not None else mod.DEFAULT_OFFSETS
    fn = getattr(mod, f"read_{modality}")
    return fn(check_root(root), getattr(offsets, modality))


def read_metric_parts(fmt: str, root: Path, offsets: ClockOffsets | None = None,
                      part_bytes: int | None = None) -> Iterator[pl.DataFrame]:
    """The dump's metric points as canonical frames of disjoint columns (``_metric_reading.parts``):
    together :func:`read_modality`'s points, never all in memory at once; nothing for a dump without
    metric files. Bad input raises what :func:`read_modality` raises, after the last part."""
    from stages.formats import _metric_reading

    mod = reader(fmt)
    offsets = offsets if offsets is not None else mod.DEFAULT_OFFSETS
    reading = mod.metric_reading(check_root(root))
    return _metric_reading.parts(reading, offsets.metrics, part_bytes or _metric_reading.PART_BYTES)


def read_trace_buckets(fmt: str, root: Path, spill_dir: Path, offsets: ClockOffsets | None = None,
                       bucket_bytes: int | None = None) -> Iterator[pl.DataFrame]:
    """The dump's spans as canonical frames of disjoint sets of whole traces (``_trace_reading.buckets``),
    spilled through ``spill_dir``: together :func:`read_modality`'s spans, never all in memory at
    once; nothing for a dump without span files. Bad input raises what :func:`read_modality` raises,
    after the last bucket."""
    from stages.formats import _trace_reading

    mod = reader(fmt)
    offsets = offsets if offsets is not None else mod.DEFAULT_OFFSETS
    reading = mod.trace_reading(check_root(root))
    return _trace_reading.buckets(reading, offsets.traces, spill_dir, bucket_bytes or _trace_reading.BUCKET_BYTES)


def read_log_buckets(fmt: str, root: Path, spill_dir: Path, offsets: ClockOffsets | None = None,
                     bucket_bytes: int | None = None) -> Iterator[pl.DataFrame]:
    """The dump's log lines as canonical frames of disjoint sets of whole services
    (``_log_reading.buckets``), spilled through ``spill_dir``: together :func:`read_modality`'s lines,
    never all in memory at once; nothing for a dump without log files. Bad input raises what
    :func:`read_modality` raises, after the last bucket."""
    from stages.formats import _log_reading

    mod = reader(fmt)
    offsets = offsets if offsets is not None else mod.DEFAULT_OFFSETS
    reading = mod.log_reading(check_root(root))
    return _log_reading.buckets(reading, offsets.logs, spill_dir, bucket_bytes or _log_reading.BUCKET_BYTES)


def read_dump(fmt: str, root: Path, offsets: ClockOffsets | None = None) -> Dump:
    mod = reader(fmt)
    root = check_root(root)
    dump = Dump(format=fmt, path=root, files=mod.list_files(root))
    for modality in MODALITIES:
        setattr(dump, modality, read_modality(fmt, root, modality, offsets))
    return dump


def data_time_range(fmt: str, root: Path, offsets: ClockOffsets | None = None,
                    modalities: tuple[str, ...] = ("metrics", "traces", "logs")) -> tuple[int, int] | None:
    """[first, last] µs over the given modalities of a dump (after offsets); None when none has data.

    For the labels stage: the label grid must not extend past the data (see
    :func:`stages.features.label_grid.label_grid`'s ``data_range``). It reads those modalities
    in full (metrics in parts, traces and logs in buckets), so a stage that already holds the
    frames should take the range from them instead.
    """
    lo, hi = None, None
    with tempfile.TemporaryDirectory(prefix="range-spill-") as spill:
        for modality in modalities:
            # metrics part by part, traces and logs bucket by bucket: the range never holds every row
            if modality == "metrics":
                frames = read_metric_parts(fmt, root, offsets)
            elif modality == "traces":
                frames = read_trace_buckets(fmt, root, Path(spill), offsets)
            elif modality == "logs":
                frames = read_log_buckets(fmt, root, Path(spill), offsets)
            else:
                frames = [read_modality(fmt, root, modality, offsets)]
            for df in frames:
                if df is None or df.height == 0:
                    continue
                col = "start_ts" if modality == "traces" else "ts"
                a, b = int(df[col].min()), int(df[col].max())
                lo, hi = (a, b) if lo is None else (min(lo, a), max(hi, b))
    return None if lo is None else (lo, hi)
