"""Replay the xLSTM log detector's protocol on loghub data: ``python -m stages.replay xlstm_logad ...``.

In-system (no ``--target``): the system is split chronologically into train / val / test
(non-overlapping windows or sessions, so nothing leaks across the cut). Training blocks fill the
labelled container and, if normal, train the xLSTM reconstruction; validation blocks (labels
unused) early-stop it; the signal weighting and the operating threshold (best F1 of the anomaly
class) are fitted on training blocks only — with out-of-fold reconstruction errors and container
votes (``oof_folds``), so they see training blocks the way they will see test blocks; test blocks
are scored once.

Cross-system (``--target``): the labelled training blocks are the whole ``--loghub`` source plus
the target's training part with the labels MetaLog's cross-system protocol reads (all normals,
``--labelled-anomaly-percent`` of the anomalies, at least one; the other anomalies are left out);
both systems share one template space (keyed by text). Validation and test are the target's.

A target test part with one class stops the replay with one line and exit 2 (nothing written).
Floors, flag-every-window and intervals: see :mod:`stages.replays.log_common`.

Examples::

    python -m stages.replay xlstm_logad --loghub HDFS/
    python -m stages.replay xlstm_logad --loghub ../shared/data/loghub/BGL --out metrics/replays/xlstm_bgl.json
    python -m stages.replay xlstm_logad --loghub ../shared/data/loghub/Thunderbird \\
        --target ../shared/data/loghub/BGL --out metrics/replays/xlstm_tb_bgl.json
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from stages.core.params import LLMParams, build
from stages.replays.common import ReplayResult, parse_overrides, replay_main
from stages.replays.log_common import (add_system_args, common_args, concat_systems, fit_score_report, load_system,
                                       log_report, loghub_schema, reindex, split_counts, split_target)


def main(argv: list[str] | None = None) -> int:
    from stages.nets.metalog import labelled_subset
    from stages.nets.xlstm_logad import XLSTMLogAD, XLSTMLogADConfig

    parser = argparse.ArgumentParser(prog="python -m stages.replay xlstm_logad", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_system_args(parser, help_name="source system (or the only system)")
    add_system_args(parser, "target", help_name="target system (cross-system run)")
    common_args(parser)
    parser.add_argument("--labelled-anomaly-percent", type=float, default=1.0,
                        help="cross-system: share of the target's training anomalies kept labelled (at least one)")
    parser.add_argument("--out", default="metrics/replays/xlstm_logad.json", help="metrics JSON to write")
    args = parser.parse_args(argv)

    def run() -> ReplayResult:
        config = build(XLSTMLogADConfig, parse_overrides(args.overrides), where="xlstm_logad", source="-S")
        cross = args.target is not None
        target_path = args.target or args.loghub
        target_all = load_system(args, "target" if cross else "loghub", config.max_len)
        train, val, test = split_target(target_all, target_path, args.train, args.val)
        fit_train, fit_val, fit_test, source = train, val, test, None
        if cross:
            source = load_system(args, "loghub", config.max_len)
            fit_train, templates = concat_systems(source, labelled_subset(train, args.labelled_anomaly_percent,
                                                                          args.seed))
            fit_val, fit_test = reindex(val, templates), reindex(test, templates)
        det = XLSTMLogAD(config, loghub_schema(fit_train, Path(target_path).name), LLMParams(backbone=args.backbone),
                         seed=args.seed)
        title = (f"xLSTM {Path(args.loghub).name} → {Path(args.target).name}" if cross
                 else f"xLSTM in-system {Path(args.loghub).name}")
        done = fit_score_report(
            "xlstm_logad", lambda: det.fit_sequences(fit_train, fit_val), lambda: det.score_sequences(fit_test),
            len(test),
            lambda scores: log_report("xlstm_logad", scores, det.threshold, "best F1 on training blocks", train, val,
                                      test, args.seed, args.n_boot, title))
        metrics = done.metrics
        metrics.update({"method": "xlstm_logad", "protocol": "cross_system" if cross else "chronological_split",
                        "source": args.loghub if cross else None, "target": target_path,
                        "threshold_source": "best F1 on training blocks (out-of-fold signals)",
                        "train_seconds": done.train_seconds, "windows_per_s": done.windows_per_s,
                        "device": str(det.device),
                        "weights": {"container": float(det.coef[0]), "reconstruction": float(det.coef[1]),
                                    "bias": float(det.intercept)},
                        "config": dataclasses.asdict(config), "seed": args.seed,
                        **({"labelled_anomaly_percent": args.labelled_anomaly_percent,
                            **split_counts("source", source), **split_counts("fit", fit_train)} if cross else {}),
                        **split_counts("train", train), **split_counts("val", val), **split_counts("test", test)})
        return ReplayResult(metrics, done.markdown)

    return replay_main(run, args.out)
