"""Honest evaluation: label-free thresholds, metrics at that threshold, oracle numbers kept apart.

The operating threshold comes from validation *scores* only (:func:`choose_threshold` takes no
labels, so it cannot peek). :func:`evaluate` reports threshold-free ranking metrics (AUC-PR,
AUC-ROC), point-wise and event-wise metrics at the chosen threshold, the legacy point-adjusted F1,
and — clearly named ``*_oracle`` — the best F1 over all thresholds, which papers often report but
which needs test labels and therefore never chooses anything here.

Alarm rule everywhere: a step alarms when ``score > threshold`` (strictly), so ``val_max`` raises
no alarm on the validation span itself.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from stages.core.errors import InputError
from stages.core.io import atomic_path

log = logging.getLogger(__name__)

MIN_POT_PEAKS = 10  # fewer excesses than this cannot fit a GPD meaningfully


@dataclass(frozen=True)
class ThresholdParams:
    """How the operating threshold is chosen from validation scores (never from labels).

    ``pot``: Peaks Over Threshold (the SPOT initialisation step): fit a Generalised Pareto
    distribution to the excesses over the ``pot_init_level`` quantile and return the score whose
    exceedance probability is ``pot_risk``. ``val_quantile``: the ``quantile`` of validation
    scores. ``val_max``: the largest validation score. ``contamination``: the ``1 - contamination``
    quantile of validation scores, where ``contamination`` is the expected share of anomalous
    steps — set it, or leave it null and the evaluate stage estimates it from the labelled
    few-shot *training* span (the few labels a few-shot method is allowed to see).
    """

    method: Literal["pot", "val_quantile", "val_max", "contamination"] = "pot"
    quantile: float = 0.99
    pot_init_level: float = 0.98
    pot_risk: float = 1e-3
    contamination: float | None = None
    max_contamination: float = 0.5

    def validate(self) -> None:
        if not 0.0 < self.quantile <= 1.0:
            raise InputError("params.yaml", "evaluate.threshold.quantile", "a number in (0, 1]", self.quantile)
        if not 0.0 < self.pot_init_level < 1.0:
            raise InputError("params.yaml", "evaluate.threshold.pot_init_level", "a number in (0, 1)",
                             self.pot_init_level)
        if not 0.0 < self.pot_risk < 1.0 - self.pot_init_level:
            raise InputError("params.yaml", "evaluate.threshold.pot_risk",
                             "a probability in (0, 1 - pot_init_level)", self.pot_risk)
        if self.contamination is not None and not 0.0 < self.contamination < 1.0:
            raise InputError("params.yaml", "evaluate.threshold.contamination", "null or a share in (0, 1)",
                             self.contamination)


# ------------------------------------------------------------------ thresholds


def _gpd_profile_loglik(x: float, y: np.ndarray) -> tuple[float, float, float]:
    """Profile log-likelihood of GPD excesses ``y`` at ``x = gamma / sigma`` → (loglik, gamma, sigma).

    For fixed x the MLE of gamma is mean(log(1 + x·y)) and sigma = gamma / x (Grimshaw 1993), so the
    two-parameter fit reduces to a one-dimensional search over x.
    """
    if abs(x) < 1e-12:  # the exponential limit
        sigma = float(y.mean())
        return -len(y) * math.log(sigma) - len(y), 0.0, sigma
    z = 1.0 + x * y
    if np.any(z <= 0):
        return -math.inf, math.nan, math.nan
    gamma = float(np.log(z).mean())
    sigma = gamma / x
    if sigma <= 0:
        return -math.inf, gamma, sigma
    return -len(y) * math.log(sigma) - len(y) * (1.0 + gamma), gamma, sigma


def fit_gpd(excesses: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood (gamma, sigma) of a Generalised Pareto distribution (Grimshaw's trick).

    Searches x = gamma/sigma on a log-spaced grid on both sides of 0 (x > -1/max(y) keeps the
    support valid), then refines the best bracket with a bounded scalar search.
    """
    from scipy.optimize import minimize_scalar

    y = np.asarray(excesses, dtype=np.float64)
    y_max, y_mean = float(y.max()), float(y.mean())
    y_min = float(max(y.min(), 1e-9 * y_max))
    lo = -1.0 / y_max * (1.0 - 1e-6)
    hi = max(2.0 * (y_mean - y_min) / (y_min ** 2), 1.0 / y_max)  # Grimshaw's upper bound on the root
    hi = min(hi, 1e6 / y_max)
    mags = np.logspace(-10, 0, 200)
    grid = np.concatenate([lo * mags[::-1], [0.0], hi * mags])
    lls = np.array([_gpd_profile_loglik(x, y)[0] for x in grid])
    best = int(np.nanargmax(lls))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    if b > a:
        res = minimize_scalar(lambda x: -_gpd_profile_loglik(x, y)[0], bounds=(a, b), method="bounded",
                              options={"xatol": 1e-12 * max(abs(a), abs(b), 1e-300)})
        x = float(res.x) if -res.fun >= lls[best] else float(grid[best])
    else:
        x = float(grid[best])
    _, gamma, sigma = _gpd_profile_loglik(x, y)
    return gamma, sigma


def pot_threshold(scores: np.ndarray, init_level: float, risk: float) -> float | None:
    """SPOT initial threshold z_q = t + sigma/gamma·((q·n/N_t)^-gamma − 1); None when degenerate."""
    n = len(scores)
    t = float(np.quantile(scores, init_level))
    excess = scores[scores > t] - t
    if len(excess) < MIN_POT_PEAKS:
        log.warning("POT: only %d of %d scores exceed the %.4g quantile (need %d); falling back",
                    len(excess), n, init_level, MIN_POT_PEAKS)
        return None
    gamma, sigma = fit_gpd(excess)
    if not (math.isfinite(gamma) and math.isfinite(sigma)) or sigma <= 0:
        log.warning("POT: GPD fit failed (gamma=%s, sigma=%s); falling back", gamma, sigma)
        return None
    r = risk * n / len(excess)
    z = t - sigma * math.log(r) if abs(gamma) < 1e-9 else t + sigma / gamma * (r ** (-gamma) - 1.0)
    if not math.isfinite(z):
        log.warning("POT: non-finite threshold (gamma=%.4g, sigma=%.4g); falling back", gamma, sigma)
        return None
    log.info("POT: init %.6g (%d peaks), gamma %.4g, sigma %.4g → threshold %.6g", t, len(excess), gamma, sigma, z)
    return float(z)


def choose_threshold(val_scores: np.ndarray, params: ThresholdParams) -> float:
    """Operating threshold from validation scores alone (the signature has no labels on purpose)."""
    s = np.asarray(val_scores, dtype=np.float64).ravel()
    s = s[np.isfinite(s)]
    if len(s) == 0:
        raise ValueError("choose_threshold: no finite validation score (is the validation split empty?)")
    if params.method == "val_max":
        return float(s.max())
    if params.method == "contamination":
        if params.contamination is None:
            log.warning("contamination unknown; using the %.4g quantile of validation scores", params.quantile)
            return float(np.quantile(s, params.quantile))
        share = min(max(params.contamination, 1.0 / len(s)), params.max_contamination)
        return float(np.quantile(s, 1.0 - share))
    if params.method == "pot":
        if float(s.max()) == float(s.min()):
            log.warning("POT: validation scores are constant (%.6g); falling back to the %.4g quantile",
                        s[0], params.quantile)
        else:
            z = pot_threshold(s, params.pot_init_level, params.pot_risk)
            if z is not None:
                return z
            log.warning("POT degenerate; using the %.4g quantile of validation scores", params.quantile)
    return float(np.quantile(s, params.quantile))


# ------------------------------------------------------------------ metrics


def segments(labels: np.ndarray) -> np.ndarray:
    """(K, 2) [start, end) index pairs of the contiguous runs of 1 in ``labels``."""
    lab = np.asarray(labels).astype(np.int8) > 0
    padded = np.concatenate([[False], lab, [False]]).astype(np.int8)
    d = np.diff(padded)
    return np.stack([np.flatnonzero(d == 1), np.flatnonzero(d == -1)], axis=1)


def _finite_pairs(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = (np.asarray(labels).ravel() > 0).astype(np.int8)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in length")
    keep = ~np.isnan(scores)
    return scores[keep], labels[keep]


def _curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall at every distinct threshold (alarm = score ≥ threshold), thresholds descending."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last].astype(np.float64)
    fp = (last + 1) - tp
    n_pos = float(labels.sum())
    precision = tp / (tp + fp)
    recall = tp / n_pos if n_pos else np.full_like(tp, np.nan)
    return precision, recall, s[last]


def _best_f1(scores: np.ndarray, labels: np.ndarray) -> float:
    if labels.sum() == 0 or len(scores) == 0:
        return math.nan
    p, r, _ = _curve(scores, labels)
    f = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0)
    return float(f.max())


def point_adjust(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Legacy point adjustment: every anomalous step takes its segment's max score.

    At any threshold, a segment is then wholly flagged iff one of its steps is, which is the
    point-adjusted protocol; normal steps keep their scores.
    """
    out = scores.copy()
    for a, b in segments(labels):
        out[a:b] = scores[a:b].max()
    return out


def _prf(alarm: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    tp = float(np.sum(alarm & (labels > 0)))
    n_alarm, n_pos = float(alarm.sum()), float(labels.sum())
    precision = tp / n_alarm if n_alarm else 0.0
    recall = tp / n_pos if n_pos else math.nan
    if math.isnan(recall):
        return precision, recall, math.nan
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


def evaluate(scores: np.ndarray, labels: np.ndarray, threshold: float, step_s: float = 1.0) -> dict[str, float]:
    """All metrics of one scored span at ``threshold`` (alarm = score > threshold).

    NaN scores (steps no window could score) are dropped with their labels. Undefined metrics
    (e.g. recall with no anomaly, AUC with one class) are NaN, written as null, with a warning.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    s, y = _finite_pairs(scores, labels)
    n_pos = int(y.sum())
    segs = segments(y)
    alarm = s > threshold
    out: dict[str, float] = {"threshold": float(threshold), "n_steps": len(s), "n_anomalous": n_pos,
                             "n_events": len(segs), "n_alarms": int(alarm.sum())}
    if len(s) == 0:
        log.warning("evaluate: no scored step; every metric is undefined")
    one_class = n_pos == 0 or n_pos == len(s)
    if one_class:
        log.warning("evaluate: labels hold a single class (%d anomalous of %d); AUC-PR/AUC-ROC undefined",
                    n_pos, len(s))
        out["auc_pr"] = out["auc_roc"] = math.nan
    else:
        out["auc_pr"] = float(average_precision_score(y, s))
        out["auc_roc"] = float(roc_auc_score(y, s))
    out["precision"], out["recall"], out["f1"] = _prf(alarm, y)
    if n_pos == 0:
        log.warning("evaluate: no anomalous step; recall, F1, event metrics undefined")

    delays = []
    for a, b in segs:
        hits = np.flatnonzero(alarm[a:b])
        if len(hits):
            delays.append(hits[0] * step_s)
    out["event_recall"] = len(delays) / len(segs) if len(segs) else math.nan
    out["mean_delay_s"] = float(np.mean(delays)) if delays else math.nan

    pa_alarm = alarm.copy()
    for a, b in segs:
        if pa_alarm[a:b].any():
            pa_alarm[a:b] = True
    out["pa_f1"] = _prf(pa_alarm, y)[2]
    out["best_f1_oracle"] = _best_f1(s, y)
    out["best_f1_oracle_pa"] = _best_f1(point_adjust(s, y), y) if n_pos else math.nan
    return out


def evaluate_by_kind(scores: np.ndarray, labels: np.ndarray, kinds: np.ndarray, threshold: float,
                     step_s: float = 1.0) -> dict[str, dict[str, float]]:
    """Per fault kind: the metrics on the normal steps plus that kind's anomalous steps only.

    This is how a single-modality fault (e.g. a log-only error burst) is judged without the other
    kinds diluting it; the threshold is the same one chosen for the whole span.
    """
    kinds = np.asarray(kinds).astype(str)
    labels = np.asarray(labels)
    scored = np.isfinite(np.asarray(scores, dtype=np.float64))
    out: dict[str, dict[str, float]] = {}
    for kind in sorted(set(kinds[(labels > 0) & scored].tolist()) - {""}):
        keep = (labels == 0) | (kinds == kind)
        m = evaluate(np.asarray(scores)[keep], labels[keep], threshold, step_s)
        out[kind] = {k: m[k] for k in ("auc_pr", "auc_roc", "recall", "event_recall", "mean_delay_s", "n_events",
                                       "n_anomalous")}
    return out


# ------------------------------------------------------------------ plot data


def pr_curve(scores: np.ndarray, labels: np.ndarray, max_points: int = 200) -> list[dict[str, float]]:
    """Precision-recall curve (recall ascending), thinned evenly to at most ``max_points`` points."""
    s, y = _finite_pairs(scores, labels)
    if len(s) == 0 or y.sum() == 0:
        log.warning("pr_curve: no anomalous scored step; the PR curve is empty")
        return []
    p, r, t = _curve(s, y)  # thresholds descending → recall non-decreasing, as a PR plot reads
    if len(r) > max_points:
        idx = np.unique(np.linspace(0, len(r) - 1, max_points).round().astype(np.int64))
        p, r, t = p[idx], r[idx], t[idx]
    return [{"precision": float(a), "recall": float(b), "threshold": float(c)} for a, b, c in zip(p, r, t)]


def _bucket_bounds(n: int, max_points: int) -> np.ndarray:
    return np.unique(np.linspace(0, n, min(n, max_points) + 1).round().astype(np.int64))


def score_series(ts: np.ndarray | None, scores: np.ndarray, labels: np.ndarray, threshold: float,
                 max_points: int = 2000) -> list[dict[str, Any]]:
    """Score vs. time for plotting, at most ``max_points`` rows.

    Long spans are cut into equal buckets; each keeps its *max-score* step (so spikes survive)
    and the bucket's max label. Rows carry ``t`` (step index in the span, a numeric plot axis)
    and, when ``ts`` (epoch µs) is given, ``ts`` as ISO-8601 UTC. Unscored (NaN) steps are left out.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = (np.asarray(labels).ravel() > 0).astype(np.int8)
    idx_all = np.flatnonzero(~np.isnan(scores))
    if len(idx_all) == 0:
        return []
    bounds = _bucket_bounds(len(idx_all), max_points)
    rows: list[dict[str, Any]] = []
    s_f, y_f = scores[idx_all], labels[idx_all]
    starts = bounds[:-1]
    seg_max_label = np.maximum.reduceat(y_f, starts)
    # argmax per bucket, vectorised: stable max per bucket then first index that attains it
    bucket_of = np.repeat(np.arange(len(starts)), np.diff(bounds))
    bmax = np.maximum.reduceat(s_f, starts)
    is_max = s_f == bmax[bucket_of]
    first = np.full(len(starts), -1, dtype=np.int64)
    hit = np.flatnonzero(is_max)
    first_hit = np.unique(bucket_of[hit], return_index=True)[1]
    first[bucket_of[hit][first_hit]] = hit[first_hit]
    steps = idx_all[first]
    iso = (np.datetime_as_string(np.asarray(ts)[steps].astype(np.int64).astype("datetime64[us]"), unit="auto",
                                 timezone="UTC") if ts is not None else None)
    for b, (i, step) in enumerate(zip(first, steps)):
        row: dict[str, Any] = {"t": int(step)}
        if iso is not None:
            row["ts"] = str(iso[b])
        row.update(score=float(s_f[i]), label=int(seg_max_label[b]), alarm=int(s_f[i] > threshold))
        rows.append(row)
    return rows


# ------------------------------------------------------------------ JSON output


def clean_for_json(obj: Any, ndigits: int = 6) -> Any:
    """Recursively: NaN/inf → None, floats rounded (stable bytes → no dvc.lock churn), numpy → Python."""
    if isinstance(obj, dict):
        return {str(k): clean_for_json(v, ndigits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_for_json(v, ndigits) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean_for_json(obj.tolist(), ndigits)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        if not math.isfinite(f):
            return None
        r = round(f, ndigits)
        return 0.0 if r == 0 else r  # no "-0.0"
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_metrics_json(path: str | Path, metrics: dict[str, Any]) -> None:
    """Atomic, sorted keys, NaN → null, floats rounded to 6 decimals."""
    import json

    text = json.dumps(clean_for_json(metrics), indent=2, sort_keys=True, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
