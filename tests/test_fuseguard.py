"""FuseGuard: component shapes, the sparse mask, gradient routing, fusion, ablations, persistence,
determinism, bad input and detection quality on a small synthetic system with injected faults."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from stages.core.errors import InputError
from stages.core.params import LLMParams, build
from stages.core.windowset import FeatureSchema, WindowSet
from stages.nets.base import TrainConfig
from stages.nets.fuseguard import FuseGuard, FuseGuardConfig, channel_pair_bytes
from stages.nets.fuseguard_parts import (FrequencySparseMask, LogBranch, MaskedChannelAttention, MetricBranch,
                                         PatchEncoder, QualityFusion, TimeBasisDecoder, TraceBranch)
from stages.nets.torch_detector import TorchDetector

TINY = FuseGuardConfig(d_model=16, heads=2, patch_len=4, prototypes=4, align_heads=2,
                       train=TrainConfig(epochs=2, batch_size=16, lr=3e-3, patience=5))


# ---------------------------------------------------------------- fixtures


def _save_tokenizer(directory) -> None:
    from transformers import BertTokenizer

    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "error", "ok", "user", "timeout"]))
    BertTokenizer(vocab_file=str(vocab)).save_pretrained(str(directory))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A random 2-block BERT (hidden 32) saved as a local HF directory: nothing is downloaded."""
    from transformers import BertConfig, BertModel

    d = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(str(d))
    _save_tokenizer(d)
    return str(d)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> str:
    from transformers import GPT2Config, GPT2Model

    d = tmp_path_factory.mktemp("tiny_gpt2")
    torch.manual_seed(0)
    GPT2Model(GPT2Config(vocab_size=16, n_embd=32, n_layer=2, n_head=2, n_positions=64)).save_pretrained(str(d))
    _save_tokenizer(d)
    return str(d)


def tiny_windowset(T: int = 240, hidden: int = 32, seed: int = 0, faults: bool = False, name: str = "train",
                   window: int = 16, stride: int = 4) -> WindowSet:
    """Six metric channels on three services, a 4-edge call graph, 8 log template columns.

    Normal behaviour is periodic with noise; ``faults`` injects a metric spike, a trace latency
    jump on one edge and a log burst, each 6 steps long, at known places."""
    rng = np.random.default_rng(seed)
    t = np.arange(T)
    services = ["api", "db", "web"]
    edges = [("web", "api"), ("api", "db"), ("web", "db"), ("api", "api")]
    metric = np.stack([np.sin(2 * np.pi * t / (8 + 2 * c) + c) for c in range(6)], 1)
    metric = metric + 0.1 * rng.standard_normal(metric.shape)
    trace = np.sin(2 * np.pi * t / 12)[:, None, None] * np.array([1.0, 0.5, 0.2])[None, None, :]
    trace = np.repeat(trace, len(edges), axis=1) + 0.1 * rng.standard_normal((T, len(edges), 3))
    log_columns = [(services[i % 3], i) for i in range(8)]
    log = np.log1p(rng.poisson(3.0, (T, 8))).astype(np.float32)
    labels = np.zeros(T, np.int8)
    if faults:
        metric[60:66, :2] += 5.0
        trace[120:126, 1, 0] += 6.0
        log[180:186, 2:5] += 3.0
        labels[60:66] = labels[120:126] = labels[180:186] = 1
    schema = FeatureSchema(
        dataset="tiny", step_s=10.0, metric_channels=[f"{services[c % 3]}/m{c}" for c in range(6)],
        metric_entities=[services[c % 3] for c in range(6)], edges=edges,
        edge_features=["latency", "count", "error_rate"], services=services, log_columns=log_columns,
        templates=[f"template {k}" for k in range(8)],
        template_embeddings=np.random.default_rng(99).standard_normal((8, 24)).astype(np.float32),
        word_pca=np.random.default_rng(98).standard_normal((10, hidden)).astype(np.float32))
    return WindowSet(schema=schema, ts=t.astype(np.int64) * 10_000_000, metric=metric.astype(np.float32),
                     trace=trace.astype(np.float32), log=log, labels=labels, kinds=np.where(labels > 0, "fault", ""),
                     log_events=np.zeros((0, 3), np.int64), window=window, stride=stride, name=name)


def detector(backbone: str, cfg: FuseGuardConfig = TINY, schema: FeatureSchema | None = None, layers: int = 1,
             seed: int = 0) -> FuseGuard:
    schema = schema or tiny_windowset().schema
    return FuseGuard(cfg, schema, LLMParams(backbone=backbone, layers=layers), seed=seed)


@pytest.fixture(scope="module")
def trained(tiny_bert):
    """One tiny detector trained on normal data, shared by the read-only tests below."""
    train, val = tiny_windowset(seed=0), tiny_windowset(T=120, seed=1, name="val")
    det = detector(tiny_bert)
    det.fit(train, val)
    return det


# ---------------------------------------------------------------- components


def test_component_shapes():
    torch.manual_seed(0)
    assert PatchEncoder(3, 4, 16)(torch.randn(5, 18, 3)).shape == (5, 16)  # 18 steps: padded to whole patches
    mask, probs = FrequencySparseMask(8, 6, 1.0)(torch.randn(2, 16, 7))
    assert mask.shape == probs.shape == (2, 7, 7)
    assert torch.all(torch.diagonal(mask, dim1=1, dim2=2) == 1)
    assert MaskedChannelAttention(16, 2, 0.0)(torch.randn(2, 7, 16), mask).shape == (2, 7, 16)
    tokens, raw = MetricBranch(7, 16, 4, 2, 0.0, True, 8, 6, 1.0)(torch.randn(2, 16, 7))
    assert tokens.shape == raw.shape == (2, 7, 16)
    ws = tiny_windowset()
    nodes = ["api", "db", "web"]
    trace = torch.from_numpy(ws.take(ws.trace, ws.starts[:2]))
    assert TraceBranch(nodes, ws.schema.edges, 3, 16, 4, 2, 0.0)(trace)[0].shape == (2, 3, 16)
    logs = torch.from_numpy(ws.take(ws.log, ws.starts[:2]))
    branch = LogBranch(ws.schema.log_columns, ws.schema.template_embeddings, 16, 4, 0.0)
    assert branch(logs)[0].shape == (2, 3 + 1, 16)  # one token per service + one global token
    assert LogBranch(ws.schema.log_columns, None, 16, 4, 0.0)(logs)[0].shape == (2, 4, 16)
    assert TimeBasisDecoder(16, 3)(torch.randn(2, 5, 16), 16).shape == (2, 16, 5, 3)
    fusion = QualityFusion([7, 3, 4], 16, 4, 1.0, "quality")
    energies = fusion.energies([torch.randn(2, n, 16) for n in (7, 3, 4)])
    assert bool(fusion.seeded.all())  # prototypes start from the first training batch
    assert energies.shape == (2, 3)
    assert fusion.fuse(torch.randn(2, 3, 16), fusion.weights(energies)).shape == (2, 16)


def test_detector_forward_shapes(tiny_bert):
    ws = tiny_windowset()
    det = detector(tiny_bert)
    batch = det.make_batch(ws, ws.starts[:3])
    out = det.module(batch)
    assert out["recon"]["metric"].shape == (3, 16, 6)
    assert out["recon"]["trace"].shape == (3, 16, 4, 3)
    assert out["recon"]["log"].shape == (3, 16, 8)
    assert det.window_scores(batch).shape == (3, 16)
    assert det.score(ws).shape == (ws.n_steps,)


# ---------------------------------------------------------------- sparse mask


def test_sparse_mask_is_sparse_and_differentiable():
    torch.manual_seed(0)
    mask_net = FrequencySparseMask(8, 6, 0.5)
    with torch.no_grad():
        mask_net.threshold.fill_(0.8)  # biased: pairs farther than 0.8 x the mean distance tend to be cut
    x = torch.randn(4, 32, 10)
    mask_net.train()
    mask, _ = mask_net(x)
    off = ~torch.eye(10, dtype=torch.bool)
    assert torch.allclose(mask.detach(), mask.detach().round(), atol=1e-6)  # hard (0/1) in the forward pass
    assert (mask.detach()[:, off] == 0).float().mean() > 0.1
    # straight-through: a loss on the hard mask reaches the distance parameters
    (mask * torch.randn_like(mask)).sum().backward()
    for p in (mask_net.threshold, mask_net.log_scale, mask_net.proj.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    mask_net.eval()
    first, second = mask_net(x)[0], mask_net(x)[0]
    assert torch.equal(first, second)  # evaluation is deterministic
    assert (first[:, off] == 0).any()


def test_dense_attention_when_mask_off():
    branch = MetricBranch(5, 16, 4, 2, 0.0, False, 8, 6, 1.0)
    branch(torch.randn(2, 16, 5))
    assert branch.mask is None and branch.last_mask is None


# ---------------------------------------------------------------- gradient routing (real MiniLM block)


def test_gradients_reach_only_lora_and_own_layers():
    ws = tiny_windowset(hidden=384)
    det = detector("minilm", schema=ws.schema)
    named = dict(det.module.named_parameters())
    base = [k for k in named if k.startswith("aligner.peft.") and "lora_" not in k]
    lora = [k for k in named if "lora_" in k]
    assert base and lora and any("query" in k for k in lora) and any("value" in k for k in lora)
    assert not any(named[k].requires_grad for k in base)
    det.module.train()
    det.loss(det.make_batch(ws, ws.starts[:4])).backward()
    assert all(named[k].grad is None for k in base)
    # LoRA B starts at zero, so only B has a gradient on the very first step
    assert all(named[k].grad is not None and named[k].grad.abs().sum() > 0 for k in lora if "lora_B" in k)
    assert named["aligner.cross.in_proj_weight"].grad.abs().sum() > 0

    # the frozen (language) path alone trains the cross-attention but never LoRA
    det.module.zero_grad(set_to_none=True)
    with torch.no_grad():  # make LoRA non-trivial so a leak would show
        for k in lora:
            named[k].normal_(0, 0.1)
    aligner = det.module.aligner
    hidden = aligner.language_path(aligner.to_llm(torch.randn(2, 5, TINY.d_model)))
    hidden[-1].pow(2).mean().backward()
    assert all(named[k].grad is None or named[k].grad.abs().sum() == 0 for k in lora)
    assert named["aligner.cross.in_proj_weight"].grad.abs().sum() > 0


def test_gpt2_backbone_code_path(tiny_gpt2):
    ws = tiny_windowset()
    det = detector(tiny_gpt2, layers=2)
    lora = [k for k, _ in det.module.named_parameters() if "lora_" in k]
    assert lora and all("c_attn" in k for k in lora)
    assert len(det.module.aligner.peft.base_model.model.blocks) == 2
    det.module.train()
    det.loss(det.make_batch(ws, ws.starts[:4])).backward()
    assert np.isfinite(det.score(ws)[ws.window:]).all()


# ---------------------------------------------------------------- fusion


def test_fusion_weights_sum_to_one_and_drop_for_a_corrupted_modality(trained):
    ws = tiny_windowset(T=120, seed=5, name="test")
    explained = trained.explain(ws)
    weights = np.stack([explained["fusion_weights"][m] for m in ("metric", "trace", "log")])
    scored = ~np.isnan(weights[0])
    np.testing.assert_allclose(weights[:, scored].sum(0), 1.0, atol=1e-5)

    corrupted = dataclasses.replace(ws, metric=np.random.default_rng(3).normal(0, 6, ws.metric.shape)
                                    .astype(np.float32))
    w_clean = np.nanmean(weights[0])
    w_bad = np.nanmean(trained.explain(corrupted)["fusion_weights"]["metric"])
    assert w_bad < 0.5 * w_clean
    # balanced on normal data: calibration standardises each modality's training energy
    assert np.all(np.nanmean(weights, axis=1) > 0.15)


# ---------------------------------------------------------------- ablations and missing modalities


@pytest.mark.parametrize("change", [
    {"sparse_mask": False}, {"use_metrics": False}, {"use_traces": False}, {"use_logs": False},
    {"alignment": False}, {"use_llm": False}, {"fusion": "mean"}, {"fusion": "concat"},
    {"score_weighting": "fusion"},
    {"score_weighting": "max"},
])
def test_each_ablation_runs(tiny_bert, change):
    ws = tiny_windowset()
    det = detector(tiny_bert, dataclasses.replace(TINY, **change))
    det.module.train()
    loss = det.loss(det.make_batch(ws, ws.starts[:4]))
    loss.backward()
    assert torch.isfinite(loss)
    scores = det.score(ws)
    assert np.isfinite(scores[ws.window:]).all()
    if change.get("use_llm") is False:
        assert det.module.aligner is None
    if "use_metrics" in change:
        assert "metric" not in det.modalities


def test_runs_under_bf16_autocast(tiny_bert):
    """CUDA training uses bf16 autocast; CPU autocast exercises the same mixed-dtype code paths."""
    ws = tiny_windowset()
    det = detector(tiny_bert)
    det.module.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = det.loss(det.make_batch(ws, ws.starts[:4]))
    loss.backward()
    det.module.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        scores = det.window_scores(det.make_batch(ws, ws.starts[:4]))
    assert torch.isfinite(loss) and torch.isfinite(scores).all() and scores.dtype == torch.float32


def test_metric_only_windowset_skips_trace_and_log_branches(tiny_bert):
    rng = np.random.default_rng(0)
    ws = WindowSet.from_arrays(rng.standard_normal((120, 4)), window=16, stride=4)
    det = detector(tiny_bert, schema=ws.schema)
    assert det.modalities == ["metric"]
    assert not hasattr(det.module, "trace") and not hasattr(det.module, "log_branch")
    assert np.isfinite(det.score(ws)[16:]).all()


def test_missing_template_embeddings_keep_the_statistical_log_part(tiny_bert):
    ws = tiny_windowset()
    schema = dataclasses.replace(ws.schema, template_embeddings=None, word_pca=None)
    det = detector(tiny_bert, schema=schema)  # word PCA computed from the backbone instead
    assert not det.module.log_branch.semantic
    assert det.module.aligner.word_pca.shape == (16, 32)  # at most rank(vocab 16 x hidden 32) components
    assert np.isfinite(det.score(dataclasses.replace(ws, schema=schema))[16:]).all()


# ---------------------------------------------------------------- persistence and determinism


def test_save_load_round_trip_gives_identical_scores(trained, tmp_path):
    ws = tiny_windowset(T=120, seed=7, faults=False, name="test")
    trained.save(tmp_path / "fg")
    again = FuseGuard.load(tmp_path / "fg", ws.schema)
    np.testing.assert_array_equal(trained.score(ws), again.score(ws))
    assert torch.equal(trained.module.error_scale, again.module.error_scale)


def test_two_runs_with_the_same_seed_are_identical(tiny_bert):
    train, val = tiny_windowset(T=120, seed=0), tiny_windowset(T=80, seed=1, name="val")
    cfg = dataclasses.replace(TINY, train=TrainConfig(epochs=1, batch_size=16, lr=3e-3))
    scores = []
    for _ in range(2):
        det = detector(tiny_bert, cfg, seed=3)
        det.fit(train, val)
        scores.append(det.score(val))
    np.testing.assert_array_equal(scores[0], scores[1])


# ---------------------------------------------------------------- bad input


def test_config_errors_name_the_key():
    with pytest.raises(InputError, match="fuseguard.d_model"):
        build(FuseGuardConfig, {"d_model": 30, "heads": 4}, where="fuseguard")
    with pytest.raises(InputError, match="fuseguard.fusion"):
        build(FuseGuardConfig, {"fusion": "max"}, where="fuseguard")
    with pytest.raises(InputError, match="fuseguard.use_metrics"):
        build(FuseGuardConfig, {"use_metrics": False, "use_traces": False, "use_logs": False}, where="fuseguard")
    cfg = build(FuseGuardConfig, {"lora_r": 4, "train": {"epochs": 1}}, where="fuseguard")
    assert cfg.lora_r == 4 and cfg.train.epochs == 1


def test_bad_schema_and_params_raise_input_errors(tiny_bert):
    ws = tiny_windowset()
    with pytest.raises(InputError, match="llm.layers"):
        detector(tiny_bert, layers=5)
    short = dataclasses.replace(ws.schema, template_embeddings=np.zeros((3, 24), np.float32))
    with pytest.raises(InputError, match="template_embeddings"):
        detector(tiny_bert, schema=short)
    metric_only = WindowSet.from_arrays(np.zeros((50, 2)), window=16).schema
    with pytest.raises(InputError, match="at least one switched-on modality"):
        detector(tiny_bert, dataclasses.replace(TINY, use_metrics=False), schema=metric_only)
    wrong = dataclasses.replace(ws.schema, word_pca=np.zeros((4, 7), np.float32))
    with pytest.raises(InputError, match="word_pca"):
        detector(tiny_bert, schema=wrong)


def test_windows_that_do_not_match_the_schema_are_rejected(trained):
    ws = tiny_windowset()
    narrow = dataclasses.replace(ws, metric=ws.metric[:, :4])
    with pytest.raises(InputError, match="metric"):
        trained.score(narrow)


def test_nan_gaps_are_scored_as_the_training_mean(trained):
    ws = tiny_windowset(T=120, seed=4)
    metric = ws.metric.copy()
    metric[30:34, 1] = np.nan
    scores = trained.score(dataclasses.replace(ws, metric=metric))
    assert np.isfinite(scores[ws.window:]).all()


# ---------------------------------------------------------------- quality


def test_detects_injected_faults_far_better_than_random(trained):
    test = tiny_windowset(T=240, seed=11, faults=True, name="test")
    scores = trained.score(test)
    ok = ~np.isnan(scores)
    ap = average_precision_score(test.labels[ok], scores[ok])
    base = test.labels[ok].mean()  # the expected AUC-PR of a random score
    assert ap > 3 * base and ap > 0.5, (ap, base)
    # the score's scales come from training windows only
    for m in trained.modalities:
        assert not torch.all(getattr(trained.module, f"unit_scale_{m}") == 1)
    assert not torch.all(trained.module.error_scale == 1)


def test_fast_scoring_path_matches_the_plain_forward(trained):
    """score() folds LoRA into the frozen blocks and shares one pass with explain(); both must give
    what the plain training-time forward (adapters unfolded, window_scores per batch) gives."""
    ws = tiny_windowset(T=120, seed=11, faults=True, name="test")
    fast = trained.score(ws)
    assert trained.explain(ws)["modality_scores"]  # served from the same pass
    trained._inference_weights(False)
    trained._last_collect = None
    plain = TorchDetector.score(trained, ws)  # the generic per-batch path, adapters unmerged
    np.testing.assert_allclose(fast, plain, rtol=1e-4, atol=1e-6)
    other = tiny_windowset(T=120, seed=12, faults=True, name="test")
    assert not np.allclose(trained.score(other), fast)  # a new window set is never served from the cache


def test_scores_are_the_same_bits_at_any_scoring_thread_count(trained):
    """This tiny net scores the same bits at 1 and 2 threads (at 3 it differs by ~2e-6); the full-size
    default model does not (4 of 12,036 synth_tt test steps moved by up to 1e-6), which is why FuseGuard
    sets scores_depend_on_threads and evaluate's `auto` keeps its cpu_threads."""
    from stages.core.device import set_scoring_threads

    ws = tiny_windowset(T=240, seed=13, faults=True, name="test")
    runs = []
    try:
        for n in (1, 2):
            set_scoring_threads(n)
            trained._last_collect = None
            runs.append(trained.score(ws))
    finally:
        set_scoring_threads(None)
    assert np.array_equal(runs[0], runs[1], equal_nan=True), np.nanmax(np.abs(runs[1] - runs[0]))


def test_bf16_cpu_scoring_ranks_like_float32(trained):
    """evaluate.cpu_score_dtype=bfloat16: the scoring pass under CPU bf16 autocast really runs in bf16
    (the scores move), keeps float scores, and ranks the steps as float32 does."""
    from scipy.stats import spearmanr

    from stages.core.device import cpu_score_autocast

    ws = tiny_windowset(T=240, seed=14, faults=True, name="test")
    trained._last_collect = None
    fp32 = trained.score(ws)
    trained._last_collect = None
    with cpu_score_autocast("bfloat16"):
        bf16 = trained.score(ws)
        weights = trained.explain(ws)["fusion_weights"]  # explain shares the bf16 pass
    trained._last_collect = None
    ok = np.isfinite(fp32)
    assert bf16.dtype == fp32.dtype and np.isfinite(bf16[ok]).all()
    assert not np.array_equal(bf16[ok], fp32[ok])
    assert spearmanr(fp32[ok], bf16[ok]).statistic > 0.98
    assert all(np.isfinite(w[ok]).all() for w in weights.values())
    with cpu_score_autocast("float32"):
        assert np.array_equal(trained.score(ws), fp32, equal_nan=True)


def test_channel_pair_memory_grows_with_the_square_of_the_channels():
    cfg = FuseGuardConfig()
    one = channel_pair_bytes(cfg, 100, 128, training=False)
    assert one == 4 * 128 * 100 * 100 * (2 * cfg.heads + 1)
    assert channel_pair_bytes(cfg, 1000, 128, training=False) == 100 * one
    assert channel_pair_bytes(cfg, 100, 32, training=True) == 4 * 32 * 100 * 100 * (2 * cfg.freq_dim + 3 * cfg.heads)
    dense = dataclasses.replace(cfg, sparse_mask=False)
    assert channel_pair_bytes(dense, 100, 128, training=False) == 4 * 128 * 100 * 100 * 2 * cfg.heads
    assert channel_pair_bytes(dense, 100, 32, training=True) == 4 * 32 * 100 * 100 * 3 * cfg.heads
    assert channel_pair_bytes(dataclasses.replace(cfg, use_metrics=False), 100, 128, training=False) == 0
    # GAIA at full width (6,500 series): one default scoring batch is ~190 GB, a training batch ~240 GB
    assert channel_pair_bytes(cfg, 6500, 128, training=False) > 150e9
    assert channel_pair_bytes(cfg, 6500, 32, training=True) > 200e9


def test_channel_pairs_that_cannot_fit_are_refused_before_the_first_batch(tiny_bert):
    huge = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, score_batch_size=10**9))  # ~1.3 TB of pairs
    det = detector(tiny_bert, cfg=huge)
    before = {k: v.clone() for k, v in det.module.state_dict().items()}
    with pytest.raises(InputError, match=r"fuseguard\.train\.score_batch_size.*metric channels.*GiB needed at least"):
        det.fit(tiny_windowset(), tiny_windowset(T=120, seed=1, name="val"))
    assert all(torch.equal(before[k], v) for k, v in det.module.state_dict().items())  # not a step was taken
    with pytest.raises(InputError, match="fuseguard.train.score_batch_size"):
        det.score(tiny_windowset(T=120, seed=2))


def test_scoring_takes_the_channel_gap_in_blocks_with_the_same_bits(monkeypatch):
    import stages.nets.fuseguard_parts as parts

    f = torch.randn(5, 37, 16)
    whole = (f[:, :, None, :] - f[:, None, :, :]).pow(2).mean(-1)  # the autograd path's operations
    row = 5 * 37 * 16 * 4  # bytes of one row of the (5, 37, 37, 16) float32 gap
    for block in (1, row, 5 * row + 7, 37 * row):  # a row a block (twice), five rows and the rest, all at once
        monkeypatch.setattr(parts, "GAP_BLOCK_BYTES", block)
        with torch.inference_mode():
            got = parts.mean_squared_gap(f[:, :, None, :], f[:, None, :, :])
        assert got.shape == whole.shape and torch.equal(got, whole), block
    proto = torch.randn(3, 4, 16)  # the fusion's prototypes: operands of other ranks are not blocked
    z = torch.randn(5, 3, 16)
    monkeypatch.setattr(parts, "GAP_BLOCK_BYTES", 1)
    with torch.no_grad():
        assert torch.equal(parts.mean_squared_gap(z[:, :, None, :], proto), (z[:, :, None, :] - proto).pow(2).mean(-1))


def test_channel_attention_scores_in_place_with_the_same_bits():
    torch.manual_seed(0)
    att = MaskedChannelAttention(16, 2, dropout=0.0).eval()
    h = torch.randn(4, 23, 16)
    mask = (torch.rand(4, 23, 23) > 0.4).float()
    for m in (mask, None):
        with torch.enable_grad():
            expected = att(h.requires_grad_(True), m)  # the training path
        with torch.inference_mode():
            got = att(h.detach(), m)
        assert torch.equal(got, expected.detach())


def test_the_channel_pair_check_reads_the_memory_still_available(tiny_bert, monkeypatch):
    import stages.core.memory as memory
    from stages.core.memory import require_memory

    train, val = tiny_windowset(), tiny_windowset(T=120, seed=1, name="val")
    tc = TINY.train
    need = max(channel_pair_bytes(TINY, 6, tc.batch_size, training=True),
               channel_pair_bytes(TINY, 6, max(tc.batch_size, tc.score_batch_size), training=False))
    monkeypatch.setattr(memory, "available_bytes", lambda: need - 1)
    with pytest.raises(InputError, match="that fits in memory"):
        detector(tiny_bert).fit(train, val)
    monkeypatch.setattr(memory, "available_bytes", lambda: need)
    assert np.isfinite(detector(tiny_bert).fit(train, val)["train_loss"]).all()
    with pytest.raises(InputError, match=r"fits in GPU memory .*1.0 GiB needed at least, 0.5 GiB available"):
        require_memory(2**30, "a batch", "fuseguard.train.batch_size", "smaller batches", have=2**29, where="GPU memory")
