"""The shared torch training loop: early stopping, checkpoint resume, deterministic curves, NaN stops."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from stages.core.errors import InputError
from stages.core.windowset import WindowSet
from stages.nets.base import TrainConfig
from stages.nets.torch_detector import TorchDetector


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


class DivergingAutoencoder(TinyAutoencoder):
    """The tiny autoencoder plus a log-barrier term that training walks into: ``w`` starts at 1 and its
    gradient is always positive, so after a few epochs of AdamW steps ``w`` crosses 0 and log(w) is NaN."""

    name = "diverging"

    def build_module(self) -> torch.nn.Module:
        net = super().build_module()
        net.register_parameter("w", torch.nn.Parameter(torch.ones(())))
        return net

    def loss_terms(self, batch):
        return {"recon": torch.mean((self.module(batch["x"]) - batch["x"]) ** 2),
                "log_barrier": self.module.w + 0.01 * torch.log(self.module.w)}

    def loss(self, batch):
        return sum(self.loss_terms(batch).values())


def test_a_loss_that_becomes_nan_stops_training_with_one_line():
    ws = data()
    det = DivergingAutoencoder(TinyConfig(train=TrainConfig(epochs=20, batch_size=8, patience=20, lr=0.05,
                                                            device="cpu")), ws.schema, seed=0)
    with pytest.raises(InputError) as err:
        det.fit(ws, ws)
    msg = str(err.value)
    assert "\n" not in msg
    m = re.fullmatch(r"data/windows/adhoc: diverging epoch (\d+) training loss \(batch \d+\) "
                     r"\(non-finite part: log_barrier\): expected a finite loss .*, got nan", msg)
    assert m and int(m.group(1)) >= 2, msg  # it trained fine first, then stopped at the first NaN
    assert float(det.module.w.detach()) < 0  # the last finite step crossed 0 ...
    assert all(bool(torch.isfinite(p).all()) for p in det.module.parameters())  # ... no NaN step was applied


def test_non_finite_input_stops_at_the_validation_loss_instead_of_keeping_best_inf():
    ws = data()
    bad = data()
    bad.metric[50, 2] = np.nan  # one poisoned cell in the validation windows
    with pytest.raises(InputError, match=r"^data/windows/adhoc: tiny epoch 1 validation loss \(windows from step "
                                         r"\d+\): expected a finite loss"):
        make(3).fit(ws, bad)
    train_bad = data()
    train_bad.metric[10, 0] = np.inf
    with pytest.raises(InputError, match=r"tiny epoch 1 training loss \(batch \d+\)"):
        make(3).fit(train_bad, ws)
