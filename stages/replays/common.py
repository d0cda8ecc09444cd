"""What every replay command shares: ``-S`` overrides, metrics beside their floors, the JSON + markdown
it writes, and the refusal to report a split that cannot be scored.

A replay's ``run()`` returns the metrics dict (or a :class:`ReplayResult` with a markdown table);
:func:`replay_main` turns bad input into one line and exit 2 (no file written), writes
``<out>`` and ``<out stem>.md``, and prints the headline numbers with the wall time.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import yaml

from stages.core.errors import InputError

log = logging.getLogger(__name__)

HEADLINE = ("auc_pr", "auc_roc", "precision", "recall", "f1", "threshold", "train_seconds")
CI_METRICS = ("auc_pr", "vus_pr", "f1", "event_f1")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` → ``{"a": {"b": 1}, "c": "x"}`` (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(None, "-S", "KEY=VALUE", pair)
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out.get(k, {}), v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ------------------------------------------------------------------ metrics, floors, intervals


def require_two_classes(labels: np.ndarray, path: str | Path | None, where: str) -> None:
    """A test split with one class has no AUC, recall or F1: refuse it instead of writing nulls."""
    y = np.asarray(labels).ravel()
    n_pos = int((y > 0).sum())
    if n_pos == 0 or n_pos == len(y):
        raise InputError(path, where, "at least one anomalous and one normal unit to evaluate on (choose "
                         "another target/split)", f"{n_pos} anomalous of {len(y)}")


def score_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float, step_s: float = 1.0,
                  vus_window: int | None = None) -> dict[str, Any]:
    """The pipeline's metrics at ``threshold`` (AUC-PR/ROC, VUS-PR, P/R/F1, event metrics, PA, oracles)."""
    from stages.core.evaluation import evaluate

    extra = {} if vus_window is None else {"vus_window": vus_window}
    return evaluate(scores, labels, threshold, step_s, **extra)


def flag_all_metrics(labels: np.ndarray, step_s: float = 1.0, vus_window: int | None = None) -> dict[str, Any]:
    """The trivial detector that flags every unit: its F1 (= 2p/(1+p), p the anomalous share) is a floor."""
    return score_metrics(np.ones(len(labels)), labels, 0.0, step_s, vus_window)


def intervals(scores: np.ndarray, labels: np.ndarray, threshold: float, *, metrics: Iterable[str] = CI_METRICS,
              n_boot: int = 200, level: float = 0.95, seed: int = 0, vus_window: int | None = None
              ) -> dict[str, Any] | None:
    """95 % block-bootstrap intervals over fault events (:func:`stages.core.bootstrap.block_bootstrap_ci`);
    None when ``n_boot`` is 0."""
    from stages.core.bootstrap import block_bootstrap_ci

    if n_boot <= 0:
        return None
    extra = {} if vus_window is None else {"vus_window": vus_window}
    ci = block_bootstrap_ci(np.asarray(scores, np.float64), np.asarray(labels), threshold, metrics=tuple(metrics),
                            n_boot=n_boot, level=level, seed=seed, **extra)
    return {k: list(v) for k, v in ci.items()}


def with_ci(row: Mapping[str, Any], ci: Mapping[str, Any] | None) -> dict[str, Any]:
    """A table row whose CI'd cells read ``0.612 [0.41, 0.80]`` (as text, for the markdown only)."""
    out = dict(row)
    for key, value in (ci or {}).items():
        lo, hi = _bounds(value)
        v = out.get(key)
        if lo is None or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            continue
        out[key] = f"{float(v):.3f} [{lo:.2f}, {hi:.2f}]"
    return out


def _bounds(value: Any) -> tuple[float | None, float | None]:
    """(low, high) from the shapes a CI may take: ``[lo, hi]``, ``{"low","high"}``, ``{"lo","hi"}``."""
    if isinstance(value, Mapping):
        lo = value.get("low", value.get("lo", value.get("ci_low")))
        hi = value.get("high", value.get("hi", value.get("ci_high")))
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        lo, hi = value
    else:
        return None, None
    try:
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        return None, None
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else (None, None)


def table(rows: Mapping[str, Mapping[str, Any]], extra: Iterable[tuple[str, str]] = ()) -> str:
    """Markdown table of a method beside its floors: the floors module's columns + ``extra`` ones."""
    from stages.replays.floors import COLUMNS, markdown_table

    return markdown_table(rows, (*COLUMNS, *extra))


# ------------------------------------------------------------------ the command's product


@dataclass
class ReplayResult:
    metrics: dict[str, Any]
    markdown: str | None = None  # written to ``<out stem>.md`` beside the JSON


def markdown_path(out: str | Path) -> Path:
    return Path(out).with_suffix(".md")


def finish(metrics: dict[str, Any], out: str, keys: Iterable[str] = HEADLINE, markdown: str | None = None,
           wall_s: float | None = None) -> None:
    """Write the pipeline's metrics JSON (+ markdown), print the headline numbers and the wall time."""
    from stages.core.evaluation import write_metrics_json
    from stages.core.io import atomic_path

    write_metrics_json(out, metrics)
    if markdown is not None:
        with atomic_path(markdown_path(out)) as tmp:
            tmp.write_text(markdown, encoding="utf-8")
    head = " ".join(f"{k}={metrics[k]:.4f}" for k in keys if isinstance(metrics.get(k), float))
    wall = f"  wall {wall_s:.1f}s" if wall_s is not None else ""
    sys.stdout.write(f"{head}{wall}  → {out}" + (f" (+ {markdown_path(out)})" if markdown is not None else "") + "\n")


def replay_main(run: Callable[[], dict[str, Any] | ReplayResult], out: str, keys: Iterable[str] = HEADLINE) -> int:
    """Run a replay protocol; bad input ends with one line and exit 2, and no metrics file."""
    t0 = time.perf_counter()
    try:
        result = run()
    except InputError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    metrics, markdown = (result.metrics, result.markdown) if isinstance(result, ReplayResult) else (result, None)
    wall = time.perf_counter() - t0
    metrics["wall_seconds"] = wall
    finish(metrics, out, keys, markdown, wall)
    return 0
