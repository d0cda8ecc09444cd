"""MetaLog: one vocabulary across systems, the first-order meta step, and detection on a log-burst fault."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.core.errors import InputError
from stages.core.windowset import FeatureSchema, WindowSet
from stages.features.log_windows import from_windowset
from stages.nets.metalog import (EMPTY_ID, PAD_ID, RESERVED, AttentionGRU, MetaLog, MetaLogConfig, Vocabulary,
                                 bigru, meta_step, to_vocab)
from stages.nets.base import TrainConfig

TARGET_TEMPLATES = ["Received request <*> from <*>", "Query executed in <*> ms", "User <*> logged in",
                    "Cache hit for key <*>", "Response sent with status <*>",
                    "Connection timeout to database <*>", "Exception in thread <*> NullPointerException"]
SOURCE_TEMPLATES = ["Incoming request <*> received", "SQL query took <*> ms", "Login succeeded for user <*>",
                    "cache lookup hit <*>", "Sent response status <*>",
                    "Database connection timed out after <*> ms", "Unhandled exception NullPointerException at <*>"]
N_NORMAL = 5  # templates [0, 5) are routine, the last two are errors


def make_log_windowset(templates: list[str], T: int = 600, faults=((150, 175), (400, 425), (520, 540)),
                       seed: int = 0, window: int = 8, stride: int = 2, dataset: str = "tiny"
                       ) -> tuple[WindowSet, WindowSet, WindowSet]:
    """A hand-built grid with three services; during a fault, service 1 bursts error templates.

    Split chronologically 60/15/25 into train/val/test WindowSets (tests only read test labels).
    """
    rng = np.random.default_rng(seed)
    labels = np.zeros(T, np.int8)
    for a, b in faults:
        labels[a:b] = 1
    n_routine = rng.poisson(4, T)
    t = np.repeat(np.arange(T), n_routine)
    svc = rng.integers(0, 3, len(t))
    tpl = rng.integers(0, N_NORMAL, len(t))
    burst_steps = np.flatnonzero(labels)
    n_burst = rng.poisson(3, len(burst_steps))
    noise_steps = np.flatnonzero(rng.random(T) < 0.03)  # the odd error line in normal times
    t = np.concatenate([t, np.repeat(burst_steps, n_burst), noise_steps])
    svc = np.concatenate([svc, np.ones(n_burst.sum() + len(noise_steps), np.int64)])
    tpl = np.concatenate([tpl, rng.integers(N_NORMAL, len(templates), n_burst.sum() + len(noise_steps))])
    order = np.argsort(t, kind="stable")
    events = np.column_stack([t, svc, tpl])[order].astype(np.int64)
    services = ["api", "db", "web"]
    log_columns = [(s, k) for s in services for k in range(len(templates))]
    counts = np.zeros((T, len(log_columns)), np.float32)
    np.add.at(counts, (events[:, 0], events[:, 1] * len(templates) + events[:, 2]), 1)
    schema = FeatureSchema(dataset=dataset, step_s=10.0, metric_channels=[], metric_entities=[], edges=[],
                           edge_features=["latency", "count", "error_rate"], services=services,
                           log_columns=log_columns, templates=list(templates))
    cuts = [0, int(T * 0.6), int(T * 0.75), T]
    out = []
    for name, a, b in zip(("train", "val", "test"), cuts[:-1], cuts[1:]):
        sel = (events[:, 0] >= a) & (events[:, 0] < b)
        ev = events[sel].copy()
        ev[:, 0] -= a
        n = b - a
        out.append(WindowSet(schema=schema, ts=np.arange(a, b, dtype=np.int64) * 10_000_000,
                             metric=np.zeros((n, 0), np.float32), trace=np.zeros((n, 0, 3), np.float32),
                             log=np.log1p(counts[a:b]), labels=labels[a:b], kinds=np.where(labels[a:b], "burst", ""),
                             log_events=ev, window=window, stride=stride, name=name))
    return tuple(out)


def auc_pr(scores: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    ok = ~np.isnan(scores)
    return float(average_precision_score(labels[ok], scores[ok]))


FAST = TrainConfig(epochs=3, batch_size=32, lr=3e-3, max_train_windows=256)


def test_vocabulary_merges_two_systems_by_text():
    vocab = Vocabulary()
    a = vocab.add(["x <*>", "shared template", "y"])
    b = vocab.add(["shared template", "z <*>", "x <*>"])
    assert list(a) == [RESERVED, RESERVED + 1, RESERVED + 2]
    assert b[0] == a[1] and b[2] == a[0]  # same text → same id, whatever the system's local index
    assert b[1] == RESERVED + 3 and len(vocab) == RESERVED + 4
    train, _, _ = make_log_windowset(TARGET_TEMPLATES)
    seqs = from_windowset(train, max_len=16)
    seqs.lengths[0] = 0  # an empty window becomes the single EMPTY token
    ids, lengths = to_vocab(seqs, vocab.add(seqs.templates))
    assert ids[0, 0] == EMPTY_ID and lengths[0] == 1
    assert ((ids == PAD_ID) == (np.arange(16)[None, :] >= lengths[:, None])).all()


def test_meta_step_updates_model_parameters_with_target_gradient():
    torch.manual_seed(0)
    module = AttentionGRU(dim=6, hidden=4, attention=3, dropout=0.0)
    embeddings = torch.randn(10, 6)  # the embedding table is data, never a parameter
    before = {n: p.detach().clone() for n, p in module.named_parameters()}

    def batch(seed):
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, 10, (5, 7), generator=g)
        return embeddings[ids], torch.tensor([7, 3, 1, 5, 2]), torch.tensor([1.0, 0, 0, 1, 0])

    src, tgt = batch(1), batch(2)
    emb_before = embeddings.clone()
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    meta_step(module, opt, src, tgt, inner_lr=0.5, meta_weight=1.0)
    after_meta = {n: p.detach().clone() for n, p in module.named_parameters()}
    assert torch.equal(embeddings, emb_before)
    assert all(not torch.equal(before[n], after_meta[n]) for n in before), "every trainable tensor moves"
    # β = 0 must give a different update: the target (meta-test) loss really contributes
    module.load_state_dict({**module.state_dict(), **before})
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    meta_step(module, opt, src, tgt, inner_lr=0.5, meta_weight=0.0)
    assert any(not torch.allclose(after_meta[n], p) for n, p in module.named_parameters())
    # first order with α = 0: the update is exactly the gradient of L_src + β·L_tgt at θ
    module.load_state_dict({**module.state_dict(), **before})
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits
    total = loss_fn(module(*src[:2]), src[2]) + loss_fn(module(*tgt[:2]), tgt[2])
    grads = torch.autograd.grad(total, list(module.parameters()))
    expected = {n: p.detach() - 0.1 * g for (n, p), g in zip(module.named_parameters(), grads)}
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    meta_step(module, opt, src, tgt, inner_lr=0.0, meta_weight=1.0)
    for n, p in module.named_parameters():
        assert torch.allclose(p, expected[n], atol=1e-6), n
    # α > 0: the same update as one joint backward of L_src(θ) + β·L_tgt(θ') through both graphs
    module.load_state_dict({**module.state_dict(), **before})
    params = dict(module.named_parameters())
    loss_src = loss_fn(module(*src[:2]), src[2])
    g_src = torch.autograd.grad(loss_src, list(params.values()), retain_graph=True)
    fast = {n: p - 0.5 * g.detach() for (n, p), g in zip(params.items(), g_src)}
    loss_tgt = loss_fn(torch.func.functional_call(module, fast, tgt[:2]), tgt[2])
    joint = torch.autograd.grad(loss_src + 0.7 * loss_tgt, list(params.values()))
    expected = {n: p.detach() - 0.1 * g for (n, p), g in zip(params.items(), joint)}
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    meta_step(module, opt, src, tgt, inner_lr=0.5, meta_weight=0.7)
    for n, p in module.named_parameters():
        assert torch.allclose(p, expected[n], atol=1e-6), n


@pytest.mark.parametrize("lengths", [[7, 3, 1, 5, 2, 7], [4, 4, 4, 4, 4, 4], [1, 1, 1, 1, 1, 1]])
def test_bigru_matches_torch_gru_on_packed_sequences(lengths):
    """The padded two-direction loop is nn.GRU over packed sequences: outputs and gradients, float64."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    gru = torch.nn.GRU(5, 3, batch_first=True, bidirectional=True).double()
    lens = torch.tensor(lengths)
    x = torch.randn(len(lengths), 7, 5, dtype=torch.float64)
    valid = torch.arange(7)[None, :] < lens[:, None]
    weight = torch.randn(len(lengths), 7, 6, dtype=torch.float64) * valid[..., None]  # a loss over valid steps

    packed = pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False)
    ref, _ = pad_packed_sequence(gru(packed)[0], batch_first=True, total_length=7)
    ref_grads = torch.autograd.grad((ref * weight).sum(), list(gru.parameters()))
    out = bigru(gru, x, lens)
    grads = torch.autograd.grad((out * weight).sum(), list(gru.parameters()))

    assert out.shape == ref.shape
    assert torch.allclose(out[valid], ref[valid], rtol=0, atol=1e-12)
    for (name, _), g, r in zip(gru.named_parameters(), grads, ref_grads):
        assert torch.allclose(g, r, rtol=0, atol=1e-12), name


def test_attention_gru_ignores_padding_past_each_length():
    """Whatever fills the padding (or how wide the batch is padded), a sequence's logit is the same."""
    torch.manual_seed(0)
    module = AttentionGRU(dim=6, hidden=4, attention=3, dropout=0.0).eval()
    lens = torch.tensor([5, 2, 3])
    x = torch.randn(3, 5, 6)
    noisy = torch.cat([x, torch.randn(3, 4, 6)], 1)
    noisy[1, 2:] = torch.randn(7, 6)
    with torch.no_grad():
        a, b = module(x, lens), module(noisy, lens)
        single = module(x[1:2, :2], lens[1:2])
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(a[1:2], single, atol=1e-6)


def test_metalog_cross_system_beats_random_and_saves(tmp_path):
    target = make_log_windowset(TARGET_TEMPLATES, seed=1, dataset="target")
    source = make_log_windowset(SOURCE_TEMPLATES, seed=2, faults=((60, 90), (200, 230), (300, 330)),
                                dataset="source")
    cfg = MetaLogConfig(source="source", train=FAST, hidden=16, attention=8)
    det = MetaLog(cfg, target[0].schema, seed=0)
    assert det.source_datasets("target", ["source", "target"]) == ["source"]
    assert det.source_datasets("source", ["source", "target"]) == []
    history = det.fit(target[0], target[1], sources={"source": source[0]})
    assert len(history["train_loss"]) == 3 and np.isfinite(history["target_loss"]).all()
    test = target[2]
    scores = det.score(test)
    assert scores.shape == (test.n_steps,)
    assert auc_pr(scores, test.labels) > 2 * test.labels.mean()  # random AUC-PR ≈ anomaly share
    det.save(tmp_path / "m")
    again = MetaLog.load(tmp_path / "m", test.schema)
    np.testing.assert_allclose(again.score(test), scores, rtol=1e-5, atol=1e-6)


def test_metalog_scores_with_the_stage_wide_thread_count(thread_counts_of_scoring):
    """evaluate's score_threads reaches MetaLog's scoring pass (it used to run on cpu_threads always)."""
    import stages.nets.metalog as metalog_module

    train, val, test = make_log_windowset(TARGET_TEMPLATES, seed=1)
    det = MetaLog(MetaLogConfig(train=FAST, hidden=8, attention=4, cpu_threads=2), train.schema, seed=0)
    det.fit(train, val)
    seen, one, two = thread_counts_of_scoring(metalog_module, det, test)
    assert seen == [1, 2]
    assert np.allclose(one, two, atol=1e-5, equal_nan=True)


def test_metalog_zero_shot_reads_no_target_label():
    target = make_log_windowset(TARGET_TEMPLATES, seed=3, dataset="target")
    source = make_log_windowset(SOURCE_TEMPLATES, seed=4, dataset="source")
    cfg = MetaLogConfig(source="source", mode="zero_shot", train=FAST, hidden=16, attention=8)
    det = MetaLog(cfg, target[0].schema)
    blind = target[0]
    blind.labels = np.zeros_like(blind.labels)  # zero-shot must not depend on target labels
    det.fit(blind, target[1], sources={"source": source[0]})
    scores = det.score(target[2])
    assert auc_pr(scores, target[2].labels) > target[2].labels.mean()
    with pytest.raises(InputError, match="metalog.source"):
        MetaLog(cfg, target[0].schema).fit(target[0], target[1], sources={})


def test_metalog_rejects_dataset_without_logs_and_unknown_source():
    ws = WindowSet.from_arrays(np.zeros((50, 2)), window=5, dataset="metrics_only")
    det = MetaLog(MetaLogConfig(train=FAST), ws.schema)
    with pytest.raises(InputError, match="metrics_only.*log"):
        det.fit(ws, ws)
    assert det.source_datasets("metrics_only", ["other", "third"]) == ["other"]  # default: the first listed source
    with pytest.raises(InputError, match="metalog.source"):
        MetaLog(MetaLogConfig(source="nosuch", train=FAST), ws.schema).source_datasets("metrics_only", ["other"])
