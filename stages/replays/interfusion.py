"""Replay InterFusion's protocol on its own pkl layout: ``python -m stages.replay interfusion ...``.

Protocol, without the published code's defects:

1. ``<name>_train.pkl`` is split chronologically: the first ``1 - --val-fraction`` trains, the
   last ``--val-fraction`` (30 % by default) is validation. z-score statistics come from the
   training part only and are applied unchanged to validation and test.
2. The paper's window (100 steps) and two-stage training (inter-metric part, then jointly),
   early-stopped on validation loss.
3. The operating threshold is chosen from validation *scores* (POT by default); the test file is
   scored with MCMC imputation of each window's newest point and the reconstruction probability
   of that point. The last ``window - 1`` training points precede the test series as context (the
   public sets are one series cut in two; pass ``--no-context`` otherwise), so every test step is
   scored.
4. The metrics JSON holds the pipeline's keys (point-wise metrics at that threshold, AUC-PR, ...)
   plus ``best_f1_oracle_pa`` — the paper's point-adjusted best F1, which needs test labels and
   is therefore an oracle, reported for comparison with the paper's table only.
5. With interpretation labels: HitRate@100% and @150% over labelled anomalous steps that raised
   an alarm at the chosen threshold, and the threshold-free variant over all labelled steps.
6. Floors (random, PCA, IsolationForest; ``stages.replays.floors``) are fitted on the same split
   and normalisation, thresholded the same label-free way and evaluated on the same test steps:
   the JSON's ``floors`` section and a ``<out>.md`` table beside it.

Example::

    python -m stages.replay interfusion --pkl-dir ../shared/data/interfusion-asd --name omi-1 \\
        --out metrics/replays/interfusion_omi-1.json
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from typing import Any

import numpy as np
import torch

from stages.core.errors import InputError
from stages.core.evaluation import ThresholdParams, choose_threshold
from stages.core.params import build
from stages.core.windowset import WindowSet
from stages.formats.interfusion_pkl import PklDataset, read_pkl_dataset
from stages.replays.common import ReplayResult, intervals, parse_overrides, replay_main, score_metrics, table
from stages.replays.floors import FLOORS, floor_metrics

log = logging.getLogger(__name__)
HIT_RATE_PERCENTS = (100, 150)
EXTRA_COLUMNS = (("interpretation_hitrate_100", "HitRate@100%"), ("interpretation_hitrate_150", "HitRate@150%"),
                 ("train_seconds", "train s"), ("train_cpu_seconds", "train CPU s"),
                 ("score_windows_per_s", "windows/s"), ("score_cpu_windows_per_s", "windows/CPU-s"))


def fit_zscore(train_part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and scale of the training part (constant dims get scale 1)."""
    mu = train_part.mean(axis=0)
    sd = train_part.std(axis=0)
    return mu, np.where(sd > 1e-8, sd, 1.0)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m stages.replay interfusion", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pkl-dir", required=True, help="folder with <name>_train.pkl, _test.pkl, _test_label.pkl")
    ap.add_argument("--name", required=True, help="dataset name, e.g. machine-1-1")
    ap.add_argument("--interpretation", help="interpretation label file (default: looked up beside the pkl files)")
    ap.add_argument("--interp-one-based-steps", action="store_true",
                    help="the interpretation file's start-end are 1-based step numbers")
    ap.add_argument("--window", type=int, default=100, help="steps per window (the paper: 100)")
    ap.add_argument("--val-fraction", type=float, default=0.3, help="chronological tail of the train file")
    ap.add_argument("--no-context", action="store_true", help="do not prepend train points before the test series")
    ap.add_argument("--threshold", choices=("pot", "val_quantile", "val_max"), default="pot")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--floors", default=",".join(FLOORS),
                    help=f"comma-separated floor detectors beside the method ('' = none; default {','.join(FLOORS)})")
    ap.add_argument("--floor-window", type=int, default=None,
                    help="window of the floors (default: the method's); same split, normalisation and test steps")
    ap.add_argument("--out", default="metrics/replays/interfusion.json")
    ap.add_argument("--save-model", metavar="DIR", help="also save the trained detector there (config + tensors)")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="detector config override, dotted keys (e.g. -S train.epochs=3); repeatable")
    return ap


def windowsets(data: PklDataset, window: int, val_fraction: float, context: bool
               ) -> tuple[WindowSet, WindowSet, WindowSet, int]:
    """Train / val / test WindowSets normalised with train-part statistics, and the test context length."""
    n = data.train.shape[0]
    cut = int(round(n * (1.0 - val_fraction)))
    if cut < window + 1 or n - cut < window + 1:
        raise InputError(data.files["train"], "shape", f"at least {window + 1} steps in both the training part and "
                         f"the validation part (val fraction {val_fraction}) for window {window}", data.train.shape)
    mu, sd = fit_zscore(data.train[:cut])
    norm = lambda a: ((a - mu) / sd).astype(np.float32)  # noqa: E731
    channels = [f"{data.name}/dim{d + 1}" for d in range(data.n_dims)]
    make = lambda arr, lab, name: WindowSet.from_arrays(arr, lab, window=window, stride=1, name=name,  # noqa: E731
                                                       channels=channels, dataset=data.name)
    train = make(norm(data.train[:cut]), None, "train")
    val = make(norm(data.train[cut:]), None, "val")
    n_ctx = window - 1 if context else 0
    test_arr = np.concatenate([data.train[n - n_ctx:], data.test]) if n_ctx else data.test
    test_lab = np.concatenate([np.zeros(n_ctx, np.int8), data.test_label])
    test = make(norm(test_arr), test_lab, "test")
    return train, val, test, n_ctx


def hit_rates(contrib: np.ndarray, segments: list, alarms: np.ndarray) -> dict[str, float]:
    from stages.nets.interfusion import interpretation_hit_rate

    everywhere = np.ones(len(alarms), dtype=bool)
    out = {}
    for p in HIT_RATE_PERCENTS:
        out[f"interpretation_hitrate_{p}"] = interpretation_hit_rate(contrib, segments, alarms, p)
        out[f"interpretation_hitrate_{p}_all_labelled"] = interpretation_hit_rate(contrib, segments, everywhere, p)
    return out


def run(args: argparse.Namespace) -> ReplayResult:
    from stages.nets.interfusion import InterFusion, InterFusionConfig

    if not 0 < args.val_fraction < 1:
        raise InputError(None, "--val-fraction", "a fraction in (0, 1)", args.val_fraction)
    floors = tuple(f for f in args.floors.split(",") if f)
    config = build(InterFusionConfig, parse_overrides(args.overrides), where="interfusion", source="-S")
    data = read_pkl_dataset(args.pkl_dir, args.name, args.interpretation, args.interp_one_based_steps)
    train, val, test, n_ctx = windowsets(data, args.window, args.val_fraction, not args.no_context)
    det = InterFusion(config, train.schema, seed=args.seed, window=args.window)
    t0, c0 = time.perf_counter(), time.process_time()
    history = det.fit(train, val)
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    if args.save_model:
        det.save(args.save_model)
    tp = ThresholdParams(method=args.threshold)
    threshold = choose_threshold(det.score(val), tp)  # scores only
    det.threshold = threshold
    t0, c0 = time.perf_counter(), time.process_time()
    contrib = det.contributions(test)[n_ctx:]
    score_s, score_cpu = time.perf_counter() - t0, time.process_time() - c0
    scores = contrib.sum(axis=1)
    metrics: dict[str, Any] = score_metrics(scores, data.test_label, threshold)  # test labels read only here
    metrics.update(
        dataset=args.name, detector="interfusion", protocol="interfusion_pkl", threshold_method=args.threshold,
        oracle_note="best_f1_oracle_pa is the paper's point-adjusted best F1 over all thresholds (uses test "
                    "labels): for comparison with the paper only",
        n_train_windows=len(train), n_val_windows=len(val), n_test_windows=len(test),
        train_seconds=train_s, score_seconds=score_s, score_windows_per_s=len(test) / max(score_s, 1e-9),
        # CPU time of this process (all threads): on a shared machine, what the run costs without contention
        train_cpu_seconds=train_cpu, score_cpu_windows_per_s=len(test) / max(score_cpu, 1e-9),
        device=str(det.device), torch_threads=config.cpu_threads or torch.get_num_threads(),
        seed=args.seed, window=args.window, val_fraction=args.val_fraction, test_context_steps=n_ctx,
        epochs_run=len(history.get("epoch", [])), stage1_epochs_run=len(history.get("stage1_train_loss", [])),
        config=dataclasses.asdict(config),
    )
    ci = intervals(scores, data.test_label, threshold, seed=args.seed)
    if ci is not None:
        metrics["ci"] = ci
    if data.interpretation:
        alarms = np.nan_to_num(scores, nan=-np.inf) > threshold
        metrics.update(hit_rates(contrib, data.interpretation, alarms))
        metrics["n_interpretation_segments"] = len(data.interpretation)
    rows = {"interfusion": metrics}
    if floors:
        metrics["floors"] = floor_metrics(train, val, test, threshold_params=tp, seed=args.seed, step_s=1.0,
                                          names=floors, window=args.floor_window, eval_from=n_ctx)
        rows.update(metrics["floors"])
    title = (f"InterFusion replay on {args.name}: window {args.window}, threshold {args.threshold} on "
             f"validation scores; floors window {args.floor_window or args.window}. PA best-F1 is an oracle "
             "(test labels), shown for comparison with the paper only.\n\n")
    return ReplayResult(metrics, title + table(rows, EXTRA_COLUMNS))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return replay_main(lambda: run(args), args.out, ("auc_pr", "auc_roc", "vus_pr", "f1", "event_recall",
                                                     "best_f1_oracle_pa", "interpretation_hitrate_100",
                                                     "train_seconds", "score_windows_per_s"))
