"""The detector interface (DESIGN §6): typed config, ``fit`` / ``score`` / ``save`` / ``load``.

Scores are per grid step (higher = more anomalous); thresholds are not the detector's business
(``stages.core.evaluation`` chooses them without test labels).
"""
from __future__ import annotations

import abc
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from stages.core.errors import InputError
from stages.core.io import atomic_dir, dumps_json
from stages.core.params import LLMParams, build
from stages.core.windowset import FeatureSchema, WindowSet


def __getattr__(name: str) -> Any:
    """``from stages.nets.base import TorchDetector`` keeps working; the torch training loop lives in
    :mod:`stages.nets.torch_detector` so that importing this module (every baseline does) loads no torch."""
    if name == "TorchDetector":
        from stages.nets.torch_detector import TorchDetector

        return TorchDetector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Detector(abc.ABC):
    """Base of every detector. Subclasses set ``name`` and ``Config`` (a dataclass)."""

    name: ClassVar[str]
    Config: ClassVar[type]
    # what :meth:`state` holds and :meth:`load_state` receives: torch tensors ("torch", every neural
    # detector) or numpy arrays ("numpy": saving and loading then never import torch)
    state_framework: ClassVar[str] = "torch"
    # True when the scores move with the torch thread count (reduction order): evaluate.score_threads=auto
    # then keeps the detector's own cpu_threads instead of a count chosen by the machine's load. True by
    # default: every torch detector's scores moved between 1 and 2 threads (default models, fresh
    # processes, 2026-12-04); a detector shown to be thread-independent (the numpy floors) says False
    scores_depend_on_threads: ClassVar[bool] = True

    def __init__(self, config: Any, schema: FeatureSchema, llm: LLMParams | None = None, seed: int = 0):
        self.config = config
        self.schema = schema
        self.llm = llm or LLMParams()
        self.seed = seed

    @classmethod
    def from_params(cls, raw: dict | None, schema: FeatureSchema, llm: LLMParams | None = None, seed: int = 0):
        return cls(build(cls.Config, raw or {}, where=cls.name), schema, llm, seed)

    def source_datasets(self, target: str, available: list[str]) -> list[str]:
        """Other datasets whose *training* splits this detector learns from (pre-training,
        meta-learning source systems). The train stage loads them and passes them to ``fit``."""
        return []

    @abc.abstractmethod
    def fit(self, train: WindowSet, val: WindowSet, sources: dict[str, WindowSet] | None = None
            ) -> dict[str, list[float]]:
        """Train on ``train`` (early-stop on ``val``); return per-epoch curves (train_loss, val_loss, ...).

        ``sources`` maps dataset name → that dataset's full training split (see ``source_datasets``).
        Labels of ``train`` may be used only by methods that are few-shot *supervised* by design.
        """

    @abc.abstractmethod
    def score(self, windows: WindowSet) -> np.ndarray:
        """Anomaly score per grid step of ``windows`` (shape ``(windows.n_steps,)``, NaN = unscored)."""

    def explain(self, windows: WindowSet) -> dict[str, Any]:
        """Optional extra outputs (fusion weights, per-metric contributions)."""
        return {}

    # -- persistence: JSON config + tensors (+ extra files); subclasses override the hooks
    def state(self) -> dict[str, Any]:
        """Tensors to save: torch tensors, or numpy arrays when ``state_framework`` is "numpy"."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass

    def save_extra(self, directory: Path) -> None:
        """Files beyond config and tensors (a vocabulary, an sklearn model)."""

    def load_extra(self, directory: Path) -> None:
        """Read what :meth:`save_extra` wrote; runs before :meth:`load_state`."""

    def save(self, directory: str | Path) -> None:
        with atomic_dir(directory) as tmp:
            meta = {"detector": self.name, "config": dataclasses.asdict(self.config), "seed": self.seed,
                    "llm": dataclasses.asdict(self.llm)}
            (tmp / "config.json").write_text(dumps_json(meta))
            self.save_extra(tmp)
            _save_state(self.state(), tmp / "model.safetensors")

    @classmethod
    def load(cls, directory: str | Path, schema: FeatureSchema) -> "Detector":
        directory = Path(directory)
        for name in ("config.json", "model.safetensors"):
            if not (directory / name).exists():
                raise InputError(directory / name, None, f"a saved {cls.name} detector file")
        meta = json.loads((directory / "config.json").read_text())
        det = cls(build(cls.Config, meta["config"], where=cls.name), schema,
                  build(LLMParams, meta["llm"], where="llm"), meta["seed"])
        det.load_extra(directory)
        det.load_state(_load_state(directory / "model.safetensors", cls.state_framework))
        return det


def _save_state(state: dict[str, Any], path: Path) -> None:
    """``model.safetensors``: numpy arrays through ``safetensors.numpy`` (no torch import), anything
    else as torch tensors through ``safetensors.torch``; the same dtypes and shapes give the same bytes."""
    if all(isinstance(v, np.ndarray) for v in state.values()):
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
        return
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))


def _load_state(path: Path, framework: str) -> dict[str, Any]:
    if framework == "numpy":
        from safetensors.numpy import load_file

        return load_file(str(path))
    from safetensors.torch import load_file

    return load_file(str(path))


@dataclass(frozen=True)
class TrainConfig:
    """Knobs of the shared torch training loop; embedded in each torch detector's config."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 3  # early stopping on validation loss
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA
    max_train_windows: int = 0  # 0 = all; otherwise a deterministic subsample per epoch
    grad_clip: float = 1.0
    # early stopping reads the loss on at most this many evenly spaced validation windows (0 = all):
    # a week-long validation span would otherwise cost more per epoch than the few-shot training
    max_val_windows: int = 512
    # windows per forward pass when scoring (eval mode: windows are independent, so wider is cheaper)
    score_batch_size: int = 128
