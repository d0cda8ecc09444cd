"""AUC-PR / AUC-ROC without scikit-learn: the same bits as scikit-learn's, ties and tiny scales included."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from stages.core.ranking import average_precision, roc_auc


def _scores(rng: np.random.Generator, kind: int, n: int) -> np.ndarray:
    if kind == 0:
        return rng.random(n)
    if kind == 1:
        return rng.integers(0, 5, n).astype(np.float64)  # heavy ties
    if kind == 2:
        return np.round(rng.normal(size=n), 2)
    return rng.random(n) * 1e-9 - 3.0  # tiny spread around a negative offset


@pytest.mark.parametrize("kind", range(4))
def test_same_bits_as_sklearn(kind: int):
    rng = np.random.default_rng(kind)
    checked = 0
    for _ in range(300):
        n = int(rng.integers(2, 2000))
        s = _scores(rng, kind, n)
        y = (rng.random(n) < rng.uniform(0.01, 0.5)).astype(np.int64)
        if y.sum() in (0, n):
            continue
        assert average_precision(y, s) == average_precision_score(y, s)
        assert roc_auc(y, s) == roc_auc_score(y, s)
        checked += 1
    assert checked > 250


def test_known_values():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    assert average_precision(y, s) == pytest.approx(0.8333333333333333)
    assert roc_auc(y, s) == pytest.approx(0.75)
    assert average_precision(y, -s) < 0.6 and roc_auc(y, -s) == pytest.approx(0.25)


@pytest.mark.parametrize("y, s, what", [
    (np.zeros(5), np.arange(5.0), "both classes"),
    (np.ones(3), np.arange(3.0), "both classes"),
    (np.array([0, 1]), np.array([0.0, np.nan]), "finite"),
    (np.array([0, 1, 1]), np.array([0.0, 1.0]), "differ in length"),
])
def test_undefined_input_is_an_error(y, s, what):
    with pytest.raises(ValueError, match=what):
        average_precision(y, s)
    with pytest.raises(ValueError, match=what):
        roc_auc(y, s)
