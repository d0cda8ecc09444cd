"""InterFusion (Li et al., KDD 2021): a hierarchical VAE with an inter-metric and a temporal embedding.

Generative model of a window x (T steps × D metrics), as in the paper for SMD/ASD:

* **inter-metric embedding** ``e ~ N(0, I)`` of shape (⌈T/8⌉, D): the window compressed along
  time. ``q(e | x)`` is five 1-D convolutions (kernel 5, three of stride 2) and ``h(e)`` five
  transposed convolutions back to (T, D); ``h`` is shared by the prior and the posterior below.
* **temporal embedding** ``z_t`` (3 dims per step): the prior ``p(z_t | z_{t-1}, h_t(e))`` and the
  posterior ``q(z_t | z_{t-1}, a_t)`` are recurrent Gaussians, where ``a_{1:T}`` is a backward GRU
  over ``h(e)`` followed by two dense layers; the posterior is refined by a RealNVP flow
  (invertible dense + affine coupling with sigmoid scales, 20 levels).
* ``p(x_t | z_t, e) = N(mu, sigma)`` from ``[dense(z_t), h_t(e)]`` through two dense layers.

Training is two-stage: the inter-metric VAE alone first (with its own 1×1-conv decoder
``p(x | e)``), then the whole model jointly on the ELBO (the inter-metric KL is analytic).

Scoring: the newest ``tail`` steps of each window (the last point for stride 1) are masked and
imputed by MCMC — starting from the observed values, ``mcmc_iters`` times: sample
``e, z ~ q(· | x̂)``, *sample* ``x ~ p(x | z, e)``, overwrite the masked values only — over
``mcmc_chains`` chains, whose imputations are averaged. The score of a step is the paper's
reconstruction probability of the observed point under ``q(· | x̂)``: the negative log-likelihood
averaged over ``score_samples`` draws, per metric, so it splits into the per-metric
contributions that interpretation ranks. Every draw of scoring comes from a generator seeded by
(seed, window start): a window's score does not depend on which batch it is scored in. The
test-time pass runs in :mod:`stages.nets.interfusion_scoring` (same draws, same arithmetic, a
CPU-friendly layout); :meth:`InterFusionNet.tail_nll_reference` is the plain one it is tested against.

Deviations from the paper, all for CPU cost and all knobs (see :class:`InterFusionConfig`): GRU,
dense and coupling widths (paper 500/500/100), MCMC chains (paper 10), score samples (paper 100),
and an epoch of 800 sampled windows in batches of 32 instead of every window in batches of 100.
Same as the reference code (zhhlee/InterFusion): logstd clipped to [-5, 2], the temporal
posterior reads x only through e, gradients clipped at norm 10.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from stages.core.device import limited_threads, scoring_threads
from stages.core.errors import InputError
from stages.core.windowset import WindowSet
from stages.nets.base import TrainConfig
from stages.nets.interfusion_scoring import TailScorer
from stages.nets.torch_detector import TorchDetector

log = logging.getLogger(__name__)
LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class InterFusionConfig:
    """Paper values (ASD) in comments; widths, chains and samples cut for a 2-core CPU."""

    z_dim: int = 3  # temporal embedding per step (paper: 3)
    inter_channels: int = 0  # channels of the inter-metric embedding and h(e); 0 = the number of metrics (paper)
    conv_kernel: int = 5  # (paper: 5)
    rnn_hidden: int = 32  # backward GRU of q(z) (paper: 500)
    dense_hidden: int = 32  # dense layers after the GRU of q(z), run on every step (paper: 500)
    decoder_hidden: int = 128  # dense layers of p(x|z,e); at test time run on the newest steps only (paper: 500)
    flow_layers: int = 20  # RealNVP levels on q(z) (paper: 20; 0 = none)
    flow_hidden: int = 32  # coupling network width (paper: 100)
    logstd_min: float = -5.0  # clip of every log-sigma (paper: [-5, 2])
    logstd_max: float = 2.0
    pretrain_epochs: int = 20  # stage 1, the inter-metric VAE alone (paper: 20)
    mcmc_iters: int = 10  # imputation iterations (paper: 10)
    mcmc_chains: int = 1  # chains averaged (paper: 10)
    score_samples: int = 8  # (e, z) draws averaged in the reconstruction probability (paper: 100)
    score_batch_size: int = 1024  # windows scored at once (large: the 100-step loops cost per batch, not per row)
    # rows (window x chain or sample) per pass of the net at test time: a pass's work buffers then stay in a
    # CPU's cache (measured on 2 cores: 256-2048 rows within ~10% of each other); raise it on a GPU
    score_block_rows: int = 512
    # torch intra-op threads on the CPU (0 = leave torch's setting); on a shared box a second thread
    # spin-waits (measured 10x slower under load), so one unless the cores are free
    cpu_threads: int = 1
    # both stages (paper: 20 + 20 epochs over all windows, batch 100, lr 1e-3); here an epoch is a fresh
    # subsample of 800 windows in batches of 32: 3x the optimiser steps per window seen, which the joint
    # model needs to converge within the epoch budget (batch 100 left omi-2 at AUC-PR 0.36 instead of 0.54)
    train: TrainConfig = TrainConfig(epochs=20, batch_size=32, lr=1e-3, patience=5, max_train_windows=800,
                                     amp=False, grad_clip=10.0)

    def validate(self) -> None:
        sizes = (self.z_dim, self.rnn_hidden, self.dense_hidden, self.decoder_hidden, self.flow_hidden,
                 self.conv_kernel, self.mcmc_chains, self.score_samples, self.score_batch_size, self.score_block_rows)
        if min(sizes) < 1 or min(self.inter_channels, self.flow_layers, self.mcmc_iters, self.pretrain_epochs,
                                 self.cpu_threads) < 0:
            raise InputError("params.yaml", "interfusion", "positive sizes (counts >= 0)", sizes)
        if self.conv_kernel % 2 == 0:
            raise InputError("params.yaml", "interfusion.conv_kernel", "an odd kernel size", self.conv_kernel)
        if not self.logstd_min < self.logstd_max:
            raise InputError("params.yaml", "interfusion.logstd_min", "less than logstd_max",
                             (self.logstd_min, self.logstd_max))


# ---------------------------------------------------------------- distributions and noise


def gaussian_loglik(x: torch.Tensor, mu: torch.Tensor, logstd: torch.Tensor) -> torch.Tensor:
    """Element-wise log N(x; mu, exp(logstd)^2)."""
    return -0.5 * (LOG_2PI + 2.0 * logstd + ((x - mu) * torch.exp(-logstd)) ** 2)


def gaussian_kl(mu_q: torch.Tensor, ls_q: torch.Tensor, mu_p: torch.Tensor, ls_p: torch.Tensor) -> torch.Tensor:
    """Element-wise KL(N(mu_q, e^{2 ls_q}) || N(mu_p, e^{2 ls_p})) — analytic, hence exactly >= 0."""
    return ls_p - ls_q + (torch.exp(2 * ls_q) + (mu_q - mu_p) ** 2) / (2 * torch.exp(2 * ls_p)) - 0.5


class NoiseTape:
    """Standard-normal draws for a batch of windows, one independent stream per window.

    ``take(shape)`` hands out the next ``prod(shape)`` draws of every window as (B, *shape); each
    window's stream comes from a generator seeded by its own key, so scoring a window alone or in
    any batch draws the same numbers. ``None`` keys mean plain ``torch.randn`` (training).
    """

    def __init__(self, keys: list[int] | None, per_window: int, device: torch.device):
        self.device = device
        self.buffer: torch.Tensor | None = None
        self.pos = 0
        if keys is not None:
            g = torch.Generator()
            buffer = torch.empty(len(keys), per_window)
            for i, k in enumerate(keys):
                g.manual_seed(int(k))
                torch.randn(per_window, generator=g, out=buffer[i])
            self.buffer = buffer.to(device)

    def take(self, rows: int, *shape: int) -> torch.Tensor:
        """(rows, *shape) draws; ``rows`` is a multiple k of the windows (k adjacent copies each)."""
        if self.buffer is None:
            return torch.randn(rows, *shape, device=self.device)
        n = rows // self.buffer.shape[0] * int(np.prod(shape))
        if self.pos + n > self.buffer.shape[1]:
            raise RuntimeError(f"noise tape exhausted: need {n} more, have {self.buffer.shape[1] - self.pos}")
        out = self.buffer[:, self.pos:self.pos + n]
        self.pos += n
        return out.reshape(rows, *shape)


def _repeat(t: torch.Tensor, n: int) -> torch.Tensor:
    """(B, ...) → (B·n, ...), the n copies of a window adjacent (rows b·n … b·n+n-1)."""
    return t.repeat_interleave(n, dim=0) if n > 1 else t


# ---------------------------------------------------------------- the network


def _encoder_lengths(T: int, n_down: int = 3) -> list[int]:
    out = [T]
    for _ in range(n_down):
        out.append(math.ceil(out[-1] / 2))
    return out


class InterMetricVAE(nn.Module):
    """q(e | x) by strided convolutions (T → ⌈T/8⌉), h(e) by transposed convolutions back to T."""

    def __init__(self, n_dims: int, window: int, cfg: InterFusionConfig):
        super().__init__()
        c, k = cfg.inter_channels or n_dims, cfg.conv_kernel
        self.cfg, self.channels = cfg, c
        lens = _encoder_lengths(window)  # e.g. 100, 50, 25, 13
        self.latent_len = lens[-1]
        enc, cin = [], n_dims
        for stride in (2, 1, 2, 1, 2):
            enc += [nn.Conv1d(cin, c, k, stride=stride, padding=k // 2), nn.ReLU()]
            cin = c
        self.encoder = nn.Sequential(*enc)
        self.q_out = nn.Conv1d(c, 2 * c, 1)
        dec, cur = [], lens[-1]
        for stride, target in ((2, lens[2]), (1, lens[2]), (2, lens[1]), (1, lens[1]), (2, lens[0])):
            pad = target - (2 * cur - 1) if stride == 2 else 0  # lengths back exactly to the encoder's
            dec += [nn.ConvTranspose1d(c, c, k, stride=stride, padding=k // 2, output_padding=pad), nn.ReLU()]
            cur = target
        self.deconv = nn.Sequential(*dec)
        self.stage1_out = nn.Conv1d(c, 2 * n_dims, 1)  # p(x | e) of the pre-training stage only

    def q(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, ls = self.q_out(self.encoder(x.transpose(1, 2))).chunk(2, dim=1)  # (B, c, L) each
        return mu, ls.clamp(self.cfg.logstd_min, self.cfg.logstd_max)

    def h(self, e: torch.Tensor) -> torch.Tensor:
        return self.deconv(e).transpose(1, 2)  # (B, T, c)

    def stage1_px(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, ls = self.stage1_out(h.transpose(1, 2)).transpose(1, 2).chunk(2, dim=-1)
        return mu, ls.clamp(self.cfg.logstd_min, self.cfg.logstd_max)


class CouplingLevel(nn.Module):
    """One RealNVP level: an invertible dense map, then an affine coupling with sigmoid scales."""

    def __init__(self, z_dim: int, hidden: int):
        super().__init__()
        self.weight = nn.Parameter(torch.linalg.qr(torch.randn(z_dim, z_dim))[0])
        self.n1 = max(z_dim // 2, 1) if z_dim > 1 else 0
        n2 = z_dim - self.n1
        self.net = nn.Sequential(nn.Linear(max(self.n1, 1), hidden), nn.ReLU(), nn.Linear(hidden, 2 * n2))
        nn.init.zeros_(self.net[-1].weight)  # starts as a pure (scaled) dense map
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y and the coupling's log|det| per row; the dense map's log|det| (the same for every row) is
        added once per flow by :meth:`InterFusionNet.apply_flow`."""
        y = z @ self.weight
        x1, x2 = y[..., :self.n1], y[..., self.n1:]
        shift, pre = self.net(x1 if self.n1 else torch.zeros_like(y[..., :1])).chunk(2, dim=-1)
        log_scale = F.logsigmoid(pre + 2.0)
        return torch.cat([x1, x2 * torch.exp(log_scale) + shift], dim=-1), log_scale.sum(-1)


class InterFusionNet(nn.Module):
    def __init__(self, n_dims: int, window: int, cfg: InterFusionConfig):
        super().__init__()
        self.cfg, self.n_dims, self.window = cfg, n_dims, window
        self.inter = InterMetricVAE(n_dims, window, cfg)
        c, hd, zd = self.inter.channels, cfg.dense_hidden, cfg.z_dim
        # q(z | e): backward GRU over h(e), two dense layers, recurrent Gaussian (+ flow)
        self.a_rnn = nn.GRU(c, cfg.rnn_hidden, batch_first=True)
        self.a_dense = nn.Sequential(nn.Linear(cfg.rnn_hidden, hd), nn.ReLU(), nn.Linear(hd, hd), nn.ReLU())
        self.qz_a = nn.Linear(hd, 2 * zd)
        self.qz_z = nn.Linear(zd, 2 * zd, bias=False)
        self.flow = nn.ModuleList(CouplingLevel(zd, cfg.flow_hidden) for _ in range(cfg.flow_layers))
        # p(z | e): recurrent Gaussian on h(e)
        self.pz = nn.Linear(c + zd, 2 * zd)
        # p(x | z, e)
        self.px_z = nn.Linear(zd, n_dims)
        dh = cfg.decoder_hidden
        self.px = nn.Sequential(nn.Linear(n_dims + c, dh), nn.ReLU(), nn.Linear(dh, dh), nn.ReLU(),
                                nn.Linear(dh, 2 * n_dims))

    def _clamp(self, ls: torch.Tensor) -> torch.Tensor:
        return ls.clamp(self.cfg.logstd_min, self.cfg.logstd_max)

    # -- pieces, x: (N, T, D) throughout
    def sample_e(self, x: torch.Tensor, noise: NoiseTape | None = None, copies: int = 1
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """e ~ q(e | x), ``copies`` independent draws per window (rows b·copies …), encoding x once."""
        mu, ls = self.inter.q(x)
        mu, ls = _repeat(mu, copies), _repeat(ls, copies)
        eps = noise.take(mu.shape[0], *mu.shape[1:]) if noise is not None else torch.randn_like(mu)
        return mu + torch.exp(ls) * eps, mu, ls

    def sample_z(self, h: torch.Tensor, noise: NoiseTape | None = None, eps: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Base samples of the recurrent posterior (N, T, z) and their log-density (N, T); the standard
        normal draws ``eps`` (N, T, z) are given, or taken from ``noise``, or fresh."""
        a = self.a_dense(self.a_rnn(h.flip(1))[0].flip(1))  # backward in time: a_t sees h_{t..T}
        pre = self.qz_a(a).transpose(0, 1)  # the a_t part of every step at once, (T, N, 2z)
        N, T, zd = h.shape[0], h.shape[1], self.cfg.z_dim
        if eps is None:
            eps = noise.take(N, T, zd) if noise is not None else torch.randn(N, T, zd, device=h.device)
        eps_t = eps.transpose(0, 1)
        w = self.qz_z.weight.t()
        lo, hi = self.cfg.logstd_min, self.cfg.logstd_max
        z_prev = torch.zeros(N, zd, device=h.device, dtype=h.dtype)
        zs, lss = [], []
        for t in range(T):  # sequential: z_t depends on the sampled z_{t-1}
            out = torch.addmm(pre[t], z_prev, w)
            ls = out[:, zd:].clamp(lo, hi)
            z_prev = torch.addcmul(out[:, :zd], torch.exp(ls), eps_t[t])
            zs.append(z_prev)
            lss.append(ls)
        log_q = -0.5 * (LOG_2PI + eps ** 2) - torch.stack(lss, 1)
        return torch.stack(zs, 1), log_q.sum(-1)

    def apply_flow(self, z0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z = flow(z0) and log|det dz/dz0| per row."""
        if not len(self.flow):
            return z0, torch.zeros(z0.shape[:-1], device=z0.device, dtype=z0.dtype)
        z, lds = z0, []
        for level in self.flow:
            z, ld = level(z)
            lds.append(ld)
        dense = torch.linalg.slogdet(torch.stack([level.weight for level in self.flow]))[1].sum()
        return z, torch.stack(lds).sum(0) + dense

    def prior_z_loglik(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """log p(z_t | z_{t-1}, h_t) (N, T), all steps at once (z is given)."""
        prev = torch.cat([torch.zeros_like(z[:, :1]), z[:, :-1]], dim=1)
        mu, ls = self.pz(torch.cat([h, prev], dim=-1)).chunk(2, dim=-1)
        return gaussian_loglik(z, mu, self._clamp(ls)).sum(-1)

    def p_x(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, ls = self.px(torch.cat([self.px_z(z), h], dim=-1)).chunk(2, dim=-1)
        return mu, self._clamp(ls)

    # -- training objectives (per window, (B,))
    def elbo_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Single-sample ELBO terms: reconstruction, KL of e (analytic), KL of z (sampled, flow included)."""
        e, mu_e, ls_e = self.sample_e(x)
        h = self.inter.h(e)
        z0, log_q0 = self.sample_z(h)
        z, log_det = self.apply_flow(z0)
        recon = gaussian_loglik(x, *self.p_x(z, h)).sum(dim=(1, 2))
        kl_e = gaussian_kl(mu_e, ls_e, torch.zeros_like(mu_e), torch.zeros_like(ls_e)).sum(dim=(1, 2))
        kl_z = (log_q0 - log_det - self.prior_z_loglik(z, h)).sum(dim=1)
        return {"recon": recon, "kl_e": kl_e, "kl_z": kl_z}

    def stage1_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """ELBO of the inter-metric VAE alone (e → x through its own decoder), to pre-train it."""
        e, mu_e, ls_e = self.sample_e(x)
        recon = gaussian_loglik(x, *self.inter.stage1_px(self.inter.h(e))).sum(dim=(1, 2))
        kl_e = gaussian_kl(mu_e, ls_e, torch.zeros_like(mu_e), torch.zeros_like(ls_e)).sum(dim=(1, 2))
        return {"recon": recon, "kl_e": kl_e}

    def stage1_parameters(self) -> list[nn.Parameter]:
        return list(self.inter.parameters())

    def joint_parameters(self) -> list[nn.Parameter]:
        skip = {id(p) for p in self.inter.stage1_out.parameters()}
        return [p for p in self.parameters() if id(p) not in skip]

    # -- test time
    def decode_tail(self, x: torch.Tensor, tail: int, noise: NoiseTape | None, copies: int = 1
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(e, z) ~ q(· | x), ``copies`` draws per window, and p(x | z, e) at the newest ``tail`` steps
        only: mean, logstd (N·copies, tail, D)."""
        e, _, _ = self.sample_e(x, noise, copies)
        h = self.inter.h(e)
        z0, _ = self.sample_z(h, noise)
        z, _ = self.apply_flow(z0[:, -tail:])
        return self.p_x(z, h[:, -tail:])

    def impute(self, x: torch.Tensor, tail: int, iters: int, chains: int = 1,
               noise: NoiseTape | None = None) -> torch.Tensor:
        """MCMC imputation of the newest ``tail`` steps: start from the observed values, then ``iters``
        times sample (e, z) ~ q(· | x̂) and x ~ p(x | z, e) and overwrite the masked steps only;
        ``chains`` chains averaged. Observed steps come back bit-identical."""
        B, T, D = x.shape
        xh = _repeat(x, chains)
        for _ in range(iters):
            mu, ls = self.decode_tail(xh, tail, noise)
            eps = noise.take(B * chains, tail, D) if noise is not None else torch.randn_like(mu)
            xh = torch.cat([xh[:, :T - tail], mu + torch.exp(ls) * eps], dim=1)
        if chains > 1:
            xh = xh.reshape(B, chains, T, D).mean(dim=1)
        return torch.cat([x[:, :T - tail], xh[:, T - tail:]], dim=1)

    def tail_nll(self, x: torch.Tensor, tail: int, iters: int, chains: int, samples: int,
                 noise: NoiseTape | None = None, block_rows: int | None = None) -> torch.Tensor:
        """Per-metric reconstruction NLL (B, tail, D) of the observed newest steps: −E_q[log p(x | z, e)]
        with q conditioned on the MCMC-imputed window, averaged over ``samples`` draws. Inference only:
        the fast layout of :class:`~stages.nets.interfusion_scoring.TailScorer`, equal to
        :meth:`tail_nll_reference` (same draws) up to float rounding."""
        noise = noise if noise is not None else NoiseTape(None, 0, x.device)
        return TailScorer(self, block_rows or self.cfg.score_block_rows).tail_nll(x, tail, iters, chains, samples,
                                                                                  noise)

    def tail_nll_reference(self, x: torch.Tensor, tail: int, iters: int, chains: int, samples: int,
                           noise: NoiseTape | None = None) -> torch.Tensor:
        """:meth:`tail_nll` the plain way: the modules of training, one score sample at a time (what the
        fast path is tested against; the draws are taken from ``noise`` in the same order)."""
        B, T, D = x.shape
        noise = noise if noise is not None else NoiseTape(None, 0, x.device)
        xh = self.impute(x, tail, iters, chains, noise)
        mu_e, ls_e = self.inter.q(xh)
        eps_e = noise.take(B * samples, *mu_e.shape[1:]).view(B, samples, *mu_e.shape[1:])
        eps_z = noise.take(B * samples, T, self.cfg.z_dim).view(B, samples, T, self.cfg.z_dim)
        nll = []
        for s in range(samples):
            h = self.inter.h(mu_e + torch.exp(ls_e) * eps_e[:, s])
            z0, _ = self.sample_z(h, eps=eps_z[:, s])
            z, _ = self.apply_flow(z0[:, -tail:])
            nll.append(-gaussian_loglik(x[:, T - tail:], *self.p_x(z, h[:, -tail:])))
        return torch.stack(nll, dim=1).mean(dim=1)

    @staticmethod
    def noise_per_window(cfg: InterFusionConfig, e_shape: tuple[int, int], window: int, tail: int, n_dims: int
                         ) -> int:
        """How many draws one window's scoring takes (what :class:`NoiseTape` must hold)."""
        per_pass = e_shape[0] * e_shape[1] + window * cfg.z_dim
        return (cfg.mcmc_iters * cfg.mcmc_chains * (per_pass + tail * n_dims)
                + cfg.score_samples * per_pass)


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

    def __init__(self, *args: Any, window: int | None = None, **kwargs: Any):
        self._window = window
        super().__init__(*args, **kwargs)
        self.threshold: float | None = None  # set by whoever chose it (label-free) to enable segment ranking
        self._stage = "joint"
        self._cache: tuple[tuple, np.ndarray] | None = None  # (windows key, contributions): score then explain

    def build_module(self) -> nn.Module:
        # the window fixes the conv/deconv lengths; unknown until fit() unless given
        return _Lazy() if self._window is None else InterFusionNet(max(self.schema.n_metric, 1), self._window,
                                                                    self.config)

    def _ensure_module(self, window: int) -> None:
        if isinstance(self.module, _Lazy) or self.module.window != window:
            if not isinstance(self.module, _Lazy):
                raise ValueError(f"{self.name}: built for window {self.module.window}, got windows of {window}")
            self._window = window
            torch.manual_seed(self.seed)
            self.module = InterFusionNet(max(self.schema.n_metric, 1), window, self.config).to(self.device)

    @staticmethod
    def _tail(ws: WindowSet) -> int:
        return max(1, min(ws.stride, ws.window - 1))

    def make_batch(self, ws: WindowSet, starts: np.ndarray) -> dict[str, torch.Tensor]:
        x = np.nan_to_num(ws.take(ws.metric, starts))  # an unfilled gap must not poison a batch
        return {"x": self._to(x)}

    def loss_terms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["x"]
        return self.module.stage1_terms(x) if self._stage == "inter_metric" else self.module.elbo_terms(x)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """−ELBO per window and metric-step (the base loop stops on a non-finite value, naming the epoch)."""
        t = self.loss_terms(batch)
        elbo = t["recon"] - t["kl_e"] - t.get("kl_z", 0.0)
        return -(elbo.mean()) / (batch["x"].shape[1] * batch["x"].shape[2])

    def parameters_to_train(self):
        params = self.module.stage1_parameters() if self._stage == "inter_metric" else self.module.joint_parameters()
        return [p for p in params if p.requires_grad]

    def _eval_loss(self, ws: WindowSet) -> float:
        """Validation loss with the same draws every epoch (seeded), so early stopping compares like with like."""
        state = torch.random.get_rng_state()
        torch.manual_seed(self.seed + 7)
        try:
            return super()._eval_loss(ws)
        finally:
            torch.random.set_rng_state(state)

    def fit(self, train: WindowSet, val: WindowSet, sources: dict[str, WindowSet] | None = None
            ) -> dict[str, list[float]]:
        """Two-stage training: the inter-metric VAE first, then the whole hierarchy jointly."""
        t0 = time.perf_counter()
        if train.schema.n_metric == 0:
            raise ValueError(f"{self.name}: dataset {train.schema.dataset!r} has no metric channel")
        self._ensure_module(train.window)
        self._cache = None
        history: dict[str, list[float]] = {}
        resuming = self.checkpoint_dir is not None and (self.checkpoint_dir / "last.pt").exists()
        with limited_threads(self.config.cpu_threads, self.device):
            if self.config.pretrain_epochs and not resuming:
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
        raise NotImplementedError("InterFusion scores through contributions()")

    def window_contributions(self, ws: WindowSet, starts: np.ndarray, scorer: TailScorer | None = None
                             ) -> np.ndarray:
        """(W, tail, D) per-metric NLL of the newest ``tail`` steps of the windows at ``starts``."""
        cfg, tail = self.config, self._tail(ws)
        net: InterFusionNet = self.module
        per_window = net.noise_per_window(cfg, (net.inter.channels, net.inter.latent_len), ws.window, tail,
                                          net.n_dims)
        origin = ws.origin or 0  # a stream scored piece by piece keys draws by absolute step
        keys = [self.seed * 1_000_003 + origin + int(s) for s in starts]
        net.eval()
        with torch.inference_mode():
            scorer = scorer or TailScorer(net, cfg.score_block_rows)
            noise = NoiseTape(keys, per_window, self.device)
            b = self.make_batch(ws, starts)
            return scorer.tail_nll(b["x"], tail, cfg.mcmc_iters, cfg.mcmc_chains, cfg.score_samples,
                                   noise).float().cpu().numpy()

    def contributions(self, ws: WindowSet) -> np.ndarray:
        """Per-step, per-metric score terms (T, D) (NaN where unscored); rows sum to :meth:`score`."""
        import hashlib

        digest = hashlib.blake2b(np.ascontiguousarray(ws.metric).tobytes(), digest_size=16)
        digest.update(np.ascontiguousarray(ws.starts).tobytes())
        key = (digest.hexdigest(), ws.metric.shape, ws.window, ws.stride)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1].copy()
        D = ws.metric.shape[1]
        if len(ws) == 0:
            return np.full((ws.n_steps, D), np.nan)
        self._ensure_module(ws.window)
        self.module.eval()
        tail, bs = self._tail(ws), self.config.score_batch_size
        rows = []
        with limited_threads(scoring_threads(self.config.cpu_threads), self.device), torch.inference_mode():
            scorer = TailScorer(self.module, self.config.score_block_rows)  # its work buffers serve every batch
            for i in tqdm(range(0, len(ws), bs), desc=f"{self.name} scoring {ws.name or ''}".rstrip(),
                          leave=False, disable=None):
                rows.append(self.window_contributions(ws, ws.starts[i:i + bs], scorer))
        per_window = np.concatenate(rows)  # (W, tail, D)
        full = np.zeros((len(ws), ws.window, D))
        full[:, ws.window - tail:] = per_window
        out = np.stack([ws.steps_from_windows(full[:, :, d]) for d in range(D)], axis=1)
        self._cache = (key, out)
        return out.copy()

    def score(self, windows: WindowSet) -> np.ndarray:
        return self.contributions(windows).sum(axis=1)  # NaN rows stay NaN

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

    # -- persistence: the window is part of the architecture
    def state(self) -> dict[str, torch.Tensor]:
        if isinstance(self.module, _Lazy):
            raise RuntimeError(f"{self.name}: nothing to save before fit()")
        return {**self.module.state_dict(), "_window": torch.tensor(self.module.window)}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        window = int(state.pop("_window"))
        self._window = None
        self.module = _Lazy()
        self._ensure_module(window)
        self.module.load_state_dict(state)


class _Lazy(nn.Module):
    """Placeholder until the window length (part of the architecture) is known."""

    window = None
