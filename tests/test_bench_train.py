"""``stages.bench train`` times a real scoring pass (the detector's cached pass over the windows it
calibrated on made FuseGuard's figure ~500k windows/s)."""
from __future__ import annotations

import argparse

import pytest

from stages import bench
from stages.core.errors import InputError
from stages.nets.fuseguard import FuseGuard


def test_bench_train_scores_with_a_forward_pass(monkeypatch):
    passes: list[int] = []
    real = FuseGuard._inference_passes

    def counted(self, ws):
        passes.append(len(ws))
        yield from real(self, ws)

    monkeypatch.setattr(FuseGuard, "_inference_passes", counted)
    real_score, in_score = FuseGuard.score, []

    def score(self, ws):
        before = len(passes)
        out = real_score(self, ws)
        in_score.append(passes[before:])
        return out

    monkeypatch.setattr(FuseGuard, "score", score)
    args = argparse.Namespace(detector="fuseguard", profile="default", windows=12, stride=4, channels=4, edges=3,
                              log_columns=5, epochs=1, batch_size=8)
    out = bench.bench_train(args)
    run = out["runs"][0]
    assert run["train_windows_per_s"] > 0 and run["validation_calibration_s"] is not None
    # the timed score makes its own pass over every window, not the one calibration left behind
    assert in_score == [[out["windows"]]], (in_score, passes)


def test_random_backbone_loads_offline_with_the_architecture_asked(tmp_path):
    """``--random-backbone``: the architecture without its weights, loadable by the pipeline's own
    loader with nothing downloaded (how the `paper` profile runs on a GPU machine without network)."""
    from stages.core.llm import hidden_size, load_backbone, transformer_blocks

    path = bench.random_backbone("gpt2", tmp_path / "gpt2", n_layer=2, n_embd=32, n_head=2, vocab_size=16,
                                 n_positions=64)
    tok, model = load_backbone(path)
    assert type(model).__name__ == "GPT2Model" and hidden_size(model) == 32 and len(transformer_blocks(model)) == 2
    assert tok.pad_token is not None
    mini = bench.random_backbone("minilm", tmp_path / "minilm", num_hidden_layers=1)
    assert type(load_backbone(mini)[1]).__name__ == "BertModel" and hidden_size(load_backbone(mini)[1]) == 384
    with pytest.raises(InputError, match="--random-backbone"):
        bench.random_backbone("no-such-architecture", tmp_path / "x")


def test_bench_train_on_a_random_backbone_says_so():
    args = argparse.Namespace(detector="fuseguard", profile="default", windows=8, stride=4, channels=3, edges=2,
                              log_columns=3, epochs=1, batch_size=8, random_backbone=True)
    out = bench.bench_train(args)
    assert out["backbone"] == "minilm, random weights (throughput and memory only)"
    assert out["runs"][0]["score_windows_per_s"] > 0
