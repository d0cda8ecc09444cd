"""InterFusion: ELBO terms, two-stage training, MCMC imputation, interpretation, detection."""
from __future__ import annotations

import math
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
    interpretation_hit_rate,
    rank_segments,
)

TINY = {"z1_dim": 4, "z2_dim": 4, "hidden": 16, "pretrain_epochs": 1, "mcmc_steps": 3, "score_samples": 2,
        "train": {"epochs": 6, "batch_size": 32, "lr": 5e-3, "patience": 6, "max_train_windows": 128}}


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
    cfg = InterFusionConfig(z1_dim=3, z2_dim=3, hidden=8)
    net = InterFusionNet(4, cfg)
    x = torch.sin(torch.linspace(0, 6, 12))[None, :, None].repeat(6, 1, 4) + 0.05 * torch.randn(6, 12, 4)
    terms = net.elbo_terms(x)
    for name in ("recon", "kl_z1", "kl_z2"):
        assert terms[name].shape == (6,) and torch.isfinite(terms[name]).all(), name
    assert (terms["kl_z1"] >= 0).all() and (terms["kl_z2"] >= 0).all()
    stage1 = net.stage1_terms(x)
    assert torch.isfinite(stage1["recon"]).all() and (stage1["kl_z1"] >= 0).all()

    opt = torch.optim.Adam(net.parameters(), lr=1e-2)

    def mean_recon() -> float:
        with torch.no_grad():
            torch.manual_seed(1)
            return float(torch.stack([net.elbo_terms(x)["recon"].mean() for _ in range(4)]).mean())

    before = mean_recon()
    for _ in range(25):
        t = net.elbo_terms(x)
        loss = -(t["recon"] - t["kl_z1"] - t["kl_z2"]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert mean_recon() > before  # reconstruction log-likelihood up = reconstruction loss down


def test_mcmc_imputation_changes_only_the_masked_point():
    torch.manual_seed(0)
    net = InterFusionNet(3, InterFusionConfig(z1_dim=2, z2_dim=2, hidden=8)).eval()
    x = torch.randn(4, 10, 3)
    mask = torch.zeros(4, 10, dtype=torch.bool)
    mask[:, -1] = True
    imputed = net.impute(x, mask, steps=4)
    assert torch.equal(imputed[:, :-1], x[:, :-1])  # observed steps bit-identical
    assert not torch.equal(imputed[:, -1], x[:, -1])
    nll = net.point_nll(x, mask, steps=2, samples=2)
    assert (nll[:, :-1] == 0).all() and torch.isfinite(nll[:, -1]).all()


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
    inter = {id(p) for p in det.module.inter_metric_parameters()}
    temporal = {n: p.detach().clone() for n, p in det.module.named_parameters() if id(p) not in inter}
    det._stage = "inter_metric"
    assert {id(p) for p in det.parameters_to_train()} == inter
    det._stage = "joint"
    stage1_only = InterFusion.from_params({**TINY, "train": {"epochs": 0}}, train.schema, seed=0)
    stage1_only.fit(train, val)  # stage 1 only: temporal parameters must not move
    for n, p in stage1_only.module.named_parameters():
        if n in temporal:
            assert torch.equal(p.detach(), temporal[n]), n
    hist = det.fit(train, val)
    assert len(hist["stage1_train_loss"]) == 1 and len(hist["train_loss"]) == 1


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
        InterFusion.from_params({"hidden": 0}, splits[0].schema)
    with pytest.raises(InputError, match="interfusion.z3_dim"):
        InterFusion.from_params({"z3_dim": 4}, splits[0].schema)
