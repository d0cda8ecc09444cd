"""InterFusion: a hierarchical VAE with an inter-metric and a temporal latent embedding.

Generative model of a window x (T, D):
  z1 ~ N(0, I)                                  inter-metric embedding, (z1_dim, T/4): a compressed
                                                 view of how the metrics move together
  z2_t ~ N(mu_p, sigma_p)(z2_{<t}, z1)           temporal embedding, a recurrent prior conditioned on z1
  x_t ~ N(mu_x, sigma_x)(z2_{<=t}, z1)           recurrent decoder
Inference: q(z1 | x) by strided 1-D convolutions over time (the compression), q(z2 | x, z1) by a
bidirectional GRU over x and the expanded z1. Training is two-stage: first the inter-metric part
alone (q(z1|x) with a direct decoder p(x|z1)), then the whole model jointly on the ELBO.

At test time the newest ``stride`` steps of each window are treated as missing and imputed by
MCMC (alternately sample z ~ q(z | x̂), decode, overwrite only the masked steps); the score is
the negative log-likelihood of the *observed* newest steps under p(x | z), z ~ q(z | x̂), which
splits into per-metric terms — the per-metric contributions that :meth:`InterFusion.explain`
ranks for interpretation.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stages.core.device import autocast
from stages.core.windowset import WindowSet
from stages.nets.base import TorchDetector, TrainConfig

log = logging.getLogger(__name__)
LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class InterFusionConfig:
    z1_dim: int = 8
    z2_dim: int = 8
    hidden: int = 48
    pretrain_epochs: int = 2  # stage 1: the inter-metric part alone
    mcmc_steps: int = 5  # imputation iterations for the masked newest steps
    score_samples: int = 4  # z samples averaged in the score
    logstd_min: float = -4.0  # floor of every log-sigma (keeps the likelihood bounded)
    # fp32 by default: the Gaussian likelihoods and MCMC are precision-sensitive (amp: true to try bf16)
    # few-shot spans hold ~50-300 windows: small batches so an epoch is several optimiser steps
    train: TrainConfig = TrainConfig(epochs=40, batch_size=16, lr=2e-3, patience=5, max_train_windows=512,
                                     amp=False)

    def validate(self) -> None:
        from stages.core.errors import InputError

        if min(self.z1_dim, self.z2_dim, self.hidden, self.mcmc_steps + 1, self.score_samples) < 1:
            raise InputError("params.yaml", "interfusion", "positive sizes (mcmc_steps >= 0)",
                             (self.z1_dim, self.z2_dim, self.hidden, self.mcmc_steps, self.score_samples))


# ---------------------------------------------------------------- distributions


def gaussian_loglik(x: torch.Tensor, mu: torch.Tensor, logstd: torch.Tensor) -> torch.Tensor:
    """Element-wise log N(x; mu, exp(logstd)^2)."""
    return -0.5 * (LOG_2PI + 2.0 * logstd + ((x - mu) * torch.exp(-logstd)) ** 2)


def gaussian_kl(mu_q: torch.Tensor, ls_q: torch.Tensor, mu_p: torch.Tensor, ls_p: torch.Tensor) -> torch.Tensor:
    """Element-wise KL(N(mu_q, e^{2 ls_q}) || N(mu_p, e^{2 ls_p})) — analytic, hence exactly >= 0."""
    return ls_p - ls_q + (torch.exp(2 * ls_q) + (mu_q - mu_p) ** 2) / (2 * torch.exp(2 * ls_p)) - 0.5


def _split(t: torch.Tensor, dim: int, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    mu, ls = t.chunk(2, dim=dim)
    return mu, floor + F.softplus(ls - floor)  # smooth floor on log-sigma


# ---------------------------------------------------------------- the network


class InterFusionNet(nn.Module):
    def __init__(self, n_dims: int, cfg: InterFusionConfig):
        super().__init__()
        h, self.cfg = cfg.hidden, cfg
        # --- inter-metric part: q(z1|x), expansion of z1 to the time axis, stage-1 decoder p(x|z1)
        self.z1_encoder = nn.Sequential(
            nn.Conv1d(n_dims, h, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv1d(h, h, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv1d(h, 2 * cfg.z1_dim, 1))
        self.z1_expand = nn.Sequential(nn.Conv1d(cfg.z1_dim, h, 3, padding=1), nn.GELU())
        self.z1_decoder = nn.Conv1d(h, 2 * n_dims, 1)
        # --- temporal part: q(z2|x,z1), p(z2|z1), p(x|z1,z2)
        self.z2_posterior_rnn = nn.GRU(n_dims + h, h, batch_first=True, bidirectional=True)
        self.z2_posterior_out = nn.Linear(2 * h, 2 * cfg.z2_dim)
        self.z2_prior_rnn = nn.GRU(cfg.z2_dim + h, h, batch_first=True)
        self.z2_prior_out = nn.Linear(h, 2 * cfg.z2_dim)
        self.x_rnn = nn.GRU(cfg.z2_dim + h, h, batch_first=True)
        self.x_out = nn.Linear(h, 2 * n_dims)

    # x: (B, T, D) throughout
    def q_z1(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _split(self.z1_encoder(x.transpose(1, 2)), 1, self.cfg.logstd_min)  # (B, z1, T1) each

    def expand_z1(self, z1: torch.Tensor, length: int) -> torch.Tensor:
        up = F.interpolate(z1, size=length, mode="linear", align_corners=False)
        return self.z1_expand(up).transpose(1, 2)  # (B, T, h)

    def p_x_given_z1(self, h1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _split(self.z1_decoder(h1.transpose(1, 2)).transpose(1, 2), -1, self.cfg.logstd_min)

    def q_z2(self, x: torch.Tensor, h1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, _ = self.z2_posterior_rnn(torch.cat([x, h1], dim=-1))
        return _split(self.z2_posterior_out(out), -1, self.cfg.logstd_min)

    def p_z2(self, z2: torch.Tensor, h1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prior of each z2_t given the (sampled) z2_{<t} and z1: teacher-forced recurrence."""
        prev = torch.cat([torch.zeros_like(z2[:, :1]), z2[:, :-1]], dim=1)
        out, _ = self.z2_prior_rnn(torch.cat([prev, h1], dim=-1))
        return _split(self.z2_prior_out(out), -1, self.cfg.logstd_min)

    def p_x(self, z2: torch.Tensor, h1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, _ = self.x_rnn(torch.cat([z2, h1], dim=-1))
        return _split(self.x_out(out), -1, self.cfg.logstd_min)

    def sample_posterior(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One reparameterised pass through q(z1|x), q(z2|x,z1), the prior of z2 and p(x|z)."""
        mu1, ls1 = self.q_z1(x)
        z1 = mu1 + torch.exp(ls1) * torch.randn_like(mu1)
        h1 = self.expand_z1(z1, x.shape[1])
        mu2, ls2 = self.q_z2(x, h1)
        z2 = mu2 + torch.exp(ls2) * torch.randn_like(mu2)
        pmu2, pls2 = self.p_z2(z2, h1)
        xmu, xls = self.p_x(z2, h1)
        return {"mu1": mu1, "ls1": ls1, "h1": h1, "mu2": mu2, "ls2": ls2, "pmu2": pmu2, "pls2": pls2,
                "xmu": xmu, "xls": xls}

    def elbo_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-window ELBO terms (B,): reconstruction log-likelihood and the two KLs."""
        s = self.sample_posterior(x)
        s = {k: v.float() for k, v in s.items()}  # likelihoods in fp32 even under autocast
        recon = gaussian_loglik(x.float(), s["xmu"], s["xls"]).sum(dim=(1, 2))
        kl1 = gaussian_kl(s["mu1"], s["ls1"], torch.zeros_like(s["mu1"]), torch.zeros_like(s["ls1"])).sum(dim=(1, 2))
        kl2 = gaussian_kl(s["mu2"], s["ls2"], s["pmu2"], s["pls2"]).sum(dim=(1, 2))
        return {"recon": recon, "kl_z1": kl1, "kl_z2": kl2}

    def stage1_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """ELBO of the inter-metric part alone (z1 → x directly), used to pre-train it."""
        mu1, ls1 = self.q_z1(x)
        z1 = mu1 + torch.exp(ls1) * torch.randn_like(mu1)
        xmu, xls = self.p_x_given_z1(self.expand_z1(z1, x.shape[1]))
        mu1, ls1 = mu1.float(), ls1.float()
        recon = gaussian_loglik(x.float(), xmu.float(), xls.float()).sum(dim=(1, 2))
        kl1 = gaussian_kl(mu1, ls1, torch.zeros_like(mu1), torch.zeros_like(ls1)).sum(dim=(1, 2))
        return {"recon": recon, "kl_z1": kl1}

    def inter_metric_parameters(self) -> list[nn.Parameter]:
        return [*self.z1_encoder.parameters(), *self.z1_expand.parameters(), *self.z1_decoder.parameters()]

    @torch.no_grad()
    def impute(self, x: torch.Tensor, mask: torch.Tensor, steps: int) -> torch.Tensor:
        """MCMC imputation: masked entries (mask True, shape (B, T)) are replaced by samples'
        decoded means, ``steps`` times; observed entries are returned bit-identical."""
        m = mask[:, :, None].expand_as(x)
        xh = torch.where(m, torch.zeros_like(x), x)  # start from the training mean (data are z-scored)
        for _ in range(steps):
            xh = torch.where(m, self.sample_posterior(xh)["xmu"].to(x.dtype), x)
        return xh

    @torch.no_grad()
    def point_nll(self, x: torch.Tensor, mask: torch.Tensor, steps: int, samples: int) -> torch.Tensor:
        """Per-metric negative log-likelihood (B, T, D) of the observed x at masked steps (0 elsewhere),
        with z drawn from q(z | imputed x); the likelihood is averaged over ``samples`` draws."""
        xh = self.impute(x, mask, steps)
        lls = []
        for _ in range(samples):
            s = self.sample_posterior(xh)
            lls.append(gaussian_loglik(x.float(), s["xmu"].float(), s["xls"].float()))
        ll = torch.logsumexp(torch.stack(lls), dim=0) - math.log(samples)
        return -ll * mask[:, :, None]


# ---------------------------------------------------------------- interpretation


def interpretation_hit_rate(contributions: np.ndarray, segments: list, alarms: np.ndarray,
                            percent: float = 100.0) -> float:
    """HitRate@P%: over every labelled anomalous step that raised an alarm, the share of its culprit
    dims G found among the top ⌊P%·|G|⌋ metrics ranked by contribution; NaN if no such step.

    ``segments`` hold ``start``, ``end`` (inclusive) and 0-based ``dims``.
    """
    contributions = np.asarray(contributions, dtype=np.float64)
    alarms = np.asarray(alarms, dtype=bool)
    rates = []
    for seg in segments:
        steps = np.arange(seg.start, seg.end + 1)
        steps = steps[(steps < len(alarms))]
        steps = steps[alarms[steps] & np.isfinite(contributions[steps]).all(axis=1)]
        if not len(steps):
            continue
        truth = np.asarray(seg.dims)
        k = max(1, int(math.floor(percent / 100.0 * len(truth))))
        top = np.argsort(-contributions[steps], axis=1, kind="stable")[:, :k]
        hits = (top[:, :, None] == truth[None, None, :]).any(axis=2).sum(axis=1)
        rates.append(hits / len(truth))
    return float(np.concatenate(rates).mean()) if rates else math.nan


def rank_segments(contributions: np.ndarray, alarms: np.ndarray, channels: list[str]) -> list[dict[str, Any]]:
    """Each run of alarms → its steps and metrics ranked by mean contribution over the run."""
    lab = np.concatenate([[0], np.asarray(alarms, dtype=np.int8), [0]])
    d = np.diff(lab)
    out = []
    for a, b in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)):
        mean = np.nanmean(contributions[a:b], axis=0)
        order = np.argsort(-mean, kind="stable")
        out.append({"start": int(a), "end": int(b - 1), "ranking": [channels[i] for i in order],
                    "contribution": [float(mean[i]) for i in order]})
    return out


# ---------------------------------------------------------------- the detector


class InterFusion(TorchDetector):
    name = "interfusion"
    Config = InterFusionConfig

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.threshold: float | None = None  # set by whoever chose it (label-free) to enable segment ranking
        self._stage = "joint"
        self._cache: tuple[tuple, np.ndarray] | None = None  # (windows key, contributions): score then explain

    def build_module(self) -> nn.Module:
        return InterFusionNet(max(self.schema.n_metric, 1), self.config)

    def _tail(self, ws: WindowSet) -> int:
        return max(1, min(ws.stride, ws.window - 1))

    def make_batch(self, ws: WindowSet, starts: np.ndarray) -> dict[str, torch.Tensor]:
        x = np.nan_to_num(ws.take(ws.metric, starts))  # an unfilled gap must not poison a batch
        mask = np.zeros(x.shape[:2], dtype=bool)
        mask[:, ws.window - self._tail(ws):] = True
        return {"x": self._to(x), "mask": self._to(mask, torch.bool)}

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["x"]
        terms = self.module.stage1_terms(x) if self._stage == "inter_metric" else self.module.elbo_terms(x)
        elbo = terms["recon"] - terms["kl_z1"] - terms.get("kl_z2", 0.0)
        return -(elbo.mean()) / (x.shape[1] * x.shape[2])

    def parameters_to_train(self):
        params = self.module.inter_metric_parameters() if self._stage == "inter_metric" \
            else list(self.module.parameters())
        return [p for p in params if p.requires_grad]

    def fit(self, train: WindowSet, val: WindowSet, sources: dict[str, WindowSet] | None = None
            ) -> dict[str, list[float]]:
        """Two-stage training: the inter-metric VAE first, then the whole hierarchy jointly."""
        t0 = time.perf_counter()
        if train.schema.n_metric == 0:
            raise ValueError(f"{self.name}: dataset {train.schema.dataset!r} has no metric channel")
        self._cache = None
        history: dict[str, list[float]] = {}
        resuming = self.checkpoint_dir is not None and (self.checkpoint_dir / "last.pt").exists()
        if self.config.pretrain_epochs and not resuming:
            from dataclasses import replace

            joint_cfg = self.config
            self._stage = "inter_metric"
            self.config = replace(joint_cfg, train=replace(joint_cfg.train, epochs=self.config.pretrain_epochs))
            saved_ckpt, self.checkpoint_dir = self.checkpoint_dir, None
            try:
                stage1 = super().fit(train, val)
            finally:
                self.config, self.checkpoint_dir, self._stage = joint_cfg, saved_ckpt, "joint"
            history["stage1_train_loss"] = stage1["train_loss"]
            history["stage1_val_loss"] = stage1["val_loss"]
        history.update(super().fit(train, val))
        history["fit_seconds"] = [time.perf_counter() - t0]
        return history

    def window_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.module.point_nll(batch["x"], batch["mask"], self.config.mcmc_steps,
                                     self.config.score_samples).sum(dim=-1)

    def contributions(self, ws: WindowSet) -> np.ndarray:
        """Per-step, per-metric score terms (T, D) (NaN where unscored); rows sum to :meth:`score`."""
        digest = hashlib.blake2b(np.ascontiguousarray(ws.metric).tobytes(), digest_size=16)
        digest.update(np.ascontiguousarray(ws.starts).tobytes())
        key = (digest.hexdigest(), ws.metric.shape, ws.window, ws.stride)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1].copy()
        self.module.eval()
        tc = self.config.train
        rows = []
        torch.manual_seed(self.seed)  # the MCMC draws are part of the score: keep them reproducible
        with torch.no_grad():
            for starts in ws.batches(tc.batch_size):
                b = self.make_batch(ws, starts)
                with autocast(self.device, tc.amp):
                    nll = self.module.point_nll(b["x"], b["mask"], self.config.mcmc_steps, self.config.score_samples)
                rows.append(nll.float().cpu().numpy())
        D = ws.metric.shape[1]
        if not rows:
            return np.full((ws.n_steps, D), np.nan)
        per_window = np.concatenate(rows)  # (W, L, D)
        out = np.stack([ws.steps_from_windows(per_window[:, :, d]) for d in range(D)], axis=1)
        self._cache = (key, out)
        return out.copy()

    def score(self, windows: WindowSet) -> np.ndarray:
        contrib = self.contributions(windows)
        out = contrib.sum(axis=1)  # NaN rows stay NaN
        return out

    def explain(self, windows: WindowSet, threshold: float | None = None) -> dict[str, Any]:
        """Per-metric contributions and, given a label-free threshold, each alarm run's ranked metrics."""
        contrib = self.contributions(windows)
        threshold = self.threshold if threshold is None else threshold
        out: dict[str, Any] = {"contributions": contrib, "channels": list(windows.schema.metric_channels)}
        if threshold is not None:
            score = contrib.sum(axis=1)
            alarms = np.nan_to_num(score, nan=-np.inf) > threshold
            out["alarms"] = alarms
            out["anomalies"] = rank_segments(contrib, alarms, out["channels"])
        return out
