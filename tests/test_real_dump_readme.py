"""The README's real-data steps, run as written on the real TrainTicket chunk in a temporary git repo.

The commands and the params entry are read from the README itself (between its ``real-data``
markers), so the documentation cannot drift from what works. Only the cheap floors are trained
here; the README's table shows the full run.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def readme_block(marker: str) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    m = re.search(rf"<!-- {re.escape(marker)} -->\s*```\w*\n(.*?)```", text, re.S)
    assert m, f"README.md has no block after <!-- {marker} -->"
    return m.group(1)


def run(cmd: str, cwd: Path, env: dict) -> str:
    proc = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def test_readme_real_data_steps_work_as_written(tmp_path, shared_data):
    root = tmp_path / "proj"
    root.mkdir()
    (tmp_path / "shared").symlink_to(shared_data.parent)  # the README says ../shared/data
    for name in ("stages", "dvc.yaml", ".gitignore", ".dvcignore", "pyproject.toml", "README.md"):
        src = REPO / name
        (shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir()
         else shutil.copy(src, root / name))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    added = yaml.safe_load(readme_block("real-data:params"))
    params["datasets"].update(added["datasets"])
    assert "tt_real" in added["pipeline"]["datasets"]
    params["pipeline"].update({"datasets": ["tt_real"], "synthetic": [], "detectors": ["random", "iforest", "pca"]})
    params["datasets"]["tt_real"]["sources"] = []  # the floors learn from no other system
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.com")
    run("git init -q && dvc init -q && git add -A && git commit -qm init", root, env)
    for line in readme_block("real-data:commands").splitlines():
        line = line.split("  #")[0].strip()
        if line and not line.startswith("#") and not line.startswith("python -m stages.inspect"):
            run(line, root, env)
    run("dvc repro", root, env)
    metrics = {d: json.loads((root / f"metrics/eval/tt_real/{d}.json").read_text())
               for d in ("random", "iforest", "pca")}
    steps = {m["n_steps"] for m in metrics.values()}
    assert len(steps) == 1, f"every detector and floor is scored on the same steps: {steps}"
    for m in metrics.values():
        assert m["auc_roc"] is not None and m["n_anomalous"] > 0 and m["n_anomalous"] < m["n_steps"]
        assert m["ci"]["auc_pr"][0] is not None
    assert (root / "metrics/summary.md").read_text().count("tt_real") >= 1
