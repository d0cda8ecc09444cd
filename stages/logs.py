"""DVC stage ``logs@<ds>``: the dump's log lines → Drain3 templates, per-line events, per-step counts.

Outputs ``log_templates.parquet``, ``log_counts.parquet``, ``log_events.parquet`` and the miners'
state under ``drain3/``; the logic lives in :mod:`stages.features.log_templates`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from stages.core.cli import run_stage
from stages.core.frames import empty
from stages.core.io import write_parquet
from stages.core.params import build, dataset as dataset_params, load_checked
from stages.features.log_templates import log_counts, mine_templates, save_miners
from stages.features.params import LogsParams
from stages.features.publish import staged_outputs
from stages.formats import read_modality

log = logging.getLogger("stages.logs")
FEATURES_ROOT = Path("data/features")
OUTPUTS = ["log_templates.parquet", "log_counts.parquet", "log_events.parquet", "drain3"]


def run(dataset: str, raw_params: dict | None = None) -> dict:
    raw = load_checked() if raw_params is None else raw_params  # params.yaml as a whole checked first
    ds = dataset_params(dataset, raw)
    params = build(LogsParams, raw.get("logs"), where="logs")
    with staged_outputs(FEATURES_ROOT / dataset, OUTPUTS) as tmp:
        lines = read_modality(ds.format, Path(ds.raw), "logs", ds.offsets)
        if lines is None:
            log.warning("%s: the dump has no logs; writing empty log tables", dataset)
            lines = empty("logs")
        mined = mine_templates(lines, params, ds.step_s)
        counts = log_counts(mined.events, mined.templates, ds.step_s)
        write_parquet(mined.templates, tmp / "log_templates.parquet")
        write_parquet(counts, tmp / "log_counts.parquet")
        write_parquet(mined.events, tmp / "log_events.parquet")
        save_miners(mined, params, tmp / "drain3")
    summary = {
        "dataset": dataset, "lines": mined.events.height, "services": len(mined.miners),
        "templates": mined.templates.height, "steps": counts.height,
    }
    log.info("logs@%s: %s", dataset, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.logs", description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="a dataset name under datasets: in params.yaml")
    args = parser.parse_args(argv)
    return run_stage(lambda: run(args.dataset))


if __name__ == "__main__":
    sys.exit(main())
