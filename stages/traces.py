"""DVC stage ``traces@<ds>``: the dump's spans → trace aggregates, call graph and per-edge series.

Outputs ``trace_aggregates.parquet``, ``call_graph.json``, ``trace_series.parquet`` and
``trace_stats.json``; the logic lives in :mod:`stages.features.trace_features`, read bucket by
bucket of whole traces (:mod:`stages.features.trace_buckets`) so a month of spans never sits in
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
from stages.core.params import build, effective_split, dataset as dataset_params, load_checked
from stages.features.params import TracesParams
from stages.features.publish import staged_outputs
from stages.features.trace_buckets import write_trace_tables
from stages.formats import read_trace_buckets

log = logging.getLogger("stages.traces")
FEATURES_ROOT = Path("data/features")
OUTPUTS = ["trace_aggregates.parquet", "call_graph.json", "trace_series.parquet", "trace_stats.json"]


def run(dataset: str, raw_params: dict | None = None) -> dict:
    raw = load_checked() if raw_params is None else raw_params  # params.yaml as a whole checked first
    ds = dataset_params(dataset, raw)
    split = effective_split(dataset, raw)  # global split with datasets.<ds>.split overrides
    params = build(TracesParams, raw.get("traces"), where="traces")
    with staged_outputs(FEATURES_ROOT / dataset, OUTPUTS) as tmp:
        with tempfile.TemporaryDirectory(prefix=".spill-", dir=tmp) as spill:  # gone before the outputs publish
            got = write_trace_tables(_buckets(dataset, ds, Path(spill)), tmp, Path(spill), ds.step_s, split, params,
                                     source=ds.raw)
    summary = {
        "dataset": dataset, "spans_read": got.spans_read, "spans": got.spans, "stray_spans_dropped": got.stray_spans,
        "traces": got.traces, "error_traces": got.error_traces, "calls": got.calls,
        "services": len(got.graph["services"]), "edges": len(got.graph["edges"]), "steps": got.steps,
        "fit_until_ts": got.stats["fit_until_ts"],
    }
    log.info("traces@%s: %s", dataset, summary)
    return summary


def _buckets(dataset: str, ds, spill: Path) -> Iterator[pl.DataFrame]:
    """The dump's spans in buckets of whole traces (one bucket for a dump under ~64 MB of spans)."""
    got = False
    for bucket in read_trace_buckets(ds.format, Path(ds.raw), spill, ds.offsets):
        got = True
        yield bucket
    if not got:
        log.warning("%s: the dump has no traces; writing empty trace tables", dataset)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.traces", description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="a dataset name under datasets: in params.yaml")
    args = parser.parse_args(argv)
    return run_stage(lambda: run(args.dataset))


if __name__ == "__main__":
    sys.exit(main())
