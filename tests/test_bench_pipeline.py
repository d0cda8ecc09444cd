"""``python -m stages.bench pipeline``: every stage's own command on one small generated dump."""
from __future__ import annotations

import argparse
import json

import pytest
import yaml

from stages import bench_pipeline
from stages.core.errors import InputError


def _args(tmp_path, *extra: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    bench_pipeline.add_arguments(ap)
    return ap.parse_args(["--format", "gaia", "--hours", "6", "--requests-per-s", "0.5",
                          "--workdir", str(tmp_path), *extra])


def test_every_stage_runs_in_its_own_process_on_the_dump(tmp_path):
    out = bench_pipeline.bench_pipeline(_args(tmp_path, "--detectors", "random,pca"))
    names = [" ".join([r["stage"], *r["args"][1:]]) for r in out["stages"]]
    assert names == ["embed_pca", "metrics", "traces", "logs", "labels", "embed", "windows", "sources",
                     "train random", "evaluate random", "train pca", "evaluate pca"]
    assert all(r["wall_s"] > 0 and r["peak_rss_mb"] > 50 for r in out["stages"])  # each child's own peak
    ws = tmp_path / "pipeline"
    params = yaml.safe_load((ws / "params.yaml").read_text())
    assert params["pipeline"]["datasets"] == ["bench"] and params["pipeline"]["detectors"] == ["random", "pca"]
    assert params["datasets"]["bench"]["sources"] == [] and params["datasets"]["bench"]["format"] == "gaia"
    data = json.loads((ws / "metrics" / "data" / "bench.json").read_text())
    assert out["steps"] == data["steps"] > 0 and out["channels"]["metrics"] == data["channels"]["metrics"] > 0
    for det in ("random", "pca"):  # the evaluate stage's own figures, not recomputed
        ev = json.loads((ws / "metrics" / "eval" / "bench" / f"{det}.json").read_text())
        assert out["detectors"][det]["auc_pr"] == ev["auc_pr"]
        assert f"| {det} | {ev['auc_pr']:.3f}" in out["table"]
    assert (ws / "logs" / "train_pca.log").exists()


def test_a_stage_that_fails_names_its_command_and_log(tmp_path):
    with pytest.raises(InputError, match="--detectors"):
        bench_pipeline.bench_pipeline(_args(tmp_path, "--detectors", "nope"))
    with pytest.raises(RuntimeError, match=r"python -m stages.metrics bench.*failed.*metrics.log"):
        bench_pipeline.bench_pipeline(_args(tmp_path, "--root", str(tmp_path / "missing"), "--detectors", "random"))
