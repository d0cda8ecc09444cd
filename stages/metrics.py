"""DVC stage ``metrics@<ds>``: the dump's metric points → ``metrics.parquet`` + ``metrics_stats.json``.

Reads params, hands the dump's metric points part by part (``formats.read_metric_parts``: disjoint
columns, never all points in memory) to :func:`stages.features.metric_table.write_metric_table`
(a large grid is spilled and written a chunk of steps at a time); nothing else. The table's cells
are the ones :func:`~stages.features.metric_matrix.metric_matrix` makes of the whole frame, bit for bit.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from stages.core.cli import run_stage
from stages.core.io import write_json
from stages.core.params import effective_section, effective_split, dataset as dataset_params, load_checked
from stages.features.metric_table import write_metric_table
from stages.features.params import MetricsParams
from stages.features.publish import staged_outputs
from stages.formats import read_metric_parts

log = logging.getLogger("stages.metrics")
FEATURES_ROOT = Path("data/features")
OUTPUTS = ["metrics.parquet", "metrics_stats.json"]


def run(dataset: str, raw_params: dict | None = None) -> dict:
    raw = load_checked() if raw_params is None else raw_params  # params.yaml as a whole checked first
    ds = dataset_params(dataset, raw)
    split = effective_split(dataset, raw)  # global split with datasets.<ds>.split overrides
    params = effective_section(MetricsParams, "metrics", dataset, raw)  # with datasets.<ds>.metrics overrides
    with staged_outputs(FEATURES_ROOT / dataset, OUTPUTS) as tmp:
        # the dump's points part by part (disjoint columns): never all of them in memory at once
        counted = _Counted(read_metric_parts(ds.format, Path(ds.raw), ds.offsets))
        with tempfile.TemporaryDirectory(prefix=".spill-", dir=tmp) as spill:  # gone before the outputs publish
            table = write_metric_table(counted, tmp / "metrics.parquet", Path(spill), ds.step_s, split, params)
        if counted.parts == 0:
            log.warning("%s: the dump has no metric points; writing an empty metric table", dataset)
        write_json(table.stats, tmp / "metrics_stats.json")
    summary = {
        "dataset": dataset, "points": counted.points, "steps": table.steps, "columns": table.columns,
        "dropped": len(table.stats["dropped"]), "fit_until_ts": table.stats["fit_until_ts"],
        "ts_min": table.ts_min, "ts_max": table.ts_max, "row_groups_written_in_chunks": table.row_groups,
    }
    log.info("metrics@%s: %s", dataset, summary)
    return summary


class _Counted:
    """The parts, counting them and their points as they pass."""

    def __init__(self, parts: Iterator[pl.DataFrame]):
        self._parts, self.parts, self.points = parts, 0, 0

    def __iter__(self) -> Iterator[pl.DataFrame]:
        for part in self._parts:
            self.parts += 1
            self.points += part.height
            yield part


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.metrics", description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="a dataset name under datasets: in params.yaml")
    args = parser.parse_args(argv)
    return run_stage(lambda: run(args.dataset))


if __name__ == "__main__":
    sys.exit(main())
