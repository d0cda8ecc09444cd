"""VUS-ROC / VUS-PR: our vectorised version against TSB-AD's reference implementation.

The reference (``TSB_AD.evaluation.metrics.get_metrics``, version 'opt') is deterministic (its
thresholds are order statistics of the scores, no sampling), so the two must agree to float
round-off; 1e-9 leaves room only for summation order.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from stages.core.vus import DEFAULT_THRESHOLDS, DEFAULT_WINDOW, _cum_counts, _edge_distances, _runs, vus

TOL = 1e-9


def _labels(rng: np.random.Generator, n: int, k: int, edges: bool = False) -> np.ndarray:
    y = np.zeros(n, int)
    for _ in range(k):
        a = int(rng.integers(0, n))
        y[a:a + int(rng.integers(1, 40))] = 1
    if edges:  # faults touching both ends of the span, and two separated by a single normal step
        y[:5] = 1
        y[-3:] = 1
        y[n // 2:n // 2 + 4] = 1
        y[n // 2 + 4] = 0
        y[n // 2 + 5:n // 2 + 9] = 1
    return y


def _case(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(400, 900))
    y = _labels(rng, n, int(rng.integers(2, 9)), edges=kind == "edges")
    if kind == "random":
        s = rng.random(n)
    elif kind in ("informative", "edges"):
        s = rng.normal(size=n) + 2.0 * y
    elif kind == "ties":
        s = np.round(rng.normal(size=n) + y, 1)
    else:  # "binary": nearly all scores tied
        s = (rng.random(n) < 0.1).astype(float) + y * (rng.random(n) < 0.5)
    return s, y


REASON = "tsb-ad is the VUS reference (CI installs it: pip install --no-deps tsb-ad)"


def _reference(s: np.ndarray, y: np.ndarray, window: int) -> tuple[float, float]:
    """TSB-AD's VUS: the ``generate_curve`` call that ``get_metrics`` makes for "VUS-ROC"/"VUS-PR"
    (``get_metrics`` itself also computes slow threshold sweeps we do not need; see the test below)."""
    basic = pytest.importorskip("TSB_AD.evaluation.basic_metrics", reason=REASON)
    *_, vus_roc, vus_pr = basic.generate_curve(y.astype(int), s, window, "opt", 250)
    return vus_roc, vus_pr


def test_get_metrics_reports_the_same_numbers():
    metrics = pytest.importorskip("TSB_AD.evaluation.metrics", reason=REASON)
    rng = np.random.default_rng(4)
    y = _labels(rng, 150, 2)
    s = rng.normal(size=150) + y
    m = metrics.get_metrics(s, y, slidingWindow=12)
    assert vus(s, y, 12) == pytest.approx((m["VUS-ROC"], m["VUS-PR"]), abs=TOL)


KINDS = ["random", "informative", "ties", "binary", "edges"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("window", [0, 1, 4, 25])
def test_matches_tsb_ad(kind, window):
    s, y = _case(kind, seed=10 * KINDS.index(kind) + window)
    roc, pr = vus(s, y, window)
    ref_roc, ref_pr = _reference(s, y, window)
    assert roc == pytest.approx(ref_roc, abs=TOL)
    assert pr == pytest.approx(ref_pr, abs=TOL)


def test_matches_tsb_ad_at_the_default_window():
    rng = np.random.default_rng(5)
    y = _labels(rng, 300, 4)
    s = rng.normal(size=300) + 2.0 * y
    assert vus(s, y) == pytest.approx(_reference(s, y, DEFAULT_WINDOW), abs=TOL)


def test_window_wider_than_the_gaps():
    rng = np.random.default_rng(9)
    y = np.zeros(200, int)
    for a in range(10, 200, 25):  # faults 25 steps apart, buffers of 30 overlap
        y[a:a + 3] = 1
    s = rng.normal(size=200) + y
    assert vus(s, y, 60) == pytest.approx(_reference(s, y, 60), abs=TOL)


def test_one_class_and_nan_scores():
    s = np.arange(10, dtype=float)
    assert all(math.isnan(v) for v in vus(s, np.zeros(10)))
    assert all(math.isnan(v) for v in vus(s, np.ones(10)))
    y = (np.arange(10) >= 7).astype(int)
    with_nan = np.r_[np.nan, s]
    assert vus(with_nan, np.r_[1, y], 4) == vus(s, y, 4)  # an unscored step is dropped with its label
    with pytest.raises(ValueError):
        vus(s, np.zeros(11))


def test_a_better_ranking_scores_higher():
    rng = np.random.default_rng(2)
    y = _labels(rng, 2000, 10)
    weak = rng.normal(size=2000) + 0.5 * y
    strong = rng.normal(size=2000) + 3.0 * y
    assert vus(strong, y)[0] > vus(weak, y)[0] and vus(strong, y)[1] > vus(weak, y)[1]


def test_twenty_thousand_steps_give_values_in_range():
    # speed is a benchmark figure (README, Benchmarks), never a timed assertion
    rng = np.random.default_rng(3)
    y = np.zeros(20_000, int)
    for a in range(100, 20_000, 400):
        y[a:a + 30] = 1
    s = rng.normal(size=20_000) + y
    roc, pr = vus(s, y, DEFAULT_WINDOW)
    assert 0.5 < roc <= 1.0 and y.mean() < pr <= 1.0


# --- bit-for-bit equivalence with the previous implementation -------------------------------------
# ``vus`` was rewritten for speed (it runs ~200 times per bootstrap interval). The code below is the
# implementation it replaced, copied verbatim (only the entry point renamed and its argument checks
# dropped; the helpers the rewrite left unchanged, ``_runs``, ``_cum_counts`` and ``_edge_distances``,
# are imported from the module), so that the rewrite can be held to identical floats (``==``), not
# merely to round-off.

_CHUNK_ELEMS = 4_000_000  # cap on the overlap-steps × windows table held at once


class _RangeMin:
    """Sparse table: min of ``x[a..b]`` (inclusive) for arrays of (a, b) in O(1) each, after O(n log n) setup."""

    def __init__(self, x: np.ndarray):
        self.levels = [x]
        k = 1
        while 2 * k <= len(x):
            prev = self.levels[-1]
            self.levels.append(np.minimum(prev[:-k], prev[k:]))
            k *= 2

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        span = b - a + 1
        lvl = np.floor(np.log2(span)).astype(np.int64)
        out = np.empty(len(a), dtype=self.levels[0].dtype)
        for k in np.unique(lvl):
            sel = lvl == k
            tab = self.levels[k]
            out[sel] = np.minimum(tab[a[sel]], tab[b[sel] - (1 << k) + 1])
        return out


def _overlap_weights(fj: np.ndarray, d1: np.ndarray, d2: np.ndarray, soft: np.ndarray, hs: np.ndarray,
                     T: int) -> np.ndarray:
    """Σ over steps alarmed at threshold ≤ j of their buffer weight at window w, as a (T, W+1) table."""
    out = np.zeros((T, len(hs)))
    step = max(1, _CHUNK_ELEMS // len(hs))
    for c0 in range(0, len(fj), step):
        f, a, b = fj[c0:c0 + step], d1[c0:c0 + step], d2[c0:c0 + step]
        weight = np.where(b[:, None] <= hs[None, :], 1.0, soft[np.minimum(a, len(soft) - 1)])
        table = np.zeros((T + 1, len(hs)))
        np.add.at(table, f, weight)
        out += np.cumsum(table[:T], axis=0)
    return out


def _vus_reference(scores: np.ndarray, labels: np.ndarray, window: int = DEFAULT_WINDOW,
        n_thresholds: int = DEFAULT_THRESHOLDS) -> tuple[float, float]:
    """The previous ``vus`` (its argument checks, unchanged in ``vus``, left out: valid input only)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel() > 0
    keep = ~np.isnan(s)
    s, y = s[keep], y[keep]
    n, n_pos = len(s), int(y.sum())
    if n_pos == 0 or n_pos == n:
        return math.nan, math.nan
    W, T = int(window), int(n_thresholds)
    H = W // 2

    # thresholds: T scores picked evenly from the descending sort; alarm = score ≥ threshold
    thr = -np.sort(-s)[np.linspace(0, n - 1, T).astype(int)]
    first = np.searchsorted(-thr, -s, side="left")  # first threshold index at which step t alarms (T: never)
    n_pred = _cum_counts(first, T)
    tp_core = _cum_counts(first[y], T)  # alarmed anomalous steps
    starts, ends = _runs(y)

    # buffer steps: normal steps within H of a segment. A step's weight at window w depends on its
    # nearest (d1) and second-nearest (d2) segment edge: 0 if d1 > w//2; sqrt(1 - d1/w) if only
    # the nearest reaches it; 1 if two buffers overlap there (two terms ≥ sqrt(1/2) saturate at 1).
    buf_tp = np.zeros((T, W + 1))
    if H > 0:
        cover = np.zeros(n + 1, dtype=np.int64)
        np.add.at(cover, np.maximum(starts - H, 0), 1)
        np.add.at(cover, np.minimum(ends + H, n - 1) + 1, -1)
        near = np.flatnonzero((np.cumsum(cover[:n]) > 0) & ~y)
        if len(near):
            d1, d2 = _edge_distances(near, starts, ends, n + W + 2)
            fj = first[near]
            ws = np.arange(W + 1)
            hs = ws // 2
            with np.errstate(divide="ignore", invalid="ignore"):
                soft = np.sqrt(1.0 - np.arange(H + 1)[:, None] / np.where(ws > 0, ws, 1)[None, :])
            soft = np.where(np.arange(H + 1)[:, None] <= hs[None, :], soft, 0.0)  # (d, w)
            single = d2 > H  # only the nearest edge can ever reach these: a (threshold × d) histogram
            hist = np.bincount(fj[single] * (H + 1) + d1[single], minlength=(T + 1) * (H + 1))
            buf_tp += np.cumsum(hist.reshape(T + 1, H + 1)[:T], axis=0) @ soft
            if not single.all():  # steps where two buffers may overlap: explicit (step × window) weights
                buf_tp += _overlap_weights(fj[~single], d1[~single], d2[~single], soft, hs, T)

    # existence: share of merged buffered segments touched by an alarm, per window (depends on w // 2)
    exist_ratio = np.empty((T, W + 1))
    range_min = _RangeMin(first)
    gaps = starts[1:] - ends[:-1]
    by_h: dict[int, np.ndarray] = {}
    for w in range(W + 1):
        h = w // 2
        if h not in by_h:
            new = np.concatenate([[True], gaps > 2 * h])
            a = np.maximum(starts[new] - h, 0)
            b = np.minimum(ends[np.concatenate([new[1:], [True]])] + h, n - 1)
            by_h[h] = _cum_counts(range_min(a, b), T) / len(a)
        exist_ratio[:, w] = by_h[h]

    tp = tp_core[:, None] + buf_tp
    p_new = n_pos + buf_tp / 2.0
    tpr = np.minimum(tp / p_new, 1.0) * exist_ratio
    fpr = (n_pred[:, None] - tp) / (n - p_new)
    precision = tp / n_pred[:, None]

    zero, one = np.zeros((1, W + 1)), np.ones((1, W + 1))
    tpr_c = np.vstack([zero, tpr, one])
    fpr_c = np.vstack([zero, fpr, one])
    auc = np.sum((fpr_c[1:] - fpr_c[:-1]) * (tpr_c[1:] + tpr_c[:-1]) / 2.0, axis=0)
    ap = np.sum((tpr_c[1:-1] - tpr_c[:-2]) * precision, axis=0)
    return float(auc.mean()), float(ap.mean())


def _random_case(rng: np.random.Generator, window: int) -> tuple[np.ndarray, np.ndarray]:
    """A series of 50-20,000 steps with a segment layout and score kind drawn at random."""
    n = int(rng.integers(50, 20_001)) if rng.random() < 0.4 else int(rng.integers(50, 2_000))
    y = np.zeros(n, int)
    layout = rng.choice(["random", "single", "edges", "adjacent", "dense"])
    k = int(rng.integers(1, 41))
    if layout == "random":
        for a in rng.integers(0, n, k):
            y[a:a + int(rng.integers(1, 200))] = 1
    elif layout == "single":  # one-step faults
        y[rng.integers(0, n, k)] = 1
    elif layout == "edges":  # faults on the first and last step, and a few in between
        y[:int(rng.integers(1, 5))] = 1
        y[n - int(rng.integers(1, 5)):] = 1
        y[rng.integers(0, n, k // 4 + 1)] = 1
    else:  # back-to-back faults with gaps of 1..2*window (buffers touch or overlap)
        a = int(rng.integers(0, 2 * window + 3))
        while a < n:
            ln = 1 if layout == "dense" else int(rng.integers(1, 30))
            y[a:a + ln] = 1
            a += ln + int(rng.integers(1, 2 * window + 2))
    if y.all():
        y[int(rng.integers(0, n))] = 0
    if not y.any():
        y[int(rng.integers(0, n))] = 1
    kind = rng.choice(["normal", "informative", "ties", "binary", "constant"])
    if kind == "normal":
        s = rng.normal(size=n)
    elif kind == "informative":
        s = rng.normal(size=n) + 2.0 * y
    elif kind == "ties":
        s = np.round(rng.normal(size=n) + y, 1)
    elif kind == "binary":
        s = (rng.random(n) < 0.1).astype(float) + y * (rng.random(n) < 0.5)
    else:
        s = np.zeros(n)
    if rng.random() < 0.3:  # unscored steps, dropped with their labels
        s[rng.random(n) < 0.05] = np.nan
    return s, y


def _same(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Bitwise-equal floats (NaN matches NaN)."""
    return all(u == v or (math.isnan(u) and math.isnan(v)) for u, v in zip(a, b))


@pytest.mark.parametrize("n_thresholds", [1, 2, 250])
@pytest.mark.parametrize("window", [0, 1, 2, 3, 100])
def test_identical_to_the_previous_implementation(window, n_thresholds):
    rng = np.random.default_rng(1000 * window + n_thresholds)
    for _ in range(25):
        s, y = _random_case(rng, window)
        new, old = vus(s, y, window, n_thresholds), _vus_reference(s, y, window, n_thresholds)
        assert _same(new, old), (new, old)


def test_identical_to_the_previous_implementation_odd_windows_and_chunks(monkeypatch):
    import stages.core.vus as module

    monkeypatch.setattr(module, "_CHUNK_ELEMS", 500)  # both versions: many small overlap chunks
    monkeypatch.setitem(globals(), "_CHUNK_ELEMS", 500)
    rng = np.random.default_rng(77)
    for window in (5, 17, 64, 99, 101):
        for _ in range(4):
            s, y = _random_case(rng, window)
            t = int(rng.integers(1, 300))
            assert _same(vus(s, y, window, t), _vus_reference(s, y, window, t))
