"""xLSTM log anomaly detector: semantic top-k similarity + xLSTM reconstruction error, learned weighting.

Two signals per log block (a grid window in the pipeline, a line window or session on loghub):

1. *semantic*: the block's vector is the count-weighted mean of its templates' LLM embeddings;
   a container of labelled training blocks answers "how anomalous are my top-k cosine
   neighbours" (similarity-weighted share of anomalous neighbours);
2. *reconstruction*: an xLSTM stack (``xlstm`` package, mLSTM blocks plus sLSTM blocks with the
   CPU-capable ``vanilla`` kernel) reads the block's event sequence and reconstructs the TF-IDF
   vector of its events; it is trained on normal training blocks, and its error is turned into a
   z-score with the statistics of normal *training* errors.

A logistic regression fitted on training blocks (container probability computed leave-out, so
a block never votes for itself) weighs the two; the operating threshold is the best-F1 cut on
those training scores (``self.threshold``). Both signals of the training blocks fed to that fit
are *out-of-fold* (``oof_folds`` chronological folds: errors from a model that never trained on
the fold, votes from a container without it): in-sample errors of memorised training blocks are
far below those of any new block, and a block's own burst votes for it, so a weighting and
threshold fitted in-sample flag nearly every test block. TF-IDF is fitted on training blocks
only; templates never seen in training share one extra "unseen" TF-IDF column.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import sparse
from torch import nn
from tqdm.auto import tqdm

from stages.core.device import pick_device, seed_everything
from stages.core.errors import InputError
from stages.core.llm import embed_texts
from stages.core.params import LLMParams
from stages.core.windowset import FeatureSchema, WindowSet
from stages.features.log_windows import LogSequences, from_windowset, require_logs, steps_from_units
from stages.nets.base import Detector, TrainConfig
from stages.core.device import limited_threads, scoring_threads

log = logging.getLogger(__name__)
Z_CLIP = (-5.0, 20.0)  # keeps one exotic block from dominating the logistic fit


@dataclass(frozen=True)
class XLSTMLogADConfig:
    top_k: int = 5
    max_len: int = 64  # most recent events of a block fed to the xLSTM (= its context length)
    embed_dim: int = 32
    num_blocks: int = 2
    slstm_at: list[int] = field(default_factory=lambda: [1])  # sLSTM block positions; [] = mLSTM only
    num_heads: int = 4
    container_max: int = 20000  # most recent labelled training blocks kept as neighbours
    oof_folds: int = 3  # chronological folds for out-of-fold training errors (0/1: in-sample, biased low)
    cpu_threads: int = 1  # torch threads on the CPU while fitting/scoring (see core.device.limited_threads); 0 = as is
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=8, batch_size=32, lr=3e-3, patience=2,
                                                                  max_train_windows=1024))

    def validate(self) -> None:
        if self.top_k < 1 or self.max_len < 1 or self.container_max < 1 or self.oof_folds < 0:
            raise InputError("params.yaml", "xlstm_logad", "positive top_k, max_len, container_max; oof_folds >= 0",
                             (self.top_k, self.max_len, self.container_max, self.oof_folds))
        if self.embed_dim % self.num_heads:
            raise InputError("params.yaml", "xlstm_logad.embed_dim", f"a multiple of num_heads={self.num_heads}",
                             self.embed_dim)
        if any(not 0 <= i < self.num_blocks for i in self.slstm_at):
            raise InputError("params.yaml", "xlstm_logad.slstm_at", f"block positions in [0, {self.num_blocks})",
                             self.slstm_at)


def container_probability(query: np.ndarray, keys: np.ndarray, key_labels: np.ndarray, k: int,
                          query_pos: np.ndarray | None = None, key_pos: np.ndarray | None = None,
                          exclude_radius: int = 0, chunk: int = 512) -> np.ndarray:
    """Similarity-weighted share of anomalous blocks among each query's top-k cosine neighbours.

    Rows of ``query``/``keys`` must be L2-normalised. Keys with ``|key_pos - query_pos| <
    exclude_radius`` are skipped (the block itself and blocks overlapping it when scoring the
    container's own members). Negative similarities weigh nothing; no positive neighbour → 0.
    """
    key_labels = np.asarray(key_labels, np.float64)
    out = np.zeros(len(query))
    if len(keys) == 0:
        return out
    k = min(k, len(keys))
    for a in range(0, len(query), chunk):
        sims = query[a:a + chunk] @ keys.T
        if exclude_radius > 0:
            near = np.abs(query_pos[a:a + chunk, None] - key_pos[None, :]) < exclude_radius
            sims = np.where(near, -np.inf, sims)
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        w = np.clip(np.take_along_axis(sims, top, axis=1), 0.0, None)
        num = (w * key_labels[top]).sum(1)
        den = w.sum(1)
        out[a:a + chunk] = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return out


def block_vectors(counts: sparse.csr_matrix, template_vectors: np.ndarray) -> np.ndarray:
    """Count-weighted mean of template embeddings per block, L2-normalised (zero for an empty block)."""
    v = np.asarray(counts @ template_vectors, np.float32)
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, n, out=np.zeros_like(v), where=n > 0)


@dataclass(frozen=True)
class EmbeddedBlocks:
    """Blocks as template-id rows of an embedding table, gathered into (B, width, dim) one batch at a
    time: the dense array of every block at once is N x max_len x dim floats (590 MB for the default
    synth_tt's validation and test blocks; ~10 GB for 100k blocks of a month of logs)."""

    ids: np.ndarray  # (N, max_len) rows of ``table``; its last row is padding / empty
    table: np.ndarray  # (K + 1, dim) float32

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index) -> EmbeddedBlocks:
        return EmbeddedBlocks(self.ids[index], self.table)

    def dense(self, width: int) -> np.ndarray:
        """(B, width, dim): the first ``width`` events of every block."""
        return self.table[self.ids[:, :width]]


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0).astype(np.float32)


class XLSTMReconstructor(nn.Module):
    """Template embeddings → linear → xLSTM block stack → masked mean → TF-IDF vector of the block."""

    def __init__(self, in_dim: int, out_dim: int, c: XLSTMLogADConfig, use_slstm: bool):
        super().__init__()
        from xlstm import (FeedForwardConfig, mLSTMBlockConfig, mLSTMLayerConfig, sLSTMBlockConfig,
                           sLSTMLayerConfig, xLSTMBlockStack, xLSTMBlockStackConfig)

        slstm = sLSTMBlockConfig(slstm=sLSTMLayerConfig(backend="vanilla", num_heads=c.num_heads,
                                                        conv1d_kernel_size=4, bias_init="powerlaw_blockdependent"),
                                 feedforward=FeedForwardConfig(proj_factor=1.3, act_fn="gelu"))
        cfg = xLSTMBlockStackConfig(
            mlstm_block=mLSTMBlockConfig(mlstm=mLSTMLayerConfig(conv1d_kernel_size=4, qkv_proj_blocksize=4,
                                                                num_heads=c.num_heads)),
            slstm_block=slstm if use_slstm and c.slstm_at else None,
            context_length=c.max_len, num_blocks=c.num_blocks, embedding_dim=c.embed_dim,
            slstm_at=list(c.slstm_at) if use_slstm else [])
        self.inp = nn.Linear(in_dim, c.embed_dim)
        self.stack = xLSTMBlockStack(cfg)
        self.out = nn.Linear(c.embed_dim, out_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = self.stack(self.inp(x))  # causal: padding after a sequence never reaches its positions
        mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).to(h.dtype)
        pooled = (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return self.out(pooled)


class XLSTMLogAD(Detector):
    name = "xlstm_logad"
    Config = XLSTMLogADConfig

    def __init__(self, config: XLSTMLogADConfig, schema: FeatureSchema, llm: LLMParams | None = None, seed: int = 0):
        super().__init__(config, schema, llm, seed)
        self.device = pick_device(config.train.device)
        self.module: XLSTMReconstructor | None = None
        self.threshold = float("nan")  # best-F1 cut on training scores (for the replay's operating point)

    # ------------------------------------------------------------ features
    def template_vectors(self, templates: list[str]) -> np.ndarray:
        """Unit-norm LLM embedding per template: precomputed by ``embed@ds`` when present, else embedded here."""
        pre = self.schema.template_embeddings
        if pre is not None and len(pre) == len(templates) and list(self.schema.templates) == list(templates):
            return _normalise_rows(np.asarray(pre, np.float32))
        return _normalise_rows(embed_texts(templates, self.llm.backbone, self.llm.max_tokens, self.llm.batch_size))

    def _tfidf(self, counts: sparse.csr_matrix) -> np.ndarray:
        """Counts over the block's templates → L2-normalised TF-IDF over training columns + the unseen column."""
        K = counts.shape[1]
        cols = np.full(K, self.n_cols - 1, np.int64)
        n = min(K, len(self.col_of_template))
        cols[:n] = self.col_of_template[:n]
        select = sparse.csr_matrix((np.ones(K, np.float32), (np.arange(K), cols)), shape=(K, self.n_cols))
        tf = np.asarray((counts @ select).todense(), np.float32) * self.idf[None, :]
        return _normalise_rows(tf)

    def _inputs(self, seqs: LogSequences, vectors: np.ndarray) -> tuple[EmbeddedBlocks, np.ndarray]:
        table = np.vstack([vectors, np.zeros((1, vectors.shape[1]), np.float32)])  # last row: padding / empty
        ids = np.where(seqs.ids >= 0, seqs.ids, len(vectors))
        return EmbeddedBlocks(ids, table), np.maximum(seqs.lengths, 1)

    def _build(self, in_dim: int) -> None:
        c = self.config
        try:
            self.module = XLSTMReconstructor(in_dim, self.n_cols, c, use_slstm=bool(c.slstm_at)).to(self.device)
            with torch.no_grad():
                self.module(torch.zeros(1, 2, in_dim, device=self.device), torch.ones(1, dtype=torch.long,
                                                                                      device=self.device))
        except Exception as exc:  # the sLSTM kernel is the fragile part; mLSTM runs everywhere
            log.warning("xlstm_logad: sLSTM blocks unavailable on %s (%s); using mLSTM blocks only",
                        self.device, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            self.module = XLSTMReconstructor(in_dim, self.n_cols, c, use_slstm=False).to(self.device)

    # ------------------------------------------------------------ training on log sequences
    def _forward(self, x: EmbeddedBlocks, lengths: np.ndarray) -> torch.Tensor:
        """Reconstruct a batch cut to its longest sequence: the stack is causal, so positions after
        every sequence's end change nothing but cost time (a 20-line window in a 64-event context)."""
        width = max(int(lengths.max()), 1) if len(lengths) else 1
        return self.module(torch.from_numpy(x.dense(width)).to(self.device), torch.from_numpy(lengths).to(self.device))

    def _errors(self, x: EmbeddedBlocks, lengths: np.ndarray, target: np.ndarray) -> np.ndarray:
        self.module.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(x), 256):
                rec = self._forward(x[i:i + 256], lengths[i:i + 256])
                out.append(((rec - torch.from_numpy(target[i:i + 256]).to(self.device)) ** 2).mean(1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def fit_sequences(self, train: LogSequences, val: LogSequences | None = None, overlap: int = 1
                      ) -> dict[str, list[float]]:
        """Fit on labelled training blocks; ``val`` (labels unused) only early-stops the reconstruction.

        ``overlap``: blocks whose index differs by less than this share lines (overlapping grid
        windows); they are kept out of each other's container vote on training data.
        """
        with limited_threads(self.config.cpu_threads, self.device):
            return self._fit_sequences(train, val, overlap)

    def _fit_sequences(self, train: LogSequences, val: LogSequences | None, overlap: int) -> dict[str, list[float]]:
        from sklearn.feature_extraction.text import TfidfTransformer  # fit only: scoring never imports sklearn

        c = self.config
        seed_everything(self.seed)
        if len(train) == 0:
            raise ValueError("xlstm_logad: no training block")
        vectors = self.template_vectors(train.templates)
        # TF-IDF on training blocks only; one extra column collects templates unseen in training
        seen = np.flatnonzero(np.asarray(train.counts.sum(0)).ravel() > 0)
        self.col_of_template = np.full(len(train.templates), len(seen), np.int64)
        self.col_of_template[seen] = np.arange(len(seen))
        self.n_cols = len(seen) + 1
        self.idf = np.ones(self.n_cols, np.float32)
        raw = self._tfidf(train.counts) > 0  # presence per column (idf = 1 for now)
        self.idf = TfidfTransformer(smooth_idf=True).fit(sparse.csr_matrix(raw.astype(np.float32))
                                                         ).idf_.astype(np.float32)
        x_tr, len_tr = self._inputs(train, vectors)
        y_tr = self._tfidf(train.counts)
        normal = np.flatnonzero(train.labels == 0)
        if len(normal) == 0:
            raise InputError(train.name or None, "labels", "some normal training blocks to learn reconstruction")
        err_tr = self._out_of_fold_errors(x_tr, len_tr, y_tr, train.labels, val, vectors)
        self._build(vectors.shape[1])
        history = self._train_reconstruction(x_tr[normal], len_tr[normal], y_tr[normal], val, vectors)
        if err_tr is None:
            err_tr = self._errors(x_tr, len_tr, y_tr)
        self.err_mu, self.err_sd = float(err_tr[normal].mean()), float(err_tr[normal].std() + 1e-8)
        # container: the most recent labelled training blocks
        keep = np.arange(max(0, len(train) - c.container_max), len(train))
        self.container = block_vectors(train.counts[keep], vectors)
        self.container_labels = train.labels[keep].astype(np.float32)
        self.container_pos = train.window[keep].astype(np.int64)
        query = block_vectors(train.counts, vectors)
        fold = self._folds(len(train))
        if fold is None:
            p_tr = container_probability(query, self.container, self.container_labels, c.top_k, train.window,
                                         self.container_pos, exclude_radius=max(overlap, 1))
        else:  # out-of-fold votes too: a block's own burst is not in the container when it is scored
            p_tr = np.zeros(len(train))
            for f in range(int(fold.max()) + 1):
                held, keys = fold == f, fold[keep] != f
                p_tr[held] = container_probability(query[held], self.container[keys], self.container_labels[keys],
                                                   c.top_k, train.window[held], self.container_pos[keys],
                                                   exclude_radius=max(overlap, 1))
        self._fit_weighting(np.column_stack([p_tr, self._z(err_tr)]), train.labels)
        history["threshold"] = [self.threshold]
        return history

    def _folds(self, n: int) -> np.ndarray | None:
        """Contiguous chronological fold of each of ``n`` training blocks; None when folds are off."""
        k = self.config.oof_folds
        if k < 2 or n < 2 * k:
            return None
        return np.minimum(np.arange(n) * k // n, k - 1)

    def _out_of_fold_errors(self, x: EmbeddedBlocks, lengths: np.ndarray, y: np.ndarray, labels: np.ndarray,
                            val: LogSequences | None, vectors: np.ndarray) -> np.ndarray | None:
        """Reconstruction error of each training block from a model trained on the other folds' normals.

        Folds are contiguous in time, so each error is measured the way a test block's is: on data
        the model has not seen, later or earlier in the log. None when folds are off or too small.
        """
        fold = self._folds(len(x))
        if fold is None:
            return None
        err = np.full(len(x), np.nan)
        for f in tqdm(range(int(fold.max()) + 1), desc="xlstm_logad out-of-fold", leave=False, disable=None):
            fit_idx = np.flatnonzero((fold != f) & (labels == 0))
            if len(fit_idx) == 0:
                return None
            seed_everything(self.seed + 1 + f)
            self._build(vectors.shape[1])
            self._train_reconstruction(x[fit_idx], lengths[fit_idx], y[fit_idx], val, vectors, quiet=True)
            held = np.flatnonzero(fold == f)
            err[held] = self._errors(x[held], lengths[held], y[held])
        seed_everything(self.seed)
        return err

    def _z(self, err: np.ndarray) -> np.ndarray:
        return np.clip((err - self.err_mu) / self.err_sd, *Z_CLIP)

    def _fit_weighting(self, feats: np.ndarray, labels: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression  # fit only: scoring never imports sklearn
        from sklearn.metrics import precision_recall_curve

        if len(np.unique(labels)) < 2:
            log.warning("xlstm_logad: training blocks hold one class only; score = sigmoid(reconstruction z)")
            self.coef, self.intercept = np.array([0.0, 1.0]), 0.0
        else:
            lr = LogisticRegression(class_weight="balanced", max_iter=1000).fit(feats, labels)
            self.coef, self.intercept = lr.coef_.ravel().astype(np.float64), float(lr.intercept_[0])
        log.info("xlstm_logad: weighting container %.3f, reconstruction %.3f, bias %.3f", *self.coef, self.intercept)
        scores = self._combine(feats)
        if labels.any() and not labels.all():
            prec, rec, thr = precision_recall_curve(labels, scores)
            f1 = 2 * prec * rec / np.maximum(prec + rec, 1e-12)
            # the PR curve alarms at score >= thr, evaluation at score > threshold: step just below it
            self.threshold = float(np.nextafter(thr[int(np.argmax(f1[:-1]))], -np.inf))
        else:
            self.threshold = 0.5

    def _combine(self, feats: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(feats @ self.coef + self.intercept)))

    def _train_reconstruction(self, x: EmbeddedBlocks, lengths: np.ndarray, y: np.ndarray, val: LogSequences | None,
                              vectors: np.ndarray, quiet: bool = False) -> dict[str, list[float]]:
        tc = self.config.train
        opt = torch.optim.AdamW(self.module.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        if val is not None and len(val):
            x_va, len_va = self._inputs(val, vectors)
            y_va = self._tfidf(val.counts)
            if tc.max_val_windows and len(x_va) > tc.max_val_windows:  # evenly spaced, as the torch loop does
                pick = np.unique(np.linspace(0, len(x_va) - 1, tc.max_val_windows).round().astype(np.int64))
                x_va, len_va, y_va = x_va[pick], len_va[pick], y_va[pick]
        rng = np.random.default_rng(self.seed)
        history: dict[str, list[float]] = {"epoch": [], "train_loss": [], "val_loss": [], "seconds": []}
        best, best_state, bad = math.inf, None, 0
        for epoch in range(tc.epochs):
            t0 = time.perf_counter()
            self.module.train()
            order = rng.permutation(len(x))[: tc.max_train_windows or None]
            total = 0.0
            for i in tqdm(range(0, len(order), tc.batch_size), desc=f"xlstm_logad epoch {epoch + 1}/{tc.epochs}",
                          leave=False, disable=None):
                b = order[i:i + tc.batch_size]
                rec = self._forward(x[b], lengths[b])
                loss = ((rec - torch.from_numpy(y[b]).to(self.device)) ** 2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if tc.grad_clip:
                    nn.utils.clip_grad_norm_(self.module.parameters(), tc.grad_clip)
                opt.step()
                total += float(loss.detach()) * len(b)
            train_loss = total / max(len(order), 1)
            val_loss = float(self._errors(x_va, len_va, y_va).mean()) if val is not None and len(val) else train_loss
            for key, v in (("epoch", epoch + 1), ("train_loss", train_loss), ("val_loss", val_loss),
                           ("seconds", time.perf_counter() - t0)):
                history[key].append(v)
            log.log(logging.DEBUG if quiet else logging.INFO,
                    "xlstm_logad epoch %d: reconstruction train %.5f val %.5f", epoch + 1, train_loss, val_loss)
            if val_loss < best - 1e-7:
                best, bad = val_loss, 0
                best_state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
            else:
                bad += 1
                if bad >= tc.patience:
                    break
        if best_state is not None:
            self.module.load_state_dict(best_state)
        return history

    def signals(self, seqs: LogSequences) -> np.ndarray:
        """(U, 2): container probability and clipped reconstruction z-score of each block."""
        if self.module is None:
            raise RuntimeError("xlstm_logad: fit (or load) before scoring")
        vectors = self.template_vectors(seqs.templates)
        x, lengths = self._inputs(seqs, vectors)
        with limited_threads(scoring_threads(self.config.cpu_threads), self.device):
            err = self._errors(x, lengths, self._tfidf(seqs.counts))
        p = container_probability(block_vectors(seqs.counts, vectors), self.container, self.container_labels,
                                  self.config.top_k)
        return np.column_stack([p, self._z(err)])

    def score_sequences(self, seqs: LogSequences) -> np.ndarray:
        """Anomaly probability of each block (learned weighting of the two signals)."""
        return self._combine(self.signals(seqs))

    # ------------------------------------------------------------ pipeline interface
    def fit(self, train: WindowSet, val: WindowSet, sources: dict[str, WindowSet] | None = None
            ) -> dict[str, list[float]]:
        require_logs(train, self.name)
        seqs = from_windowset(train, self.config.max_len)
        seqs.name = train.schema.dataset
        val_seqs = from_windowset(val, self.config.max_len) if len(val) else None
        return self.fit_sequences(seqs, val_seqs, overlap=math.ceil(train.window / max(train.stride, 1)))

    def score(self, windows: WindowSet) -> np.ndarray:
        require_logs(windows, self.name)
        seqs = from_windowset(windows, self.config.max_len)
        return steps_from_units(windows, seqs, self.score_sequences(seqs))

    # ------------------------------------------------------------ persistence (all tensors)
    def state(self) -> dict[str, torch.Tensor]:
        if self.module is None:
            raise RuntimeError("xlstm_logad: nothing to save before fit")
        st = {f"module.{k}": v for k, v in self.module.state_dict().items()}
        arrays = {"col_of_template": self.col_of_template, "idf": self.idf, "container": self.container,
                  "container_labels": self.container_labels, "container_pos": self.container_pos,
                  "coef": self.coef, "stats": np.array([self.err_mu, self.err_sd, self.intercept, self.threshold])}
        st.update({f"extra.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()})
        return st

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        extra = {k.removeprefix("extra."): v.numpy() for k, v in state.items() if k.startswith("extra.")}
        self.col_of_template, self.idf = extra["col_of_template"], extra["idf"]
        self.container, self.container_labels = extra["container"], extra["container_labels"]
        self.container_pos, self.coef = extra["container_pos"], extra["coef"]
        self.err_mu, self.err_sd, self.intercept, self.threshold = (float(v) for v in extra["stats"])
        self.n_cols = len(self.idf)
        in_dim = state["module.inp.weight"].shape[1]
        use_slstm = any(".slstm" in k or "slstm_cell" in k for k in state)
        self.module = XLSTMReconstructor(in_dim, self.n_cols, self.config, use_slstm=use_slstm).to(self.device)
        self.module.load_state_dict({k.removeprefix("module."): v for k, v in state.items()
                                     if k.startswith("module.")})
