"""DVC stage ``embed@<ds>``: one LLM embedding per Drain3 template, computed once.

Detectors read these vectors instead of tokenising log text inside their training loops.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import polars as pl

from stages.core.cli import run_stage
from stages.core.device import deterministic_threads
from stages.core.heap import keep_freed_memory
from stages.core.io import atomic_path
from stages.core.llm import embed_texts
from stages.core.params import LLMParams, build, load_raw

log = logging.getLogger("stages.embed")


def run(ds: str, raw: dict | None = None, features_root: Path = Path("data/features")) -> np.ndarray:
    # MiniLM's float sums follow the CPU's vector width and the thread count: pinned as in train and
    # evaluate, the embeddings are the same bits on any AVX2 machine (unpinned, an AVX-512 machine
    # wrote other bits than the committed run's)
    deterministic_threads()
    keep_freed_memory()
    raw = load_raw() if raw is None else raw
    llm = build(LLMParams, raw.get("llm"), where="llm")
    features = features_root / ds
    templates = pl.read_parquet(features / "log_templates.parquet").sort("template_id")["template"].to_list()
    if templates:
        emb = embed_texts(templates, llm.backbone, llm.max_tokens, llm.batch_size)
    else:
        from stages.core.llm import hidden_size, load_backbone

        emb = np.zeros((0, hidden_size(load_backbone(llm.backbone)[1])), np.float32)
    with atomic_path(features / "template_embeddings.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, emb)
    log.info("%s: embedded %d templates with %s → %s", ds, len(templates), llm.backbone, emb.shape)
    return emb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.embed", description=__doc__)
    ap.add_argument("dataset")
    args = ap.parse_args(argv)
    return run_stage(lambda: run(args.dataset))


if __name__ == "__main__":
    raise SystemExit(main())
