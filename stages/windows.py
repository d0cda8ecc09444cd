"""DVC stage ``windows@<ds>``: one time grid for all modalities, splits, few-shot subset.

Writes ``data/windows/<ds>/`` (grid.npz, schema.json, splits.json, template_embeddings.npy)
and ``metrics/data/<ds>.json`` (split sizes, anomalous steps, modality overlap) so that data
changes show up in ``dvc metrics diff``.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import polars as pl

from stages.core.io import dumps_json, staged_targets, write_json
from stages.core.cli import run_stage
from stages.core.params import SplitParams, dataset, effective_section, load_checked
from stages.core.windowset import FeatureSchema
from stages.windowing.align import (EDGE_FEATURES, WindowParams, align, check_no_leak, check_split_labels,
                                    fewshot_blocks, overlap_report, split_ranges)
from stages.windowing.oracle import best_single_column

log = logging.getLogger("stages.windows")


def run(ds: str, raw: dict | None = None, features_root: Path = Path("data/features"),
        out_root: Path = Path("data/windows"), metrics_root: Path = Path("metrics")) -> dict:
    raw = load_checked() if raw is None else raw
    dsp = dataset(ds, raw)
    wp = effective_section(WindowParams, "windows", ds, raw)
    split = effective_section(SplitParams, "split", ds, raw)
    features = features_root / ds
    al = align(features, dsp.step_s, wp)
    ranges = split_ranges(len(al.ts), wp.length, split)
    blocks = fewshot_blocks(ranges["train"][1], wp.length, split)
    counts = check_split_labels(al.labels, ranges, blocks)
    check_no_leak(features, al.ts, ranges)

    templates_df = pl.read_parquet(features / "log_templates.parquet").sort("template_id")
    templates = templates_df["template"].to_list()
    events_df = pl.read_parquet(features / "log_events.parquet")
    services = sorted(set(s for e in al.edges for s in e) | set(templates_df["service"].to_list())
                      | set(events_df["service"].unique().to_list()))
    svc_index = {s: i for i, s in enumerate(services)}
    step_us = int(round(dsp.step_s * 1e6))
    t0, T = int(al.ts[0]), len(al.ts)
    ev = events_df.select(
        ((pl.col("step_ts") - t0) // step_us).alias("t"),
        pl.col("service").replace_strict(svc_index, return_dtype=pl.Int64).alias("s"),
        pl.col("template_id").cast(pl.Int64).alias("k"),
    ).filter((pl.col("t") >= 0) & (pl.col("t") < T)).sort(["t", "s", "k"])
    log_events = ev.to_numpy().astype(np.int64).reshape(-1, 3)
    if "logs" not in wp.modalities:
        log_events = np.zeros((0, 3), np.int64)

    schema = FeatureSchema(
        dataset=ds, step_s=dsp.step_s, metric_channels=al.metric_channels,
        metric_entities=[c.split("/")[0] for c in al.metric_channels], edges=al.edges,
        edge_features=list(EDGE_FEATURES), services=services, log_columns=al.log_columns, templates=templates)
    emb_path = features / "template_embeddings.npy"

    def windows_in(name: str) -> int:
        spans = blocks if name == "fewshot" else [ranges[name]]
        return sum(max(0, (e - s - wp.length) // wp.stride + 1) for s, e in spans)

    for name in counts:
        counts[name]["windows"] = windows_in(name)
    summary = {
        "dataset": ds, "steps": T, "step_s": dsp.step_s, "window": wp.length, "stride": wp.stride,
        "channels": {"metrics": schema.n_metric, "trace_edges": schema.n_edges, "log_columns": schema.n_log,
                     "templates": len(templates), "log_events": int(len(log_events))},
        "splits": counts, "overlap": overlap_report(al.spans),
        "fewshot": {"layout": split.fewshot_layout, "blocks": len(blocks),
                    "share_of_train": counts["fewshot"]["steps"] / max(1, ranges["train"][1] - ranges["train"][0])},
        "oracle_best_single_column": best_single_column(al, ranges["test"]),
        "grid": {"first_ts": int(al.ts[0]), "last_ts": int(al.ts[-1]), "how": wp.grid},
    }
    # the windows folder and its metrics file are published together, all-or-nothing
    with staged_targets(out_root / ds, metrics_root / "data" / f"{ds}.json") as (tmp, metrics_path):
        tmp.mkdir()
        with open(tmp / "grid.npz", "wb") as fh:
            np.savez(fh, ts=al.ts, metric=al.metric, trace=al.trace, log=al.log, labels=al.labels,
                     kinds=al.kinds.astype("U64"), severity=al.severity.astype("U16"), log_events=log_events)
        (tmp / "schema.json").write_text(dumps_json(schema.to_json()))
        (tmp / "splits.json").write_text(dumps_json({"ranges": ranges, "fewshot_blocks": blocks, "window": wp.length,
                                                     "stride": wp.stride, "counts": counts}))
        if emb_path.exists():
            emb = np.load(emb_path)
            if len(emb) != len(templates):
                raise ValueError(f"{emb_path}: {len(emb)} embeddings for {len(templates)} templates")
            np.save(tmp / "template_embeddings.npy", emb)
        write_json(summary, metrics_path)
    for name, c in counts.items():
        log.info("%s %-7s steps=%d windows=%d anomalous_steps=%d", ds, name, c["steps"], c["windows"],
                 c["anomalous_steps"])
    log.info("%s modality overlap: %s", ds, summary["overlap"])
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.windows", description=__doc__)
    ap.add_argument("dataset")
    args = ap.parse_args(argv)
    return run_stage(lambda: run(args.dataset))


if __name__ == "__main__":
    raise SystemExit(main())
