"""DVC stage ``logs@<ds>``: the dump's log lines → Drain3 templates, per-line events, per-step counts.

Outputs ``log_templates.parquet``, ``log_counts.parquet``, ``log_events.parquet`` and the miners'
state under ``drain3/``; the logic lives in :mod:`stages.features.log_templates`, read bucket by
bucket of whole services (:mod:`stages.features.log_buckets`) so a month of lines never sits in
memory at once.
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
from stages.core.params import build, dataset as dataset_params, load_checked
from stages.features.log_buckets import write_log_tables
from stages.features.params import LogsParams
from stages.features.publish import staged_outputs
from stages.formats import read_log_buckets

log = logging.getLogger("stages.logs")
FEATURES_ROOT = Path("data/features")
OUTPUTS = ["log_templates.parquet", "log_counts.parquet", "log_events.parquet", "drain3"]


def run(dataset: str, raw_params: dict | None = None) -> dict:
    raw = load_checked() if raw_params is None else raw_params  # params.yaml as a whole checked first
    ds = dataset_params(dataset, raw)
    params = build(LogsParams, raw.get("logs"), where="logs")
    with staged_outputs(FEATURES_ROOT / dataset, OUTPUTS) as tmp:
        with tempfile.TemporaryDirectory(prefix=".spill-", dir=tmp) as spill:  # gone before the outputs publish
            got = write_log_tables(_buckets(dataset, ds, Path(spill)), tmp, Path(spill), params, ds.step_s)
    summary = {"dataset": dataset, "lines": got.lines, "services": got.services, "templates": got.templates,
               "steps": got.steps}
    log.info("logs@%s: %s", dataset, summary)
    return summary


def _buckets(dataset: str, ds, spill: Path) -> Iterator[pl.DataFrame]:
    """The dump's lines in buckets of whole services (one bucket for a dump under ~64 MB of logs)."""
    got = False
    for bucket in read_log_buckets(ds.format, Path(ds.raw), spill, ds.offsets):
        got = True
        yield bucket
    if not got:
        log.warning("%s: the dump has no logs; writing empty log tables", dataset)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.logs", description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="a dataset name under datasets: in params.yaml")
    args = parser.parse_args(argv)
    return run_stage(lambda: run(args.dataset))


if __name__ == "__main__":
    sys.exit(main())
