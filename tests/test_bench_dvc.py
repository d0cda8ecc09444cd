"""``stages.bench dvc`` reads a real pipeline's dvc.yaml and dvc.lock with both YAML parsers and
times ``dvc status`` with each (speed is reported, never asserted)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from stages import bench_dvc


def test_bench_dvc_times_both_parsers_on_a_real_lock(tmp_path: Path):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  count:\n    foreach: [a, b]\n    do:\n      cmd: echo ${item} > out_${item}.txt\n"
        "      outs:\n        - out_${item}.txt\n")
    dvc = f"{sys.executable} -m dvc"
    subprocess.run(f"git init -q && {dvc} init -q && {dvc} repro -q && git add -A && git commit -qm init",
                   shell=True, cwd=tmp_path, env=env, check=True)
    res = bench_dvc.bench_dvc(tmp_path, repeat=1)
    assert res["c_parser_installed"]  # the project's dependency on ruamel.yaml.clib took effect
    assert set(res["parse"]) == {"dvc.yaml", "dvc.lock"}
    for p in res["parse"].values():
        assert p["bytes"] > 0 and p["safe_c_s"] > 0 and p["safe_pure_s"] > 0
    assert len(res["dvc_status_s"]["c"]) == len(res["dvc_status_s"]["pure"]) == 1
    assert "| `dvc status`" in res["table"]


def test_bench_dvc_names_a_missing_lock(tmp_path: Path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    try:
        bench_dvc.bench_dvc(tmp_path, repeat=1)
    except FileNotFoundError as e:
        assert "dvc.lock" in str(e)
    else:
        raise AssertionError("no error for a missing dvc.lock")
