"""What the two log replays (MetaLog, xLSTM) share: system arguments, loading, the target split,
the floors' representation and the report (method, floors, flag-all, bootstrap intervals).

Floors on logs: each log window (unit) becomes its vector of template counts, ``log1p`` and
z-scored with the statistics of the target's *training* windows (a column constant in training
keeps scale 1, so a template first seen later still stands out); random, PCA and IsolationForest
(one window = one sample) are fitted on the target's training windows — labels unread — and
their threshold is the ``1 − c`` quantile of their validation scores, ``c`` the anomalous share of
the target's training windows (the pipeline's ``contamination`` rule). "Flag every window" is
the trivial detector whose F1 (2p / (1 + p), p the anomalous share of the test windows) a log
detector must beat before its F1 means anything. Intervals: block bootstrap over the test
split's fault events (:mod:`stages.core.bootstrap`) — with two or three events in ~20 test
windows they are wide, which is the point.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from scipy import sparse
from tqdm.auto import tqdm

from stages.core.windowset import FeatureSchema, WindowSet
from stages.features.log_windows import LogSequences, chronological_split, load_loghub
from stages.replays.common import (flag_all_metrics, intervals, require_two_classes, score_metrics, table,
                                   with_ci)

log = logging.getLogger(__name__)
LOG_FLOORS = ("random", "pca", "iforest")
VUS_WINDOW = 2  # VUS-PR label buffers of 0..2 units: one unit here is a 20-line window, not a grid step
EXTRA_COLUMNS = (("event_f1", "event F1"), ("precision", "P"), ("recall", "R"), ("n_alarms", "alarms"),
                 ("threshold_rule", "threshold"))


# ------------------------------------------------------------------ arguments and loading


def add_system_args(parser: argparse.ArgumentParser, prefix: str = "", help_name: str = "system") -> None:
    """Flags that describe one loghub system (``--loghub`` or ``--target`` and their options)."""
    flag = f"--{prefix}" if prefix else "--loghub"
    dest = prefix or "loghub"
    parser.add_argument(flag, dest=dest, required=not prefix, metavar="PATH",
                        help=f"{help_name}: a loghub system folder (its *_structured.csv, else its raw .log, and "
                             "its anomaly_label.csv are found), a structured CSV, or a raw .log")
    pre = f"--{prefix}-" if prefix else "--"
    parser.add_argument(f"{pre}labels", dest=f"{dest}_labels", metavar="CSV",
                        help="HDFS-style anomaly_label.csv (BlockId,Label): sessions by block id")
    parser.add_argument(f"{pre}style", dest=f"{dest}_style", choices=("bgl", "thunderbird", "spirit", "hdfs"),
                        help="layout of a raw .log file (default: from its file or folder name)")
    parser.add_argument(f"{pre}node-column", dest=f"{dest}_node_column", metavar="COL",
                        help="column naming a line's node (default: Node, else User)")


def common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--window", type=int, default=20, help="lines per fixed window (per-line labels)")
    parser.add_argument("--by-node", action="store_true", help="fixed windows per node")
    parser.add_argument("--train", type=float, default=0.6, help="chronological training fraction")
    parser.add_argument("--val", type=float, default=0.2, help="chronological validation fraction")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", default="minilm", help="LLM backbone (offline)")
    parser.add_argument("--n-boot", type=int, default=200, help="block-bootstrap resamples for the 95%% intervals")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="detector config override, dotted keys (e.g. -S train.epochs=3); repeatable")


def load_system(args: argparse.Namespace, dest: str, max_len: int) -> LogSequences:
    """One system as log units; a folder argument is resolved to its files first."""
    from stages.formats.loghub import resolve_input

    src = resolve_input(getattr(args, dest), getattr(args, f"{dest}_style"), getattr(args, f"{dest}_labels"))
    return load_loghub(str(src.path), str(src.labels) if src.labels else None, src.style, args.window,
                       args.by_node, max_len, getattr(args, f"{dest}_node_column"))


def loghub_schema(seqs: LogSequences, name: str) -> FeatureSchema:
    """The minimal schema a log detector needs on home data: templates, one pseudo service."""
    return FeatureSchema(dataset=name, step_s=1.0, metric_channels=[], metric_entities=[], edges=[],
                         edge_features=[], services=["all"],
                         log_columns=[("all", k) for k in range(len(seqs.templates))],
                         templates=list(seqs.templates))


def split_counts(name: str, seqs: LogSequences) -> dict[str, int]:
    return {f"n_{name}": len(seqs), f"n_{name}_anomalous": int(seqs.labels.sum())}


def split_target(seqs: LogSequences, path: str, train: float, val: float
                 ) -> tuple[LogSequences, LogSequences, LogSequences]:
    """Chronological train / val / test; a test split of one class stops the replay (exit 2)."""
    tr, va, te = chronological_split(seqs, train, val)
    first = len(tr) + len(va)
    require_two_classes(te.labels, path, f"test split (units {first + 1}-{len(seqs)} of {len(seqs)}; "
                                         f"{int(seqs.labels.sum())} anomalous in the whole system)")
    return tr, va, te


# ------------------------------------------------------------------ two systems in one template space


def reindex(seqs: LogSequences, templates: list[str]) -> LogSequences:
    """The same units with template ids into ``templates`` (which must hold every text of ``seqs``)."""
    index = {t: i for i, t in enumerate(templates)}
    local = np.array([index[t] for t in seqs.templates], np.int64)
    ids = np.where(seqs.ids >= 0, local[np.maximum(seqs.ids, 0)], seqs.ids)
    coo = seqs.counts.tocoo()
    counts = sparse.csr_matrix((coo.data, (coo.row, local[coo.col])), shape=(len(seqs), len(templates)),
                               dtype=np.float32)
    return LogSequences(ids, seqs.lengths.copy(), counts, seqs.labels.copy(), list(templates), seqs.window.copy(),
                        seqs.name)


def concat_systems(first: LogSequences, second: LogSequences) -> tuple[LogSequences, list[str]]:
    """``first`` then ``second`` as one sequence set over the union of their templates (keyed by text)."""
    templates = list(dict.fromkeys([*first.templates, *second.templates]))
    a, b = reindex(first, templates), reindex(second, templates)
    window = np.concatenate([a.window, b.window + (int(a.window.max()) + 1 if len(a) else 0)])
    width = max(a.ids.shape[1], b.ids.shape[1])
    pad = lambda x: np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=-1)  # noqa: E731
    both = LogSequences(np.vstack([pad(a.ids), pad(b.ids)]), np.concatenate([a.lengths, b.lengths]),
                        sparse.vstack([a.counts, b.counts]).tocsr(), np.concatenate([a.labels, b.labels]),
                        templates, window, f"{first.name}+{second.name}")
    return both, templates


# ------------------------------------------------------------------ floors and the report


def count_windowsets(train: LogSequences, val: LogSequences, test: LogSequences
                     ) -> tuple[WindowSet, WindowSet, WindowSet]:
    """Per-window template-count vectors (log1p, z-scored with training statistics) as 1-step windows."""
    x = [np.log1p(np.asarray(s.counts.todense(), np.float32)) for s in (train, val, test)]
    mu, sd = x[0].mean(axis=0), x[0].std(axis=0)
    sd = np.where(sd > 1e-6, sd, 1.0)
    names = [f"template/{k}" for k in range(x[0].shape[1])]
    return tuple(WindowSet.from_arrays((v - mu) / sd, s.labels, window=1, name=n, channels=names, dataset="loghub")
                 for v, s, n in zip(x, (train, val, test), ("train", "val", "test")))


def floor_rows(train: LogSequences, val: LogSequences, test: LogSequences, seed: int, n_boot: int
               ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Metrics (and intervals) of the floors on the target's count vectors, plus flag-all."""
    from stages.core.evaluation import ThresholdParams, choose_threshold
    from stages.replays.floors import floor_scores

    share = float(train.labels.mean()) if len(train) else 0.0
    tparams = ThresholdParams(method="contamination", contamination=min(max(share, 1e-3), 0.5))
    ws = count_windowsets(train, val, test)
    scores = floor_scores(*ws, seed=seed, names=LOG_FLOORS, configs={"iforest": {"representation": "step"}})
    rows, cis = {}, {}
    for name, (val_s, test_s) in scores.items():
        threshold = choose_threshold(val_s, tparams)
        rows[name] = score_metrics(test_s, test.labels, threshold, vus_window=VUS_WINDOW)
        rows[name]["threshold_rule"] = f"val-score quantile {1 - tparams.contamination:.3f}"
        cis[name] = intervals(test_s, test.labels, threshold, n_boot=n_boot, seed=seed, vus_window=VUS_WINDOW)
    rows["flag every window"] = flag_all_metrics(test.labels, vus_window=VUS_WINDOW)
    rows["flag every window"]["threshold_rule"] = "all alarm"
    return rows, cis


def log_report(method: str, scores: np.ndarray, threshold: float, threshold_rule: str, train: LogSequences,
               val: LogSequences, test: LogSequences, seed: int, n_boot: int, title: str
               ) -> tuple[dict[str, Any], str]:
    """The method's test metrics with intervals and floors, and the markdown table beside them."""
    metrics = score_metrics(scores, test.labels, threshold, vus_window=VUS_WINDOW)
    metrics["threshold_rule"] = threshold_rule
    ci = intervals(scores, test.labels, threshold, n_boot=n_boot, seed=seed, vus_window=VUS_WINDOW)
    floors, floor_cis = floor_rows(train, val, test, seed, n_boot)
    metrics["intervals"] = ci
    metrics["floors"] = {k: {**v, "intervals": floor_cis.get(k)} for k, v in floors.items()}
    rows = {method: with_ci(metrics, ci), **{k: with_ci(v, floor_cis.get(k)) for k, v in floors.items()}}
    md = (f"### {title}\n\n{len(test)} test windows ({int(test.labels.sum())} anomalous, {metrics['n_events']} "
          "events); 95% block-bootstrap intervals over the events in brackets (few events: coarse). Floors: "
          "template-count vectors of the same windows.\n\n"
          + table(rows, EXTRA_COLUMNS))
    return metrics, md



@dataclass
class TimedRun:
    """What :func:`fit_score_report` measured."""

    fitted: Any  # whatever the fit callable returned (a training history)
    metrics: dict[str, Any]
    markdown: str
    train_seconds: float
    windows_per_s: float


def fit_score_report(method: str, fit: Callable[[], Any], score: Callable[[], np.ndarray], n_test: int,
                     report: Callable[[np.ndarray], tuple[dict[str, Any], str]]) -> TimedRun:
    """Fit, score the test windows and build the report under one progress bar, timing fit and score."""
    with tqdm(total=3, desc=f"{method} replay", unit="stage", disable=False) as bar:  # the long part
        bar.set_postfix_str("fit")
        t0 = time.perf_counter()
        fitted = fit()
        train_s = time.perf_counter() - t0
        bar.update()
        bar.set_postfix_str("score")
        t0 = time.perf_counter()
        scores = score()
        score_s = time.perf_counter() - t0
        bar.update()
        bar.set_postfix_str("floors + intervals")
        metrics, md = report(scores)
        bar.update()
    return TimedRun(fitted, metrics, md, train_s, n_test / max(score_s, 1e-9))
