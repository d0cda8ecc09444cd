"""Replay the xLSTM log detector's protocol on loghub data: ``python -m stages.replay xlstm_logad ...``.

The system is split chronologically into train / val / test (non-overlapping windows or
sessions, so nothing leaks across the cut). Training blocks fill the labelled container and,
if normal, train the xLSTM reconstruction; validation blocks (labels unused) early-stop it; the
signal weighting and the operating threshold (best F1 of the anomaly class) are fitted on
training blocks only; test blocks are scored once.

Example::

    python -m stages.replay xlstm_logad --loghub BGL_2k.log_structured.csv --window 20 \\
        --out metrics/replays/xlstm_logad.json
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from stages.core.params import LLMParams, build
from stages.features.log_windows import chronological_split
from stages.replays.common import parse_overrides, replay_main
from stages.replays.metalog import add_system_args, common_args, load_system, loghub_schema, split_counts


def main(argv: list[str] | None = None) -> int:
    from stages.core.evaluation import evaluate
    from stages.nets.xlstm_logad import XLSTMLogAD, XLSTMLogADConfig

    parser = argparse.ArgumentParser(prog="python -m stages.replay xlstm_logad", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_system_args(parser)
    common_args(parser)
    parser.add_argument("--out", default="metrics/replays/xlstm_logad.json", help="metrics JSON to write")
    args = parser.parse_args(argv)

    def run() -> dict:
        config = build(XLSTMLogADConfig, parse_overrides(args.overrides), where="xlstm_logad", source="-S")
        seqs = load_system(args, "loghub", config.max_len)
        train, val, test = chronological_split(seqs, args.train, args.val)
        det = XLSTMLogAD(config, loghub_schema(seqs, Path(args.loghub).name), LLMParams(backbone=args.backbone),
                         seed=args.seed)
        t0 = time.perf_counter()
        det.fit_sequences(train, val)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores = det.score_sequences(test)
        score_s = time.perf_counter() - t0
        metrics = evaluate(scores, test.labels, det.threshold, step_s=1.0)
        metrics.update({"method": "xlstm_logad", "protocol": "chronological_split", "target": args.loghub,
                        "threshold_source": "best F1 on training blocks", "train_seconds": train_s,
                        "windows_per_s": len(test) / max(score_s, 1e-9), "device": str(det.device),
                        "weights": {"container": float(det.coef[0]), "reconstruction": float(det.coef[1]),
                                    "bias": float(det.intercept)},
                        "config": dataclasses.asdict(config), "seed": args.seed,
                        **split_counts("train", train), **split_counts("val", val), **split_counts("test", test)})
        return metrics

    return replay_main(run, args.out)
