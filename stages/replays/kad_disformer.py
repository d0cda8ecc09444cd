"""Replay KAD-Disformer's protocol on KPI CSVs: ``python -m stages.replay kad_disformer ...``.

Protocol (pre-train on some KPIs, uTune on a few points of unseen ones, score the rest):

1. Pre-training KPIs: every KPI of ``--pretrain-dir``; without it, the first
   ``--pretrain-fraction`` of the ``--kpi-dir`` KPIs (sorted by name), which are then not
   evaluated. Pre-training is unsupervised (labels unread), on each whole series z-scored with
   its own statistics.
2. Each remaining (unseen) KPI: the first ``--fewshot-fraction`` of its points is the few-shot
   span (uTune, personal parameters only; also the z-score statistics), the next
   ``--val-fraction`` is validation (its *scores* choose the threshold, labels unread), the rest
   is the test span.
3. Metrics: per KPI at its own threshold, and pooled over all test spans (each KPI's scores
   divided by its threshold, so one threshold 1.0 applies; a NaN step separates KPIs so no
   event crosses a boundary). The pooled numbers are the top-level keys of the metrics JSON —
   the same keys the pipeline's evaluate stage writes.

Example::

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

from stages.core.errors import InputError
from stages.core.evaluation import ThresholdParams, choose_threshold, evaluate
from stages.core.params import build
from stages.core.windowset import WindowSet
from stages.formats.kpi import KPISeries, read_kpi_dir
from stages.replays.common import parse_overrides, replay_main

log = logging.getLogger(__name__)


def zscore(values: np.ndarray, fit_part: np.ndarray) -> np.ndarray:
    """Normalise with statistics of ``fit_part`` only (a flat part gets scale 1)."""
    mu, sd = float(np.mean(fit_part)), float(np.std(fit_part))
    return ((values - mu) / (sd if sd > 1e-8 else 1.0)).astype(np.float32)


def split_points(n: int, fewshot: float, val: float, window: int) -> tuple[int, int]:
    """End of the few-shot span and of the validation span (each at least one window + 1 step)."""
    a = max(int(round(n * fewshot)), window + 1)
    b = max(a + int(round(n * val)), a + window + 1)
    return a, b


def kpi_windowset(series: KPISeries, values: np.ndarray, window: int, name: str) -> WindowSet:
    return WindowSet.from_arrays(values, series.label, window=window, stride=1, name=name,
                                 channels=[f"{series.name}/value"], dataset=series.name)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m stages.replay kad_disformer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kpi-dir", required=True, help="folder of labelled KPI CSVs (timestamp,value,label)")
    ap.add_argument("--pretrain-dir", help="folder of KPI CSVs for pre-training only (labels not needed)")
    ap.add_argument("--pretrain-fraction", type=float, default=0.5,
                    help="share of --kpi-dir KPIs used for pre-training when --pretrain-dir is absent")
    ap.add_argument("--fewshot-fraction", type=float, default=0.1, help="uTune span of each unseen KPI")
    ap.add_argument("--val-fraction", type=float, default=0.1, help="validation span (threshold) of each KPI")
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--threshold", choices=("pot", "val_quantile", "val_max"), default="pot")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="metrics/replays/kad_disformer.json")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="detector config override, dotted keys (e.g. -S train.epochs=3); repeatable")
    return ap


def run(args: argparse.Namespace) -> dict[str, Any]:
    from stages.nets.kad_disformer import KADDisformer, KADDisformerConfig

    if not 0 < args.fewshot_fraction < 1 or not 0 < args.val_fraction < 1 \
            or args.fewshot_fraction + args.val_fraction >= 1:
        raise InputError(None, "--fewshot-fraction/--val-fraction", "fractions in (0, 1) summing below 1",
                         (args.fewshot_fraction, args.val_fraction))
    config = build(KADDisformerConfig, parse_overrides(args.overrides), where="kad_disformer", source="-S")
    targets = read_kpi_dir(args.kpi_dir, require_labels=True)
    if args.pretrain_dir:
        pretrain = read_kpi_dir(args.pretrain_dir)
    else:
        n_pre = int(round(len(targets) * args.pretrain_fraction))
        if not 0 < n_pre < len(targets):
            raise InputError(args.kpi_dir, None, "at least two KPIs (some to pre-train on, some unseen) "
                             "or a --pretrain-dir", len(targets))
        pretrain, targets = targets[:n_pre], targets[n_pre:]
    W = args.window
    short = [s for s in targets if len(s) < 4 * (W + 1)]
    if short:
        raise InputError(short[0].path, short[0].name, f"at least {4 * (W + 1)} points for window {W}", len(short[0]))
    pre_sets = {s.name: kpi_windowset(s, zscore(s.value, s.value), W, "pretrain") for s in pretrain if len(s) > W}
    if not pre_sets:
        raise InputError(args.pretrain_dir or args.kpi_dir, None, f"pre-training KPIs longer than the window {W}")

    schema = kpi_windowset(targets[0], targets[0].value.astype(np.float32), W, "schema").schema
    det = KADDisformer(config, schema, seed=args.seed)
    t0 = time.perf_counter()
    det.pretrain(pre_sets, W)
    pretrain_s = time.perf_counter() - t0
    pretrained = det.pretrained_state()
    tparams = ThresholdParams(method=args.threshold)

    per_kpi: dict[str, dict[str, Any]] = {}
    pooled_scores, pooled_labels = [], []
    utune_s, score_s, n_test_windows, n_scored = 0.0, 0.0, 0, 0
    for series in targets:
        a, b = split_points(len(series), args.fewshot_fraction, args.val_fraction, W)
        values = zscore(series.value, series.value[:a])
        fewshot = kpi_windowset(series, values[:a], W, "fewshot")
        val = kpi_windowset(series, values[a:b], W, "val")
        full = kpi_windowset(series, values, W, "all")  # scores are causal: each step sees only its past
        det.restore_pretrained(pretrained)
        t1 = time.perf_counter()
        det.utune(fewshot, val)
        utune_s += time.perf_counter() - t1
        t1 = time.perf_counter()
        scores = det.score(full)
        score_s += time.perf_counter() - t1
        n_scored += len(full)
        n_test_windows += len(series) - b
        threshold = choose_threshold(scores[a:b], tparams)  # validation scores only, no label
        m = evaluate(scores[b:], series.label[b:], threshold)
        per_kpi[series.name] = m
        pooled_scores += [scores[b:] / max(threshold, 1e-12), [np.nan]]
        pooled_labels += [series.label[b:], [0]]
        log.info("%s: AUC-PR %.4f F1 %.4f (threshold %.4g)", series.name, m["auc_pr"], m["f1"], threshold)

    metrics: dict[str, Any] = evaluate(np.concatenate(pooled_scores), np.concatenate(pooled_labels), 1.0)
    metrics.update(
        dataset=Path(args.kpi_dir).name, detector="kad_disformer", protocol="pretrain_utune_kpi",
        threshold_method=args.threshold, threshold_note="per KPI from its validation scores; pooled scores are "
                                                        "divided by it, so the pooled threshold is 1.0",
        n_pretrain_kpis=len(pre_sets), n_target_kpis=len(targets), n_test_windows=n_test_windows,
        pretrain_seconds=pretrain_s, utune_seconds=utune_s, train_seconds=pretrain_s + utune_s,
        score_seconds=score_s, score_windows_per_s=n_scored / max(score_s, 1e-9),
        device=str(det.device), seed=args.seed, window=W, fewshot_fraction=args.fewshot_fraction,
        val_fraction=args.val_fraction, config=dataclasses.asdict(config), per_kpi=per_kpi,
    )
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return replay_main(lambda: run(args), args.out, ("auc_pr", "auc_roc", "precision", "recall", "f1", "train_seconds"))
