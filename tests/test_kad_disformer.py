"""KAD-Disformer: disentangled attention, uTune's frozen common part, inputs, detection."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.core.device import set_scoring_threads
from stages.core.errors import InputError
from stages.core.windowset import WindowSet
from stages.nets.kad_disformer import (
    DisentangledLinear,
    KADDisformer,
    SequenceSource,
    aggregate_channels,
    build_features,
    dominant_periods,
    make_mask,
)

TINY = {"d_model": 16, "heads": 2, "layers": 1, "ff_dim": 32, "dropout": 0.0, "pretrain_epochs": 2,
        "pretrain_samples": 256, "pretrain_batch": 128, "replay_batch": 32,
        "train": {"epochs": 3, "batch_size": 16, "lr": 5e-3, "patience": 3, "max_train_windows": 64}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def periodic(T: int, C: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(T)[:, None]
    period = rng.choice([8, 12, 16], C)
    return (np.sin(2 * np.pi * t / period + rng.uniform(0, 6, C)) + 0.1 * rng.standard_normal((T, C))
            ).astype(np.float32)


def with_faults(x: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Inject ``n`` level-shift faults (8 steps, 2 channels each) evenly after a clean lead-in."""
    rng = np.random.default_rng(seed)
    x = x.copy()
    labels = np.zeros(len(x), np.int8)
    for s in np.linspace(40, len(x) - 20, n).astype(int):
        ch = rng.choice(x.shape[1], 2, replace=False)
        x[s:s + 8, ch] += 3.0 * rng.choice([-1.0, 1.0])
        labels[s:s + 8] = 1
    return x, labels


@pytest.fixture(scope="module")
def splits():
    x = periodic(700, 6, 0)
    test_x, test_y = with_faults(x[400:], 5, 1)
    return (WindowSet.from_arrays(x[:220], window=16), WindowSet.from_arrays(x[240:380], window=16),
            WindowSet.from_arrays(test_x, test_y, window=16))


@pytest.fixture(scope="module")
def sources():
    return {"src_a": WindowSet.from_arrays(periodic(300, 5, 7), window=16),
            "src_b": WindowSet.from_arrays(periodic(300, 4, 8), window=16)}


@pytest.fixture(scope="module")
def pretrained(splits, sources):
    """A detector after universal pre-training only, plus a copy of its parameters."""
    train, _, _ = splits
    det = KADDisformer.from_params(TINY, train.schema, seed=0)
    det.tail = 1
    det.pretrain(sources, train.window)
    return det, det.pretrained_state()


def test_disentangled_linear_is_common_plus_personal():
    torch.manual_seed(0)
    lin = DisentangledLinear(4, 3, n_personal=2)
    with torch.no_grad():
        lin.personal_weight.normal_()
        lin.personal_bias.normal_()
    x = torch.randn(2, 5, 4)
    kid = torch.tensor([1, 0])
    out = lin(x, kid)
    for n in range(2):
        k = int(kid[n])
        expected = x[n] @ (lin.common.weight + lin.personal_weight[k]).T + lin.common.bias + lin.personal_bias[k]
        assert torch.allclose(out[n], expected, atol=1e-5)


def test_utune_updates_only_personal_parameters(splits, pretrained):
    train, val, _ = splits
    det, state = pretrained
    det.restore_pretrained(state)
    common_before = {n: p.detach().clone() for n, p in det.module.common_parameters()}
    personal_before = {n: p.detach().clone() for n, p in det.module.personal_parameters()}
    det.utune(train, val)
    assert det.module.personal_parameters() and det.module.common_parameters()
    for name, p in det.module.common_parameters():
        assert not p.requires_grad, name
        assert torch.equal(p.detach(), common_before[name]), f"uTune changed common parameter {name}"
    for _, p in det.module.personal_parameters():
        assert p.requires_grad
    assert {id(p) for p in det.parameters_to_train()} == {id(p) for _, p in det.module.personal_parameters()}
    changed = [not torch.equal(p.detach(), personal_before[n]) for n, p in det.module.personal_parameters()]
    assert any(changed), "uTune did not move any personal parameter"
    # every KPI got its own copy of the pre-trained personal slot, then diverged
    w = dict(det.module.personal_parameters())["layers.0.attn.q.personal_weight"]
    assert w.shape[0] == train.schema.n_metric
    assert not torch.equal(w[0], w[1])


def test_pretraining_moves_common_parameters(splits, sources):
    train, _, _ = splits
    det = KADDisformer.from_params({**TINY, "pretrain_epochs": 1}, train.schema, seed=0)
    before = {n: p.detach().clone() for n, p in det.module.common_parameters()}
    losses = det.pretrain(sources, train.window)
    assert len(losses) == 1 and np.isfinite(losses[0])
    assert any(not torch.equal(p.detach(), before[n]) for n, p in det.module.common_parameters())


def test_dominant_period_found_and_fallback():
    t = np.arange(480)[:, None]
    rng = np.random.default_rng(0)
    x = np.hstack([np.sin(2 * np.pi * t / 24), rng.standard_normal((480, 1))])
    periods = dominant_periods(x, fallback=16, max_period=128)
    assert periods[0] == 24
    assert periods[1] == 16  # white noise: no clear period


def test_masked_steps_do_not_leak_into_features():
    rng = np.random.default_rng(0)
    metric = rng.standard_normal((100, 2)).astype(np.float32)
    src = SequenceSource(metric, np.arange(40, 60), np.array([10, 10]))
    from stages.nets.kad_disformer import KADDisformerConfig

    cfg = KADDisformerConfig(history_periods=2)
    mask = make_mask(2, 16, tail=2, ratio=0.0, rng=None)
    starts, ch = np.array([50, 50]), np.array([0, 1])
    feats, target = build_features(src, starts, ch, 16, mask, cfg)
    assert feats.shape == (2, 16, 2 + 1 + 2)
    assert (feats[:, -2:, 0] == 0).all() and (feats[:, -2:, 1] == 1).all()
    np.testing.assert_array_equal(target[0], metric[50:66, 0])
    np.testing.assert_array_equal(feats[1, :, 3], metric[40:56, 1])  # history one period (10) back
    altered = metric.copy()
    altered[64:66] += 100.0  # the masked (newest) steps of both windows
    feats2, _ = build_features(SequenceSource(altered, src.starts, src.periods), starts, ch, 16, mask, cfg)
    np.testing.assert_array_equal(feats, feats2)


def test_aggregate_channels_modes():
    e = np.array([[1.0, 4.0, 2.0, 3.0]])
    assert aggregate_channels(e, "max", 2)[0] == 4.0
    assert aggregate_channels(e, "mean", 2)[0] == 2.5
    assert aggregate_channels(e, "topk_mean", 2)[0] == 3.5


def test_beats_random_on_injected_faults_and_roundtrips(splits, pretrained, tmp_path):
    from sklearn.metrics import average_precision_score

    train, val, test = splits
    det, state = pretrained
    det.restore_pretrained(state)
    det.utune(train, val)
    scores = det.score(test)
    assert scores.shape == (test.n_steps,)
    ok = np.isfinite(scores)
    assert ok.sum() == test.n_steps - (test.window - 1)
    auc = average_precision_score(test.labels[ok], scores[ok])
    rand = average_precision_score(test.labels[ok], np.random.default_rng(0).random(ok.sum()))
    assert auc > rand + 0.2, (auc, rand)

    det.save(tmp_path / "kad")
    again = KADDisformer.load(tmp_path / "kad", test.schema)
    np.testing.assert_allclose(again.score(test), scores, rtol=1e-5, atol=1e-6)
    # evaluate.score_threads: auto may pick any count, so the scores must not depend on it
    try:
        for n in (2, 3):
            set_scoring_threads(n)
            assert np.array_equal(det.score(test), scores, equal_nan=True), n
    finally:
        set_scoring_threads(None)


def test_fit_without_sources_pretrains_on_target(splits):
    train, val, _ = splits
    det = KADDisformer.from_params({**TINY, "pretrain_epochs": 1, "train": {"epochs": 1}}, train.schema, seed=0)
    assert det.source_datasets("a", ["a", "b", "c"]) == ["b", "c"]
    hist = det.fit(train, val, None)
    assert len(hist["pretrain_loss"]) == 1 and len(hist["train_loss"]) == 1


def test_bad_config_is_input_error(splits):
    with pytest.raises(InputError, match="kad_disformer.d_model"):
        KADDisformer.from_params({"d_model": 15, "heads": 2}, splits[0].schema)
    with pytest.raises(InputError, match="aggregate"):
        KADDisformer.from_params({"aggregate": "median"}, splits[0].schema)


def test_channel_scores_are_each_kpis_newest_steps_mapped_to_the_grid(splits, pretrained):
    """channel_scores maps one KPI at a time (bounded memory at thousands of KPIs): the same values as
    mapping the whole (windows, KPIs, window) array, for every tail length, from either memory order."""
    train, val, test = splits
    det, state = pretrained
    det.restore_pretrained(state)
    det.utune(train, val)
    fortran = WindowSet.from_arrays(np.asfortranarray(test.metric), test.labels, window=16)
    assert fortran.metric.flags.f_contiguous and not fortran.metric.flags.c_contiguous  # as the splits load
    try:
        for tail in (1, 3):
            det.tail, det._cache = tail, None
            err = det._channel_window_errors(test, mean_over_tail=False) / det.error_scale[None, :, None]
            full = np.zeros((len(err), test.metric.shape[1], test.window))
            full[:, :, test.window - tail:] = err
            expected = np.stack([test.steps_from_windows(full[:, c]) for c in range(full.shape[1])], axis=1)
            got = det.channel_scores(test)
            assert got.dtype == expected.dtype and got.flags.c_contiguous
            assert np.array_equal(got, expected, equal_nan=True), tail
            assert np.array_equal(det.explain(test)["channel_scores"], expected, equal_nan=True)  # the cached pass
            assert np.array_equal(det.channel_scores(fortran), expected, equal_nan=True)  # its own cache key
    finally:
        det.tail, det._cache = 1, None
