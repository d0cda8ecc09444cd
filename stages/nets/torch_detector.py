"""The shared torch training loop of the neural detectors (:class:`TorchDetector`).

Kept apart from :mod:`stages.nets.base` so that the baselines (random, PCA, IsolationForest) and
the stages that only load them never import torch.
"""
from __future__ import annotations

import abc
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from stages.core import distributed
from stages.core.device import autocast, limited_threads, pick_device, scoring_threads, seed_everything
from stages.core.errors import InputError
from stages.core.windowset import WindowSet
from stages.nets.base import Detector

log = logging.getLogger("stages.nets.base")  # the logger name the training loop has always logged under


class TorchDetector(Detector):
    """Shared training loop: seeding, device, AMP, early stopping, checkpoint resume, curves.

    Subclasses implement :meth:`build_module`, :meth:`make_batch`, :meth:`loss` and
    :meth:`window_scores`; ``self.config.train`` must be a :class:`~stages.nets.base.TrainConfig`.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.device = pick_device(self.config.train.device)
        seed_everything(self.seed)
        self.module: torch.nn.Module = self.build_module().to(self.device)
        self.checkpoint_dir: Path | None = None  # set by the train stage to enable resume
        self._fit_epoch: int | None = None  # the epoch whose validation loss is being computed (NaN message)

    @abc.abstractmethod
    def build_module(self) -> torch.nn.Module: ...

    @abc.abstractmethod
    def make_batch(self, ws: WindowSet, starts: np.ndarray) -> dict[str, torch.Tensor]:
        """Tensors for windows starting at ``starts`` (on ``self.device``)."""

    @abc.abstractmethod
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    @abc.abstractmethod
    def window_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, window) per-step anomaly scores of each window."""

    def loss_terms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named parts of :meth:`loss`; evaluated only to say which part of a non-finite loss broke
        (``{}``: the loss has no named parts)."""
        return {}

    def parameters_to_train(self):
        return [p for p in self.module.parameters() if p.requires_grad]

    def _require_finite(self, value: float, epoch: int, which: str,
                        batch: dict[str, torch.Tensor] | None = None) -> None:
        """Stop on a NaN/inf loss with one line naming detector, dataset, epoch and loss: training
        on NaN silently leaves a model that scores NaN and an early stop that never improves."""
        if math.isfinite(value):
            return
        parts = ""
        if batch is not None:
            with torch.no_grad(), autocast(self.device, self.config.train.amp):
                terms = self.loss_terms(batch)
            bad = [k for k, v in terms.items() if not bool(torch.isfinite(torch.as_tensor(v)).all())]
            parts = f" (non-finite part: {', '.join(bad)})" if bad else ""
        raise InputError(f"data/windows/{self.schema.dataset}", f"{self.name} epoch {epoch} {which}{parts}",
                         "a finite loss (NaN/inf: look for extreme or non-finite features of this dataset, "
                         "or lower the detector's train.lr)", value)

    def _to(self, arr: np.ndarray, dtype=torch.float32) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(arr)).to(dtype)
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        return t

    def _epoch_starts(self, ws: WindowSet, epoch: int) -> np.ndarray:
        rng = np.random.default_rng(self.seed * 1000 + epoch)
        starts = ws.starts.copy()
        rng.shuffle(starts)
        cap = self.config.train.max_train_windows
        return starts[:cap] if cap else starts

    def _eval_loss(self, ws: WindowSet) -> float:
        """Mean loss over ``ws``; during :meth:`fit` (validation) a non-finite batch stops training."""
        epoch = getattr(self, "_fit_epoch", None)
        self.module.eval()
        tc = self.config.train
        total, n = 0.0, 0
        with torch.no_grad():
            for starts in ws.batches(tc.batch_size):
                with autocast(self.device, tc.amp):
                    batch = self.make_batch(ws, starts)
                    loss = self.loss(batch)
                value = float(loss.detach())
                if epoch is not None:
                    self._require_finite(value, epoch, f"validation loss (windows from step {int(starts[0])})", batch)
                total += value * len(starts)
                n += len(starts)
        return total / max(n, 1)

    @property
    def cpu_threads(self) -> int:
        """Torch threads for fitting and scoring on the CPU (the config's ``cpu_threads``; 0 = as set)."""
        return int(getattr(self.config, "cpu_threads", 0))

    def fit(self, train: WindowSet, val: WindowSet, sources: dict[str, WindowSet] | None = None
            ) -> dict[str, list[float]]:
        with limited_threads(self.cpu_threads, self.device):
            return self._fit(train, val, sources)

    def _fit(self, train: WindowSet, val: WindowSet, sources: dict[str, WindowSet] | None = None
             ) -> dict[str, list[float]]:
        tc = self.config.train
        if len(train) == 0:
            raise ValueError(f"{self.name}: the training split has no complete window")
        opt = torch.optim.AdamW(self.parameters_to_train(), lr=tc.lr, weight_decay=tc.weight_decay)
        history: dict[str, list[float]] = {"epoch": [], "train_loss": [], "val_loss": [], "seconds": []}
        best, best_state, bad, start_epoch = float("inf"), None, 0, 0
        ckpt = self.checkpoint_dir / "last.pt" if self.checkpoint_dir else None
        if ckpt is not None and ckpt.exists():
            saved = torch.load(ckpt, map_location=self.device, weights_only=False)
            self.module.load_state_dict(saved["module"])
            opt.load_state_dict(saved["opt"])
            history, best, bad, start_epoch = saved["history"], saved["best"], saved["bad"], saved["epoch"] + 1
            best_state = saved["best_state"]
            log.info("%s: resumed from %s at epoch %d", self.name, ckpt, start_epoch)
        val_es = val
        if tc.max_val_windows and len(val) > tc.max_val_windows:
            pick = np.unique(np.linspace(0, len(val) - 1, tc.max_val_windows).round().astype(np.int64))
            val_es = dataclasses.replace(val, starts=val.starts[pick])
        inner = self.module
        self.module = distributed.wrap(inner, self.device)  # torchrun: DDP averages gradients over ranks
        try:
            history, best_state = self._epochs(train, val_es, len(val), opt, ckpt, inner, history, best,
                                               best_state, bad, start_epoch)
        finally:
            self.module = inner
        if best_state is not None:
            self.module.load_state_dict(best_state)
        return history

    def _epochs(self, train: WindowSet, val_es: WindowSet, n_val: int, opt: torch.optim.Optimizer,
                ckpt: Path | None, inner: torch.nn.Module, history: dict[str, list[float]], best: float,
                best_state: dict | None, bad: int, start_epoch: int) -> tuple[dict, dict | None]:
        """The epoch loop; ``self.module`` is the (possibly DDP-wrapped) module, ``inner`` the bare one."""
        tc = self.config.train
        for epoch in range(start_epoch, tc.epochs):
            t0 = time.perf_counter()
            self.module.train()
            total, n = 0.0, 0
            starts_all = self._epoch_starts(train, epoch)
            bar = tqdm(range(0, len(starts_all), tc.batch_size), desc=f"{self.name} epoch {epoch + 1}/{tc.epochs}",
                       leave=False, disable=None if distributed.is_main() else True)
            for i in bar:
                batch_starts = starts_all[i:i + tc.batch_size]
                starts = distributed.shard(batch_starts)  # this rank's share of the global batch
                with autocast(self.device, tc.amp):
                    batch = self.make_batch(train, starts)
                    loss = self.loss(batch)
                value = float(loss.detach())
                self._require_finite(value, epoch + 1, f"training loss (batch {i // tc.batch_size})", batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if tc.grad_clip:
                    norm = float(torch.nn.utils.clip_grad_norm_(self.parameters_to_train(), tc.grad_clip))
                    self._require_finite(norm, epoch + 1, f"gradient norm of the training loss "
                                                          f"(batch {i // tc.batch_size})")
                opt.step()
                if epoch == start_epoch and i == 0:
                    distributed.sync_parameters(inner)  # one model on every rank after data-dependent inits
                total += distributed.mean_over_ranks(value) * len(batch_starts)
                n += len(batch_starts)
                bar.set_postfix(loss=f"{value:.4f}")
            history.setdefault("optimise_seconds", []).append(time.perf_counter() - t0)  # without validation
            history.setdefault("optimise_windows", []).append(float(n))
            self._fit_epoch = epoch + 1
            try:
                val_loss = self._eval_loss(val_es) if n_val else total / max(n, 1)
            finally:
                self._fit_epoch = None
            self._require_finite(val_loss, epoch + 1, "validation loss" if n_val else "training loss")
            history["epoch"].append(epoch + 1)
            history["train_loss"].append(total / max(n, 1))
            history["val_loss"].append(val_loss)
            history["seconds"].append(time.perf_counter() - t0)
            log.info("%s epoch %d: train %.5f val %.5f", self.name, epoch + 1, history["train_loss"][-1], val_loss)
            if val_loss < best - 1e-6:
                best, bad = val_loss, 0
                best_state = {k: v.detach().clone() for k, v in inner.state_dict().items()}
            else:
                bad += 1
            if ckpt is not None and distributed.is_main():
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"module": inner.state_dict(), "opt": opt.state_dict(), "history": history,
                            "best": best, "bad": bad, "epoch": epoch, "best_state": best_state}, ckpt)
            if bad >= tc.patience:
                log.info("%s: early stop at epoch %d (best val %.5f)", self.name, epoch + 1, best)
                break
        return history, best_state

    def score(self, windows: WindowSet) -> np.ndarray:
        self.module.eval()
        tc = self.config.train
        rows = []
        with limited_threads(scoring_threads(self.cpu_threads), self.device), torch.inference_mode():
            for starts in windows.batches(max(tc.batch_size, tc.score_batch_size)):
                with autocast(self.device, tc.amp):
                    rows.append(self.window_scores(self.make_batch(windows, starts)).float().cpu().numpy())
        if not rows:
            return np.full(windows.n_steps, np.nan)
        return windows.steps_from_windows(np.concatenate(rows))

    def state(self) -> dict[str, torch.Tensor]:
        return dict(self.module.state_dict())

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
