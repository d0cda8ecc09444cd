"""Trivial stages start fast: the train/evaluate stages of the baselines never import torch or
transformers, the random baseline no scikit-learn, PCA and IsolationForest only the sklearn part
they fit with. Checked in fresh processes through ``sys.modules`` (what was imported, not how long
it took: timings on a shared machine would make a flaky test)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_evaluate_report import DS, write_windows

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "sklearn")

# runs in a fresh interpreter: argv = root, detector, what ("import" | "train" | "load" | "evaluate");
# prints the heavy modules then imported, as JSON on the last line
CHILD = r"""
import json, sys
from pathlib import Path

import numpy as np

root, det, what = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
import stages.evaluate
import stages.train

if what == "import":
    import stages.embed_pca, stages.inspect, stages.labels, stages.report, stages.synth  # noqa: E401,F401
    import stages.core.device, stages.core.distributed, stages.nets.base, stages.nets.baselines  # noqa: E401,F401
elif what == "train":
    raw = {"seed": 0, "pipeline": {"datasets": [sys.argv[4]], "detectors": [det]},
           "datasets": {sys.argv[4]: {"format": "eadro", "raw": "data/raw/x", "step_s": 10}},
           "iforest": {"n_estimators": 10}, "pca": {"n_components": 4}}
    stages.train.run(sys.argv[4], det, raw=raw, windows_root=root / "data" / "windows",
                     models_root=root / "models", metrics_root=root / "metrics",
                     word_pca_root=root / "models" / "word_pca")
elif what == "evaluate":
    import os
    os.chdir(root)  # the stage's default paths: data/windows, models, metrics/eval
    stages.evaluate.run(sys.argv[4], det, raw={"seed": 0, "pipeline": {"datasets": [sys.argv[4]], "detectors": [det]}})
else:
    from stages.core.windowset import load_split

    test = load_split(root / "data" / "windows" / sys.argv[4], "test")
    model, _ = stages.evaluate.load_detector(root / "models", sys.argv[4], det, test.schema)
    scores = model.score(test)
    assert scores.shape == (test.n_steps,) and np.isfinite(scores).any()
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "sklearn"))))
"""


def _imported(root: Path, detector: str, what: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(root), detector, what, DS], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _tops(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_stage_modules_import_no_torch_transformers_or_sklearn(tmp_path):
    assert _imported(tmp_path, "random", "import") == set()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny windows dir, and each baseline trained on it by the train stage in a fresh process,
    with what each training process imported."""
    root = tmp_path_factory.mktemp("startup")
    write_windows(root)
    return root, {det: _imported(root, det, "train") for det in ("random", "pca", "iforest")}


def test_random_stages_import_no_torch_and_no_sklearn(trained):
    root, imported = trained
    assert imported["random"] == set()
    assert _imported(root, "random", "load") == set()


def test_random_and_pca_evaluate_stages_import_no_sklearn(trained):
    """AUC-PR/AUC-ROC come from stages.core.ranking (numpy): scikit-learn's import cost ~2 s per evaluate stage."""
    root, _ = trained
    assert _imported(root, "random", "evaluate") == set()
    assert _imported(root, "pca", "evaluate") == set()
    assert (root / "metrics" / "eval" / DS / "pca.json").is_file()


def test_pca_trains_with_sklearn_decomposition_alone_and_scores_with_numpy(trained):
    root, imported = trained
    assert _tops(imported["pca"]) == {"sklearn"}  # no torch, no transformers
    assert "sklearn.decomposition" in imported["pca"] and "sklearn.ensemble" not in imported["pca"]
    assert _imported(root, "pca", "load") == set()  # mean and components: numpy arrays in safetensors


def test_iforest_stages_import_sklearn_but_no_torch(trained):
    root, imported = trained
    assert _tops(imported["iforest"]) == {"sklearn"} and "sklearn.ensemble" in imported["iforest"]
    assert _tops(_imported(root, "iforest", "load")) == {"sklearn"}  # unpickling the forest


def test_numpy_state_file_has_the_bytes_torch_wrote(trained):
    """The PCA state goes through ``safetensors.numpy`` now: the bytes equal what ``safetensors.torch``
    wrote before, and the torch reader gets the same arrays back."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    root, _ = trained
    path = root / "models" / DS / "pca" / "detector" / "model.safetensors"
    state = load_file(str(path))
    assert set(state) == {"mean", "components"} and state["mean"].dtype == torch.float32
    again = path.with_name("torch.safetensors")
    save_file({k: v.contiguous() for k, v in state.items()}, str(again))
    assert again.read_bytes() == path.read_bytes()

    from stages.core.windowset import load_split
    from stages.nets.baselines import PCADetector

    det = PCADetector.load(path.parent, load_split(root / "data" / "windows" / DS, "test").schema)
    np.testing.assert_array_equal(det.mean, state["mean"].numpy())
    np.testing.assert_array_equal(det.components, state["components"].numpy())
    assert det.mean.flags.writeable and det.mean.flags.c_contiguous


def test_torch_detector_still_importable_from_base():
    from stages.nets import base
    from stages.nets.torch_detector import TorchDetector

    assert base.TorchDetector is TorchDetector
    from stages.nets.base import TorchDetector as old_path  # the import every torch detector used to write

    assert old_path is TorchDetector
    with pytest.raises(AttributeError):
        base.NoSuchThing  # noqa: B018


def test_seed_everything_switches_kernels_deterministic_without_loading_the_compiler():
    """torch.use_deterministic_algorithms imports Inductor (1.5-2 s per torch stage) to set a flag
    nothing here uses; seed_everything sets the eager switch directly, with the same effect."""
    code = ("import sys, torch; from stages.core.device import seed_everything; seed_everything(0); "
            "print(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(), "
            "'torch._inductor.config' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "False"]


def test_dvc_reads_the_lock_file_with_the_c_yaml_parser_and_the_same_data():
    """dvc parses dvc.yaml/dvc.lock with ruamel's safe loader several times per stage; the
    project depends on ruamel.yaml.clib so that loader is the C one. Both parsers must give the
    same data on the committed lock file and stage file."""
    from ruamel.yaml import YAML

    fast = YAML(typ="safe")
    assert "_ruamel_yaml" in fast.Parser.__module__, f"pure-Python YAML parser in use: {fast.Parser}"
    pure = YAML(typ="safe", pure=True)
    for name in ("dvc.lock", "dvc.yaml", "params.yaml"):
        text = (REPO / name).read_text(encoding="utf-8")
        assert fast.load(text) == pure.load(text), name


def test_torch_detector_modules_import_no_sklearn_or_transformers():
    """Scoring a torch detector (its evaluate stage) needs neither: scikit-learn is imported inside
    the xLSTM detector's fit only (TF-IDF, logistic weighting), transformers where a backbone loads."""
    code = ("import json, sys\n"
            "import stages.nets.fuseguard, stages.nets.interfusion, stages.nets.kad_disformer, "
            "stages.nets.metalog, stages.nets.xlstm_logad\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'transformers'))))")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
