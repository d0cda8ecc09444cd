"""Replay KAD-Disformer's protocol on KPI CSVs or a NAB folder: ``python -m stages.replay kad_disformer ...``.

Protocol (pre-train on some KPIs, uTune on a few points of unseen ones, score the rest):

1. Pre-training KPIs (``--protocol``): ``loo`` (default for ``--nab-dir``) — every KPI is the
   unseen one once, pre-trained on all the others; ``fraction`` (default for ``--kpi-dir``) — the
   first ``--pretrain-fraction`` of the KPIs (sorted by name) pre-train and are not evaluated;
   with ``--pretrain-dir`` every KPI of that folder pre-trains. Pre-training is unsupervised
   (labels unread), on each pre-training KPI's whole series z-scored with its own statistics;
   the unseen KPI is never part of it.
2. Each unseen KPI: the first ``--fewshot-fraction`` of its points is the few-shot span (uTune,
   personal parameters only; also the z-score statistics — the KPI's training part), the next
   ``--val-fraction`` is validation (its *scores* choose the threshold, labels unread), the rest
   is the test span. Scores are causal (a step sees only its past), so the test span is scored
   with the preceding points as context.
3. Floors (random, PCA, IsolationForest from :mod:`stages.replays.floors`) are fitted on the same
   few-shot span, with the same normalisation and window, and thresholded the same way on their
   own validation scores.
4. Metrics: per KPI at its own threshold, and pooled over all test spans (each KPI's scores
   divided by its threshold, so one threshold 1.0 applies; a NaN step separates KPIs so no event
   crosses a boundary), with 95 % block-bootstrap intervals. The pooled numbers are the top-level
   keys of the metrics JSON — the keys the pipeline's evaluate stage writes — and ``<out stem>.md``
   holds the tables.

Examples::

    python -m stages.replay kad_disformer --nab-dir ../shared/data/nab --labels windows \\
        --out metrics/replays/kad_nab.json
    python -m stages.replay kad_disformer --kpi-dir data/kpi/aiops --out metrics/replays/kad.json -S train.epochs=3
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from stages.core.errors import InputError
from stages.core.evaluation import ThresholdParams, choose_threshold
from stages.core.params import build
from stages.core.windowset import WindowSet
from stages.formats.kpi import KPISeries, read_kpi_dir
from stages.replays.common import (ReplayResult, intervals, parse_overrides, replay_main, require_two_classes,
                                   score_metrics, table, with_ci)

log = logging.getLogger(__name__)
METHOD = "kad_disformer"
EXTRA_COLUMNS = (("event_f1", "event F1"), ("precision", "P"), ("recall", "R"))


def zscore(values: np.ndarray, fit_part: np.ndarray) -> np.ndarray:
    """Normalise with statistics of ``fit_part`` only (a flat part gets scale 1)."""
    mu, sd = float(np.mean(fit_part)), float(np.std(fit_part))
    return ((values - mu) / (sd if sd > 1e-8 else 1.0)).astype(np.float32)


def split_points(n: int, fewshot: float, val: float, window: int) -> tuple[int, int]:
    """End of the few-shot span and of the validation span (each at least one window + 1 step)."""
    a = max(int(round(n * fewshot)), window + 1)
    b = max(a + int(round(n * val)), a + window + 1)
    return a, b


def kpi_windowset(series: KPISeries, values: np.ndarray, window: int, name: str, labels: np.ndarray | None = None
                  ) -> WindowSet:
    return WindowSet.from_arrays(values, series.label if labels is None else labels, window=window, stride=1,
                                 name=name, channels=[f"{series.name}/value"], dataset=series.name)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m stages.replay kad_disformer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--kpi-dir", help="folder of labelled KPI CSVs (timestamp,value,label)")
    src.add_argument("--nab-dir", help="Numenta Anomaly Benchmark folder (data/<group>/<kpi>.csv + labels/)")
    ap.add_argument("--labels", choices=("windows", "points"), default="windows",
                    help="NAB labels: scoring windows (combined_windows.json) or anomaly points (combined_labels.json)")
    ap.add_argument("--protocol", choices=("loo", "fraction"),
                    help="which KPIs pre-train: leave-one-out (default with --nab-dir) or the first "
                         "--pretrain-fraction (default with --kpi-dir); ignored with --pretrain-dir")
    ap.add_argument("--pretrain-dir", help="folder of KPI CSVs for pre-training only (labels not needed)")
    ap.add_argument("--pretrain-fraction", type=float, default=0.5,
                    help="share of the KPIs used for pre-training with --protocol fraction")
    ap.add_argument("--fewshot-fraction", type=float, default=0.1, help="uTune span of each unseen KPI")
    ap.add_argument("--val-fraction", type=float, default=0.1, help="validation span (threshold) of each KPI")
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--threshold", choices=("pot", "val_quantile", "val_max"), default="pot")
    ap.add_argument("--n-boot", type=int, default=200, help="block-bootstrap resamples for the 95%% intervals")
    ap.add_argument("--no-floors", action="store_true", help="skip the random / PCA / IsolationForest floors")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="metrics/replays/kad_disformer.json")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="detector config override, dotted keys (e.g. -S train.epochs=3); repeatable")
    return ap


def load_kpis(args: argparse.Namespace) -> tuple[list[KPISeries], str]:
    if args.nab_dir:
        from stages.formats.nab import read_nab

        return read_nab(args.nab_dir, args.labels), args.nab_dir
    return read_kpi_dir(args.kpi_dir, require_labels=True), args.kpi_dir


def folds(args: argparse.Namespace, series: list[KPISeries], root: str
          ) -> tuple[str, list[tuple[list[KPISeries], list[KPISeries]]]]:
    """(protocol name, [(pre-training KPIs, unseen KPIs)]) — one pre-training per entry."""
    if args.pretrain_dir:
        return "pretrain_dir", [(read_kpi_dir(args.pretrain_dir), series)]
    protocol = args.protocol or ("loo" if args.nab_dir else "fraction")
    if len(series) < 2:
        raise InputError(root, None, "at least two KPIs (some to pre-train on, some unseen) or a --pretrain-dir",
                         len(series))
    if protocol == "loo":
        return protocol, [([s for s in series if s is not t], [t]) for t in series]
    n_pre = int(round(len(series) * args.pretrain_fraction))
    if not 0 < n_pre < len(series):
        raise InputError(root, "--pretrain-fraction", "a share leaving some KPIs to pre-train and some unseen",
                         args.pretrain_fraction)
    return protocol, [(series[:n_pre], series[n_pre:])]


class Pool:
    """Per-method test scores of all KPIs, each divided by its own threshold (pooled threshold 1.0)."""

    def __init__(self) -> None:
        self.scores: dict[str, list[np.ndarray]] = {}
        self.labels: list[np.ndarray] = []

    def add(self, kpi_scores: dict[str, np.ndarray], labels: np.ndarray) -> None:
        for name, s in kpi_scores.items():
            self.scores.setdefault(name, []).extend([s, [np.nan]])
        self.labels.extend([labels, [0]])

    def arrays(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.scores[name]), np.concatenate(self.labels)


def floor_test_scores(series: KPISeries, values: np.ndarray, a: int, b: int, W: int, seed: int,
                      tparams: ThresholdParams) -> dict[str, tuple[np.ndarray, float]]:
    """Each floor fitted on the few-shot span: (test scores of steps b:, threshold from val scores a:b)."""
    from stages.replays.floors import floor_scores

    train = kpi_windowset(series, values[:a], W, "fewshot", series.label[:a])
    val = kpi_windowset(series, values[a - W + 1:b], W, "val", series.label[a - W + 1:b])  # context + val
    test = kpi_windowset(series, values[b - W + 1:], W, "test", series.label[b - W + 1:])  # context + test
    out = {}
    for name, (val_s, test_s) in floor_scores(train, val, test, seed=seed).items():
        out[name] = (test_s[W - 1:], choose_threshold(val_s[W - 1:], tparams))  # validation scores only
    return out


def run(args: argparse.Namespace) -> ReplayResult:
    from stages.nets.kad_disformer import KADDisformer, KADDisformerConfig

    if not 0 < args.fewshot_fraction < 1 or not 0 < args.val_fraction < 1 \
            or args.fewshot_fraction + args.val_fraction >= 1:
        raise InputError(None, "--fewshot-fraction/--val-fraction", "fractions in (0, 1) summing below 1",
                         (args.fewshot_fraction, args.val_fraction))
    config = build(KADDisformerConfig, parse_overrides(args.overrides), where="kad_disformer", source="-S")
    series, root = load_kpis(args)
    protocol, plan = folds(args, series, root)
    W = args.window
    targets = [t for _, ts in plan for t in ts]
    short = [s for s in targets if len(s) < 4 * (W + 1)]
    if short:
        raise InputError(short[0].path, short[0].name, f"at least {4 * (W + 1)} points for window {W}", len(short[0]))
    tparams = ThresholdParams(method=args.threshold)
    schema = kpi_windowset(targets[0], targets[0].value.astype(np.float32), W, "schema").schema

    per_kpi: dict[str, dict[str, Any]] = {}
    pool = Pool()
    pretrain_s = utune_s = score_s = 0.0
    n_test_windows = n_scored = 0
    n_pretrain = set()
    bar = tqdm(total=len(targets), desc=f"kad_disformer replay ({protocol})", unit="kpi", disable=False)
    for pretrain, unseen in plan:
        pre_sets = {s.name: kpi_windowset(s, zscore(s.value, s.value), W, "pretrain") for s in pretrain if len(s) > W}
        if not pre_sets:
            raise InputError(args.pretrain_dir or root, None, f"pre-training KPIs longer than the window {W}")
        n_pretrain |= set(pre_sets)
        det = KADDisformer(config, schema, seed=args.seed)
        t0 = time.perf_counter()
        det.pretrain(pre_sets, W)
        pretrain_s += time.perf_counter() - t0
        pretrained = det.pretrained_state()
        for s in unseen:
            bar.set_postfix_str(Path(s.name).name)
            a, b = split_points(len(s), args.fewshot_fraction, args.val_fraction, W)
            values = zscore(s.value, s.value[:a])  # the KPI's training part only
            det.restore_pretrained(pretrained)
            t1 = time.perf_counter()
            det.utune(kpi_windowset(s, values[:a], W, "fewshot"), kpi_windowset(s, values[a:b], W, "val"))
            utune_s += time.perf_counter() - t1
            t1 = time.perf_counter()
            scores = det.score(kpi_windowset(s, values, W, "all"))  # causal: each step sees only its past
            score_s += time.perf_counter() - t1
            n_scored += len(s) - W + 1
            n_test_windows += len(s) - b
            runs = {METHOD: (scores[b:], choose_threshold(scores[a:b], tparams))}  # validation scores, no label
            if not args.no_floors:
                runs.update(floor_test_scores(s, values, a, b, W, args.seed, tparams))
            y = s.label[b:]
            if y.sum() == 0 or y.all():
                log.warning("%s: the test span holds one class; its own metrics are undefined (pooled only)", s.name)
            rows = {}
            for name, (test_s, thr) in runs.items():
                rows[name] = score_metrics(test_s, y, thr, step_s=1.0)
                rows[name]["intervals"] = intervals(test_s, y, thr, n_boot=args.n_boot, seed=args.seed) \
                    if 0 < y.sum() < len(y) else None
            per_kpi[s.name] = {**rows[METHOD], "floors": {k: v for k, v in rows.items() if k != METHOD},
                               "split": {"fewshot_end": a, "val_end": b, "n": len(s)}}
            pool.add({k: test_s / max(thr, 1e-12) for k, (test_s, thr) in runs.items()}, y)
            log.info("%s: AUC-PR %.4f F1 %.4f (threshold %.4g)", s.name, rows[METHOD]["auc_pr"], rows[METHOD]["f1"],
                     runs[METHOD][1])
            bar.update()
    bar.close()

    pooled = {}
    for name in pool.scores:
        s_all, y_all = pool.arrays(name)
        if name == METHOD:
            require_two_classes(y_all[np.isfinite(s_all)], root, "pooled test spans")
        pooled[name] = score_metrics(s_all, y_all, 1.0, step_s=1.0)
        pooled[name]["intervals"] = intervals(s_all, y_all, 1.0, n_boot=args.n_boot, seed=args.seed)
    metrics: dict[str, Any] = pooled.pop(METHOD)
    metrics.update(
        dataset=Path(root).name, detector=METHOD, protocol=f"pretrain_utune_kpi/{protocol}",
        labels=args.labels if args.nab_dir else "label column",
        threshold_method=args.threshold, threshold_note="per KPI from its validation scores; pooled scores are "
                                                        "divided by it, so the pooled threshold is 1.0",
        floors=pooled, n_pretrain_kpis=len(n_pretrain), n_target_kpis=len(targets), n_test_windows=n_test_windows,
        pretrain_seconds=pretrain_s, utune_seconds=utune_s, train_seconds=pretrain_s + utune_s,
        score_seconds=score_s, score_windows_per_s=n_scored / max(score_s, 1e-9),
        device=str(det.device), seed=args.seed,
        window=W, fewshot_fraction=args.fewshot_fraction, val_fraction=args.val_fraction,
        config=dataclasses.asdict(config), per_kpi=per_kpi,
    )
    return ReplayResult(metrics, markdown(metrics, protocol))


def markdown(metrics: dict[str, Any], protocol: str) -> str:
    """Pooled table, then one row per (KPI, method)."""
    pooled = {METHOD: with_ci(metrics, metrics.get("intervals")),
              **{k: with_ci(v, v.get("intervals")) for k, v in metrics["floors"].items()}}
    per = {}
    for kpi, m in metrics["per_kpi"].items():
        short = Path(kpi).name
        per[f"{short} · {METHOD}"] = with_ci(m, m.get("intervals"))
        for k, v in m["floors"].items():
            per[f"{short} · {k}"] = with_ci(v, v.get("intervals"))
    return (f"### KAD-Disformer on {metrics['dataset']} ({protocol}, labels: {metrics['labels']})\n\n"
            f"Pooled over {metrics['n_target_kpis']} unseen KPIs ({metrics['n_test_windows']} test steps); "
            "95% block-bootstrap intervals over fault events in brackets (none for a span with one event); "
            "floors fitted on the same few-shot span, thresholds from their own validation scores.\n\n"
            + table(pooled, EXTRA_COLUMNS) + "\n#### Per KPI\n\n" + table(per, EXTRA_COLUMNS))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return replay_main(lambda: run(args), args.out, ("auc_pr", "auc_roc", "precision", "recall", "f1", "train_seconds"))
