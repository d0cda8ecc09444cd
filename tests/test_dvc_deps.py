"""dvc.yaml names the code each stage runs, so that editing it re-runs the stage.

A detector's own modules (everything it imports under ``stages/nets`` and ``stages/features``) must
be dependencies of its training stage, and the feature modules of the evaluate stage too (which
depends on ``stages/nets`` whole). ``fuseguard_parts.py`` was once missing: editing it left the
trained FuseGuard models up to date in dvc's eyes while the evaluate stage scored them with the new
code. Infrastructure (params, I/O, logging, errors) is not checked: it does not compute on data.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DETECTORS = yaml.safe_load((ROOT / "params.yaml").read_text())["pipeline"]["detectors"]
MODEL_CODE = ("stages/nets/", "stages/features/")


def _stage_deps(name: str) -> list[str]:
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][name]
    return [d for d in stage.get("do", stage)["deps"] if isinstance(d, str)]


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == d.rstrip("/") or path.startswith(d.rstrip("/") + "/") for d in deps)


def _imported(entry: str, detector: str) -> list[str]:
    """Project files imported by ``entry`` (a stage module) and the detector's class, in a fresh interpreter."""
    code = (f"import importlib, json, sys; importlib.import_module({entry!r}); "
            f"from stages.nets.registry import detector_class; detector_class({detector!r}); "
            "print(json.dumps(sorted(m.__file__ for m in list(sys.modules.values()) "
            "if getattr(m, '__file__', None))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    files = [Path(f).resolve() for f in json.loads(out.stdout.strip().splitlines()[-1])]
    return sorted(str(f.relative_to(ROOT)) for f in files if f.is_relative_to(ROOT / "stages"))


@pytest.mark.parametrize("detector", DETECTORS)
def test_a_detectors_own_modules_are_dependencies_of_its_training_and_evaluate_stages(detector):
    files = [f for f in _imported("stages.train", detector) if f.startswith(MODEL_CODE) and not f.endswith(
        ("__init__.py", "stages/nets/registry.py"))]
    assert f"stages/nets/{detector}.py" in files or detector in ("random", "iforest", "pca")
    train = _stage_deps(f"train_{detector}")
    assert [f for f in files if not _covered(f, train)] == [], f"train_{detector} deps in dvc.yaml"
    evaluate = _stage_deps("evaluate")
    scoring = [f for f in _imported("stages.evaluate", detector) if f.startswith(MODEL_CODE)
               and not f.endswith("__init__.py")]
    assert [f for f in scoring if not _covered(f, evaluate)] == [], "evaluate deps in dvc.yaml"
