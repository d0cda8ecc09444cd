"""DVC stage ``traces@<ds>``: the dump's spans → trace aggregates, call graph and per-edge series.

Outputs ``trace_aggregates.parquet``, ``call_graph.json``, ``trace_series.parquet`` and
``trace_stats.json``; the logic lives in :mod:`stages.features.trace_features`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from stages.core.cli import run_stage
from stages.core.frames import empty
from stages.core.io import write_json, write_parquet
from stages.core.params import build, effective_split, dataset as dataset_params, load_checked
from stages.features.params import TracesParams
from stages.features.publish import staged_outputs
from stages.features.trace_features import trace_features
from stages.formats import read_modality

log = logging.getLogger("stages.traces")
FEATURES_ROOT = Path("data/features")
OUTPUTS = ["trace_aggregates.parquet", "call_graph.json", "trace_series.parquet", "trace_stats.json"]


def run(dataset: str, raw_params: dict | None = None) -> dict:
    raw = load_checked() if raw_params is None else raw_params  # params.yaml as a whole checked first
    ds = dataset_params(dataset, raw)
    split = effective_split(dataset, raw)  # global split with datasets.<ds>.split overrides
    params = build(TracesParams, raw.get("traces"), where="traces")
    with staged_outputs(FEATURES_ROOT / dataset, OUTPUTS) as tmp:
        spans = read_modality(ds.format, Path(ds.raw), "traces", ds.offsets)
        if spans is None:
            log.warning("%s: the dump has no traces; writing empty trace tables", dataset)
            spans = empty("traces")
        out = trace_features(spans, ds.step_s, split, params.max_gap_s, params.min_edge_count, source=ds.raw,
                             params=params)
        write_parquet(out["aggregates"], tmp / "trace_aggregates.parquet")
        write_json(out["graph"], tmp / "call_graph.json")
        write_parquet(out["series"], tmp / "trace_series.parquet")
        write_json(out["stats"], tmp / "trace_stats.json")
    agg = out["aggregates"]
    summary = {
        "dataset": dataset, "spans_read": spans.height, "spans": out["spans"], "stray_spans_dropped": out["stray_spans"],
        "traces": agg.height, "error_traces": int(agg["is_error"].sum()) if agg.height else 0,
        "calls": out["calls"], "services": len(out["graph"]["services"]), "edges": len(out["graph"]["edges"]),
        "steps": out["series"].height, "fit_until_ts": out["stats"]["fit_until_ts"],
    }
    log.info("traces@%s: %s", dataset, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.traces", description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="a dataset name under datasets: in params.yaml")
    args = parser.parse_args(argv)
    return run_stage(lambda: run(args.dataset))


if __name__ == "__main__":
    sys.exit(main())
