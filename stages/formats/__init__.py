"""Raw dump readers: one module per format, each turning a native layout into canonical frames.

Every format module exposes the same functions, each returning a canonical frame
(``stages.core.frames``) or ``None`` when the dump lacks that modality:

    read_metrics(root: Path, offset_s: float) -> pl.DataFrame | None
    read_traces(root: Path, offset_s: float) -> pl.DataFrame | None
    read_logs(root: Path, offset_s: float) -> pl.DataFrame | None
    read_faults(root: Path, offset_s: float) -> pl.DataFrame | None
    list_files(root: Path) -> dict[str, list[Path]]      # modality -> files that would be read
    DEFAULT_OFFSETS: ClockOffsets                          # offsets that fit the public data
"""
from __future__ import annotations

import importlib
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
    root = Path(root)
    if not root.exists():
        raise InputError(root, None, "an existing raw dump folder")
    if root.is_dir() and not any(root.iterdir()):
        raise InputError(root, None, "a non-empty raw dump folder")
    return root


def read_modality(fmt: str, root: Path, modality: str, offsets: ClockOffsets | None = None) -> pl.DataFrame | None:
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}")
    mod = reader(fmt)
    offsets = offsets if offsets is not None else mod.DEFAULT_OFFSETS
    fn = getattr(mod, f"read_{modality}")
    return fn(check_root(root), getattr(offsets, modality))


def read_dump(fmt: str, root: Path, offsets: ClockOffsets | None = None) -> Dump:
    mod = reader(fmt)
    root = check_root(root)
    dump = Dump(format=fmt, path=root, files=mod.list_files(root))
    for modality in MODALITIES:
        setattr(dump, modality, read_modality(fmt, root, modality, offsets))
    return dump
