"""MetaLog: cross-system log anomaly detection by meta-learning over a source and a target system.

Templates of every system are embedded in one word-vector space (TF-IDF weighted word vectors,
IDF fitted on training templates only), and kept in ONE vocabulary keyed by template text — so
the same template in two systems is one row, and no system's ids are shifted by a hard-coded
offset. A bidirectional GRU with attention (a learned context vector guides which events
matter) maps a template sequence to an anomaly probability.

Training modes (``metalog.mode``):

* ``meta`` with a source system: first-order MAML — an inner SGD step on a source batch gives
  fast weights θ'; the outer update minimises ``L_src(θ) + β·L_tgt(θ')`` (the target batch holds
  the few labelled target anomalies and known normals). Without a source (source = target) it
  falls back to plain supervised training on the target's labelled training windows.
* ``zero_shot``: trained on the source system only; no target label is read.

The operating threshold is the classifier's own 0.5 in the replay; the pipeline's evaluation
chooses its threshold from unlabelled validation scores. Validation labels are never read:
training runs a fixed number of epochs (no label-based early stopping).
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from stages.core.device import limited_threads, pick_device, scoring_threads, seed_everything
from stages.core.errors import InputError
from stages.core.io import dumps_json
from stages.core.params import LLMParams
from stages.core.windowset import FeatureSchema, WindowSet
from stages.features.log_windows import LogSequences, from_windowset, require_logs, steps_from_units
from stages.features.word_vectors import Idf, fit_idf, load_word_vectors, template_embeddings
from stages.nets.base import Detector, TrainConfig

log = logging.getLogger(__name__)
PAD_ID, EMPTY_ID, RESERVED = 0, 1, 2  # vocabulary rows: padding, "window without any log line", templates
MIN_STEPS = 10  # optimiser steps per epoch on tiny few-shot sets


@dataclass(frozen=True)
class MetaLogConfig:
    source: str | None = None  # source system; None = the first of datasets.<target>.sources; ignored when equal to the target
    mode: Literal["meta", "zero_shot"] = "meta"
    word_vectors: str = "backbone"  # 'backbone' (LLM input embeddings, offline) or a GloVe text file
    per_service: bool = False  # one sequence per (window, service); a window scores its worst service
    max_len: int = 64  # most recent events kept per sequence
    hidden: int = 64  # GRU units per direction
    attention: int = 32  # size of the attention projection / context vector
    dropout: float = 0.1
    inner_lr: float = 0.05  # α of the inner (meta-train) SGD step
    meta_weight: float = 1.0  # β: weight of the target (meta-test) loss
    anomaly_share: float = 0.3  # share of anomalous sequences in each sampled batch
    labelled_anomaly_percent: float = 100.0  # of the target's training anomalies (at least one) kept labelled
    cpu_threads: int = 1  # torch threads on the CPU while fitting/scoring (small RNNs: 1 is fastest); 0 = as is
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=6, batch_size=32, lr=2e-3,
                                                                  max_train_windows=2048))

    def validate(self) -> None:
        if not 0 < self.labelled_anomaly_percent <= 100:
            raise InputError("params.yaml", "metalog.labelled_anomaly_percent", "a percentage in (0, 100]",
                             self.labelled_anomaly_percent)
        if not 0 < self.anomaly_share < 1:
            raise InputError("params.yaml", "metalog.anomaly_share", "a fraction in (0, 1)", self.anomaly_share)
        if self.max_len < 1 or self.hidden < 1 or self.attention < 1:
            raise InputError("params.yaml", "metalog", "positive max_len, hidden and attention",
                             (self.max_len, self.hidden, self.attention))


class Vocabulary:
    """One template vocabulary for all systems, keyed by template text (rows after the reserved ones)."""

    def __init__(self, templates: list[str] | None = None):
        self.templates: list[str] = []
        self._index: dict[str, int] = {}
        self.add(templates or [])

    def add(self, templates: list[str]) -> np.ndarray:
        """Vocabulary id of each text (new texts appended); the map from a system's local index."""
        ids = np.empty(len(templates), np.int64)
        for i, text in enumerate(templates):
            vid = self._index.get(text)
            if vid is None:
                vid = self._index[text] = RESERVED + len(self.templates)
                self.templates.append(text)
            ids[i] = vid
        return ids

    def __len__(self) -> int:
        return RESERVED + len(self.templates)


def to_vocab(seqs: LogSequences, local_to_vocab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local template ids → vocabulary ids; an empty unit becomes the single EMPTY token."""
    lengths = seqs.lengths.copy()
    valid = (seqs.ids >= 0) & (np.arange(seqs.ids.shape[1])[None, :] < lengths[:, None])
    ids = np.where(valid, local_to_vocab[np.maximum(seqs.ids, 0)], PAD_ID)
    empty = lengths == 0
    ids[empty, 0] = EMPTY_ID
    lengths[empty] = 1
    return ids, lengths


def reversed_within(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) index reversing each row's first ``lengths`` steps in place; padding stays where it is."""
    t = torch.arange(width, device=lengths.device)[None, :]
    n = lengths.to(t.device)[:, None]
    return torch.where(t < n, n - 1 - t, t)


def bigru(gru: nn.GRU, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Outputs (B, L, 2H) of a one-layer bidirectional ``gru`` at the valid steps of a padded batch.

    The same parameters and equations as ``nn.GRU`` over packed sequences; steps at or past a row's
    length hold values no valid step depends on (the caller masks them). Why not ``nn.GRU``: on the
    CPU its packed path steps each direction separately through small kernels, and autograd walks
    them back one by one — most of MetaLog's training time. Here the input projections of every step
    and both directions are one product, the two directions step together (one batched product per
    step), and the reverse direction reads each row reversed within its own length.
    """
    B, L, _ = x.shape
    H = gru.hidden_size
    w_ih = torch.cat([gru.weight_ih_l0, gru.weight_ih_l0_reverse])  # (6H, D)
    b_ih = torch.cat([gru.bias_ih_l0, gru.bias_ih_l0_reverse])
    gi = nn.functional.linear(x, w_ih, b_ih)  # (B, L, 6H)
    rev = reversed_within(lengths, L)
    gi_rev = gi[..., 3 * H:].gather(1, rev[:, :, None].expand(B, L, 3 * H))
    gi = torch.stack([gi[..., :3 * H], gi_rev]).permute(2, 0, 1, 3)  # (L, 2, B, 3H)
    # unbind/split (not indexing): their backward assembles one gradient, where each slice's
    # backward would zero-fill a full-size tensor per step
    gi_rz, gi_n = (g.contiguous().unbind(0) for g in gi.split([2 * H, H], -1))
    w_hh = torch.stack([gru.weight_hh_l0, gru.weight_hh_l0_reverse]).transpose(1, 2)  # (2, H, 3H)
    b_hh = torch.stack([gru.bias_hh_l0, gru.bias_hh_l0_reverse])[:, None, :]  # (2, 1, 3H)
    w_rz, w_n = w_hh.split([2 * H, H], -1)
    b_rz, b_n = b_hh.split([2 * H, H], -1)
    h = x.new_zeros(2, B, H)
    steps = []
    for t in range(L):
        r, z = torch.sigmoid(gi_rz[t] + torch.baddbmm(b_rz, h, w_rz)).split([H, H], -1)
        n = torch.tanh(gi_n[t] + r * torch.baddbmm(b_n, h, w_n))
        h = n + z * (h - n)  # (1 - z)·n + z·h
        steps.append(h)
    out = torch.stack(steps, 2)  # (2, B, L, H)
    back = out[1].gather(1, rev[:, :, None].expand(B, L, H))
    return torch.cat([out[0], back], -1)


class AttentionGRU(nn.Module):
    """BiGRU over template embeddings; attention pooled with a learned context (guide) vector → logit.

    The GRU runs through :func:`bigru` over the batch's longest sequence; ``self.gru`` holds its
    parameters (the state dict of an ``nn.GRU``, so saved models load either way).
    """

    def __init__(self, dim: int, hidden: int, attention: int, dropout: float):
        super().__init__()
        self.gru = nn.GRU(dim, hidden, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * hidden, attention)
        self.context = nn.Parameter(torch.randn(attention) / math.sqrt(attention))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden, 1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        L = int(lengths.max())
        x = x[:, :L]
        out = bigru(self.gru, x, lengths)
        energy = torch.tanh(self.proj(out)) @ self.context  # (B, L)
        mask = torch.arange(L, device=x.device)[None, :] < lengths.to(x.device)[:, None]
        alpha = torch.softmax(energy.masked_fill(~mask, float("-inf")), dim=1)
        pooled = (alpha.unsqueeze(-1) * out).sum(1)
        return self.head(self.drop(pooled)).squeeze(-1)


def meta_step(module: nn.Module, opt: torch.optim.Optimizer, src: tuple, tgt: tuple, inner_lr: float,
              meta_weight: float, pos_weight: tuple[float, float] = (1.0, 1.0), grad_clip: float = 0.0
              ) -> tuple[float, float]:
    """One first-order MAML update; ``src``/``tgt`` = (embedded x, lengths, labels).

    θ' = θ − α∇L_src(θ) (gradient detached: first order); update θ with ∇[L_src(θ) + β·L_tgt(θ')].
    First order, ∂θ'/∂θ is the identity, so that gradient is ∇L_src(θ) + β·∇L_tgt(θ'): the source
    graph is walked once, its gradient serving both the inner step and the update (walking it
    again in one joint backward cost ~30% of MetaLog's training time for the same sum).
    """
    params = {n: p for n, p in module.named_parameters() if p.requires_grad}
    loss_fn = nn.functional.binary_cross_entropy_with_logits
    loss_src = loss_fn(module(src[0], src[1]), src[2], pos_weight=torch.tensor(pos_weight[0]))
    grads = torch.autograd.grad(loss_src, list(params.values()), allow_unused=True)
    fast = {n: (p - inner_lr * g) if g is not None else p for (n, p), g in zip(params.items(), grads)}
    loss_tgt = loss_fn(functional_call(module, fast, (tgt[0], tgt[1])), tgt[2], pos_weight=torch.tensor(pos_weight[1]))
    opt.zero_grad(set_to_none=True)
    (meta_weight * loss_tgt).backward()
    for p, g in zip(params.values(), grads):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g
    if grad_clip:
        nn.utils.clip_grad_norm_(list(params.values()), grad_clip)
    opt.step()
    return float(loss_src.detach()), float(loss_tgt.detach())


def balanced_batch(labels: np.ndarray, size: int, share: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of one batch with about ``share`` anomalies (drawn with replacement when they are few)."""
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if len(pos) == 0 or len(neg) == 0:
        return rng.choice(len(labels), size=min(size, len(labels)), replace=False)
    n_pos = max(1, int(round(size * share)))
    n_neg = size - n_pos
    return np.concatenate([rng.choice(pos, n_pos, replace=n_pos > len(pos)),
                           rng.choice(neg, n_neg, replace=n_neg > len(neg))])


def labelled_subset(target: LogSequences, percent: float, seed: int) -> LogSequences:
    """Keep all known normals and ``percent`` % of the anomalies (at least one), chosen by seed: the
    few labels a cross-system method may read on its target."""
    if percent >= 100:
        return target
    pos = np.flatnonzero(target.labels == 1)
    rng = np.random.default_rng(seed)
    keep_pos = rng.choice(pos, max(1, int(round(len(pos) * percent / 100))), replace=False) if len(pos) else pos
    keep = np.sort(np.concatenate([np.flatnonzero(target.labels == 0), keep_pos]))
    log.info("target keeps %d of %d labelled anomalies and %d normals", len(keep_pos), len(pos),
             int((target.labels == 0).sum()))
    return target.subset(keep, renumber=False)


class MetaLog(Detector):
    name = "metalog"
    Config = MetaLogConfig

    def __init__(self, config: MetaLogConfig, schema: FeatureSchema, llm: LLMParams | None = None, seed: int = 0):
        super().__init__(config, schema, llm, seed)
        self.device = pick_device(config.train.device)
        seed_everything(seed)
        self.vocab = Vocabulary()
        self.idf: Idf | None = None
        self.embeddings = torch.zeros(RESERVED, 0)  # (V, dim) rows of the vocabulary
        self.module: AttentionGRU | None = None
        self._vectors = None

    # ------------------------------------------------------------ vocabulary and embeddings
    def _word_vectors(self):
        if self._vectors is None:
            self._vectors = load_word_vectors(self.config.word_vectors, self.llm.backbone)
        return self._vectors

    def _extend(self, templates: list[str]) -> np.ndarray:
        """Map a system's templates into the vocabulary, embedding the texts it has not seen yet."""
        before = len(self.vocab)
        ids = self.vocab.add(templates)
        if len(self.vocab) > before:
            new = template_embeddings(self.vocab.templates[before - RESERVED:], self._word_vectors(), self.idf)
            self.embeddings = torch.cat([self.embeddings, torch.from_numpy(new)])
        return ids

    def _embed(self, ids: np.ndarray, lengths: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embeddings[torch.from_numpy(ids)].to(self.device)
        return x, torch.from_numpy(lengths)

    def _build(self, dim: int) -> None:
        c = self.config
        self.module = AttentionGRU(dim, c.hidden, c.attention, c.dropout).to(self.device)

    # ------------------------------------------------------------ training on log sequences
    def _labelled_target(self, target: LogSequences) -> LogSequences:
        return labelled_subset(target, self.config.labelled_anomaly_percent, self.seed)

    def fit_sequences(self, target: LogSequences | None, sources: list[LogSequences]) -> dict[str, list[float]]:
        """Train on labelled sequences; see the module docstring for what each mode reads."""
        with limited_threads(self.config.cpu_threads, self.device):
            return self._fit_sequences(target, sources)

    def _fit_sequences(self, target: LogSequences | None, sources: list[LogSequences]) -> dict[str, list[float]]:
        c, tc = self.config, self.config.train
        seed_everything(self.seed)
        if c.mode == "zero_shot":
            if not sources:
                raise InputError("params.yaml", "metalog.source",
                                 "a source dataset different from the target in zero_shot mode", c.source)
            systems, meta = list(sources), False
        elif sources:
            if target is None:
                raise ValueError("metalog: meta mode needs target sequences")
            systems, meta = [*sources, self._labelled_target(target)], True
        else:
            log.info("metalog: no source system (source == target): supervised training on the target only")
            systems, meta = [self._labelled_target(target)], False
        # IDF over the templates that occur in the training sequences of the systems trained on
        seen = sorted({s.templates[k] for s in systems for k in np.unique(s.counts.indices)})
        self.idf = fit_idf(seen)
        self.vocab, self.embeddings = Vocabulary(), torch.zeros(RESERVED, self._word_vectors().dim)
        encoded = []
        for s in systems:
            ids, lengths = to_vocab(s, self._extend(s.templates))
            encoded.append((ids, lengths, s.labels.astype(np.float32)))
        if target is not None:
            self._extend(target.templates)  # target test-only templates share the vocabulary too
        self._build(self.embeddings.shape[1])
        for s in systems:
            if not (s.labels == 1).any():
                log.warning("metalog: training system %r has no labelled anomaly", s.name)
        opt = torch.optim.AdamW(self.module.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        rng = np.random.default_rng(self.seed)
        n_max = max(len(e[2]) for e in encoded)
        # one pass over the largest system per epoch (capped by max_train_windows), at least MIN_STEPS steps
        n_batches = max(MIN_STEPS, math.ceil((min(n_max, tc.max_train_windows) if tc.max_train_windows else n_max)
                                             / tc.batch_size))
        history: dict[str, list[float]] = {"epoch": [], "train_loss": [], "seconds": []}
        if meta:
            history["target_loss"] = []
        self.module.train()
        for epoch in range(tc.epochs):
            t0 = time.perf_counter()
            src_total = tgt_total = 0.0
            for _ in tqdm(range(n_batches), desc=f"metalog epoch {epoch + 1}/{tc.epochs}", leave=False,
                          disable=None):
                if meta:
                    src_e = encoded[rng.integers(len(encoded) - 1)]
                    batches = [self._batch(e, rng) for e in (src_e, encoded[-1])]
                    ls, lt = meta_step(self.module, opt, batches[0], batches[1], c.inner_lr, c.meta_weight,
                                       grad_clip=tc.grad_clip)
                else:
                    x, lengths, y = self._batch(encoded[rng.integers(len(encoded))], rng)
                    loss = nn.functional.binary_cross_entropy_with_logits(self.module(x, lengths), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if tc.grad_clip:
                        nn.utils.clip_grad_norm_(self.module.parameters(), tc.grad_clip)
                    opt.step()
                    ls, lt = float(loss.detach()), 0.0
                src_total += ls
                tgt_total += lt
            history["epoch"].append(epoch + 1)
            history["train_loss"].append(src_total / n_batches)
            if meta:
                history["target_loss"].append(tgt_total / n_batches)
            history["seconds"].append(time.perf_counter() - t0)
            if meta:
                log.info("metalog epoch %d: source loss %.4f target loss %.4f", epoch + 1,
                         history["train_loss"][-1], history["target_loss"][-1])
            else:  # supervised on one system: there is no separate target loss to report
                log.info("metalog epoch %d: train loss %.4f", epoch + 1, history["train_loss"][-1])
        return history

    def _batch(self, encoded: tuple, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, lengths, y = encoded
        idx = balanced_batch(y, self.config.train.batch_size, self.config.anomaly_share, rng)
        x, lens = self._embed(ids[idx], lengths[idx])
        return x, lens, torch.from_numpy(y[idx]).to(self.device)

    @torch.no_grad()
    def score_sequences(self, seqs: LogSequences) -> np.ndarray:
        """Anomaly probability of each sequence."""
        if self.module is None:
            raise RuntimeError("metalog: fit (or load) before scoring")
        ids, lengths = to_vocab(seqs, self._extend(seqs.templates))
        self.module.eval()
        out = []
        with limited_threads(scoring_threads(self.config.cpu_threads), self.device):
            for i in range(0, len(ids), 256):
                x, lens = self._embed(ids[i:i + 256], lengths[i:i + 256])
                out.append(torch.sigmoid(self.module(x, lens)).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    # ------------------------------------------------------------ pipeline interface
    def source_datasets(self, target: str, available: list[str]) -> list[str]:
        """The source system: ``metalog.source``, or else the first of ``datasets.<target>.sources``."""
        src = self.config.source or (available[0] if available else None)
        if not src or src == target:
            return []
        if src not in available:
            raise InputError("params.yaml", "metalog.source",
                             f"one of datasets.{target}.sources {sorted(available)} (or null)", src)
        return [src]

    def fit(self, train: WindowSet, val: WindowSet, sources: dict[str, WindowSet] | None = None
            ) -> dict[str, list[float]]:
        require_logs(train, self.name)
        c = self.config
        src = []
        for name, ws in (sources or {}).items():
            require_logs(ws, self.name)
            src.append(from_windowset(ws, c.max_len, c.per_service))
            src[-1].name = name
        target = from_windowset(train, c.max_len, c.per_service)
        target.name = train.schema.dataset
        return self.fit_sequences(target, src)

    def score(self, windows: WindowSet) -> np.ndarray:
        require_logs(windows, self.name)
        seqs = from_windowset(windows, self.config.max_len, self.config.per_service)
        return steps_from_units(windows, seqs, self.score_sequences(seqs))

    # ------------------------------------------------------------ persistence
    def state(self) -> dict[str, torch.Tensor]:
        if self.module is None:
            raise RuntimeError("metalog: nothing to save before fit")
        state = {f"module.{k}": v for k, v in self.module.state_dict().items()}
        state["embeddings"] = self.embeddings
        return state

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        self.embeddings = state.pop("embeddings")
        self._build(self.embeddings.shape[1])
        self.module.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})

    def save_extra(self, directory: Path) -> None:
        (directory / "vocabulary.json").write_text(dumps_json({"templates": self.vocab.templates,
                                                               "idf": self.idf.to_json()}))

    def load_extra(self, directory: Path) -> None:
        vocab = json.loads((directory / "vocabulary.json").read_text())
        self.vocab = Vocabulary(vocab["templates"])
        self.idf = Idf.from_json(vocab["idf"])
