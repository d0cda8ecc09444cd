"""FuseGuard: few-shot multimodal anomaly detection (metric + trace + log) through an LLM.

Branches turn each modality window into tokens (metric: temporal tokens + sparse channel
attention; trace: GCN over the call graph; log: template semantics + frequencies); the tokens
are aligned with a language model (LoRA blocks, consistency with a frozen word-embedding path);
a quality-aware fusion weighs modalities per sample; the fused representation reconstructs
every modality's window and the reconstruction error per step is the anomaly score.
Every part can be switched off in params for ablation (see :class:`FuseGuardConfig`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stages.core.device import autocast, limited_threads, scoring_threads
from stages.core.errors import InputError
from stages.core.memory import require_memory
from stages.core.params import LLMParams
from stages.core.units import unit_names
from stages.core.windowset import FeatureSchema, WindowSet
from stages.nets.base import TrainConfig
from stages.nets.fuseguard_parts import (LLMAligner, LogBranch, MetricBranch, QualityFusion, TimeBasisDecoder,
                                         TraceBranch)
from stages.nets.torch_detector import TorchDetector

log = logging.getLogger(__name__)
MODALITIES = ("metric", "trace", "log")


@dataclass(frozen=True)
class FuseGuardConfig:
    """FuseGuard knobs; the defaults train on a few hundred windows in seconds on a CPU."""

    d_model: int = 64  # own width of every branch token (projected to the LLM width for alignment)
    patch_len: int = 8  # steps per temporal patch
    heads: int = 4  # channel-attention heads
    dropout: float = 0.1
    use_metrics: bool = True
    use_traces: bool = True
    use_logs: bool = True
    sparse_mask: bool = True  # False: dense channel attention
    gumbel_tau: float = 1.0
    freq_bins: int = 16  # pooled rFFT bins per channel for the mask distance
    freq_dim: int = 16  # learned frequency embedding width
    gcn_layers: int = 2
    use_llm: bool = True  # False: no language-model blocks at all (and no alignment)
    alignment: bool = True  # cross-attention to principal word embeddings + consistency losses
    align_heads: int = 4
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    fusion: Literal["quality", "mean", "concat"] = "quality"
    prototypes: int = 8  # per-modality prototypes of the energy score
    fusion_temperature: float = 1.0
    # how per-modality step errors are combined into the score: "uniform" (each normalised error
    # counts the same) or "fusion" (weighted by the quality weights). A faulty modality looks
    # low-quality too, so "fusion" silences the very modality that shows the fault (measured: AUC-PR
    # 0.18 vs 0.83 on the synthetic check in the report); it stays available for ablation.
    # Scoring (inference only; chosen on the _dev datasets by `python -m stages.tune`, README):
    # how per-modality errors (each divided by its training mean) become one step score:
    # uniform mean, fusion-weighted mean, or max (a fault seen by one modality is not averaged away)
    score_weighting: Literal["uniform", "fusion", "max"] = "max"
    # a modality's step score is the mean of its top fraction of unit errors (channel, edge
    # feature, log column), each divided by its own training error: a fault touches few units,
    # and a plain mean over fifty channels dilutes it below normal noise
    score_top_fraction: float = 0.05
    # a unit's training error is floored at this multiple of its modality's median unit error
    # before dividing by it: a unit that never moved in training (a log template never seen, an
    # edge without errors) must not turn its first blip into a score of 1e8
    unit_scale_floor: float = 1.0
    lambda_feat: float = 0.1
    lambda_out: float = 0.1
    lambda_energy: float = 0.1
    cpu_threads: int = 1  # torch threads on the CPU while fitting/scoring (1: a `dvc queue -j 2` on 2 cores fits)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=5, batch_size=32, lr=1e-3, patience=3))

    def validate(self) -> None:
        checks = [
            ("d_model", self.d_model >= 4 and self.d_model % self.heads == 0, f"a multiple of heads={self.heads}"),
            ("heads", self.heads >= 1, "at least 1"),
            ("patch_len", self.patch_len >= 1, "at least 1"),
            ("dropout", 0 <= self.dropout < 1, "a fraction in [0, 1)"),
            ("lora_dropout", 0 <= self.lora_dropout < 1, "a fraction in [0, 1)"),
            ("gumbel_tau", self.gumbel_tau > 0, "a positive temperature"),
            ("fusion_temperature", self.fusion_temperature > 0, "a positive temperature"),
            ("freq_bins", self.freq_bins >= 1, "at least 1"),
            ("freq_dim", self.freq_dim >= 1, "at least 1"),
            ("gcn_layers", self.gcn_layers >= 0, "0 or more"),
            ("lora_r", self.lora_r >= 1, "at least 1"),
            ("prototypes", self.prototypes >= 1, "at least 1"),
            ("score_top_fraction", 0 < self.score_top_fraction <= 1, "a fraction in (0, 1]"),
            ("unit_scale_floor", math.isfinite(self.unit_scale_floor) and self.unit_scale_floor >= 0, "0 or more"),
            ("cpu_threads", self.cpu_threads >= 0, "0 (as set) or more threads"),
            ("use_metrics", self.use_metrics or self.use_traces or self.use_logs, "at least one modality switched on"),
        ]
        for key, ok, expected in checks:
            if not ok:
                raise InputError("params.yaml", f"fuseguard.{key}", expected, getattr(self, key))
        for key in ("lambda_feat", "lambda_out", "lambda_energy"):
            if getattr(self, key) < 0:
                raise InputError("params.yaml", f"fuseguard.{key}", "a non-negative weight", getattr(self, key))


class FuseGuardNet(nn.Module):
    """The network; knows the schema's sizes, not the window length."""

    def __init__(self, cfg: FuseGuardConfig, schema: FeatureSchema, llm: LLMParams):
        super().__init__()
        d = cfg.d_model
        self.cfg = cfg
        self.modalities = active_modalities(cfg, schema)
        if not self.modalities:
            raise InputError(f"schema of {schema.dataset}", "fuseguard.use_metrics/use_traces/use_logs",
                             "at least one switched-on modality with data (C, E or L > 0)",
                             {"C": schema.n_metric, "E": schema.n_edges, "L": schema.n_log})
        self.type_embedding = nn.Parameter(torch.randn(len(MODALITIES), d) * 0.02)
        if "metric" in self.modalities:
            self.metric = MetricBranch(schema.n_metric, d, cfg.patch_len, cfg.heads, cfg.dropout, cfg.sparse_mask,
                                       cfg.freq_bins, cfg.freq_dim, cfg.gumbel_tau)
            self.metric_decoder = TimeBasisDecoder(d)
            # the LLM sees one token per metric entity (channels pooled), not one per channel: ~5x fewer tokens
            entities = sorted(set(schema.metric_entities))
            pool = np.zeros((len(entities), schema.n_metric), np.float32)
            pool[[entities.index(e) for e in schema.metric_entities], np.arange(schema.n_metric)] = 1.0
            self.register_buffer("entity_pool", torch.from_numpy(pool / pool.sum(1, keepdims=True)), persistent=False)
            self.register_buffer("channel_entity", torch.from_numpy(pool.argmax(0)), persistent=False)
        if "trace" in self.modalities:
            nodes = trace_nodes(schema)
            index = {s: i for i, s in enumerate(nodes)}
            self.register_buffer("edge_ends", torch.tensor([[index[a], index[b]] for a, b in schema.edges]),
                                 persistent=False)
            self.trace = TraceBranch(nodes, schema.edges, len(schema.edge_features), d, cfg.patch_len,
                                     cfg.gcn_layers, cfg.dropout)
            self.edge_unit = nn.Linear(2 * d, d)
            self.trace_decoder = TimeBasisDecoder(d, len(schema.edge_features))
        if "log" in self.modalities:
            emb = schema.template_embeddings
            if emb is None:
                log.warning("fuseguard: %s has no template embeddings; the log branch keeps only its "
                            "statistical part", schema.dataset)
            else:
                top = max(k for _, k in schema.log_columns)
                if emb.ndim != 2 or top >= len(emb):
                    raise InputError("template_embeddings.npy", "shape",
                                     f"(K, H) with K > {top} (largest template index in log_columns)", emb.shape)
            self.log_branch = LogBranch(schema.log_columns, emb, d, cfg.patch_len, cfg.dropout)
            service_index = {s: i for i, s in enumerate(self.log_branch.services)}
            self.register_buffer("column_service", torch.tensor([service_index[s] for s, _ in schema.log_columns]),
                                 persistent=False)
            self.log_unit = nn.Parameter(torch.randn(schema.n_log, d) * 0.02)
            self.log_decoder = TimeBasisDecoder(d)
        self.aligner = build_aligner(cfg, schema, llm) if cfg.use_llm else None
        n_tokens = {"metric": schema.n_metric, "trace": len(trace_nodes(schema)),
                    "log": len({s for s, _ in schema.log_columns}) + 1}
        self.fusion = QualityFusion([n_tokens[m] for m in self.modalities], d, cfg.prototypes, cfg.fusion_temperature,
                                    cfg.fusion)
        # calibrated on training windows after fit: each unit's mean squared error, and each
        # modality's mean step score, so no unit or modality dominates by scale
        units = {"metric": schema.n_metric, "trace": schema.n_edges * len(schema.edge_features), "log": schema.n_log}
        for m in self.modalities:
            self.register_buffer(f"unit_scale_{m}", torch.ones(units[m]))
        self.register_buffer("error_scale", torch.ones(len(self.modalities)))

    # -- forward pieces
    def encode(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(tokens, unnormalised features) of each active modality, each (B, n_m, d)."""
        out = {}
        if "metric" in self.modalities:
            out["metric"] = self.metric(batch["metric"])
        if "trace" in self.modalities:
            out["trace"] = self.trace(batch["trace"])
        if "log" in self.modalities:
            out["log"] = self.log_branch(batch["log"])
        return {m: v[0] for m, v in out.items()}, {m: v[1] for m, v in out.items()}

    def forward(self, batch: dict[str, torch.Tensor], consistency: bool = True) -> dict[str, Any]:
        tokens, raw = self.encode(batch)
        branch = [raw[m] for m in self.modalities]
        energies = self.fusion.energies(branch)
        weights = self.fusion.weights(energies)
        refined, feat, out = self.align(tokens, consistency)
        summaries = torch.stack([refined[m].mean(1) for m in self.modalities], dim=1)
        fused = self.fusion.fuse(summaries, weights)[:, None, :]  # (B, 1, d)
        window = next(iter(batch.values())).shape[1]
        recon = {}
        if "metric" in self.modalities:
            recon["metric"] = self.metric_decoder(refined["metric"] + fused, window)[..., 0]
        if "trace" in self.modalities:
            nodes = refined["trace"]
            ends = torch.cat([nodes[:, self.edge_ends[:, 0]], nodes[:, self.edge_ends[:, 1]]], dim=-1)
            recon["trace"] = self.trace_decoder(self.edge_unit(ends) + fused, window)
        if "log" in self.modalities:
            units = refined["log"][:, self.column_service] + self.log_unit.to(fused.dtype) + fused
            recon["log"] = self.log_decoder(units, window)[..., 0]
        energy_fit = self.fusion.energies(branch, detach=True).mean() if self.training else energies.new_zeros(())
        return {"recon": recon, "weights": weights, "energies": energies, "energy_fit": energy_fit,
                "feat": feat, "out": out}

    def align(self, tokens: dict[str, torch.Tensor], consistency: bool = True
              ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Refine all modalities' tokens jointly in the LLM (one sequence, so modalities attend to
        each other); returns refined tokens and the two consistency losses."""
        some = next(iter(tokens.values()))
        zero = some.new_zeros((), dtype=torch.float32)
        if self.aligner is None:
            return tokens, zero, zero
        llm_tokens = dict(tokens)
        if "metric" in tokens:
            llm_tokens["metric"] = torch.einsum("ec,bcd->bed", self.entity_pool.to(some.dtype), tokens["metric"])
        sizes = [llm_tokens[m].shape[1] for m in self.modalities]
        seq = torch.cat([llm_tokens[m] + self.type_embedding[MODALITIES.index(m)].to(some.dtype)
                         for m in self.modalities], dim=1)
        delta, feat, out = self.aligner(seq, consistency)
        deltas = dict(zip(self.modalities, torch.split(delta, sizes, dim=1)))
        if "metric" in deltas:
            deltas["metric"] = deltas["metric"][:, self.channel_entity]
        return {m: tokens[m] + deltas[m] for m in self.modalities}, feat, out

    def unit_errors(self, batch: dict[str, torch.Tensor], recon: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Squared reconstruction error of every unit at every step, (B, W, U) per modality."""
        return {m: (recon[m].float() - batch[m].float()).pow(2).flatten(2) for m in self.modalities}

    def normalised_unit_errors(self, batch: dict[str, torch.Tensor], recon: dict[str, torch.Tensor]
                               ) -> dict[str, torch.Tensor]:
        """Every unit's squared error over its (floored) training error, (B, W, U) per modality."""
        out = {}
        for m, sq in self.unit_errors(batch, recon).items():
            scale = getattr(self, f"unit_scale_{m}")
            floor = max(1e-8, self.cfg.unit_scale_floor * float(scale.median())) if scale.numel() else 1e-8
            out[m] = sq / scale.clamp_min(floor)
        return out

    def step_errors(self, batch: dict[str, torch.Tensor], recon: dict[str, torch.Tensor],
                    units: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """(B, M, W) per-step error of each modality: mean of its top units' normalised errors
        (``units``: :meth:`normalised_unit_errors` when the caller has them already)."""
        errs = []
        for m, z in (units if units is not None else self.normalised_unit_errors(batch, recon)).items():
            k = max(1, int(np.ceil(self.cfg.score_top_fraction * z.shape[-1])))
            errs.append(z.topk(k, dim=-1).values.mean(-1))
        return torch.stack(errs, dim=1)


def unit_steps(ws: WindowSet, tails: np.ndarray) -> np.ndarray:
    """(steps, U) from each window's tail rows (N, tail, U), as :meth:`WindowSet.steps_from_windows`
    maps a window's steps: NaN before the first tail, the last row repeated after the last window."""
    out = np.full((ws.n_steps, tails.shape[-1]), np.nan, np.float32)
    tail = tails.shape[1]
    for s, rows in zip(ws.starts.tolist(), tails):
        out[s + ws.window - tail:s + ws.window] = rows
    if len(ws.starts):
        out[int(ws.starts[-1]) + ws.window:] = tails[-1, -1]
    return out


def channel_pair_bytes(cfg: FuseGuardConfig, n_channels: int, windows: int, training: bool) -> int:
    """A lower bound of the float32 bytes the metric branch holds at once for one batch of ``windows``.

    It compares every pair of metric channels, so its memory grows with the square of their number:
    the sparse mask's spectral gap is (B, C, C, freq_dim) and the channel attention's weights are
    (B, heads, C, C). Training keeps the gap and its square, and the attention's scores, weights and
    masked weights, for the backward pass. Scoring takes the gap in blocks of rows
    (``fuseguard_parts.GAP_BLOCK_BYTES``) and the attention's steps in place, so it holds the
    attention's scores and weights plus the channel mask."""
    if not cfg.use_metrics or n_channels < 2:
        return 0
    if training:
        per_pair = 2 * cfg.freq_dim * cfg.sparse_mask + 3 * cfg.heads
    else:
        per_pair = 2 * cfg.heads + cfg.sparse_mask
    return 4 * windows * n_channels * n_channels * per_pair


def active_modalities(cfg: FuseGuardConfig, schema: FeatureSchema) -> list[str]:
    on = {"metric": cfg.use_metrics and schema.n_metric > 0, "trace": cfg.use_traces and schema.n_edges > 0,
          "log": cfg.use_logs and schema.n_log > 0}
    return [m for m in MODALITIES if on[m]]


def trace_nodes(schema: FeatureSchema) -> list[str]:
    """Services on the call graph, in the schema's service order (then any extra endpoint)."""
    ends = {s for e in schema.edges for s in e}
    known = [s for s in schema.services if s in ends]
    return known + sorted(ends - set(known))


def build_aligner(cfg: FuseGuardConfig, schema: FeatureSchema, llm: LLMParams) -> LLMAligner:
    from stages.core.llm import load_backbone, transformer_blocks

    _, backbone = load_backbone(llm.backbone)
    blocks = transformer_blocks(backbone)
    if not 1 <= llm.layers <= len(blocks):
        raise InputError("params.yaml", "llm.layers", f"an integer in [1, {len(blocks)}] for {llm.backbone}",
                         llm.layers)
    return LLMAligner(cfg.d_model, backbone, blocks[:llm.layers], schema.word_pca, cfg.alignment, cfg.align_heads,
                      cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, llm.pca_components)


class Collected(NamedTuple):
    """One inference pass over a WindowSet (see :meth:`FuseGuard._collect`)."""

    errs: np.ndarray  # (N, M, W) raw per-modality step errors
    weights: np.ndarray  # (N, M) fusion weights
    energies: np.ndarray  # (N, M)
    density: float  # mean evaluation-time channel-mask density
    unit_tails: np.ndarray  # (N, tail, U) float32 normalised unit errors of the steps each window scores


class FuseGuard(TorchDetector):
    """The flagship detector (DESIGN §6); see the module docstring."""

    name = "fuseguard"
    Config = FuseGuardConfig
    # the full-size model's scores move by ~1e-6 between 1 and 2 threads (MiniLM-sized reductions); the
    # tiny test nets do not show it (README, "Repeatability"); Detector's default says so
    # evaluate.cpu_score_dtype=bfloat16 applies (a class without this attribute scores in float32):
    # its scoring pass casts every output it keeps to float32 (tests/test_fuseguard.py)
    cpu_bf16_scoring = True

    _last_collect: tuple | None = None  # (windows, their starts, _collect result): see _collect

    def build_module(self) -> FuseGuardNet:
        return FuseGuardNet(self.config, self.schema, self.llm)

    @property
    def modalities(self) -> list[str]:
        return self.module.modalities

    # -- data
    def _check(self, ws: WindowSet) -> None:
        expected = {"metric": (ws.metric, 1, self.schema.n_metric), "trace": (ws.trace, 1, self.schema.n_edges),
                    "log": (ws.log, 1, self.schema.n_log)}
        for m in self.modalities:
            arr, axis, n = expected[m]
            if arr.ndim < 2 or arr.shape[axis] != n or arr.shape[0] != ws.n_steps:
                raise InputError(f"windows split {ws.name or '?'}", m,
                                 f"{ws.n_steps} steps × {n} columns as in the detector's schema", arr.shape)

    def make_batch(self, ws: WindowSet, starts: np.ndarray) -> dict[str, torch.Tensor]:
        self._check(ws)
        arrays = {"metric": ws.metric, "trace": ws.trace, "log": ws.log}
        batch = {}
        for m in self.modalities:
            x = ws.take(arrays[m], starts)
            if not np.isfinite(x).all():  # gaps the windows stage left: the training mean (0 after z-scoring)
                log.debug("fuseguard: non-finite %s values in split %s set to 0", m, ws.name)
                x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
            batch[m] = self._to(x)
        return batch

    # -- objective and scores
    def loss_terms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The weighted parts of the loss by name, so a NaN stop says which one broke."""
        out = self.module(batch)
        cfg = self.config
        terms = {f"recon_{m}": F.mse_loss(out["recon"][m].float(), batch[m].float()) for m in self.modalities}
        terms.update(feat=cfg.lambda_feat * out["feat"], out=cfg.lambda_out * out["out"],
                     energy=cfg.lambda_energy * out["energy_fit"])
        return terms

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        t = self.loss_terms(batch)
        recon = torch.stack([t[f"recon_{m}"] for m in self.modalities]).sum()
        return recon + t["feat"] + t["out"] + t["energy"]

    def _scored(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-modality normalised step errors (B, M, W), fusion weights (B, M))."""
        out = self.module(batch, consistency=False)
        errs = self.module.step_errors(batch, out["recon"]) / self.module.error_scale[None, :, None]
        return errs, out["weights"].float()

    def window_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        errs, weights = self._scored(batch)
        return self._combine(errs, weights)

    def _combine(self, errs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """(B, M, W) normalised modality errors + (B, M) fusion weights → (B, W) step scores."""
        if self.config.score_weighting == "max":
            return errs.max(dim=1).values
        if self.config.fusion != "quality" or self.config.score_weighting == "uniform":
            weights = torch.full_like(weights, 1.0 / weights.shape[1])
        return (weights[:, :, None] * errs).sum(1)

    def _inference_weights(self, merged: bool) -> None:
        """Fold LoRA into the frozen blocks for scoring (one matmul per projection instead of three;
        measured ~15% faster scoring) and unfold it before training; a no-op when already so."""
        aligner = self.module.aligner
        if aligner is None:
            return
        layers = [m for m in aligner.peft.modules() if hasattr(m, "merged") and hasattr(m, "unmerge")]
        if merged and not any(m.merged for m in layers):
            aligner.peft.merge_adapter()
        elif not merged and any(m.merged for m in layers):
            aligner.peft.unmerge_adapter()

    def _require_pair_memory(self, training: bool) -> None:
        """Refuses, before the first batch, a metric branch whose channel pairs cannot fit: at GAIA's
        full width (6,500 series) one scoring batch of 128 windows needs ~190 GB, which would
        otherwise end in a kernel kill (or a CUDA out-of-memory error) part way through."""
        tc = self.config.train
        windows = tc.batch_size if training else max(tc.batch_size, tc.score_batch_size)
        need = channel_pair_bytes(self.config, self.schema.n_metric, windows, training)
        if not need:
            return
        have = torch.cuda.mem_get_info(self.device)[0] if self.device.type == "cuda" else None
        require_memory(need, f"FuseGuard's channel pairs ({self.schema.n_metric:,} metric channels, "
                             f"{windows} windows per {'training' if training else 'scoring'} batch)",
                       "fuseguard.train.batch_size / fuseguard.train.score_batch_size / "
                       f"datasets.{self.schema.dataset}.metrics.include / exclude",
                       "smaller batches, or fewer metric channels: the memory grows with their square",
                       have=have, where="GPU memory" if have is not None else "memory")

    def _inference_passes(self, ws: WindowSet):
        """(starts, batch, forward output) of every scoring batch of ``ws``: eval mode, LoRA folded in,
        the configured threads, no autograd — shared by scoring, explanation and calibration."""
        self._require_pair_memory(training=False)
        self.module.eval()
        self._inference_weights(True)
        tc = self.config.train
        with limited_threads(scoring_threads(self.cpu_threads), self.device), torch.inference_mode():
            for starts in ws.batches(max(tc.batch_size, tc.score_batch_size)):
                batch = self.make_batch(ws, starts)
                with autocast(self.device, tc.amp):
                    out = self.module(batch, consistency=False)
                yield starts, batch, out

    def _collect(self, ws: WindowSet) -> Collected:
        """One pass over ``ws``; the last result is kept, so :meth:`score` and :meth:`explain` of the
        same windows cost one pass. Unit errors are kept only for the steps a window scores (its last
        ``stride``), so they cost one row of U floats per grid step."""
        last = self._last_collect
        if last is not None and last[0] is ws and last[1] is ws.starts:  # same objects (arrays are never edited in place)
            return last[2]
        errs, weights, energies, density, tails = [], [], [], [], []
        tail = min(ws.stride, ws.window)
        for _, batch, out in self._inference_passes(ws):
            with autocast(self.device, self.config.train.amp):
                units = self.module.normalised_unit_errors(batch, out["recon"])
                errs.append(self.module.step_errors(batch, out["recon"], units).float().cpu().numpy())
            tails.append(torch.cat([units[m][:, -tail:].float() for m in self.modalities], dim=-1).cpu().numpy())
            weights.append(out["weights"].float().cpu().numpy())
            energies.append(out["energies"].float().cpu().numpy())
            mask = getattr(getattr(self.module, "metric", None), "last_mask", None)
            if mask is not None:
                density.append(float(mask.float().mean()))
        m = len(self.modalities)
        if not errs:
            result = Collected(np.zeros((0, m, ws.window)), np.zeros((0, m)), np.zeros((0, m)), float("nan"),
                               np.zeros((0, tail, len(self.unit_names())), np.float32))
        else:
            result = Collected(np.concatenate(errs), np.concatenate(weights), np.concatenate(energies),
                               float(np.mean(density)) if density else float("nan"), np.concatenate(tails))
        self._last_collect = (ws, ws.starts, result)
        return result

    def unit_names(self) -> list[str]:
        """Names of the active modalities' units, in the order of :class:`Collected`'s unit axis."""
        names, modality = unit_names(self.schema)
        return [n for n, m in zip(names, modality.tolist()) if m in self.modalities]

    def score(self, windows: WindowSet) -> np.ndarray:
        errs, weights = self._collect(windows)[:2]
        if not len(errs):
            return np.full(windows.n_steps, np.nan)
        scale = self.module.error_scale.detach().cpu().numpy()[None, :, None]
        scores = self._combine(torch.from_numpy(errs / scale), torch.from_numpy(weights)).numpy()
        return windows.steps_from_windows(scores)

    def fit(self, train: WindowSet, val: WindowSet, sources: dict[str, WindowSet] | None = None
            ) -> dict[str, list[float]]:
        self._require_pair_memory(training=True)
        self._require_pair_memory(training=False)  # the calibration after training scores: fail before, not after
        self._inference_weights(False)
        self._last_collect = None
        history = super().fit(train, val, sources)
        self._calibrate_units(train)
        self._last_collect = None  # the calibration changed the scores
        errs, weights, _, density = self._collect(train)[:4]
        scale = np.maximum(errs.mean(axis=(0, 2)), 1e-8)
        self.module.error_scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
        mean_w = weights.mean(0)
        log.info("fuseguard: mean fusion weights on train %s; error scales %s; channel mask density %.3f",
                 {m: round(float(w), 3) for m, w in zip(self.modalities, mean_w)},
                 {m: round(float(s), 5) for m, s in zip(self.modalities, scale)}, density)
        for m, w in zip(self.modalities, mean_w):
            history[f"fusion_weight_{m}"] = [float(w)]
        return history

    def _calibrate_units(self, train: WindowSet) -> None:
        """Training-window statistics the scores need (never test data): energy standardisation
        first (it changes the fusion, hence the reconstructions), then per-unit error scales."""
        self._last_collect = None
        energies = self._collect(train).energies
        self._last_collect = None  # energy statistics change the fusion, hence every later pass
        self.module.fusion.set_energy_stats(torch.as_tensor(energies, device=self.device))
        sums = {m: 0.0 for m in self.modalities}
        count = 0
        for starts, batch, out in self._inference_passes(train):
            for m, sq in self.module.unit_errors(batch, out["recon"]).items():
                sums[m] = sums[m] + sq.sum((0, 1))
            count += len(starts) * train.window
        for m in self.modalities:
            getattr(self.module, f"unit_scale_{m}").copy_(sums[m] / max(count, 1))

    def explain(self, windows: WindowSet) -> dict[str, Any]:
        """Per-step fusion weight and normalised reconstruction error of each modality and of each unit
        (``unit_scores`` (steps, U) float32 named by ``units``, on the score's scale: a modality's
        score is the mean of its top units' scores), plus the mean density of the evaluation-time
        channel mask. After :meth:`score` of the same windows it runs no second forward pass."""
        errs, weights, _, density, tails = self._collect(windows)
        scale = self.module.error_scale.cpu().numpy()
        out: dict[str, Any] = {"fusion_weights": {}, "modality_scores": {}, "mask_density": density}
        for i, m in enumerate(self.modalities):
            if len(weights):
                out["fusion_weights"][m] = windows.steps_from_windows(weights[:, i])
                out["modality_scores"][m] = windows.steps_from_windows(errs[:, i] / scale[i])
            else:
                out["fusion_weights"][m] = np.full(windows.n_steps, np.nan)
                out["modality_scores"][m] = np.full(windows.n_steps, np.nan)
        sizes = [getattr(self.module, f"unit_scale_{m}").numel() for m in self.modalities]
        unit_scale = np.repeat(scale, sizes).astype(np.float32)
        out["unit_scores"] = unit_steps(windows, tails) / unit_scale
        out["units"] = self.unit_names()
        return out

    # -- persistence: the frozen backbone blocks are reloaded from the backbone, not saved
    def _frozen_keys(self) -> set[str]:
        return {k for k, p in self.module.named_parameters() if k.startswith("aligner.peft.") and not p.requires_grad}

    def state(self) -> dict[str, torch.Tensor]:
        frozen = self._frozen_keys()
        return {k: v for k, v in self.module.state_dict().items() if k not in frozen}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self._inference_weights(False)
        self._last_collect = None
        result = self.module.load_state_dict(state, strict=False)
        missing = set(result.missing_keys) - self._frozen_keys()
        if missing or result.unexpected_keys:
            key = sorted(missing or result.unexpected_keys)[0]
            raise InputError("model.safetensors", key, "the tensors of a FuseGuard with this config and schema",
                             "missing" if missing else "unexpected")
