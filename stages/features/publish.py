"""All-or-nothing outputs for stages that share one output folder.

The four feature stages write side by side into ``data/features/<ds>/``, so none of them can
replace the whole folder. Each builds its own output set in a private staging folder outside
every DVC-tracked path and publishes the set in one journaled step only when it is complete
(:func:`stages.core.io.staged_set`): until then the previous outputs stay untouched, a failure
— bad input included — leaves them exactly as they were, and a kill while publishing is rolled
forward by the next run. The other stages' outputs are never touched.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator

from stages.core.io import staged_set

log = logging.getLogger(__name__)


@contextlib.contextmanager
def staged_outputs(out_dir: str | Path, names: list[str]) -> Iterator[Path]:
    """Yield a staging folder; on success publish each of ``names`` (files or folders) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with staged_set(out_dir, names, label=out_dir.name) as staging:
        yield staging
    log.info("wrote %s into %s", ", ".join(names), out_dir)
