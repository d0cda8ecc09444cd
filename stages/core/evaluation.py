"""Honest evaluation: label-free thresholds, metrics at that threshold, oracle numbers kept apart.

The operating threshold comes from *scores* only (:func:`choose_threshold` and
:func:`stream_thresholds` take no labels, so they cannot peek): validation scores, plus — for the
default drift-aware DSPOT — the test scores seen so far, causally. :func:`evaluate` reports
threshold-free ranking metrics (AUC-PR, AUC-ROC, VUS-PR, VUS-ROC), point-wise and event-wise
precision/recall/F1 at the chosen (possibly per-step) threshold, the legacy point-adjusted F1, and
— clearly named ``*_oracle`` — the best F1 over all thresholds, which papers often report but which
needs test labels and therefore never chooses anything here.

Alarm rule everywhere: a step alarms when ``score > threshold`` (strictly; ``threshold[t]`` for a
per-step array), so ``val_max`` raises no alarm on the validation span itself.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from stages.core.dspot import MIN_POT_PEAKS, DSpot, dspot_thresholds, fit_gpd, tail_quantile
from stages.core.errors import InputError
from stages.core.io import atomic_path
from stages.core.ranking import average_precision, roc_auc
from stages.core.vus import DEFAULT_WINDOW, vus

log = logging.getLogger(__name__)

__all__ = ["MIN_POT_PEAKS", "ThresholdParams", "choose_threshold", "clean_for_json", "evaluate",
           "evaluate_by_group", "evaluate_by_kind", "fit_gpd", "point_adjust", "pot_threshold", "pr_curve",
           "score_series", "segments", "stream_thresholds", "write_metrics_json"]


@dataclass(frozen=True)
class ThresholdParams:
    """How the operating threshold is chosen, and exactly which inputs each rule reads.

    * ``dspot`` (default): drift-aware streaming POT (:mod:`stages.core.dspot`). Reads the
      validation *scores* (calibration) and then the test *scores* one step at a time, causally:
      the threshold at step t depends on scores before t only. No labels.
    * ``pot``: one static Peaks-Over-Threshold fit (SPOT's initialisation) on the validation
      *scores*: GPD on the excesses over the ``pot_init_level`` quantile, threshold = the score
      exceeded with probability ``pot_risk``. No labels.
    * ``val_quantile``: the ``quantile`` of validation *scores*. ``val_max``: their maximum. No labels.
    * ``contamination``: the ``1 - contamination`` quantile of validation *scores*. The only rule
      that reads labels: when ``contamination`` is null, the evaluate stage sets it to the
      anomalous share of the labels of the first ``protocol.labelled_events`` faults of the
      few-shot *training* subset (never validation or test labels).

    ``quantile`` is also the fallback of ``dspot``/``pot`` when no GPD can be fitted.

    DSPOT defaults, from reasoning and the synthetic drifting streams of tests/test_dspot.py (no
    benchmark dataset was consulted): ``dspot_depth = 100`` steps (~3 windows of 32 steps): long
    enough that the sub-threshold onset of a fault (a window score ramps up over about one window)
    hardly moves the moving mean, short against the daily load cycle (8,640 steps of 10 s), which
    it follows with a lag of ~depth/2 steps; on a linearly drifting stream the false-alarm rate
    stays within ~3× of the risk for depths 30-300. ``dspot_init_level = 0.98``: SPOT's usual
    level, leaving ~30 calibration peaks on a ~1,700-step validation span. ``dspot_risk = 1e-3``:
    about one false-alarm step per 1,000 normal steps; much smaller risks extrapolate the GPD far
    past the few dozen peaks it is fitted on. ``dspot_refit_every = 1``: refit the GPD at every new
    peak as in the paper (the vectorised fit makes a 20,000-step stream take about a second).
    """

    method: Literal["dspot", "pot", "val_quantile", "val_max", "contamination"] = "dspot"
    quantile: float = 0.99
    pot_init_level: float = 0.98
    pot_risk: float = 1e-3
    contamination: float | None = None
    max_contamination: float = 0.5
    dspot_depth: int = 100
    dspot_init_level: float = 0.98
    dspot_risk: float = 1e-3
    dspot_refit_every: int = 1

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
        if self.dspot_depth < 1:
            raise InputError("params.yaml", "evaluate.threshold.dspot_depth", "at least 1 step", self.dspot_depth)
        if not 0.0 < self.dspot_init_level < 1.0:
            raise InputError("params.yaml", "evaluate.threshold.dspot_init_level", "a number in (0, 1)",
                             self.dspot_init_level)
        if not 0.0 < self.dspot_risk < 1.0 - self.dspot_init_level:
            raise InputError("params.yaml", "evaluate.threshold.dspot_risk",
                             "a probability in (0, 1 - dspot_init_level)", self.dspot_risk)
        if self.dspot_refit_every < 1:
            raise InputError("params.yaml", "evaluate.threshold.dspot_refit_every", "at least 1",
                             self.dspot_refit_every)


# ------------------------------------------------------------------ thresholds


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
    z = tail_quantile(t, gamma, sigma, risk, n, len(excess))
    if not math.isfinite(z):
        log.warning("POT: non-finite threshold (gamma=%.4g, sigma=%.4g); falling back", gamma, sigma)
        return None
    log.info("POT: init %.6g (%d peaks), gamma %.4g, sigma %.4g → threshold %.6g", t, len(excess), gamma, sigma, z)
    return float(z)


def choose_threshold(val_scores: np.ndarray, params: ThresholdParams) -> float:
    """Operating threshold from validation scores alone (the signature has no labels on purpose).

    For ``dspot`` this is the threshold in force at the first test step (after calibration);
    :func:`stream_thresholds` gives the whole per-step sequence.
    """
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
    if params.method == "dspot":
        model = DSpot(params.dspot_depth, params.dspot_init_level, params.dspot_risk, params.dspot_refit_every)
        if model.calibrate(s):
            return float(model.threshold)
        log.warning("DSPOT degenerate; using the %.4g quantile of validation scores", params.quantile)
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


def stream_thresholds(val_scores: np.ndarray, test_scores: np.ndarray, params: ThresholdParams) -> np.ndarray:
    """Threshold in force at every test step (alarm = score > threshold[t]), for any rule.

    ``dspot`` adapts along the test scores (causally, no labels); the static rules give a
    constant array of :func:`choose_threshold`'s value.
    """
    n = len(np.asarray(test_scores).ravel())
    if params.method == "dspot":
        return dspot_thresholds(val_scores, test_scores, depth=params.dspot_depth,
                                init_level=params.dspot_init_level, risk=params.dspot_risk,
                                refit_every=params.dspot_refit_every, fallback_quantile=params.quantile)
    return np.full(n, choose_threshold(val_scores, params))


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


def _per_step(threshold: float | np.ndarray, n: int) -> np.ndarray | None:
    """The per-step threshold array (checked against the span length), or None for a scalar."""
    if np.ndim(threshold) == 0:
        return None
    thr = np.asarray(threshold, dtype=np.float64).ravel()
    if len(thr) != n:
        raise ValueError(f"threshold array ({len(thr)} steps) and scores ({n} steps) differ in length")
    return thr


def _event_precision(alarm: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """(share of alarm segments — maximal runs of alarming steps — overlapping a fault, their count)."""
    runs = segments(alarm)
    if len(runs) == 0:
        return 0.0, 0
    cum = np.concatenate([[0], np.cumsum(labels > 0)])
    hit = cum[runs[:, 1]] - cum[runs[:, 0]] > 0
    return float(hit.mean()), len(runs)


def evaluate(scores: np.ndarray, labels: np.ndarray, threshold: float | np.ndarray, step_s: float = 1.0,
             vus_window: int = DEFAULT_WINDOW) -> dict[str, float]:
    """All metrics of one scored span at ``threshold`` (alarm = score > threshold).

    ``threshold`` is one number or the per-step threshold in force at each step (same length as
    ``scores``, e.g. from :func:`stream_thresholds`); then ``threshold`` in the result is the
    array's median and ``threshold_final`` its last value. NaN scores (steps no window could score)
    are dropped with their labels and thresholds. Undefined metrics (e.g. recall with no anomaly,
    AUC with one class) are NaN, written as null, with a warning. ``vus_window`` is the largest
    buffer of VUS-PR/VUS-ROC (:mod:`stages.core.vus`; 100 = TSB-AD's default).
    """
    s, y = _finite_pairs(scores, labels)
    raw = np.asarray(scores, dtype=np.float64).ravel()
    thr_all = _per_step(threshold, len(raw))
    if thr_all is None:
        thr: float | np.ndarray = float(threshold)
        thr_mid = thr_final = float(threshold)
    else:
        thr = thr_all[~np.isnan(raw)]
        thr_mid = float(np.nanmedian(thr_all)) if np.isfinite(thr_all).any() else math.nan
        thr_final = float(thr_all[-1]) if len(thr_all) else math.nan
    n_pos = int(y.sum())
    segs = segments(y)
    alarm = s > thr
    out: dict[str, float] = {"threshold": thr_mid, "threshold_final": thr_final, "n_steps": len(s),
                             "n_anomalous": n_pos, "n_events": len(segs), "n_alarms": int(alarm.sum())}
    if len(s) == 0:
        log.warning("evaluate: no scored step; every metric is undefined")
    one_class = n_pos == 0 or n_pos == len(s)
    if one_class:
        log.warning("evaluate: labels hold a single class (%d anomalous of %d); AUC-PR/AUC-ROC/VUS undefined",
                    n_pos, len(s))
        out["auc_pr"] = out["auc_roc"] = out["vus_pr"] = out["vus_roc"] = math.nan
    else:
        out["auc_pr"] = average_precision(y, s)
        out["auc_roc"] = roc_auc(y, s)
        out["vus_roc"], out["vus_pr"] = vus(s, y, vus_window)
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
    out["event_precision"], out["n_alarm_segments"] = _event_precision(alarm, y)
    er, ep = out["event_recall"], out["event_precision"]
    out["event_f1"] = math.nan if math.isnan(er) else (2 * ep * er / (ep + er) if ep + er > 0 else 0.0)

    pa_alarm = alarm.copy()
    for a, b in segs:
        if pa_alarm[a:b].any():
            pa_alarm[a:b] = True
    out["pa_f1"] = _prf(pa_alarm, y)[2]
    out["best_f1_oracle"] = _best_f1(s, y)
    out["best_f1_oracle_pa"] = _best_f1(point_adjust(s, y), y) if n_pos else math.nan
    return out


GROUP_KEYS = ("auc_pr", "auc_roc", "vus_pr", "recall", "event_recall", "mean_delay_s", "n_events", "n_anomalous")


def evaluate_by_group(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, threshold: float | np.ndarray,
                      step_s: float = 1.0, vus_window: int = DEFAULT_WINDOW) -> dict[str, dict[str, float]]:
    """Per group of anomalous steps: the metrics on all normal steps plus that group's anomalous steps.

    ``groups`` is a per-step label (fault kind, intensity class "subtle/moderate/severe", ...); its
    value on normal steps is ignored and "" on an anomalous step means "no group". This judges e.g.
    a log-only error burst without the other groups diluting it; the threshold (number or per-step
    array) is the one chosen for the whole span. Removing the other groups' steps joins their
    neighbours, which VUS's buffers then see as adjacent — a small, documented approximation.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    groups = np.asarray(groups).ravel().astype(str)
    if not len(scores) == len(labels) == len(groups):
        raise ValueError(f"scores ({len(scores)}), labels ({len(labels)}) and groups ({len(groups)}) "
                         "differ in length")
    thr_all = _per_step(threshold, len(scores))
    scored = np.isfinite(scores)
    out: dict[str, dict[str, float]] = {}
    for group in sorted(set(groups[(labels > 0) & scored].tolist()) - {""}):
        keep = (labels == 0) | (groups == group)
        thr = threshold if thr_all is None else thr_all[keep]
        m = evaluate(scores[keep], labels[keep], thr, step_s, vus_window=vus_window)
        out[group] = {k: m[k] for k in GROUP_KEYS}
    return out


def evaluate_by_kind(scores: np.ndarray, labels: np.ndarray, kinds: np.ndarray, threshold: float | np.ndarray,
                     step_s: float = 1.0, vus_window: int = DEFAULT_WINDOW) -> dict[str, dict[str, float]]:
    """Per fault kind (see :func:`evaluate_by_group`)."""
    return evaluate_by_group(scores, labels, kinds, threshold, step_s, vus_window=vus_window)


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


def score_series(ts: np.ndarray | None, scores: np.ndarray, labels: np.ndarray, threshold: float | np.ndarray,
                 max_points: int = 2000) -> list[dict[str, Any]]:
    """Score vs. time for plotting, at most ``max_points`` rows.

    Long spans are cut into equal buckets; each keeps its *max-score* step (so spikes survive)
    and the bucket's max label. Rows carry ``t`` (step index in the span, a numeric plot axis)
    and, when ``ts`` (epoch µs) is given, ``ts`` as ISO-8601 UTC. Unscored (NaN) steps are left out.
    With a per-step ``threshold`` array, ``alarm`` uses the kept step's threshold and each row also
    carries it as ``threshold`` (last column), so the plot can draw the moving threshold.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    thr_all = _per_step(threshold, len(scores))
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
        thr = threshold if thr_all is None else thr_all[step]
        row.update(score=float(s_f[i]), label=int(seg_max_label[b]), alarm=int(s_f[i] > thr))
        if thr_all is not None:
            row["threshold"] = float(thr)
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
