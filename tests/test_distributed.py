"""``torchrun --nproc_per_node=2 -m stages.train``: two CPU processes (gloo) train the same model a
single process trains, and only rank 0 writes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from stages.core.windowset import load_split
from stages.nets.kad_disformer import KADDisformer
from test_evaluate_report import DS, write_windows

# dropout, random masks and source replay off: then a global batch split over two ranks gives the
# single process's gradient (up to the order of float sums), so the two models must agree closely
KAD = {"d_model": 16, "heads": 2, "layers": 1, "ff_dim": 32, "dropout": 0.0, "mask_ratio": 0.0,
       "replay_weight": 0.0, "pretrain_epochs": 1, "pretrain_samples": 128, "pretrain_batch": 64,
       "cpu_threads": 1, "train": {"epochs": 3, "batch_size": 16, "lr": 3e-3, "patience": 3}}


def _params(root: Path) -> None:
    raw = {"seed": 0, "pipeline": {"datasets": [DS], "synthetic": [], "detectors": ["kad_disformer"]},
           "datasets": {DS: {"format": "eadro", "raw": f"data/raw/{DS}", "step_s": 10}},
           "kad_disformer": KAD}
    (root / "params.yaml").write_text(yaml.safe_dump(raw))


def _train(root: Path, launcher: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return subprocess.run([*launcher, "-m", "stages.train", DS, "kad_disformer"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)


def _scores(root: Path) -> np.ndarray:
    test = load_split(root / "data" / "windows" / DS, "test")
    det = KADDisformer.load(root / "models" / DS / "kad_disformer" / "detector", test.schema)
    return det.score(test)


def test_two_gloo_processes_train_what_one_process_trains(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    for root in (single, ddp):
        write_windows(root)
        _params(root)
    one = _train(single, [sys.executable])
    assert one.returncode == 0, one.stderr[-2000:]
    two = _train(ddp, [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"])
    assert two.returncode == 0, two.stderr[-3000:]

    info = json.loads((ddp / "models" / DS / "kad_disformer" / "train.json").read_text())
    assert info["world_size"] == 2
    assert json.loads((single / "models" / DS / "kad_disformer" / "train.json").read_text())["world_size"] == 1
    assert "rank 1 done" in two.stderr  # the second process trained, and wrote nothing of its own
    assert not list((ddp / "models").rglob("*.staging*"))

    a, b = _scores(single), _scores(ddp)
    ok = np.isfinite(a)
    assert ok.sum() > 50 and np.array_equal(ok, np.isfinite(b))
    np.testing.assert_allclose(b[ok], a[ok], rtol=1e-3, atol=1e-5)
