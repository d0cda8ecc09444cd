"""DVC stage ``synth@<dataset>``: write the synthetic raw dump of one dataset in its native format.

    python -m stages.synth <dataset>

Reads ``seed``, section ``synth`` and ``datasets.<dataset>`` (its ``format`` and ``raw`` folder).
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
    args = parser.parse_args(argv)

    def run() -> None:
        raw = load_checked(deep=True)  # the first stage of the DAG checks every section once
        ds = dataset(args.dataset, raw)
        if not ds.synthetic:
            # Never overwrite a real dump that a dataset entry points at.
            raise InputError(PARAMS_FILE, f"datasets.{args.dataset}.synthetic",
                             "true for a dataset that synth generates (this one names a real dump)", ds.synthetic)
        expected = f"data/raw/{args.dataset}"
        if ds.raw.rstrip("/") != expected:
            # dvc.yaml declares synth@<ds>'s output as data/raw/<ds>; anything else would go untracked.
            raise InputError(PARAMS_FILE, f"datasets.{args.dataset}.raw", f"'{expected}' for a synthetic dataset",
                             ds.raw)
        seed = raw.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError(PARAMS_FILE, "seed", "an integer", seed)
        params = build(SynthParams, raw.get("synth"), where="synth")
        generate(args.dataset, ds.format, ds.raw, params, seed)

    return run_stage(run)


if __name__ == "__main__":
    sys.exit(main())
