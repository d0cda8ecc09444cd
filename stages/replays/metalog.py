"""Replay MetaLog's published protocol on loghub data: ``python -m stages.replay metalog ...``.

Cross-system (``--target`` given): the whole ``--loghub`` system is the labelled source; the
target is split chronologically into train / val / test; only ``labelled_anomaly_percent``
(default 1 %, at least one) of the target's training anomalies plus its normals are labelled;
meta-learning (or ``-S mode=zero_shot``: no target label at all) trains the model, which is
scored on the target's test part at its own decision threshold 0.5 (no label picks it).

In-system (no ``--target``): the ``--loghub`` system is split the same way and the model is
trained on its labelled training part.

Examples::

    python -m stages.replay metalog --loghub HDFS_2k.log_structured.csv --labels anomaly_label.csv \\
        --target BGL_2k.log_structured.csv --window 20 --out metrics/replays/metalog.json
    python -m stages.replay metalog --loghub BGL.log --style bgl -S train.epochs=3
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

from stages.core.params import LLMParams, build
from stages.core.windowset import FeatureSchema
from stages.features.log_windows import LogSequences, chronological_split, load_loghub
from stages.replays.common import merge, parse_overrides, replay_main

log = logging.getLogger(__name__)
DECISION_THRESHOLD = 0.5


# ------------------------------------------------------------------ shared by the log replays


def add_system_args(parser: argparse.ArgumentParser, prefix: str = "", help_name: str = "system") -> None:
    """Flags that describe one loghub system (``--loghub`` or ``--target`` and their options)."""
    flag = f"--{prefix}" if prefix else "--loghub"
    dest = prefix or "loghub"
    parser.add_argument(flag, dest=dest, required=not prefix, metavar="PATH",
                        help=f"{help_name}: loghub structured CSV, or raw .log with --{prefix + '-' if prefix else ''}"
                             "style")
    pre = f"--{prefix}-" if prefix else "--"
    parser.add_argument(f"{pre}labels", dest=f"{dest}_labels", metavar="CSV",
                        help="HDFS-style anomaly_label.csv (BlockId,Label): sessions by block id")
    parser.add_argument(f"{pre}style", dest=f"{dest}_style", choices=("bgl", "thunderbird", "spirit", "hdfs"),
                        help="layout of a raw .log file")
    parser.add_argument(f"{pre}node-column", dest=f"{dest}_node_column", metavar="COL",
                        help="column naming a line's node (default: Node, else User)")


def common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--window", type=int, default=20, help="lines per fixed window (per-line labels)")
    parser.add_argument("--by-node", action="store_true", help="fixed windows per node")
    parser.add_argument("--train", type=float, default=0.6, help="chronological training fraction")
    parser.add_argument("--val", type=float, default=0.2, help="chronological validation fraction")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", default="minilm", help="LLM backbone (offline)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="detector config override, dotted keys (e.g. -S train.epochs=3); repeatable")


def load_system(args: argparse.Namespace, dest: str, max_len: int) -> LogSequences:
    return load_loghub(getattr(args, dest), getattr(args, f"{dest}_labels"), getattr(args, f"{dest}_style"),
                       args.window, args.by_node, max_len, getattr(args, f"{dest}_node_column"))


def loghub_schema(seqs: LogSequences, name: str) -> FeatureSchema:
    """The minimal schema a log detector needs on home data: templates, one pseudo service."""
    return FeatureSchema(dataset=name, step_s=1.0, metric_channels=[], metric_entities=[], edges=[],
                         edge_features=[], services=["all"],
                         log_columns=[("all", k) for k in range(len(seqs.templates))],
                         templates=list(seqs.templates))


def split_counts(name: str, seqs: LogSequences) -> dict[str, int]:
    return {f"n_{name}": len(seqs), f"n_{name}_anomalous": int(seqs.labels.sum())}


# ------------------------------------------------------------------ MetaLog protocol


def main(argv: list[str] | None = None) -> int:
    from stages.core.evaluation import evaluate
    from stages.nets.metalog import MetaLog, MetaLogConfig

    parser = argparse.ArgumentParser(prog="python -m stages.replay metalog", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_system_args(parser, help_name="source system (or the only system)")
    add_system_args(parser, "target", help_name="target system (cross-system run)")
    common_args(parser)
    parser.add_argument("--out", default="metrics/replays/metalog.json", help="metrics JSON to write")
    args = parser.parse_args(argv)

    def run() -> dict:
        cross = args.target is not None
        raw = merge({"labelled_anomaly_percent": 1.0} if cross else {}, parse_overrides(args.overrides))
        raw.setdefault("source", "loghub_source" if cross else "")
        config = build(MetaLogConfig, raw, where="metalog", source="-S")
        source = load_system(args, "loghub", config.max_len)
        target_all = load_system(args, "target", config.max_len) if cross else source
        train, val, test = chronological_split(target_all, args.train, args.val)
        det = MetaLog(config, loghub_schema(target_all, Path(args.target or args.loghub).name),
                      LLMParams(backbone=args.backbone), seed=args.seed)
        t0 = time.perf_counter()
        det.fit_sequences(train, [source] if cross else [])
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores = det.score_sequences(test)
        score_s = time.perf_counter() - t0
        metrics = evaluate(scores, test.labels, DECISION_THRESHOLD, step_s=1.0)
        metrics.update({"method": "metalog", "protocol": "cross_system" if cross else "in_system",
                        "mode": config.mode, "source": args.loghub if cross else None,
                        "target": args.target or args.loghub, "train_seconds": train_s,
                        "windows_per_s": len(test) / max(score_s, 1e-9), "device": str(det.device),
                        "config": dataclasses.asdict(config), "seed": args.seed,
                        **(split_counts("source", source) if cross else {}), **split_counts("train", train),
                        **split_counts("val", val), **split_counts("test", test)})
        return metrics

    return replay_main(run, args.out)
