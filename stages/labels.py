"""DVC stage ``labels@<ds>``: the dump's fault record → ``labels.parquet`` (per step) + ``faults.parquet``.

The logic lives in :mod:`stages.features.label_grid`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import polars as pl

from stages.core.cli import run_stage
from stages.core.frames import empty
from stages.core.io import write_parquet
from stages.core.params import build, dataset as dataset_params, load_checked
from stages.features.fault_truth import add_severity, read_truth
from stages.features.label_grid import clean_faults, label_grid
from stages.features.params import LabelsParams
from stages.features.publish import staged_outputs
from stages.formats import data_time_range, read_modality

log = logging.getLogger("stages.labels")
FEATURES_ROOT = Path("data/features")
OUTPUTS = ["labels.parquet", "faults.parquet"]


def run(dataset: str, raw_params: dict | None = None) -> dict:
    raw = load_checked() if raw_params is None else raw_params
    ds = dataset_params(dataset, raw)
    params = build(LabelsParams, raw.get("labels"), where="labels")
    with staged_outputs(FEATURES_ROOT / dataset, OUTPUTS) as tmp:
        faults = read_modality(ds.format, Path(ds.raw), "faults", ds.offsets)
        if faults is None:
            log.warning("%s: the dump has no fault record; every step counts as normal", dataset)
            faults = empty("faults")
        faults = clean_faults(faults, source=ds.raw)
        data_range = data_time_range(ds.format, Path(ds.raw), ds.offsets, modalities=("metrics",))
        labels = label_grid(faults, ds.step_s, params.margin_s, data_range=data_range)
        labels = add_severity(labels, read_truth(Path(ds.raw)), ds.step_s)
        write_parquet(labels, tmp / "labels.parquet")
        write_parquet(faults, tmp / "faults.parquet")
    summary = {
        "dataset": dataset, "faults": faults.height, "steps": labels.height,
        "anomalous_steps": int(labels["label"].cast(pl.Int64).sum()) if labels.height else 0,
        "kinds": sorted(set(faults["kind"].to_list())),
    }
    log.info("labels@%s: %s", dataset, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.labels", description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="a dataset name under datasets: in params.yaml")
    args = parser.parse_args(argv)
    return run_stage(lambda: run(args.dataset))


if __name__ == "__main__":
    sys.exit(main())
