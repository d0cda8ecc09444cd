"""End to end, as a user works: `dvc repro`, a no-op second repro, precise invalidation,
`dvc exp run -S`, `dvc exp show`, `dvc metrics diff` and `dvc plots diff`, in a temporary git repo
on a tiny configuration of the real pipeline (real synth, readers, Drain3, MiniLM, training)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

TINY = {
    "pipeline": {"datasets": ["synth_tt", "synth_gaia"], "synthetic": ["synth_tt", "synth_gaia"],
                 "detectors": ["random", "iforest", "fuseguard"]},
}


def tiny_params() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["pipeline"].update(TINY["pipeline"])
    keep = TINY["pipeline"]["datasets"]
    params["datasets"] = {k: {**v, "sources": [s for s in v.get("sources", []) if s in keep]}
                          for k, v in params["datasets"].items() if k in keep}
    params["synth"].update({"hours": 8.0, "fault_every_min": 25.0, "fault_min_gap_min": 3.0,
                            "fault_duration_min": [2.0, 6.0]})
    params["split"].update({"fewshot_percent": 30})
    params["evaluate"].update({"bootstrap": 20})
    params["windows"].update({"length": 16, "stride": 4})
    params["llm"].update({"layers": 1, "pca_components": 16})
    params["fuseguard"]["train"].update({"epochs": 2, "batch_size": 32})
    return params


def sh(args: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("e2e") / "proj"
    root.mkdir()
    for name in ("stages", "dvc.yaml", ".gitignore", ".dvcignore", "pyproject.toml"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    env = dict(os.environ, DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.com")
    dvc = [sys.executable, "-m", "dvc"]
    sh(["git", "init", "-q"], root, env)
    sh(dvc + ["init", "-q"], root, env)
    sh(dvc + ["config", "core.analytics", "false"], root, env)
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-qm", "init"], root, env)
    sh(dvc + ["repro"], root, env)
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-qm", "baseline run"], root, env)
    return root, env


def test_repro_produces_report_and_is_then_a_noop(project):
    root, env = project
    summary = json.loads((root / "metrics/summary.json").read_text())
    assert "synth_tt" in json.dumps(summary) and "fuseguard" in json.dumps(summary)
    m = json.loads((root / "metrics/eval/synth_tt/fuseguard.json").read_text())
    for key in ("auc_pr", "auc_roc", "vus_pr", "vus_roc", "f1", "event_recall", "event_f1", "pa_f1",
                "best_f1_oracle", "train_seconds", "score_windows_per_s", "peak_memory_mb", "device", "ci",
                "protocol", "data_share"):
        assert key in m
    digests = {json.loads((root / f"models/synth_tt/{d}/train.json").read_text())["windows_digest"]
               for d in TINY["pipeline"]["detectors"]}
    assert len(digests) == 1, "every detector of a protocol learns from the same windows"
    out = sh([sys.executable, "-m", "dvc", "repro"], root, env)
    assert "Running stage" not in out
    status = sh([sys.executable, "-m", "dvc", "status"], root, env)
    assert "up to date" in status


def test_changing_a_log_parameter_touches_only_the_log_branch(project):
    root, env = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["logs"]["sim_th"] = round(float(params["logs"]["sim_th"]) + 0.05, 3)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        status = sh([sys.executable, "-m", "dvc", "status", "--json"], root, env)
        changed = set(json.loads(status[status.index("{"):]).keys())
        assert any(s.startswith("logs@") for s in changed)
        assert not any(s.split("@")[0] in ("metrics", "traces", "labels", "synth", "embed_pca") for s in changed), changed
    finally:
        sh(["git", "checkout", "params.yaml"], root, env)


def test_experiment_and_diffs(project):
    root, env = project
    dvc = [sys.executable, "-m", "dvc"]
    out = sh(dvc + ["exp", "run", "-S", "fuseguard.fusion=mean"], root, env)
    assert "Running stage 'train_fuseguard@synth_tt'" in out
    assert "Running stage 'train_iforest" not in out and "Running stage 'logs@" not in out
    show = sh(dvc + ["exp", "show", "--json"], root, env)
    assert "fuseguard.fusion" in show or "fusion" in show
    diff = sh(dvc + ["metrics", "diff", "--json"], root, env)
    assert "metrics/eval/synth_tt/fuseguard.json" in diff
    sh(dvc + ["plots", "diff", "-o", "plots_out"], root, env)
    assert (root / "plots_out/index.html").exists()


def test_data_and_models_move_through_a_dvc_remote(project, tmp_path):
    """A local-folder remote stands in for S3/GCS (README, "Scale out"): push from this clone,
    then a fresh clone of the git repo pulls every output and finds the pipeline up to date."""
    root, env = project
    dvc = [sys.executable, "-m", "dvc"]
    remote = tmp_path / "remote"
    sh(dvc + ["remote", "add", "--local", "-d", "shared", str(remote)], root, env)
    sh(dvc + ["push", "-q", "--all-commits"], root, env)  # the committed run, whatever the workspace holds now
    assert any(remote.rglob("*")), "nothing was pushed"
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
    sh(dvc + ["remote", "add", "--local", "-d", "shared", str(remote)], clone, env)
    sh(dvc + ["pull", "-q"], clone, env)
    assert (clone / "models/synth_tt/fuseguard/detector/model.safetensors").exists()
    status = sh(dvc + ["status"], clone, env)
    assert "up to date" in status, status
