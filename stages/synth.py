"""DVC stage ``synth@<dataset>``: write the synthetic raw dump of one dataset in its native format.

    python -m stages.synth <dataset>
    python -m stages.synth <dataset> --out DIR [--start ISO] [--hours H] [--variant NAME]

Reads ``seed``, section ``synth`` and ``datasets.<dataset>`` (its ``format`` and ``raw`` folder).
With ``--out`` it writes a *new* dump of the same system elsewhere (not a pipeline output): same
services, call graph and log templates, other faults and traffic when ``--variant`` is given, at
``--start`` for ``--hours`` — data a trained model has never seen, for ``python -m stages.score``.
"""
from __future__ import annotations

import argparse
import sys

from stages.core.cli import run_stage
from stages.core.errors import InputError
from stages.core.params import PARAMS_FILE, build, dataset, load_checked
from stages.simulate.generate import generate
from stages.simulate.params import SynthParams


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="a dataset name under `datasets:` in params.yaml")
    parser.add_argument("--out", help="write a new dump of the system here instead of the dataset's raw folder")
    parser.add_argument("--start", help="with --out: ISO UTC start (default synth.start_utc of the format)")
    parser.add_argument("--hours", type=float, help="with --out: length in hours (default synth.hours)")
    parser.add_argument("--variant", help="with --out: other faults and traffic of the same system")
    args = parser.parse_args(argv)
    if args.out is None and (args.start or args.hours or args.variant):
        parser.error("--start, --hours and --variant need --out")

    def run() -> None:
        raw = load_checked(deep=True)  # the first stage of the DAG checks every section once
        ds = dataset(args.dataset, raw)
        if args.out is not None:
            section = dict(raw.get("synth") or {})
            if args.hours is not None:
                section["hours"] = args.hours
            if args.start is not None:
                section["start_utc"] = {**(section.get("start_utc") or {}), ds.format: args.start}
            params = build(SynthParams, section, where="synth")
            generate(args.dataset, ds.format, args.out, params, _seed(raw), variant=args.variant)
            return
        if not ds.synthetic:
            # Never overwrite a real dump that a dataset entry points at.
            raise InputError(PARAMS_FILE, f"datasets.{args.dataset}.synthetic",
                             "true for a dataset that synth generates (this one names a real dump)", ds.synthetic)
        expected = f"data/raw/{args.dataset}"
        if ds.raw.rstrip("/") != expected:
            # dvc.yaml declares synth@<ds>'s output as data/raw/<ds>; anything else would go untracked.
            raise InputError(PARAMS_FILE, f"datasets.{args.dataset}.raw", f"'{expected}' for a synthetic dataset",
                             ds.raw)
        params = build(SynthParams, raw.get("synth"), where="synth")
        generate(args.dataset, ds.format, ds.raw, params, _seed(raw))

    return run_stage(run)


def _seed(raw: dict) -> int:
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(PARAMS_FILE, "seed", "an integer", seed)
    return seed


if __name__ == "__main__":
    sys.exit(main())
