"""Uncertainty of the reported numbers: block bootstrap over fault events, Student-t across seeds.

Steps of a score series are strongly dependent (one fault lights up many consecutive steps,
window scores overlap), so resampling steps would make intervals far too narrow. The unit of
resampling here is the fault event: the test span is cut into consecutive blocks holding exactly
one event each (cuts halfway between consecutive events; leading and trailing normal steps join
the first and last block), blocks are drawn with replacement and concatenated, and the metrics
are recomputed. The interval is the percentile interval of the replicates.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from stages.core.errors import InputError
from stages.core.evaluation import segments
from stages.core.vus import DEFAULT_WINDOW, vus

log = logging.getLogger(__name__)

BOOT_METRICS = ("auc_pr", "auc_roc", "vus_pr", "vus_roc", "precision", "recall", "f1", "event_precision",
                "event_recall", "event_f1")


def event_blocks(labels: np.ndarray) -> np.ndarray:
    """(K, 2) [start, end) blocks tiling the span, one fault event each, cut halfway between events."""
    segs = segments(labels)
    n = len(np.asarray(labels).ravel())
    if len(segs) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    cuts = (segs[:-1, 1] + segs[1:, 0]) // 2  # ≥ the previous event's end, < the next event's start
    starts = np.concatenate([[0], cuts])
    return np.stack([starts, np.concatenate([cuts, [n]])], axis=1)


class _Ranking:
    """AUC-PR (average precision) and AUC-ROC of a span, or of any resampling of its steps, without re-sorting.

    The span is sorted once; a replicate is given as how many times it holds each original step
    (``counts``), so its curves are weighted cumulative sums over the same order — O(n) per
    replicate. Definitions equal sklearn's (tied scores form one threshold).
    """

    def __init__(self, s: np.ndarray, y: np.ndarray):
        order = np.argsort(-s, kind="mergesort")
        ss = s[order]
        gid = np.empty(len(s), dtype=np.int64)
        gid[order] = np.concatenate([[0], np.cumsum(ss[1:] != ss[:-1])]) if len(s) else np.empty(0, np.int64)
        self.gid, self.n_groups, self.y = gid, (int(gid.max()) + 1 if len(s) else 0), y.astype(np.float64)

    def __call__(self, counts: np.ndarray) -> tuple[float, float]:
        c = counts.astype(np.float64)
        tp = np.cumsum(np.bincount(self.gid, weights=c * self.y, minlength=self.n_groups))
        fp = np.cumsum(np.bincount(self.gid, weights=c * (1.0 - self.y), minlength=self.n_groups))
        if len(tp) == 0 or tp[-1] == 0 or fp[-1] == 0:
            return math.nan, math.nan
        d_tp = np.diff(tp, prepend=0.0)
        hit = d_tp > 0
        ap = float(np.sum(d_tp[hit] * tp[hit] / (tp[hit] + fp[hit])) / tp[-1])
        tpr = np.concatenate([[0.0], tp / tp[-1]])
        fpr = np.concatenate([[0.0], fp / fp[-1]])
        auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0)
        return ap, auc


def _harmonic(p: float, r: float) -> float:
    if math.isnan(p) or math.isnan(r):
        return math.nan
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def metric_values(s: np.ndarray, y: np.ndarray, thr: np.ndarray | float, names: Sequence[str],
                  vus_window: int = DEFAULT_WINDOW, ranking: tuple[_Ranking, np.ndarray] | None = None
                  ) -> dict[str, float]:
    """The requested metrics of one finite span, computed lean (what one bootstrap replicate needs).

    Same definitions as :func:`stages.core.evaluation.evaluate` (alarm = score > threshold).
    ``ranking`` = (ranking of the original span, step counts of this replicate) skips the sort.
    """
    out: dict[str, float] = {}
    if {"auc_pr", "auc_roc"} & set(names):
        rk, counts = ranking if ranking is not None else (_Ranking(s, y), np.ones(len(s)))
        out["auc_pr"], out["auc_roc"] = rk(counts)
    if {"vus_pr", "vus_roc"} & set(names):
        out["vus_roc"], out["vus_pr"] = vus(s, y, vus_window)
    if {"precision", "recall", "f1", "event_precision", "event_recall", "event_f1"} & set(names):
        alarm = s > thr
        tp, n_alarm, n_pos = float(np.sum(alarm & y)), float(alarm.sum()), float(y.sum())
        out["precision"] = tp / n_alarm if n_alarm else 0.0
        out["recall"] = tp / n_pos if n_pos else math.nan
        out["f1"] = _harmonic(out["precision"], out["recall"])
        cum_alarm = np.concatenate([[0], np.cumsum(alarm)])
        events = segments(y)
        out["event_recall"] = (float(np.mean(cum_alarm[events[:, 1]] > cum_alarm[events[:, 0]]))
                               if len(events) else math.nan)
        runs = segments(alarm)
        cum_y = np.concatenate([[0], np.cumsum(y)])
        out["event_precision"] = float(np.mean(cum_y[runs[:, 1]] > cum_y[runs[:, 0]])) if len(runs) else 0.0
        out["event_f1"] = _harmonic(out["event_precision"], out["event_recall"])
    return {k: out[k] for k in names}


def block_bootstrap_ci(scores: np.ndarray, labels: np.ndarray, threshold: float | np.ndarray, *,
                       metrics: Sequence[str] = ("auc_pr", "vus_pr", "event_f1"), n_boot: int = 200,
                       level: float = 0.95, seed: int = 0,
                       vus_window: int = DEFAULT_WINDOW) -> dict[str, tuple[float, float]]:
    """Percentile ``level`` interval of each metric under a block bootstrap over fault events.

    ``threshold`` is a number or the per-step threshold array (carried along with its blocks).
    NaN scores are dropped first, as :func:`stages.core.evaluation.evaluate` does. Fewer than two
    events: every interval is (nan, nan), with a warning.
    """
    unknown = [m for m in metrics if m not in BOOT_METRICS]
    if unknown:
        raise InputError(None, "bootstrap metrics", "one of " + ", ".join(BOOT_METRICS), unknown[0])
    if not 0.0 < level < 1.0 or n_boot < 1:
        raise ValueError(f"block_bootstrap_ci: need 0 < level < 1 and n_boot ≥ 1, got {level}, {n_boot}")
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel() > 0
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in length")
    thr = np.full(len(s), float(threshold)) if np.ndim(threshold) == 0 else \
        np.asarray(threshold, dtype=np.float64).ravel()
    if len(thr) != len(s):
        raise ValueError(f"threshold array ({len(thr)} steps) and scores ({len(s)} steps) differ in length")
    keep = ~np.isnan(s)
    s, y, thr = s[keep], y[keep], thr[keep]
    blocks = event_blocks(y)
    nan_out = {m: (math.nan, math.nan) for m in metrics}
    if len(blocks) < 2:
        log.warning("bootstrap: %d fault event(s) in the span; intervals need at least 2, reporting null",
                    len(blocks))
        return nan_out
    rng = np.random.default_rng(seed)
    ranking = _Ranking(s, y) if {"auc_pr", "auc_roc"} & set(metrics) else None
    lens = blocks[:, 1] - blocks[:, 0]
    values = np.full((n_boot, len(metrics)), np.nan)
    for b in tqdm(range(n_boot), desc="block bootstrap", unit="replicate", leave=False, disable=None):
        pick = rng.integers(0, len(blocks), len(blocks))
        ln = lens[pick]
        offsets = np.cumsum(ln) - ln
        idx = np.repeat(blocks[pick, 0] - offsets, ln) + np.arange(int(ln.sum()))
        counts = np.bincount(idx, minlength=len(s)) if ranking is not None else None
        vals = metric_values(s[idx], y[idx], thr[idx], metrics, vus_window,
                             ranking=None if ranking is None else (ranking, counts))
        values[b] = [vals[m] for m in metrics]
    lo_q, hi_q = 50.0 * (1.0 - level), 50.0 * (1.0 + level)
    out = {}
    for j, m in enumerate(metrics):
        col = values[:, j]
        col = col[np.isfinite(col)]
        out[m] = (float(np.percentile(col, lo_q)), float(np.percentile(col, hi_q))) if len(col) else nan_out[m]
    log.info("bootstrap: %d replicates over %d events: %s", n_boot, len(blocks),
             ", ".join(f"{m} [{a:.4g}, {b:.4g}]" for m, (a, b) in out.items()))
    return out


def mean_interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): Student-t ``level`` interval of the mean across seeds; NaNs ignored.

    One value → (value, nan, nan); none → all nan.
    """
    from scipy.stats import t as student_t

    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if len(v) == 1:
        return mean, math.nan, math.nan
    half = float(student_t.ppf(0.5 + level / 2.0, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, mean - half, mean + half
