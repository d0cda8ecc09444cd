"""The floor every learned detector must beat: random scores, IsolationForest and PCA.

IsolationForest and PCA see *all* modalities of a window: each grid step is the concatenation
of its metric channels, flattened trace-edge features and log template counts, and a window is
``window`` such steps flattened. Features are already normalised with training statistics by
``windows@ds``; NaNs (missing modalities) become 0, i.e. the training mean.

No torch here, and scikit-learn (about a second to import) only where a sklearn model is fitted
or loaded: the random detector needs neither, and a saved PCA scores with numpy alone.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from stages.core.errors import InputError
from stages.core.windowset import FeatureSchema, WindowSet
from stages.nets.base import Detector

if TYPE_CHECKING:
    from sklearn.ensemble import IsolationForest

log = logging.getLogger(__name__)

SCORE_BATCH = 1024  # windows flattened at a time when scoring (bounds memory on long spans)


def step_features(ws: WindowSet) -> np.ndarray:
    """(T, D) float32: metric | trace edges × features | log counts of every grid step."""
    T = ws.n_steps
    parts = [ws.metric.reshape(T, -1), ws.trace.reshape(T, -1), ws.log.reshape(T, -1)]
    x = np.concatenate(parts, axis=1).astype(np.float32, copy=False)
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def n_step_features(schema: FeatureSchema) -> int:
    return schema.n_metric + schema.n_edges * len(schema.edge_features) + schema.n_log


def training_starts(ws: WindowSet, cap: int, seed: int) -> np.ndarray:
    """All window starts, or a seeded sorted subsample of ``cap`` of them (0 = all)."""
    if cap and len(ws.starts) > cap:
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(ws.starts, size=cap, replace=False))
    return ws.starts


def _require_windows(name: str, ws: WindowSet) -> None:
    if len(ws) == 0:
        raise ValueError(f"{name}: the training split has no complete window (window {ws.window}, "
                         f"{ws.n_steps} steps)")


# ------------------------------------------------------------------ random


@dataclass(frozen=True)
class RandomConfig:
    """No knobs: the seed (global ``seed``) alone fixes the scores."""


class RandomDetector(Detector):
    """Seeded uniform scores — the chance level of every metric (AUC-PR ≈ anomaly rate)."""

    name = "random"
    Config = RandomConfig
    state_framework = "numpy"
    scores_depend_on_threads = False  # numpy scoring: torch threads never reach it

    def fit(self, train: WindowSet, val: WindowSet, sources: dict[str, WindowSet] | None = None
            ) -> dict[str, list[float]]:
        return {}

    def score(self, windows: WindowSet) -> np.ndarray:
        if windows.origin is not None:  # a piece of a stream: a step's score depends on its absolute step only
            return step_uniform(self.seed, windows.origin + np.arange(windows.n_steps, dtype=np.int64))
        # a fresh generator per call: the same span always gets the same scores
        return np.random.default_rng(self.seed).random(windows.n_steps)


def step_uniform(seed: int, steps: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) numbers as a hash (splitmix64) of (seed, step): the same step always gets the same one."""
    with np.errstate(over="ignore"):
        key = steps.astype(np.uint64) + (np.uint64(seed % 2**24) << np.uint64(40)) + np.uint64(1)
        z = key * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


# ------------------------------------------------------------------ IsolationForest


@dataclass(frozen=True)
class IForestConfig:
    n_estimators: int = 200
    max_samples: int = 256  # sub-sample size of each tree (sklearn's "auto" is min(256, n))
    max_features: float = 1.0  # fraction of features per tree
    contamination: Literal["auto"] | float = "auto"  # only affects sklearn's predict(); scores ignore it
    max_train_windows: int = 5000  # seeded subsample of training windows (0 = all)
    n_jobs: int = 1
    # what one sample is: `window` = the flattened window; `summary` = per column mean, std, min, max
    # and last value of the window; `step` = one grid step's features (scored step by step).
    # `summary` ranks first on the _dev datasets on the 20 s grid, by a hair (README, "What was tuned")
    representation: Literal["window", "summary", "step"] = "summary"

    def validate(self) -> None:
        if self.n_estimators < 1:
            raise InputError("params.yaml", "iforest.n_estimators", "at least 1", self.n_estimators)
        if self.max_samples < 2:
            raise InputError("params.yaml", "iforest.max_samples", "at least 2", self.max_samples)
        if not 0.0 < self.max_features <= 1.0:
            raise InputError("params.yaml", "iforest.max_features", "a fraction in (0, 1]", self.max_features)
        if self.contamination != "auto" and not 0.0 < float(self.contamination) <= 0.5:
            raise InputError("params.yaml", "iforest.contamination", "'auto' or a fraction in (0, 0.5]",
                             self.contamination)
        if self.max_train_windows < 0:
            raise InputError("params.yaml", "iforest.max_train_windows", "0 (all) or a positive count",
                             self.max_train_windows)


class IsolationForestDetector(Detector):
    """sklearn IsolationForest on multimodal windows (flattened, summarised or per step); score = −score_samples.

    A forest splits one feature at a time, so a flattened 32-step window spreads one signal over 32
    weak, correlated features; window summary statistics keep it to a few strong ones.

    Persistence: sklearn forests are not tensors, so ``save`` writes ``config.json`` (same
    layout as every detector) plus ``model.joblib``. joblib is pickle: load only directories
    this pipeline wrote.
    """

    name = "iforest"
    Config = IForestConfig
    state_framework = "numpy"
    scores_depend_on_threads = False  # numpy scoring: torch threads never reach it

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model: IsolationForest | None = None

    @classmethod
    def from_params(cls, *args, **kwargs):
        """A detector to fit: sklearn's forest is imported here (seconds), not inside the timed ``fit``."""
        import sklearn.ensemble  # noqa: F401

        return super().from_params(*args, **kwargs)

    def _window_matrix(self, ws: WindowSet, x: np.ndarray, starts: np.ndarray) -> np.ndarray:
        rep = self.config.representation
        if rep == "step":  # the newest step of each window: what an online detector sees
            return x[starts + ws.window - 1]
        w = ws.take(x, starts)
        if rep == "window":
            return w.reshape(len(starts), -1)
        return np.concatenate([w.mean(1), w.std(1), w.min(1), w.max(1), w[:, -1]], axis=1)

    def fit(self, train: WindowSet, val: WindowSet, sources: dict[str, WindowSet] | None = None
            ) -> dict[str, list[float]]:
        _require_windows(self.name, train)
        cfg = self.config
        starts = training_starts(train, cfg.max_train_windows, self.seed)
        X = self._window_matrix(train, step_features(train), starts)
        from sklearn.ensemble import IsolationForest

        log.info("%s: fitting %d trees on %d windows × %d features", self.name, cfg.n_estimators, *X.shape)
        self.model = IsolationForest(n_estimators=cfg.n_estimators, max_samples=min(cfg.max_samples, len(X)),
                                     max_features=cfg.max_features, contamination=cfg.contamination,
                                     random_state=self.seed, n_jobs=cfg.n_jobs).fit(X)
        history = {"train_score_mean": [float(-self.model.score_samples(X).mean())]}
        if len(val):
            history["val_score_mean"] = [float(np.nanmean(self._window_scores(val)))]
        return history

    def _window_scores(self, ws: WindowSet) -> np.ndarray:
        if self.model is None:
            raise RuntimeError(f"{self.name}: score() before fit() or load()")
        x = step_features(ws)
        out = [-self.model.score_samples(self._window_matrix(ws, x, ws.starts[i:i + SCORE_BATCH]))
               for i in range(0, len(ws.starts), SCORE_BATCH)]
        return np.concatenate(out) if out else np.zeros(0)

    def score(self, windows: WindowSet) -> np.ndarray:
        if len(windows) == 0:
            return np.full(windows.n_steps, np.nan)
        if self.config.representation == "step":  # every step scored on its own features
            if self.model is None:
                raise RuntimeError(f"{self.name}: score() before fit() or load()")
            x = step_features(windows)
            out = np.concatenate([-self.model.score_samples(x[i:i + 8 * SCORE_BATCH])
                                  for i in range(0, len(x), 8 * SCORE_BATCH)])
            out[: windows.window - 1] = np.nan  # as every windowed detector: no score before a full window
            return out
        return windows.steps_from_windows(self._window_scores(windows))

    def save_extra(self, directory: Path) -> None:
        if self.model is None:
            raise RuntimeError(f"{self.name}: nothing to save before fit()")
        import joblib

        joblib.dump(self.model, directory / "model.joblib")

    def load_extra(self, directory: Path) -> None:
        if not (directory / "model.joblib").exists():
            raise InputError(directory / "model.joblib", None, f"a saved {self.name} detector file")
        import joblib  # unpickling the forest imports sklearn.ensemble

        self.model = joblib.load(directory / "model.joblib")
        d, n = n_step_features(self.schema), int(getattr(self.model, "n_features_in_", 0))
        if d and n % d:
            raise InputError(directory / "model.joblib", "n_features_in_",
                             f"a multiple of {d} features (the schema's features per step)", n)


# ------------------------------------------------------------------ PCA


@dataclass(frozen=True)
class PCAConfig:
    n_components: int = 16  # capped at min(n_windows, n_features)
    max_train_windows: int = 5000  # seeded subsample of training windows (0 = all)

    def validate(self) -> None:
        if self.n_components < 1:
            raise InputError("params.yaml", "pca.n_components", "at least 1", self.n_components)
        if self.max_train_windows < 0:
            raise InputError("params.yaml", "pca.max_train_windows", "0 (all) or a positive count",
                             self.max_train_windows)


class PCADetector(Detector):
    """Reconstruction error of flattened windows through a PCA fitted on training windows.

    The residual of each window is reshaped to (window, features) and summed per step, so the
    score is per grid step. Persistence is tensors (mean, components) in safetensors — no pickle;
    numpy arrays throughout, so scoring a saved PCA imports neither torch nor scikit-learn.
    """

    name = "pca"
    Config = PCAConfig
    state_framework = "numpy"
    scores_depend_on_threads = False  # numpy scoring: torch threads never reach it

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.mean: np.ndarray | None = None  # (window·D,)
        self.components: np.ndarray | None = None  # (k, window·D), orthonormal rows

    @classmethod
    def from_params(cls, *args, **kwargs):
        """A detector to fit: sklearn's PCA is imported here (seconds), not inside the timed ``fit``;
        a loaded PCA scores with numpy alone."""
        import sklearn.decomposition  # noqa: F401

        return super().from_params(*args, **kwargs)

    def fit(self, train: WindowSet, val: WindowSet, sources: dict[str, WindowSet] | None = None
            ) -> dict[str, list[float]]:
        _require_windows(self.name, train)
        starts = training_starts(train, self.config.max_train_windows, self.seed)
        X = train.take(step_features(train), starts).reshape(len(starts), -1).astype(np.float64)
        k = min(self.config.n_components, *X.shape)
        from sklearn.decomposition import PCA

        # sklearn's "auto": exact SVD for small matrices, seeded randomized SVD for large ones
        pca = PCA(n_components=k, svd_solver="auto", random_state=self.seed).fit(X)
        # C order, as after a safetensors round trip: BLAS takes the same path → identical scores
        self.mean = np.ascontiguousarray(pca.mean_, dtype=np.float32)
        self.components = np.ascontiguousarray(pca.components_, dtype=np.float32)
        log.info("%s: %d components explain %.1f%% of training variance", self.name, k,
                 100 * float(pca.explained_variance_ratio_.sum()))
        history = {"explained_variance": [float(pca.explained_variance_ratio_.sum())],
                   "train_error": [float(np.mean(self._window_errors(train, starts)))]}
        if len(val):
            history["val_error"] = [float(np.mean(self._window_errors(val, val.starts)))]
        return history

    def _window_errors(self, ws: WindowSet, starts: np.ndarray) -> np.ndarray:
        """(W, window) squared reconstruction error per step of each window."""
        if self.components is None:
            raise RuntimeError(f"{self.name}: score() before fit() or load()")
        x = step_features(ws)
        mean = np.ascontiguousarray(self.mean, dtype=np.float64)
        comp = np.ascontiguousarray(self.components, dtype=np.float64)
        out = []
        for i in range(0, len(starts), SCORE_BATCH):
            b = starts[i:i + SCORE_BATCH]
            X = ws.take(x, b).reshape(len(b), -1).astype(np.float64) - mean
            resid = X - (X @ comp.T) @ comp
            out.append((resid ** 2).reshape(len(b), ws.window, -1).sum(axis=2))
        return np.concatenate(out) if out else np.zeros((0, ws.window))

    def score(self, windows: WindowSet) -> np.ndarray:
        if len(windows) == 0:
            return np.full(windows.n_steps, np.nan)
        return windows.steps_from_windows(self._window_errors(windows, windows.starts))

    def state(self) -> dict[str, np.ndarray]:
        if self.components is None:
            raise RuntimeError(f"{self.name}: nothing to save before fit()")
        return {"mean": self.mean, "components": self.components}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.mean = np.array(state["mean"])  # own, writable copies (as torch's .numpy() gave)
        self.components = np.array(state["components"])
        d = n_step_features(self.schema)
        if d and self.mean.shape[0] % d:
            raise InputError("model.safetensors", "mean", f"a multiple of {d} features (the schema's per step)",
                             self.mean.shape[0])
