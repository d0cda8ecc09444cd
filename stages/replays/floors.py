"""The floors every replay reports beside its method: random scores, PCA and IsolationForest.

A replay's figure means little alone: on some public sets a plain PCA reconstruction already
beats the published method. :func:`floor_metrics` fits each floor detector (``stages.nets``
baselines, looked up through the registry) on *the same* train / val / test WindowSets the
method saw — same chronological split, same training-only normalisation — chooses its threshold
from its own validation scores (no label) and evaluates it on the same test steps.
:func:`markdown_table` renders method and floors side by side for the ``<out>.md`` beside a
replay's JSON.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from stages.core.evaluation import ThresholdParams, choose_threshold
from stages.core.params import PARAMS_FILE, build, load_raw
from stages.core.windowset import WindowSet
from stages.nets.registry import detector_class

log = logging.getLogger(__name__)

FLOORS = ("random", "pca", "iforest")

# (metrics key, column header); a column is shown only when some row has the key
COLUMNS = (
    ("auc_pr", "AUC-PR"),
    ("auc_roc", "AUC-ROC"),
    ("vus_pr", "VUS-PR"),
    ("f1", "F1 (label-free thr.)"),
    ("event_recall", "event recall"),
    ("best_f1_oracle_pa", "PA best-F1 (oracle)"),
)


def floor_configs(names: Iterable[str], configs: Mapping[str, Mapping[str, Any]] | None = None,
                  params_file: str | Path | None = PARAMS_FILE) -> dict[str, Any]:
    """Typed config per floor: ``configs[name]`` if given, else that section of params.yaml, else defaults."""
    raw_params: dict[str, Any] = {}
    if configs is None and params_file is not None and Path(params_file).is_file():
        raw_params = load_raw(params_file)
    out = {}
    for name in names:
        cls = detector_class(name)
        raw = (configs or {}).get(name, raw_params.get(name)) or {}
        out[name] = build(cls.Config, dict(raw), where=name, source=params_file or "floors")
    return out


def _rewindow(ws: WindowSet, window: int | None) -> WindowSet:
    """The same span with another window length (stride 1 kept); ``None`` keeps it as is."""
    if window is None or window == ws.window:
        return ws
    if window < 1:
        raise ValueError(f"floor window must be ≥ 1, got {window}")
    return dataclasses.replace(ws, window=window, starts=None)


def floor_scores(train: WindowSet, val: WindowSet, test: WindowSet, seed: int = 0,
                 names: Iterable[str] = FLOORS, *, window: int | None = None,
                 configs: Mapping[str, Mapping[str, Any]] | None = None,
                 timings: dict[str, dict[str, float]] | None = None
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fit each floor on ``train`` and return per-step ``(val_scores, test_scores)`` per floor.

    ``window`` re-windows the same spans for the floors (e.g. a short PCA window beside a long
    method window); ``None`` uses the method's. ``timings``, when given, receives
    ``{name: {"train_seconds", "score_seconds", "score_windows_per_s"}}``.
    """
    train, val, test = (_rewindow(ws, window) for ws in (train, val, test))
    cfgs = floor_configs(names, configs)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, cfg in cfgs.items():
        det = detector_class(name)(cfg, train.schema, seed=seed)
        t0 = time.perf_counter()
        det.fit(train, val)
        t1 = time.perf_counter()
        val_s = np.asarray(det.score(val), dtype=np.float64)
        t2 = time.perf_counter()
        test_s = np.asarray(det.score(test), dtype=np.float64)
        t3 = time.perf_counter()
        out[name] = (val_s, test_s)
        if timings is not None:
            timings[name] = {"train_seconds": t1 - t0, "score_seconds": t3 - t2,
                             "score_windows_per_s": len(test) / max(t3 - t2, 1e-9)}
        log.info("floor %s: fit %.1fs, scored %d test windows in %.1fs", name, t1 - t0, len(test), t3 - t2)
    return out


def floor_metrics(train: WindowSet, val: WindowSet, test: WindowSet, *, threshold_params: ThresholdParams,
                  seed: int = 0, step_s: float | None = None, names: Iterable[str] = FLOORS,
                  window: int | None = None, eval_from: int = 0,
                  configs: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """:func:`floor_scores`, a label-free threshold from each floor's val scores, :func:`evaluate` on test.

    ``eval_from`` drops the first test steps from evaluation (context prepended to the test
    series that the method does not score either). Test labels are read only by ``evaluate``.
    """
    from stages.replays.common import score_metrics  # evaluate() + VUS-PR when the evaluation module has it

    timings: dict[str, dict[str, float]] = {}
    scores = floor_scores(train, val, test, seed, names, window=window, configs=configs, timings=timings)
    step = float(step_s if step_s is not None else test.schema.step_s)
    labels = test.labels[eval_from:]
    out: dict[str, dict[str, Any]] = {}
    for name, (val_s, test_s) in scores.items():
        threshold = choose_threshold(val_s, threshold_params)  # scores only
        m: dict[str, Any] = score_metrics(test_s[eval_from:], labels, threshold, step)
        m.update(timings.get(name, {}))
        m["window"] = int(window or test.window)
        out[name] = m
    return out


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return "–"
        return f"{v:.1f}" if abs(v) >= 100 else f"{v:.3f}"
    return str(value)


def markdown_table(rows: Mapping[str, Mapping[str, Any]],
                   columns: Iterable[tuple[str, str]] = COLUMNS) -> str:
    """One row per method (in ``rows`` order: the method first, then its floors); missing cells are '–'.

    A column whose key no row has (e.g. VUS-PR before it exists) is left out.
    """
    cols = [(k, h) for k, h in columns if any(k in r for r in rows.values())]
    lines = ["| method | " + " | ".join(h for _, h in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(_cell(r.get(k)) for k, _ in cols) + " |")
    return "\n".join(lines) + "\n"
