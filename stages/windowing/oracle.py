"""How easy is a dataset? The single most separating feature column on the test span (an oracle).

It reads test labels, so it never chooses anything: it is a diagnostic printed beside the
detectors, so a reader sees when one column alone already separates faults from normal time.
"""
from __future__ import annotations

import numpy as np

from stages.core.ranking import average_precision, roc_auc
from stages.windowing.align import EDGE_FEATURES, Aligned


def _columns(al: Aligned) -> tuple[np.ndarray, list[str]]:
    names = list(al.metric_channels)
    names += [f"{a}->{b}/{f}" for a, b in al.edges for f in EDGE_FEATURES]
    names += [f"log:{s}/{k}" for s, k in al.log_columns]
    T = len(al.ts)
    x = np.concatenate([al.metric.reshape(T, -1), al.trace.reshape(T, -1), al.log.reshape(T, -1)], axis=1)
    return x, names


def best_single_column(al: Aligned, test_range: list[int]) -> dict:
    """AUC-PR of the best column, scored by its value or its negation, on the test span (labelled oracle)."""
    a, b = test_range
    y = al.labels[a:b] > 0
    x, names = _columns(al)
    x = np.nan_to_num(x[a:b].astype(np.float64))
    if not y.any() or y.all() or x.shape[1] == 0:
        return {"column": None, "auc_pr": None, "auc_roc": None, "note": "one-class test span or no column"}
    best = (-1.0, "", 0.0)
    for j in range(x.shape[1]):
        col = x[:, j]
        if col.min() == col.max():
            continue
        for sign in (1.0, -1.0):
            ap = average_precision(y, sign * col)
            if ap > best[0]:
                best = (ap, names[j], sign)
    if best[0] < 0:
        return {"column": None, "auc_pr": None, "auc_roc": None, "note": "every column is constant on test"}
    j = names.index(best[1])
    return {"column": best[1], "direction": "high" if best[2] > 0 else "low", "auc_pr": best[0],
            "auc_roc": roc_auc(y, best[2] * x[:, j]), "base_rate": float(y.mean()),
            "note": "oracle: chosen with test labels, a difficulty diagnostic only"}
