"""Replay MetaLog's published protocol on loghub data: ``python -m stages.replay metalog ...``.

Cross-system (``--target`` given): the whole ``--loghub`` system is the labelled source; the
target is split chronologically into train / val / test; only ``labelled_anomaly_percent``
(default 1 %, at least one) of the target's training anomalies plus its normals are labelled;
meta-learning (or ``-S mode=zero_shot``: no target label at all) trains the model, which is
scored on the target's test part at its own decision threshold 0.5 (no label picks it).

In-system (no ``--target``): the ``--loghub`` system is split the same way and the model is
trained on its labelled training part.

A target whose test part holds no anomalous window (or no normal one) cannot be evaluated: the
replay stops with one line and exit 2 and writes nothing. Beside MetaLog the JSON and the
``<out stem>.md`` table hold the floors (random, PCA, IsolationForest on the target windows'
template counts, see :mod:`stages.replays.log_common`), the flag-every-window F1 and 95 %
block-bootstrap intervals — the 2k-line loghub samples leave ~20 test windows.

Examples::

    python -m stages.replay metalog --loghub ../shared/data/loghub/Thunderbird \\
        --target ../shared/data/loghub/BGL --out metrics/replays/metalog_tb_bgl.json
    python -m stages.replay metalog --loghub BGL_structured.csv --target Thunderbird_structured.csv
    python -m stages.replay metalog --loghub BGL.log --style bgl -S train.epochs=3
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from stages.core.params import LLMParams, build
from stages.replays.common import ReplayResult, merge, parse_overrides, replay_main
from stages.replays.log_common import (add_system_args, common_args, fit_score_report, load_system, log_report,
                                       loghub_schema, split_counts, split_target)

log = logging.getLogger(__name__)
DECISION_THRESHOLD = 0.5


def main(argv: list[str] | None = None) -> int:
    from stages.nets.metalog import MetaLog, MetaLogConfig

    parser = argparse.ArgumentParser(prog="python -m stages.replay metalog", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_system_args(parser, help_name="source system (or the only system)")
    add_system_args(parser, "target", help_name="target system (cross-system run)")
    common_args(parser)
    parser.add_argument("--out", default="metrics/replays/metalog.json", help="metrics JSON to write")
    args = parser.parse_args(argv)

    def run() -> ReplayResult:
        cross = args.target is not None
        raw = merge({"labelled_anomaly_percent": 1.0} if cross else {}, parse_overrides(args.overrides))
        raw.setdefault("source", "loghub_source" if cross else "")
        config = build(MetaLogConfig, raw, where="metalog", source="-S")
        target_path = args.target or args.loghub
        target_all = load_system(args, "target" if cross else "loghub", config.max_len)
        train, val, test = split_target(target_all, target_path, args.train, args.val)
        source = load_system(args, "loghub", config.max_len) if cross else None
        det = MetaLog(config, loghub_schema(target_all, Path(target_path).name), LLMParams(backbone=args.backbone),
                      seed=args.seed)
        title = (f"MetaLog {Path(args.loghub).name} → {Path(args.target).name}" if cross
                 else f"MetaLog in-system {Path(args.loghub).name}")
        done = fit_score_report(
            "metalog", lambda: det.fit_sequences(train, [source] if cross else []),
            lambda: det.score_sequences(test), len(test),
            lambda scores: log_report("metalog", scores, DECISION_THRESHOLD, "classifier's 0.5", train, val, test,
                                      args.seed, args.n_boot, title))
        metrics, history = done.metrics, done.fitted
        metrics.update({"method": "metalog", "protocol": "cross_system" if cross else "in_system",
                        "mode": config.mode, "source": args.loghub if cross else None, "target": target_path,
                        "threshold_source": "the classifier's own 0.5 (no label)",
                        "train_seconds": done.train_seconds, "windows_per_s": done.windows_per_s,
                        "device": str(det.device), "config": dataclasses.asdict(config), "seed": args.seed,
                        "final_train_loss": history["train_loss"][-1] if history.get("train_loss") else None,
                        **(split_counts("source", source) if cross else {}), **split_counts("train", train),
                        **split_counts("val", val), **split_counts("test", test)})
        return ReplayResult(metrics, done.markdown)

    return replay_main(run, args.out)
