"""Principal word embeddings of the packaged MiniLM backbone (real weights, offline)."""
from __future__ import annotations

import numpy as np
import pytest

from stages.core.errors import InputError
from stages.embed_pca import principal_word_embeddings, run


def test_pca_components_validated_against_backbone():
    words = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    pcs, ratio = principal_word_embeddings(words, 3)
    assert pcs.shape == (3, 8) and 0 < ratio.sum() <= 1 and np.all(np.diff(ratio) <= 1e-6)
    with pytest.raises(InputError, match="llm.pca_components"):
        principal_word_embeddings(words, 9)


def test_embed_pca_stage_on_packaged_minilm(tmp_path):
    pcs = run({"seed": 0, "llm": {"backbone": "minilm", "pca_components": 16}}, out=tmp_path / "word_pca")
    assert pcs.shape == (16, 384) and np.isfinite(pcs).all()
    assert (tmp_path / "word_pca/word_pca.npy").exists() and (tmp_path / "word_pca/meta.json").exists()


def test_unknown_backbone_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="llm.backbone"):
        run({"llm": {"backbone": str(tmp_path / "no-such-model")}}, out=tmp_path / "w")
