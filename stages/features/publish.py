"""All-or-nothing outputs for stages that share one output folder.

The four feature stages write side by side into ``data/features/<ds>/``, so none of them can
replace the whole folder. Instead a stage first removes its own previous outputs, writes the
new ones into a private staging folder, and only when every file is there moves them in.
A failure anywhere leaves none of that stage's outputs behind (and never touches the others').
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def staged_outputs(out_dir: str | Path, names: list[str]) -> Iterator[Path]:
    """Yield a staging folder; on success move each of ``names`` (files or folders) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        _remove(out_dir / name)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        yield staging
        missing = [n for n in names if not (staging / n).exists()]
        if missing:
            raise RuntimeError(f"stage did not produce {missing} in {staging}")
        moved: list[Path] = []
        try:
            for name in names:
                os.replace(staging / name, out_dir / name)
                moved.append(out_dir / name)
        except BaseException:
            for path in moved:
                _remove(path)
            raise
        log.info("wrote %s into %s", ", ".join(names), out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
