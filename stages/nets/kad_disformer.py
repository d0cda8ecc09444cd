"""KAD-Disformer: a pre-trained univariate KPI detector with disentangled attention projections.

Every attention projection is ``W_common + W_personal[kpi]``. Universal pre-training fits both
(all KPIs share personal slot 0) on many KPIs — every metric channel of the source datasets'
training spans; uTune then copies slot 0 to one personal slot per target KPI and fine-tunes
*only* the personal parts on the target's few-shot span, with a replay term on source windows
so a handful of target points cannot drag the personal parts into over-fitting.

Each univariate window becomes a token sequence of per-step features: the value (masked where
the model must reconstruct it), the mask flag, a denoised (causal moving-average) branch and
history values one or more dominant periods earlier (period found per KPI by FFT on its
training span). Training masks random steps plus the newest ones; at scoring only the newest
``stride`` steps are masked, so the score of a step is the squared error of reconstructing the
latest point from its context — what an online detector knows. A dataset's score aggregates
the per-KPI scores (``aggregate``: max | mean | topk_mean) after scaling each KPI's error by its
typical error on label-free validation windows.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from stages.core.device import autocast, limited_threads, scoring_threads
from stages.core.windowset import WindowSet
from stages.nets.base import TrainConfig
from stages.nets.torch_detector import TorchDetector

log = logging.getLogger(__name__)
# Scoring batches hold about this many (window, KPI) sequences. Every KPI of a window is its own
# sequence, so 512 windows x 70 KPIs made 36k sequences per pass, whose activations left the caches:
# measured on the default synth_* models (2 threads), 16 windows of 40-70 KPIs scored 2.5-2.7x faster
# than 512, with the same bits at every batch size tried (4 to 512 windows).
SCORE_SEQUENCES = 1024
SCORE_BATCH_CUDA = 512  # windows per scoring pass on a GPU (as before; not re-measured: no GPU here)


@dataclass(frozen=True)
class KADDisformerConfig:
    d_model: int = 32
    heads: int = 2
    layers: int = 2
    ff_dim: int = 64
    dropout: float = 0.1
    use_history: bool = True  # context from one/several dominant periods earlier
    history_periods: int = 1
    max_period: int = 0  # longest period searched, in steps (0: 8 × window)
    use_denoised: bool = True  # causal moving-average branch
    denoise_span: int = 5
    mask_ratio: float = 0.15  # random extra masked steps during training (the newest are always masked)
    pretrain_sources: list[str] = field(default_factory=lambda: ["*"])  # dataset names; "*" = all others
    pretrain_epochs: int = 3
    pretrain_samples: int = 2048  # (window, KPI) sequences drawn per pre-training epoch
    pretrain_batch: int = 256
    pretrain_lr: float = 1e-3
    utune_fraction: float = 1.0  # first fraction of the `train` split used by uTune (1.0 for the few-shot split)
    replay_weight: float = 0.5  # weight of the source-replay reconstruction term in uTune
    replay_batch: int = 128  # source sequences per uTune step
    aggregate: Literal["max", "mean", "topk_mean"] = "topk_mean"
    topk: int = 3
    normalise_channel_errors: bool = True
    cpu_threads: int = 1  # torch threads on the CPU while fitting/scoring (1: a `dvc queue -j 2` on 2 cores fits)
    train: TrainConfig = TrainConfig(epochs=4, batch_size=16, lr=3e-3, patience=2, max_train_windows=128)

    def validate(self) -> None:
        from stages.core.errors import InputError

        if self.d_model % self.heads:
            raise InputError("params.yaml", "kad_disformer.d_model", f"a multiple of heads={self.heads}",
                             self.d_model)
        if not 0 < self.utune_fraction <= 1:
            raise InputError("params.yaml", "kad_disformer.utune_fraction", "a fraction in (0, 1]",
                             self.utune_fraction)
        if not 0 <= self.mask_ratio < 1:
            raise InputError("params.yaml", "kad_disformer.mask_ratio", "a fraction in [0, 1)", self.mask_ratio)
        if self.cpu_threads < 0:
            raise InputError("params.yaml", "kad_disformer.cpu_threads", "0 (as set) or more threads", self.cpu_threads)
        if self.topk < 1 or self.history_periods < 1 or self.denoise_span < 1:
            raise InputError("params.yaml", "kad_disformer.topk/history_periods/denoise_span", "positive integers",
                             (self.topk, self.history_periods, self.denoise_span))


# ---------------------------------------------------------------- the network


class DisentangledLinear(nn.Module):
    """y = x W_c^T + b_c + x W_p[k]^T + b_p[k]: a common map plus a personal one per KPI ``k``."""

    def __init__(self, d_in: int, d_out: int, n_personal: int):
        super().__init__()
        self.common = nn.Linear(d_in, d_out)
        self.personal_weight = nn.Parameter(torch.zeros(n_personal, d_out, d_in))
        self.personal_bias = nn.Parameter(torch.zeros(n_personal, d_out))

    def forward(self, x: torch.Tensor, kid: torch.Tensor) -> torch.Tensor:
        n, k = x.shape[0], self.personal_weight.shape[0]
        if n % k == 0 and n and torch.equal(kid.view(-1, k)[0], torch.arange(k, device=kid.device)) \
                and bool((kid.view(-1, k) == kid[:k]).all()):
            # windows x every KPI in order (how make_batch lays a batch out): one weight per KPI, no gather
            b, length, d_in = n // k, x.shape[1], x.shape[2]
            xs = x.view(b, k, length, d_in).transpose(0, 1).reshape(k, b * length, d_in)
            personal = torch.baddbmm(self.personal_bias[:, None, :], xs, self.personal_weight.transpose(1, 2))
            personal = personal.view(k, b, length, -1).transpose(0, 1).reshape(n, length, -1)
            return self.common(x) + personal
        personal = torch.einsum("nli,noi->nlo", x, self.personal_weight[kid]) + self.personal_bias[kid][:, None]
        return self.common(x) + personal


class DisentangledAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, n_personal: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (DisentangledLinear(d_model, d_model, n_personal) for _ in range(4))
        self.dropout = dropout

    def forward(self, x: torch.Tensor, kid: torch.Tensor) -> torch.Tensor:
        n, length, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, length, self.heads, d // self.heads).transpose(1, 2)

        att = F.scaled_dot_product_attention(split(self.q(x, kid)), split(self.k(x, kid)), split(self.v(x, kid)),
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.o(att.transpose(1, 2).reshape(n, length, d), kid)


class DisentangledLayer(nn.Module):
    """Pre-norm transformer encoder layer whose attention is disentangled; the FFN is common."""

    def __init__(self, d_model: int, heads: int, ff_dim: int, n_personal: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = DisentangledAttention(d_model, heads, n_personal, dropout)
        self.ff = nn.Sequential(nn.Linear(d_model, ff_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_dim, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, kid: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), kid))
        return x + self.drop(self.ff(self.norm2(x)))


def sinusoidal_positions(length: int, dim: int, device: torch.device) -> torch.Tensor:
    """Fixed sine/cosine position codes: no parameters, so any window length works."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    out = torch.zeros(length, dim, device=device)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return out


class KADNet(nn.Module):
    """Per-step features (N, L, F) of N univariate windows + KPI ids (N,) → reconstruction (N, L)."""

    def __init__(self, n_features: int, n_personal: int, cfg: KADDisformerConfig):
        super().__init__()
        self.embed = nn.Linear(n_features, cfg.d_model)
        self.layers = nn.ModuleList(DisentangledLayer(cfg.d_model, cfg.heads, cfg.ff_dim, n_personal, cfg.dropout)
                                    for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, 1)

    def forward(self, feats: torch.Tensor, kid: torch.Tensor) -> torch.Tensor:
        h = self.embed(feats) + sinusoidal_positions(feats.shape[1], self.embed.out_features,
                                                     feats.device)
        for layer in self.layers:
            h = layer(h, kid)
        return self.head(self.norm(h)).squeeze(-1)

    def personal_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if ".personal_" in n]

    def common_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if ".personal_" not in n]

    def broadcast_personal(self, slot: int = 0) -> None:
        """Give every KPI the personal parameters of ``slot`` (the pre-trained starting point)."""
        with torch.no_grad():
            for _, p in self.personal_parameters():
                p.copy_(p[slot:slot + 1].expand_as(p))


# ---------------------------------------------------------------- input construction (numpy, vectorised)


def dominant_periods(series: np.ndarray, fallback: int, max_period: int, min_share: float = 0.1) -> np.ndarray:
    """Dominant period (steps) of each column of ``series`` (T, C) from its FFT power spectrum.

    A peak counts only when it holds ``min_share`` of the series' (non-constant) power and the span
    holds at least two cycles; otherwise the KPI has no clear period and ``fallback`` is used.
    """
    x = np.asarray(series, dtype=np.float64)
    T, C = x.shape
    out = np.full(C, fallback, dtype=np.int64)
    if T < 8:
        return out
    power = np.abs(np.fft.rfft(x - x.mean(axis=0), axis=0)) ** 2  # (T//2+1, C)
    k = np.arange(power.shape[0])
    with np.errstate(divide="ignore"):
        period = np.where(k > 0, T / np.maximum(k, 1), np.inf)
    valid = (k >= 2) & (period >= 2) & (period <= max_period)
    if not valid.any():
        return out
    pv = power[valid]
    best = pv.argmax(axis=0)
    strong = pv[best, np.arange(C)] >= min_share * np.maximum(power[1:].sum(axis=0), 1e-12)
    out[strong] = np.round(period[valid][best[strong]]).astype(np.int64)
    return out


@dataclass
class SequenceSource:
    """A (T, C) array of z-scored KPIs, its window starts and per-KPI periods: what sequences are cut from."""

    metric: np.ndarray
    starts: np.ndarray
    periods: np.ndarray


def build_features(src: SequenceSource, starts: np.ndarray, channels: np.ndarray, window: int, mask: np.ndarray,
                   cfg: KADDisformerConfig) -> tuple[np.ndarray, np.ndarray]:
    """(N,) window starts × channels + (N, L) mask → features (N, L, F) and targets (N, L)."""
    pos = starts[:, None] + np.arange(window)[None, :]
    target = np.nan_to_num(src.metric[pos, channels[:, None]].astype(np.float32))  # unfilled gaps → mean
    # forward-fill masked steps so the denoised branch never sees a masked value
    idx = np.where(mask, 0, np.arange(window)[None, :])
    idx = np.maximum.accumulate(idx, axis=1)
    filled = np.take_along_axis(target, idx, axis=1)
    feats = [np.where(mask, 0.0, target), mask.astype(np.float32)]
    if cfg.use_denoised:
        span = cfg.denoise_span
        c = np.cumsum(np.pad(filled, ((0, 0), (span, 0)), mode="edge"), axis=1)
        feats.append((c[:, span:] - c[:, :-span]) / span)
    if cfg.use_history:
        period = src.periods[channels][:, None]
        for k in range(1, cfg.history_periods + 1):
            hpos = pos - k * period
            ok = hpos >= 0
            feats.append(np.where(ok, np.nan_to_num(src.metric[np.maximum(hpos, 0), channels[:, None]]), 0.0))
    return np.stack(feats, axis=-1).astype(np.float32), target


def n_features(cfg: KADDisformerConfig) -> int:
    return 2 + int(cfg.use_denoised) + (cfg.history_periods if cfg.use_history else 0)


def make_mask(n: int, window: int, tail: int, ratio: float, rng: np.random.Generator | None) -> np.ndarray:
    """Newest ``tail`` steps always masked; others at random with ``ratio`` (never step 0)."""
    mask = np.zeros((n, window), dtype=bool)
    if rng is not None and ratio > 0:
        mask = rng.random((n, window)) < ratio
        mask[:, 0] = False
    mask[:, window - tail:] = True
    return mask


def aggregate_channels(errors: np.ndarray, how: str, topk: int) -> np.ndarray:
    """(..., C) per-KPI scores → (...,) dataset score."""
    if how == "max":
        return errors.max(axis=-1)
    if how == "mean":
        return errors.mean(axis=-1)
    k = min(topk, errors.shape[-1])
    return np.sort(errors, axis=-1)[..., -k:].mean(axis=-1)


# ---------------------------------------------------------------- the detector


class KADDisformer(TorchDetector):
    name = "kad_disformer"
    Config = KADDisformerConfig

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.window: int | None = None
        self.periods = np.full(self.schema.n_metric, 1, dtype=np.int64)
        self.error_scale = np.ones(self.schema.n_metric, dtype=np.float64)
        self.tail = 1
        self._rng = np.random.default_rng(self.seed)
        self._replay: list[SequenceSource] = []
        self._cache: tuple[tuple, np.ndarray] | None = None  # (windows key, channel scores)

    # -- module
    def build_module(self) -> nn.Module:
        return KADNet(n_features(self.config), max(self.schema.n_metric, 1), self.config)

    def source_datasets(self, target: str, available: list[str]) -> list[str]:
        wanted = self.config.pretrain_sources
        others = [d for d in available if d != target]
        return others if "*" in wanted else [d for d in wanted if d in others]

    def _source(self, ws: WindowSet, starts: np.ndarray | None = None) -> SequenceSource:
        max_period = self.config.max_period or 8 * ws.window
        train_part = ws.metric if starts is None else ws.metric[: int(starts[-1]) + ws.window]
        periods = dominant_periods(train_part, fallback=ws.window, max_period=max_period)
        return SequenceSource(ws.metric, ws.starts if starts is None else starts, periods)

    def _set_requires_grad(self, common: bool, personal: bool) -> None:
        for _, p in self.module.common_parameters():
            p.requires_grad_(common)
        for _, p in self.module.personal_parameters():
            p.requires_grad_(personal)

    def _forward_loss(self, feats: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                      kid: torch.Tensor) -> torch.Tensor:
        recon = self.module(feats, kid)
        err = (recon.float() - target) ** 2
        return (err * mask).sum() / mask.sum().clamp_min(1.0)

    def _sample_sequences(self, pool: list[SequenceSource], n: int, window: int, training: bool
                          ) -> dict[str, torch.Tensor]:
        """``n`` random (window, KPI) sequences from a pool of sources (vectorised per source)."""
        sizes = np.array([len(s.starts) * s.metric.shape[1] for s in pool], dtype=np.float64)
        which = self._rng.choice(len(pool), size=n, p=sizes / sizes.sum())
        feats, targets = [], []
        for i, src in enumerate(pool):
            m = int((which == i).sum())
            if not m:
                continue
            starts = src.starts[self._rng.integers(0, len(src.starts), m)]
            channels = self._rng.integers(0, src.metric.shape[1], m)
            mask = make_mask(m, window, self.tail, self.config.mask_ratio if training else 0.0, self._rng)
            f, t = build_features(src, starts, channels, window, mask, self.config)
            feats.append(f)
            targets.append((t, mask))
        f = np.concatenate(feats)
        t = np.concatenate([a for a, _ in targets])
        m = np.concatenate([b for _, b in targets])
        return {"feats": self._to(f), "target": self._to(t), "mask": self._to(m)}

    # -- phase 1: universal pre-training
    def pretrain(self, sources: dict[str, WindowSet], window: int) -> list[float]:
        """Fit common + personal slot 0 on sequences of every KPI of ``sources``; returns epoch losses."""
        cfg = self.config
        # a source cut in other windows (a real dump with short windows, synthetic sources with long
        # ones) is re-cut at the target's window length: KPI sequences do not depend on it
        resized = [ws if ws.window == window else dataclasses.replace(ws, window=window, starts=None)
                   for ws in sources.values()]
        pool = [self._source(ws) for ws in resized if len(ws)]
        if not pool:
            raise ValueError(f"{self.name}: no pre-training source with complete windows of length {window}")
        self.window = window
        self._replay = pool
        self._set_requires_grad(common=True, personal=True)
        self.module.train()
        opt = torch.optim.AdamW(self.parameters_to_train(), lr=cfg.pretrain_lr, weight_decay=cfg.train.weight_decay)
        losses = []
        n_kpis = sum(s.metric.shape[1] for s in pool)
        log.info("%s: pre-training on %d KPIs from %d sources", self.name, n_kpis, len(pool))
        for epoch in range(cfg.pretrain_epochs):
            total, n = 0.0, 0
            steps = max(1, math.ceil(cfg.pretrain_samples / cfg.pretrain_batch))
            for _ in tqdm(range(steps), desc=f"{self.name} pre-train {epoch + 1}/{cfg.pretrain_epochs}", leave=False,
                          disable=None):
                b = self._sample_sequences(pool, cfg.pretrain_batch, window, training=True)
                kid = torch.zeros(b["feats"].shape[0], dtype=torch.long, device=self.device)
                with autocast(self.device, cfg.train.amp):
                    loss = self._forward_loss(b["feats"], b["target"], b["mask"], kid)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.train.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.parameters_to_train(), cfg.train.grad_clip)
                opt.step()
                total += float(loss.detach())
                n += 1
            losses.append(total / n)
            log.info("%s pre-train epoch %d: loss %.5f", self.name, epoch + 1, losses[-1])
        return losses

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def restore_pretrained(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
        self._cache = None

    # -- phase 2: uTune
    def utune(self, train: WindowSet, val: WindowSet) -> dict[str, list[float]]:
        """Fine-tune only the personal parameters on the target's few-shot span (no labels)."""
        if self.window not in (None, train.window):
            raise ValueError(f"{self.name}: pre-trained on window {self.window}, target has {train.window}")
        self.window = train.window
        n_use = max(1, int(round(len(train) * self.config.utune_fraction)))
        fewshot = dataclasses.replace(train, starts=train.starts[:n_use])
        self.tail = max(1, min(train.stride, train.window - 1))
        self.periods = self._source(fewshot, fewshot.starts).periods
        self._cache = None
        self.module.broadcast_personal(0)
        self._set_requires_grad(common=False, personal=True)
        history = super().fit(fewshot, val)  # common parameters stay frozen from here on
        ref = val if len(val) else fewshot
        raw = self._channel_window_errors(ref)  # (W, C)
        self.error_scale = np.maximum(np.median(raw, axis=0), 1e-6) if self.config.normalise_channel_errors \
            else np.ones(raw.shape[1])
        return history

    def fit(self, train: WindowSet, val: WindowSet, sources: dict[str, WindowSet] | None = None
            ) -> dict[str, list[float]]:
        with limited_threads(self.cpu_threads, self.device):
            return self._pretrain_and_utune(train, val, sources)

    def _pretrain_and_utune(self, train: WindowSet, val: WindowSet, sources: dict[str, WindowSet] | None
                            ) -> dict[str, list[float]]:
        t0 = time.perf_counter()
        if len(train) == 0:
            raise ValueError(f"{self.name}: the training split has no complete window")
        if train.schema.n_metric == 0:
            raise ValueError(f"{self.name}: dataset {train.schema.dataset!r} has no metric channel")
        self.tail = max(1, min(train.stride, train.window - 1))
        resuming = self.checkpoint_dir is not None and (self.checkpoint_dir / "last.pt").exists()
        pre_losses: list[float] = []
        if not resuming:
            pool = {k: v for k, v in (sources or {}).items() if v.schema.n_metric and len(v)}
            if not pool:
                log.info("%s: no source dataset; pre-training on the target's own training KPIs", self.name)
                pool = {"target": train}
            pre_losses = self.pretrain(pool, train.window)
        else:
            self._replay = [self._source(ws) for ws in (sources or {}).values() if len(ws)]
        history = self.utune(train, val)
        history["pretrain_loss"] = pre_losses
        history["fit_seconds"] = [time.perf_counter() - t0]
        return history

    # -- TorchDetector hooks (used by the uTune loop and validation)
    def make_batch(self, ws: WindowSet, starts: np.ndarray) -> dict[str, torch.Tensor]:
        C, L = ws.metric.shape[1], ws.window
        src = SequenceSource(ws.metric, starts, self.periods)
        s = np.repeat(starts, C)
        ch = np.tile(np.arange(C), len(starts))
        training = self.module.training
        mask = make_mask(len(s), L, self.tail, self.config.mask_ratio if training else 0.0,
                         self._rng if training else None)
        feats, target = build_features(src, s, ch, L, mask, self.config)
        return {"feats": self._to(feats), "target": self._to(target), "mask": self._to(mask),
                "kid": torch.from_numpy(ch).to(self.device)}

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = self._forward_loss(batch["feats"], batch["target"], batch["mask"], batch["kid"])
        if self.module.training and self._replay and self.config.replay_weight > 0:
            rb = self._sample_sequences(self._replay, self.config.replay_batch, self.window, training=True)
            kid = torch.randint(0, self.schema.n_metric, (rb["feats"].shape[0],), device=self.device)
            loss = loss + self.config.replay_weight * self._forward_loss(rb["feats"], rb["target"], rb["mask"], kid)
        return loss

    def window_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        recon = self.module(batch["feats"], batch["kid"]).float()
        return (recon - batch["target"]) ** 2 * batch["mask"]

    # -- scoring
    def _channel_window_errors(self, ws: WindowSet, mean_over_tail: bool = True) -> np.ndarray:
        """Squared reconstruction error of the newest ``tail`` steps: (W, C, tail)."""
        self.module.eval()
        C, tc = ws.metric.shape[1], self.config.train
        rows = []
        per_pass = max(1, SCORE_SEQUENCES // max(1, C)) if self.device.type == "cpu" else SCORE_BATCH_CUDA
        with limited_threads(scoring_threads(self.cpu_threads), self.device), torch.inference_mode():
            for starts in ws.batches(per_pass):  # windows are independent: any split gives the same rows
                with autocast(self.device, tc.amp):
                    err = self.window_scores(self.make_batch(ws, starts)).float().cpu().numpy()
                # a copy of the newest steps, so the batch's whole (windows, KPIs, window) array is freed
                rows.append(err.reshape(len(starts), C, ws.window)[:, :, ws.window - self.tail:].copy())
        out = np.concatenate(rows) if rows else np.zeros((0, C, self.tail))
        return out.mean(axis=2) if mean_over_tail else out

    def channel_scores(self, ws: WindowSet) -> np.ndarray:
        """Per-step, per-KPI scaled scores (T, C); NaN where no window scored the step.

        Cached per window set, so ``explain`` right after ``score`` (the evaluate stage) is free.
        """
        # the split's own bytes in its own memory order: no copy of a column-major split
        metric = np.ascontiguousarray(ws.metric.T if ws.metric.flags.f_contiguous else ws.metric)
        digest = hashlib.blake2b(metric.reshape(-1).view(np.uint8), digest_size=16)
        digest.update(np.ascontiguousarray(ws.starts).tobytes())
        key = (digest.hexdigest(), ws.metric.shape, ws.metric.flags.f_contiguous, ws.window, ws.stride)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1].copy()
        err = self._channel_window_errors(ws, mean_over_tail=False) / self.error_scale[None, :, None]
        C = ws.metric.shape[1]
        out = np.full((ws.n_steps, C), np.nan)
        if len(err):
            # one KPI's (windows, window) scores at a time: the whole (windows, KPIs, window) float64
            # array was 1 GB at 650 KPIs on two weeks, ~20 GB at GAIA's full width (issue 11)
            full = np.zeros((len(err), ws.window))
            for c in range(C):
                full[:, ws.window - self.tail:] = err[:, c]
                out[:, c] = ws.steps_from_windows(full)
        self._cache = (key, out)
        return out.copy()

    def score(self, windows: WindowSet) -> np.ndarray:
        cs = self.channel_scores(windows)
        out = np.full(windows.n_steps, np.nan)
        ok = ~np.isnan(cs).any(axis=1)
        out[ok] = aggregate_channels(cs[ok], self.config.aggregate, self.config.topk)
        return out

    def explain(self, windows: WindowSet) -> dict[str, Any]:
        return {"channel_scores": self.channel_scores(windows), "channels": list(windows.schema.metric_channels)}

    # -- persistence: module + the per-KPI statistics uTune fixed
    def state(self) -> dict[str, torch.Tensor]:
        st = dict(self.module.state_dict())
        st["_periods"] = torch.from_numpy(self.periods.astype(np.int64))
        st["_error_scale"] = torch.from_numpy(self.error_scale.astype(np.float64))
        st["_meta"] = torch.tensor([self.window or 0, self.tail], dtype=torch.int64)
        return st

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        self.periods = state.pop("_periods").numpy().astype(np.int64)
        self.error_scale = state.pop("_error_scale").numpy().astype(np.float64)
        window, self.tail = (int(v) for v in state.pop("_meta").tolist())
        self.window = window or None
        self.module.load_state_dict(state)
        self._cache = None
