"""The shared torch training loop: early stopping, checkpoint resume, deterministic curves."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from stages.core.windowset import WindowSet
from stages.nets.base import TorchDetector, TrainConfig


@dataclass(frozen=True)
class TinyConfig:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=4, batch_size=8, patience=10))


class TinyAutoencoder(TorchDetector):
    """A real (if small) reconstruction detector: enough to exercise the loop end to end."""

    name = "tiny"
    Config = TinyConfig

    def build_module(self) -> torch.nn.Module:
        c = self.schema.n_metric
        return torch.nn.Sequential(torch.nn.Linear(c, 2), torch.nn.Linear(2, c))

    def make_batch(self, ws, starts):
        return {"x": self._to(ws.take(ws.metric, starts))}

    def loss(self, batch):
        return torch.mean((self.module(batch["x"]) - batch["x"]) ** 2)

    def window_scores(self, batch):
        return torch.mean((self.module(batch["x"]) - batch["x"]) ** 2, dim=-1)


def data() -> WindowSet:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    x[:, 1] = x[:, 0]
    return WindowSet.from_arrays(x, window=8, stride=4)


def make(epochs: int) -> TinyAutoencoder:
    return TinyAutoencoder(TinyConfig(train=TrainConfig(epochs=epochs, batch_size=8, patience=10, device="cpu")),
                           data().schema, seed=3)


def test_resume_from_checkpoint_continues_where_it_stopped(tmp_path):
    ws = data()
    straight = make(4)
    h_straight = straight.fit(ws, ws)
    first = make(2)
    first.checkpoint_dir = tmp_path
    first.fit(ws, ws)
    assert (tmp_path / "last.pt").exists()
    resumed = make(4)
    resumed.checkpoint_dir = tmp_path
    h = resumed.fit(ws, ws)
    assert h["epoch"] == [1, 2, 3, 4]
    np.testing.assert_allclose(h["train_loss"], h_straight["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(resumed.score(ws), straight.score(ws), rtol=1e-5, equal_nan=True)


def test_early_stopping_keeps_the_best_epoch():
    ws = data()
    det = TinyAutoencoder(TinyConfig(train=TrainConfig(epochs=30, batch_size=8, patience=1, lr=0.5, device="cpu")),
                          ws.schema, seed=0)
    h = det.fit(ws, ws)
    assert len(h["epoch"]) < 30
    assert det._eval_loss(ws) <= min(h["val_loss"]) + 1e-6
