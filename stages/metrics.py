"""DVC stage ``metrics@<ds>``: the dump's metric points → ``metrics.parquet`` + ``metrics_stats.json``.

Reads params, calls :func:`stages.features.metric_matrix.metric_matrix`, writes; nothing else.
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
from stages.features.metric_matrix import metric_matrix
from stages.features.params import MetricsParams
from stages.features.publish import staged_outputs
from stages.formats import read_modality

log = logging.getLogger("stages.metrics")
FEATURES_ROOT = Path("data/features")
OUTPUTS = ["metrics.parquet", "metrics_stats.json"]


def run(dataset: str, raw_params: dict | None = None) -> dict:
    raw = load_checked() if raw_params is None else raw_params  # params.yaml as a whole checked first
    ds = dataset_params(dataset, raw)
    split = effective_split(dataset, raw)  # global split with datasets.<ds>.split overrides
    params = build(MetricsParams, raw.get("metrics"), where="metrics")
    with staged_outputs(FEATURES_ROOT / dataset, OUTPUTS) as tmp:
        points = read_modality(ds.format, Path(ds.raw), "metrics", ds.offsets)
        if points is None:
            log.warning("%s: the dump has no metrics; writing an empty metric table", dataset)
            points = empty("metrics")
        frame, stats = metric_matrix(points, ds.step_s, split, params)
        write_parquet(frame, tmp / "metrics.parquet")
        write_json(stats, tmp / "metrics_stats.json")
    summary = {
        "dataset": dataset, "points": points.height, "steps": frame.height, "columns": frame.width - 1,
        "dropped": len(stats["dropped"]), "fit_until_ts": stats["fit_until_ts"],
        "ts_min": int(frame["ts"].min()) if frame.height else None,
        "ts_max": int(frame["ts"].max()) if frame.height else None,
    }
    log.info("metrics@%s: %s", dataset, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.metrics", description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="a dataset name under datasets: in params.yaml")
    args = parser.parse_args(argv)
    return run_stage(lambda: run(args.dataset))


if __name__ == "__main__":
    sys.exit(main())
