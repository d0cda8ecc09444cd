"""InterFusion: ELBO terms, two-stage training, MCMC imputation, batch-invariant scoring, interpretation, NaN stop."""
from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from stages.core.errors import InputError
from stages.core.windowset import WindowSet
from stages.nets.interfusion import (
    InterFusion,
    InterFusionConfig,
    InterFusionNet,
    NoiseTape,
    interpretation_hit_rate,
    rank_segments,
)
from stages.nets.interfusion_scoring import TailScorer, _Deconv, _Scratch

TINY = {"z_dim": 2, "rnn_hidden": 16, "dense_hidden": 16, "flow_layers": 2, "flow_hidden": 8, "pretrain_epochs": 2,
        "mcmc_iters": 3, "score_samples": 2, "cpu_threads": 1,
        "train": {"epochs": 8, "batch_size": 32, "lr": 5e-3, "patience": 8, "max_train_windows": 128}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def correlated(T: int, D: int, seed: int) -> np.ndarray:
    """Metrics driven by two shared periodic factors, so they move together (inter-metric structure)."""
    rng = np.random.default_rng(seed)
    t = np.arange(T)[:, None]
    factors = np.hstack([np.sin(2 * np.pi * t / 12), np.cos(2 * np.pi * t / 20)])
    mix = rng.normal(size=(2, D))
    return (factors @ mix + 0.1 * rng.standard_normal((T, D))).astype(np.float32)


@pytest.fixture(scope="module")
def splits():
    x = correlated(700, 5, 0)
    test_x, labels = x[400:].copy(), np.zeros(300, np.int8)
    culprits = {}
    for i, s in enumerate(np.linspace(30, 270, 5).astype(int)):
        dim = i % 5
        test_x[s:s + 6, dim] += 4.0
        labels[s:s + 6] = 1
        culprits[int(s)] = dim
    return (WindowSet.from_arrays(x[:240], window=16), WindowSet.from_arrays(x[250:390], window=16),
            WindowSet.from_arrays(test_x, labels, window=16), culprits)


@pytest.fixture(scope="module")
def fitted(splits):
    train, val, _, _ = splits
    det = InterFusion.from_params(TINY, train.schema, seed=0)
    history = det.fit(train, val)
    return det, history


def test_elbo_terms_finite_kl_nonnegative_and_recon_improves():
    torch.manual_seed(0)
    cfg = InterFusionConfig(z_dim=2, rnn_hidden=8, dense_hidden=8, flow_layers=2, flow_hidden=4)
    net = InterFusionNet(4, 12, cfg)
    assert net.inter.latent_len == 2  # 12 → 6 → 3 → 2: the time-compressed inter-metric embedding
    x = torch.sin(torch.linspace(0, 6, 12))[None, :, None].repeat(6, 1, 4) + 0.05 * torch.randn(6, 12, 4)
    terms = net.elbo_terms(x)
    for name in ("recon", "kl_e", "kl_z"):
        assert terms[name].shape == (6,) and torch.isfinite(terms[name]).all(), name
    assert (terms["kl_e"] >= 0).all()
    assert net.inter.h(torch.randn(3, 4, 2)).shape == (3, 12, 4)  # deconvolution back to the window
    stage1 = net.stage1_terms(x)
    assert torch.isfinite(stage1["recon"]).all() and (stage1["kl_e"] >= 0).all()

    opt = torch.optim.Adam(net.joint_parameters(), lr=1e-2)

    def mean_recon() -> float:
        with torch.no_grad():
            torch.manual_seed(1)
            return float(torch.stack([net.elbo_terms(x)["recon"].mean() for _ in range(4)]).mean())

    before = mean_recon()
    for _ in range(25):
        t = net.elbo_terms(x)
        loss = -(t["recon"] - t["kl_e"] - t["kl_z"]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert mean_recon() > before  # reconstruction log-likelihood up = reconstruction loss down


def test_mcmc_sampling_changes_only_the_masked_values():
    torch.manual_seed(0)
    cfg = InterFusionConfig(z_dim=2, rnn_hidden=8, dense_hidden=8, flow_layers=1, flow_hidden=4)
    net = InterFusionNet(3, 10, cfg).eval()
    x = torch.randn(4, 10, 3)
    per = net.noise_per_window(replace(cfg, mcmc_chains=2), (3, net.inter.latent_len), 10, 2, 3)

    def imputed(seed: int) -> torch.Tensor:
        with torch.inference_mode():
            tape = NoiseTape([seed + i for i in range(4)], per, x.device)
            return net.impute(x, tail=2, iters=4, chains=2, noise=tape)

    a, b = imputed(0), imputed(100)
    assert torch.equal(a[:, :-2], x[:, :-2]) and torch.equal(b[:, :-2], x[:, :-2])  # observed bit-identical
    assert not torch.equal(a[:, -2:], x[:, -2:])
    assert not torch.allclose(a[:, -2:], b[:, -2:])  # real sampling: other draws, other imputations
    assert torch.equal(a, imputed(0))  # same draws, same imputation
    with torch.inference_mode():
        assert torch.equal(net.impute(x, tail=2, iters=0), x)
        nll = net.tail_nll(x, tail=1, iters=2, chains=1, samples=3)
    assert nll.shape == (4, 1, 3) and torch.isfinite(nll).all()


def test_batch_scoring_equals_the_per_window_path(splits, fitted):
    _, _, test, _ = splits
    det, _ = fitted
    part = WindowSet.from_arrays(test.metric[:60], window=16)
    batched = det.contributions(part)
    one_by_one = InterFusion(replace(det.config, score_batch_size=1), part.schema, seed=0, window=16)
    one_by_one.module.load_state_dict(det.module.state_dict())
    np.testing.assert_allclose(one_by_one.contributions(part), batched, rtol=1e-4, atol=1e-5)
    assert np.isnan(batched[:15]).all() and np.isfinite(batched[15:]).all()
    per_window = det.window_contributions(part, part.starts[[7]])  # one window alone
    np.testing.assert_allclose(per_window[0, -1], batched[7 + 15], rtol=1e-4, atol=1e-5)


def random_net(n_dims: int, window: int, **cfg) -> InterFusionNet:
    """A small net with every weight moved off its initialisation (the couplings start at zero)."""
    torch.manual_seed(0)
    net = InterFusionNet(n_dims, window, InterFusionConfig(rnn_hidden=8, dense_hidden=8, flow_layers=3,
                                                           flow_hidden=4, **cfg)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


@pytest.mark.parametrize("window,n_dims,kernel,tail,chains,z_dim", [
    (16, 5, 5, 1, 1, 3), (12, 4, 3, 2, 2, 2), (23, 3, 7, 3, 1, 1), (17, 2, 5, 1, 3, 2)])
def test_fast_scoring_equals_the_per_window_per_sample_reference(window, n_dims, kernel, tail, chains, z_dim):
    """The batched pass (windows × samples in row blocks, incremental encoder, GRU/deconvolution as
    products) against the modules of training, one window and one score sample at a time, same draws."""
    net = random_net(n_dims, window, conv_kernel=kernel, z_dim=z_dim)
    x = torch.randn(5, window, n_dims)
    keys = [11 * i + 3 for i in range(5)]
    iters, samples = 3, 3
    per = net.noise_per_window(replace(net.cfg, mcmc_iters=iters, mcmc_chains=chains, score_samples=samples),
                               (net.inter.channels, net.inter.latent_len), window, tail, n_dims)
    with torch.inference_mode():
        tape = NoiseTape(keys, per, x.device)
        fast = TailScorer(net, block_rows=4).tail_nll(x, tail, iters, chains, samples, tape)  # 4: several blocks
        assert tape.pos == per  # every draw used, as budgeted
        again = TailScorer(net, block_rows=64).tail_nll(x, tail, iters, chains, samples, NoiseTape(keys, per, x.device))
        ref = []
        for i, k in enumerate(keys):
            one = NoiseTape([k], per, x.device)
            ref.append(net.tail_nll_reference(x[i:i + 1], tail, iters, chains, samples, one))
            assert one.pos == per
    assert fast.shape == (5, tail, n_dims) and torch.isfinite(fast).all()
    torch.testing.assert_close(fast, torch.cat(ref), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again, fast, rtol=1e-5, atol=1e-5)  # blocking does not matter
    with torch.inference_mode():  # seed-deterministic
        assert torch.equal(fast, TailScorer(net, block_rows=4).tail_nll(x, tail, iters, chains, samples,
                                                                         NoiseTape(keys, per, x.device)))


def test_fast_mcmc_changes_only_the_masked_values_and_matches_the_reference():
    net = random_net(3, 14)
    x = torch.randn(4, 14, 3)
    per = net.noise_per_window(replace(net.cfg, mcmc_chains=2), (3, net.inter.latent_len), 14, 2, 3)
    with torch.inference_mode():
        scorer = TailScorer(net)
        acts = scorer.impute(x, tail=2, iters=4, chains=2, noise=NoiseTape(list(range(4)), per, x.device))
        ref = net.impute(x, tail=2, iters=4, chains=2, noise=NoiseTape(list(range(4)), per, x.device))
        fresh = scorer.encode(acts[0].clone())  # the encoder kept up to date step by step = encoded anew
    xh = acts[0].transpose(1, 2)
    assert torch.equal(xh[:, :-2], x[:, :-2])  # observed values bit-identical
    assert not torch.allclose(xh[:, -2:], x[:, -2:])
    torch.testing.assert_close(xh, ref, rtol=1e-4, atol=1e-4)
    for kept, new in zip(acts, fresh):
        torch.testing.assert_close(kept, new, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel,stride,n_in,out_pad", [(5, 2, 13, 0), (5, 2, 13, 1), (5, 1, 7, 0), (3, 2, 6, 1),
                                                         (7, 2, 5, 0), (7, 1, 6, 0), (3, 1, 1, 0)])
def test_deconvolution_as_products_equals_conv_transpose(kernel, stride, n_in, out_pad):
    torch.manual_seed(0)
    layer = torch.nn.ConvTranspose1d(4, 6, kernel, stride=stride, padding=kernel // 2, output_padding=out_pad)
    deconv = _Deconv(layer)
    x = torch.randn(n_in, 4, 3)  # feature-major (L, C, N)
    with torch.inference_mode():
        want = torch.relu(layer(x.permute(2, 1, 0))).permute(2, 1, 0)
        for m in (deconv.margin(n_in), deconv.margin(n_in) + 2):  # the zero margins it needs, or more
            padded = torch.zeros(n_in + 2 * m, 4, 3)
            padded[m:m + n_in] = x
            got = torch.full(want.shape, float("nan"))
            deconv(padded, m, _Scratch(), out=got)
            wide = torch.full((want.shape[0], 9, 3), float("nan"))
            deconv(padded, m, _Scratch(), out=wide[:, 2:8])  # into a strided slice, as for the GRU buffer
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(wide[:, 2:8], want, rtol=1e-5, atol=1e-6)
            assert torch.isnan(wide[:, :2]).all() and torch.isnan(wide[:, 8:]).all()


def test_hit_rate_hand_made_case():
    contrib = np.array([[0.1, 0.9, 0.5, 0.0],   # step 0: top dims 1, 2
                        [0.8, 0.1, 0.2, 0.7],   # step 1: top dims 0, 3
                        [0.0, 0.0, 0.0, 1.0]])  # step 2: top dim 3
    seg = [SimpleNamespace(start=0, end=1, dims=[1, 3]), SimpleNamespace(start=2, end=2, dims=[3])]
    alarms = np.array([True, True, True])
    # @100%: k = 2 for seg 1 → step 0 hits {1} of {1,3} = 0.5, step 1 hits {3} = 0.5; seg 2: k=1 → 1.0
    assert interpretation_hit_rate(contrib, seg, alarms, 100) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    # @150%: k = 3 for seg 1 → step 0 top {1,2,0} → 0.5, step 1 top {0,3,2} → 0.5; seg 2: k = 1 → 1.0
    assert interpretation_hit_rate(contrib, seg, alarms, 150) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    # only alarmed steps count; none alarmed → NaN
    assert interpretation_hit_rate(contrib, seg, np.array([False, False, True]), 100) == pytest.approx(1.0)
    assert math.isnan(interpretation_hit_rate(contrib, seg, np.zeros(3, bool), 100))
    ranked = rank_segments(contrib, np.array([True, True, False]), ["a", "b", "c", "d"])
    assert ranked == [{"start": 0, "end": 1, "ranking": ["b", "a", "c", "d"],
                       "contribution": pytest.approx([0.5, 0.45, 0.35, 0.35])}]


def test_two_stage_training_pretrains_inter_metric_part_first(splits):
    train, val, _, _ = splits
    det = InterFusion.from_params({**TINY, "train": {"epochs": 1, "max_train_windows": 64}}, train.schema, seed=0)
    det._ensure_module(train.window)
    inter = {id(p) for p in det.module.stage1_parameters()}
    temporal = {n: p.detach().clone() for n, p in det.module.named_parameters() if id(p) not in inter}
    det._stage = "inter_metric"
    assert {id(p) for p in det.parameters_to_train()} == inter
    det._stage = "joint"
    stage1_only = InterFusion(InterFusion.from_params({**TINY, "train": {"epochs": 0}}, train.schema).config,
                              train.schema, seed=0, window=train.window)
    stage1_only.fit(train, val)  # stage 1 only: temporal parameters must not move
    for n, p in stage1_only.module.named_parameters():
        if n in temporal:
            assert torch.equal(p.detach(), temporal[n]), n
    hist = det.fit(train, val)
    assert len(hist["stage1_train_loss"]) == TINY["pretrain_epochs"] and len(hist["train_loss"]) == 1


def test_beats_random_and_explains_culprits(splits, fitted, tmp_path):
    from sklearn.metrics import average_precision_score

    _, val, test, culprits = splits
    det, history = fitted
    assert history["train_loss"][-1] < history["train_loss"][0]
    scores = det.score(test)
    ok = np.isfinite(scores)
    assert ok.sum() == test.n_steps - (test.window - 1)
    auc = average_precision_score(test.labels[ok], scores[ok])
    rand = average_precision_score(test.labels[ok], np.random.default_rng(0).random(ok.sum()))
    assert auc > rand + 0.2, (auc, rand)

    threshold = float(np.nanquantile(det.score(val), 0.99))
    out = det.explain(test, threshold=threshold)
    assert out["contributions"].shape == (test.n_steps, test.schema.n_metric)
    np.testing.assert_allclose(np.nansum(out["contributions"], axis=1)[ok], scores[ok], rtol=1e-5)
    segs = [SimpleNamespace(start=s, end=s + 5, dims=[d]) for s, d in culprits.items()]
    assert interpretation_hit_rate(out["contributions"], segs, out["alarms"], 100) >= 0.6
    first = min(culprits)
    run = [a for a in out["anomalies"] if a["start"] <= first + 5 and a["end"] >= first]
    assert run and run[0]["ranking"][0] == f"series/{culprits[first]}"

    det.save(tmp_path / "if")
    again = InterFusion.load(tmp_path / "if", test.schema)
    np.testing.assert_allclose(again.score(test), scores, rtol=1e-4, atol=1e-5)


def test_bad_config_is_input_error(splits):
    with pytest.raises(InputError, match="interfusion"):
        InterFusion.from_params({"rnn_hidden": 0}, splits[0].schema)
    with pytest.raises(InputError, match="interfusion.z3_dim"):
        InterFusion.from_params({"z3_dim": 4}, splits[0].schema)
    with pytest.raises(InputError, match="conv_kernel"):
        InterFusion.from_params({"conv_kernel": 4}, splits[0].schema)


def test_nan_training_loss_stops_with_one_line_naming_dataset_and_epoch(splits):
    train, val, _, _ = splits
    bad = train.metric.copy()
    bad[40:60, 2] = 1e30  # overflows the Gaussian likelihood in float32
    ws = WindowSet.from_arrays(bad, window=16, dataset="omi-9")
    det = InterFusion.from_params({**TINY, "pretrain_epochs": 1}, ws.schema, seed=0)
    with pytest.raises(InputError) as exc:
        det.fit(ws, val)
    msg = str(exc.value)
    assert "omi-9" in msg and "epoch 1" in msg and "\n" not in msg


def test_scores_are_the_same_bits_at_any_scoring_thread_count(splits, fitted):
    """evaluate.score_threads: auto may pick any count, so the scores must not depend on it."""
    from stages.core.device import set_scoring_threads

    _, _, test, _ = splits
    det, _ = fitted
    runs = []
    try:
        for n in (1, 2, 3):
            set_scoring_threads(n)
            runs.append(det.score(test))
    finally:
        set_scoring_threads(None)
    for other in runs[1:]:
        assert np.array_equal(runs[0], other, equal_nan=True)
