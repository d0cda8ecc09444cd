"""The embed stage pins MiniLM's CPU code paths: the same bits whatever threads the process starts with."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import polars as pl

from stages.core.device import _cpu_has_avx2

CHILD = """
import hashlib, json, os, sys
from pathlib import Path
import torch
torch.set_num_threads(int(sys.argv[2]))  # what a user's process might start with
from stages.embed import run
emb = run("tiny", raw={"llm": {"backbone": "minilm"}}, features_root=Path(sys.argv[1]))
print(json.dumps({"md5": hashlib.md5(emb.tobytes()).hexdigest(), "shape": list(emb.shape),
                  "threads": torch.get_num_threads(), "aten": os.environ.get("ATEN_CPU_CAPABILITY")}))
"""


def test_embed_stage_pins_threads_and_vector_paths(tmp_path):
    (tmp_path / "tiny").mkdir()
    templates = ["Received request <*> from <*>", "Connection timeout to database <*>",
                 "User <*> logged in after <*> ms", "Exception in thread <*> NullPointerException"] * 20
    pl.DataFrame({"template_id": list(range(len(templates))), "template": [f"{t} {i}" for i, t in
                                                                           enumerate(templates)]}
                 ).write_parquet(tmp_path / "tiny" / "log_templates.parquet")
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")}
    runs = []
    for threads in (1, 2):
        out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), str(threads)], env=env, check=True,
                             capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    assert runs[0]["shape"] == [len(templates), 384]
    assert runs[0]["md5"] == runs[1]["md5"]
    assert [r["threads"] for r in runs] == [1, 1]  # the stage's own thread count, not the process's
    assert all(r["aten"] == ("avx2" if _cpu_has_avx2() else "default") for r in runs)
    saved = np.load(tmp_path / "tiny" / "template_embeddings.npy")
    assert hashlib.md5(saved.tobytes()).hexdigest() == runs[1]["md5"]  # the file holds what was returned
