"""Threshold-free ranking metrics (AUC-PR as average precision, AUC-ROC) in plain numpy.

Every evaluate stage needs exactly these two numbers; importing scikit-learn for them costs about
2 s per stage (it pulls scipy.stats and pandas), ~50 s over the default pipeline. The definitions
and the order of the floating-point operations follow ``sklearn.metrics.average_precision_score``
and ``roc_auc_score`` (tied scores form one threshold; ROC points on a straight segment dropped
before the trapezoid), so the values are the same bits — tests/test_ranking.py checks that
against scikit-learn. The block bootstrap's ``_Ranking`` (stages/core/bootstrap.py) computes the
same two definitions over weighted resamplings of one sort; it trades those last bits for O(n)
replicates, which is why the reported point values come from here.
"""
from __future__ import annotations

import numpy as np


def _curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positives, true positives) at each distinct score, from the highest score down."""
    order = np.argsort(scores, kind="mergesort")[::-1]
    ranked = scores[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
    tps = np.cumsum((labels[order] > 0) * 1.0, dtype=np.float64)[last_of_tie]
    return 1 + last_of_tie - tps, tps


def _checked(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, s = np.asarray(labels).ravel(), np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels ({len(y)}) and scores ({len(s)}) differ in length")
    pos = int(np.count_nonzero(y > 0))
    if pos == 0 or pos == len(y):
        raise ValueError(f"ranking metrics need both classes ({pos} anomalous of {len(y)} steps)")
    if not np.isfinite(s).all():
        raise ValueError("ranking metrics need finite scores")
    return y, s


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUC-PR as average precision: Σ (R_k − R_{k−1}) · P_k over the distinct score thresholds."""
    fps, tps = _curve(*_checked(labels, scores))
    alarms = tps + fps
    precision = np.zeros_like(tps)
    np.divide(tps, alarms, out=precision, where=alarms != 0)
    recall = tps / tps[-1]
    precision, recall = np.hstack((precision[::-1], 1)), np.hstack((recall[::-1], 0))
    return max(0.0, float(-np.sum(np.diff(recall) * precision[:-1])))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the trapezoid rule over the distinct score thresholds."""
    fps, tps = _curve(*_checked(labels, scores))
    if len(fps) > 2:  # keep the corners only: collinear points add nothing but rounding
        corner = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps = fps[corner], tps[corner]
    fpr, tpr = np.r_[0, fps] / fps[-1], np.r_[0, tps] / tps[-1]
    return float(np.trapezoid(tpr, fpr))
