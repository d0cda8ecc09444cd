"""DVC stage ``embed_pca``: the backbone's principal word embeddings.

FuseGuard's alignment lets modality tokens attend to a few directions of the LLM's word-token
space instead of its whole vocabulary; PCA of the input-embedding matrix gives those directions
(scaled by their standard deviation and centred on the mean word, so they live on the same
scale as real token embeddings).

scikit-learn and the backbone (torch, transformers) are imported inside the functions that use
them: the train/evaluate stages import :func:`load_word_pca` from here and must start fast.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from stages.core.cli import run_stage
from stages.core.errors import InputError
from stages.core.io import atomic_dir, dumps_json
from stages.core.params import LLMParams, build, load_raw

log = logging.getLogger("stages.embed_pca")
OUT = Path("models/word_pca")


def principal_word_embeddings(words: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    vocab, hidden = words.shape
    limit = min(vocab, hidden)
    if not 1 <= n <= limit:
        raise InputError("params.yaml", "llm.pca_components",
                         f"an integer in [1, {limit}] for this backbone (vocabulary {vocab} × hidden {hidden})", n)
    from sklearn.decomposition import PCA

    pca = PCA(n_components=n, svd_solver="full", random_state=seed).fit(words.astype(np.float64))
    pcs = pca.mean_[None, :] + np.sqrt(pca.explained_variance_)[:, None] * pca.components_
    return pcs.astype(np.float32), pca.explained_variance_ratio_.astype(np.float32)


def run(raw: dict | None = None, out: Path = OUT) -> np.ndarray:
    from stages.core.llm import load_word_pieces

    raw = load_raw() if raw is None else raw
    llm = build(LLMParams, raw.get("llm"), where="llm")
    words = load_word_pieces(llm.backbone).table
    pcs, ratio = principal_word_embeddings(words, llm.pca_components, int(raw.get("seed", 0)))
    with atomic_dir(out) as tmp:
        np.save(tmp / "word_pca.npy", pcs)
        (tmp / "meta.json").write_text(dumps_json({
            "backbone": llm.backbone, "vocab": words.shape[0], "hidden": words.shape[1],
            "components": llm.pca_components, "explained_variance": float(ratio.sum())}))
    log.info("word PCA of %s: %d components explain %.1f%% of the word-embedding variance",
             llm.backbone, llm.pca_components, 100 * ratio.sum())
    return pcs


def load_word_pca(root: Path = OUT) -> np.ndarray | None:
    path = Path(root) / "word_pca.npy"
    return np.load(path) if path.exists() else None


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m stages.embed_pca", description=__doc__).parse_args(argv)
    return run_stage(run)


if __name__ == "__main__":
    raise SystemExit(main())
