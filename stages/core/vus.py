"""Volume Under the Surface (VUS-ROC, VUS-PR; Paparrizos et al., VLDB 2022), vectorised.

VUS averages range-aware ROC and PR areas over buffer widths w = 0..``window``: around every fault
segment the labels are extended by ``w // 2`` steps with a soft weight sqrt(1 - d/w) (d = distance
to the segment), a detected buffer step counts as a (partial) true positive, and recall is scaled
by the share of (merged, buffered) segments touched by an alarm. So an alarm slightly before or
after a labelled fault earns credit, and the number is free of a threshold choice.

This reproduces ``TSB_AD.evaluation.metrics.get_metrics(score, labels, slidingWindow=window)``
["VUS-ROC"/"VUS-PR"] (TSB-AD, NeurIPS 2024, default ``version='opt'``, 250 thresholds) to float
round-off, but replaces its Python loops over windows × thresholds × segments with array
arithmetic over (threshold, window) tables: a sort, O(n) passes, and one (thresholds × window/2)
@ (window/2 × window) product, instead of O(window · thresholds · n) interpreted work. The
existence share is computed for all buffer widths at once (running mins outward from each segment
edge plus one range-min), not per window. ~3 ms for 20,000 steps and window 100 with one BLAS
thread, against minutes; a multi-threaded BLAS on busy cores can add several ms to the product.

The floating-point sums keep the order of the earlier, simpler version of this module (cumulative
sums along the threshold axis, the same matrix product, in-order bincount/add.at accumulation), so
the results are bit-for-bit unchanged by the speed-ups; tests/test_vus.py checks this with ``==``.

Note the default ``window`` is get_metrics' default (100 steps); TSB-AD's own benchmark instead
sets it per series to the dominant period of the data (``find_length_rank``).
"""
from __future__ import annotations

import functools
import math

import numpy as np

DEFAULT_WINDOW = 100  # TSB-AD's get_metrics default slidingWindow
DEFAULT_THRESHOLDS = 250  # TSB-AD's `thre`
_CHUNK_ELEMS = 4_000_000  # cap on the overlap-steps × windows table held at once


def _runs(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and inclusive ends of the runs of True in ``y``."""
    d = np.diff(np.concatenate([[0], y.astype(np.int8), [0]]))
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1) - 1


def _cum_counts(idx: np.ndarray, n_thr: int, weights: np.ndarray | None = None) -> np.ndarray:
    """c[j] = (weighted) number of items whose first alarming threshold index is ≤ j, j < n_thr."""
    return np.cumsum(np.bincount(idx, weights=weights, minlength=n_thr + 1)[:n_thr])


def _edge_distances(near: np.ndarray, starts: np.ndarray, ends: np.ndarray, big: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Distance of each step in ``near`` to the nearest and second-nearest segment edge (end to its
    left, start to its right); ``big`` when there is none."""
    K = len(starts)
    il = np.searchsorted(ends, near, side="left") - 1  # last segment ending before t
    ir = np.searchsorted(starts, near, side="right")  # first segment starting after t
    dl1 = np.where(il >= 0, near - ends[np.maximum(il, 0)], big)
    dl2 = np.where(il >= 1, near - ends[np.maximum(il - 1, 0)], big)
    dr1 = np.where(ir < K, starts[np.minimum(ir, K - 1)] - near, big)
    dr2 = np.where(ir + 1 < K, starts[np.minimum(ir + 1, K - 1)] - near, big)
    return np.minimum(dl1, dr1), np.minimum(np.maximum(dl1, dr1), np.minimum(dl2, dr2))


class _RangeMin:
    """Sparse table: min of ``x[a..b]`` (inclusive) for arrays of (a, b) in O(1) each, after O(n log n) setup.

    Level k (min over 2**k consecutive items) is row k of one padded table, so a query is two gathers.
    """

    def __init__(self, x: np.ndarray):
        n_lvl = max(1, len(x).bit_length())
        self.table = np.empty((n_lvl, len(x)), dtype=x.dtype)
        self.table[0] = x
        for k in range(1, n_lvl):
            prev, half = self.table[k - 1], 1 << (k - 1)
            np.minimum(prev[:-half], prev[half:], out=self.table[k, :-half])
            self.table[k, -half:] = prev[-half:]  # padding, never read: a query's span fits in x

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        lvl = np.frexp(b - a + 1)[1] - 1  # floor(log2(span)), exact
        return np.minimum(self.table[lvl, a], self.table[lvl, b - (1 << lvl) + 1])


def _existence(first: np.ndarray, starts: np.ndarray, ends: np.ndarray, n: int, H: int, T: int
               ) -> np.ndarray:
    """(T, H+1) table: share of the segments, buffered by h steps each side and merged where the
    buffers touch, whose earliest alarm (min of ``first`` over the range) comes at threshold ≤ j.

    All h at once: a merged range's min is the min of its first segment's left buffer, the segments
    and gaps inside it, and its last segment's right buffer; the buffer mins for every h are running
    mins outward from each segment edge, the inside part a range-min over per-segment/per-gap mins.
    """
    K = len(starts)
    pieces = np.empty(2 * K - 1, dtype=np.int64)  # segment 0, gap 0, segment 1, ..., segment K-1
    pieces[0::2], pieces[1::2] = starts, ends[:-1] + 1
    piece_min = np.minimum.reduceat(first[:ends[-1] + 1], pieces)
    dh = np.arange(1, H + 1)
    left, right = starts[:, None] - dh, ends[:, None] + dh  # buffer steps at distance 1..H
    edge_min = np.full((2, K, H + 1), T, dtype=first.dtype)  # h = 0: no buffer (T: never alarms)
    edge_min[0, :, 1:] = np.where(left >= 0, first[np.maximum(left, 0)], T)
    edge_min[1, :, 1:] = np.where(right < n, first[np.minimum(right, n - 1)], T)
    np.minimum.accumulate(edge_min, axis=2, out=edge_min)
    # merged ranges for every h: a new one starts at segment i when the gap before it exceeds 2h
    new = np.ones((H + 1, K), dtype=bool)
    new[:, 1:] = (starts[1:] - ends[:-1])[None, :] > 2 * np.arange(H + 1)[:, None]
    flat = np.flatnonzero(new)
    h, i = np.divmod(flat, K)
    j = (np.append(flat[1:], new.size) - 1) % K  # last segment of the range
    lo = np.minimum(np.minimum(edge_min[0, i, h], edge_min[1, j, h]), _RangeMin(piece_min)(2 * i, 2 * j))
    counts = np.bincount(lo * (H + 1) + h, minlength=(T + 1) * (H + 1)).reshape(T + 1, H + 1)[:T]
    return np.cumsum(counts, axis=0) / new.sum(axis=1)


def _overlap_weights(fj: np.ndarray, d1: np.ndarray, d2: np.ndarray, soft: np.ndarray, hs: np.ndarray,
                     T: int) -> np.ndarray:
    """Σ over steps alarmed at threshold ≤ j of their buffer weight at window w, as a (T, W+1) table.

    The (threshold, window) cells are filled by a weighted ``bincount`` over the flattened
    (step × window) weights: it adds each step's weights in step order, as ``np.add.at`` on the
    rows would (same sums, same bits), but several times faster.
    """
    n_w = len(hs)
    out = None
    step = max(1, _CHUNK_ELEMS // n_w)
    for c0 in range(0, len(fj), step):
        f, a, b = fj[c0:c0 + step], d1[c0:c0 + step], d2[c0:c0 + step]
        weight = np.where(b[:, None] <= hs[None, :], 1.0, soft[np.minimum(a, len(soft) - 1)])
        cell = f[:, None] * n_w + np.arange(n_w)[None, :]
        table = np.bincount(cell.ravel(), weights=weight.ravel(), minlength=(T + 1) * n_w).reshape(T + 1, n_w)
        chunk = np.cumsum(table[:T], axis=0, out=table[:T])
        if out is None:
            out = chunk
        else:
            out += chunk
    return out


@functools.lru_cache(maxsize=8)
def _soft_weights(W: int) -> tuple[np.ndarray, np.ndarray]:
    """Window index → w // 2, and the (distance d, window w) weight sqrt(1 - d/w) (0 beyond w // 2)."""
    H = W // 2
    ws = np.arange(W + 1)
    hs = ws // 2
    with np.errstate(divide="ignore", invalid="ignore"):
        soft = np.sqrt(1.0 - np.arange(H + 1)[:, None] / np.where(ws > 0, ws, 1)[None, :])
    soft = np.where(np.arange(H + 1)[:, None] <= hs[None, :], soft, 0.0)  # (d, w)
    hs.flags.writeable = soft.flags.writeable = False  # shared between calls
    return hs, soft


def vus(scores: np.ndarray, labels: np.ndarray, window: int = DEFAULT_WINDOW,
        n_thresholds: int = DEFAULT_THRESHOLDS) -> tuple[float, float]:
    """(VUS-ROC, VUS-PR) of ``scores`` against binary ``labels``; NaN when labels hold one class.

    NaN scores are dropped with their labels (as :func:`stages.core.evaluation.evaluate` does).
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel() > 0
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in length")
    if window < 0 or n_thresholds < 1:
        raise ValueError(f"vus: window must be ≥ 0 and n_thresholds ≥ 1, got {window}, {n_thresholds}")
    keep = ~np.isnan(s)
    s, y = s[keep], y[keep]
    n, n_pos = len(s), int(y.sum())
    if n_pos == 0 or n_pos == n:
        return math.nan, math.nan
    W, T = int(window), int(n_thresholds)
    H = W // 2
    hs, soft = _soft_weights(W)

    # thresholds: T scores picked evenly from the descending sort; alarm = score ≥ threshold
    s_sorted = np.sort(s)
    thr = s_sorted[::-1][np.linspace(0, n - 1, T).astype(int)]
    n_pred = n - np.searchsorted(s_sorted, thr, side="left")  # steps alarming at threshold j
    starts, ends = _runs(y)
    # `first`: the first threshold index at which step t alarms (T: never). Only the steps within H of
    # a segment are ever looked at (the rest stay T), which spares the binary search for the others.
    if H > 0:
        cover = np.zeros(n + 1, dtype=np.int64)
        np.add.at(cover, np.maximum(starts - H, 0), 1)
        np.add.at(cover, np.minimum(ends + H, n - 1) + 1, -1)
        zone = np.cumsum(cover[:n]) > 0
    else:
        zone = y
    first = np.full(n, T, dtype=np.intp)
    first[zone] = np.searchsorted(-thr, -s[zone], side="left")
    tp_core = _cum_counts(first[y], T)  # alarmed anomalous steps

    # buffer steps: normal steps within H of a segment. A step's weight at window w depends on its
    # nearest (d1) and second-nearest (d2) segment edge: 0 if d1 > w//2; sqrt(1 - d1/w) if only
    # the nearest reaches it; 1 if two buffers overlap there (two terms ≥ sqrt(1/2) saturate at 1).
    near = np.flatnonzero(zone & ~y)
    if len(near):
        d1, d2 = _edge_distances(near, starts, ends, n + W + 2)
        fj = first[near]
        single = d2 > H  # only the nearest edge can ever reach these: a (threshold × d) histogram
        hist = np.bincount(fj[single] * (H + 1) + d1[single], minlength=(T + 1) * (H + 1))
        # counts are exact in float64: the same matrix the integer cumsum would be cast to for the product
        buf_tp = np.cumsum(hist.reshape(T + 1, H + 1)[:T], axis=0, dtype=np.float64) @ soft
        if not single.all():  # steps where two buffers may overlap: explicit (step × window) weights
            buf_tp += _overlap_weights(fj[~single], d1[~single], d2[~single], soft, hs, T)
    else:
        buf_tp = np.zeros((T, W + 1))

    # existence: share of merged buffered segments touched by an alarm, per window (depends on w // 2)
    exist_ratio = _existence(first, starts, ends, n, H, T)  # (T, H+1): window w uses column w // 2

    # ROC and PR points per (threshold, window), with (0, 0) and (1, 1) rows around the ROC curve.
    # The (T, W+1) tables are updated in place: their allocation and traffic is much of the cost.
    p_new = buf_tp / 2.0
    p_new += n_pos
    tp = buf_tp
    tp += tp_core[:, None]
    roc_tpr, roc_fpr = np.empty((T + 2, W + 1)), np.empty((T + 2, W + 1))
    roc_tpr[0] = roc_fpr[0] = 0.0
    roc_tpr[-1] = roc_fpr[-1] = 1.0
    tpr, fpr = roc_tpr[1:-1], roc_fpr[1:-1]
    np.divide(tp, p_new, out=tpr)
    np.minimum(tpr, 1.0, out=tpr)
    tpr *= exist_ratio[:, hs]
    np.subtract(n_pred[:, None], tp, out=fpr)
    fpr /= np.subtract(n, p_new, out=p_new)
    precision = np.divide(tp, n_pred[:, None], out=tp)

    area = roc_fpr[1:] - roc_fpr[:-1]  # trapezoids
    mid = roc_tpr[1:] + roc_tpr[:-1]
    area *= mid
    area /= 2.0
    auc = np.sum(area, axis=0)
    gain = np.subtract(roc_tpr[1:-1], roc_tpr[:-2], out=mid[:-1])  # recall steps
    gain *= precision
    ap = np.sum(gain, axis=0)
    return float(auc.mean()), float(ap.mean())
