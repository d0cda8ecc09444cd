"""Where do two trainings that should match part? A diagnosis tool, not a pipeline stage.

    python -m stages.trace_steps record OUT.json DATASET DETECTOR
        run ``python -m stages.train DATASET DETECTOR`` (it writes the same outputs) with every
        optimiser step fingerprinted (stages/core/step_trace.py) into OUT.json
    python -m stages.trace_steps compare A.json B.json [C.json ...]
        for each later run: "same bits at every step", or the first step and operation where it
        parts from A; exit 1 when any run parts

Record the same command two or more times (and, for a race, beside a busy process), then compare.
A run that resumes a checkpoint (models/.checkpoints/, left by a killed run) traces only its
remaining steps.
"""
from __future__ import annotations

import argparse
import logging

from stages.core.logs import setup_logging
from stages.core.step_trace import StepTrace, first_divergence, load_steps

log = logging.getLogger("stages.trace_steps")


def record(out: str, dataset: str, detector: str) -> int:
    from stages import train

    with StepTrace() as trace:
        rc = train.main([dataset, detector])
    trace.save(out)
    log.info("%d optimiser steps traced into %s", len(trace.steps), out)
    return rc


def compare(paths: list[str]) -> int:
    ref = load_steps(paths[0])
    parted = 0
    for path in paths[1:]:
        where = first_divergence(ref, load_steps(path))
        parted += where is not None
        print(f"{path}: {'same bits at every step (%d)' % len(ref) if where is None else where}")
    return 1 if parted else 0


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    ap = argparse.ArgumentParser(prog="python -m stages.trace_steps", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="train with every step fingerprinted")
    rec.add_argument("out")
    rec.add_argument("dataset")
    rec.add_argument("detector")
    cmp_ = sub.add_parser("compare", help="the first step where each run parts from the first")
    cmp_.add_argument("runs", nargs="+")
    args = ap.parse_args(argv)
    if args.command == "record":
        return record(args.out, args.dataset, args.detector)
    if len(args.runs) < 2:
        ap.error("compare needs two runs or more")
    return compare(args.runs)


if __name__ == "__main__":
    raise SystemExit(main())
