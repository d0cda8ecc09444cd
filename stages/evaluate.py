"""DVC stage ``evaluate@<ds>-<detector>``: score val and test, threshold on val scores, measure test.

Reads ``data/windows/<ds>`` (splits ``val``, ``test``), ``models/<ds>/<detector>/detector/`` and
its ``train.json``. The threshold comes from *validation scores only* (no label is read before
the test metrics are computed). Writes ``metrics/eval/<ds>/<detector>.json`` and plot data in
``metrics/eval/<ds>/<detector>/``: ``scores.csv`` (t, ts, score, label, alarm), ``pr.csv``
(recall, precision, threshold) and, when the detector explains per-step weights (FuseGuard's
fusion weights), ``fusion.csv``.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from stages.core.cli import run_stage
from stages.core.errors import InputError
from stages.core.bootstrap import block_bootstrap_ci
from stages.core.evaluation import (
    ThresholdParams,
    evaluate,
    evaluate_by_group,
    pr_curve,
    score_series,
    stream_thresholds,
    write_metrics_json,
)
from stages.core.protocol import ProtocolParams, visible_labels
from stages.core.device import (cpu_has_native_bf16, cpu_score_autocast, deterministic_threads, set_scoring_threads,
                                stage_scoring_threads)
from stages.core.heap import keep_freed_memory
from stages.core.io import read_json, staged_targets
from stages.core.params import build, load_checked
from stages.core.provenance import environment
from stages.core.windowset import WindowSet, load_split, windows_dir

log = logging.getLogger("stages.evaluate")


@dataclass(frozen=True)
class EvaluateParams:
    """``evaluate:`` section of params.yaml."""

    threshold: ThresholdParams = field(default_factory=ThresholdParams)
    series_points: int = 2000  # rows of scores.csv / fusion.csv (max-score bucketing keeps spikes)
    pr_points: int = 200  # rows of pr.csv
    vus_window: int = 100  # VUS buffer length in steps (TSB-AD's get_metrics default)
    bootstrap: int = 200  # block-bootstrap resamples over test events for the 95% intervals (0 = none)
    interval_level: float = 0.95
    # torch threads of the scoring passes: a number, or auto (README, "Repeatability", Threads). auto
    # applies only to detectors whose scores are the same bits at 1 and 2 threads; FuseGuard keeps its
    # cpu_threads (its scores move by ~1e-6 with the count).
    score_threads: int | Literal["auto"] = "auto"
    # precision of CPU scoring passes: bfloat16 lifts the AVX2 pin and runs matmuls in bf16, for
    # detectors with a tested bf16 path (FuseGuard); scores lose cross-machine bit-identity
    cpu_score_dtype: Literal["float32", "bfloat16"] = "float32"

    def validate(self) -> None:
        if self.cpu_score_dtype not in ("float32", "bfloat16"):
            raise InputError("params.yaml", "evaluate.cpu_score_dtype", "float32 or bfloat16", self.cpu_score_dtype)
        if self.score_threads != "auto" and self.score_threads < 1:
            raise InputError("params.yaml", "evaluate.score_threads", "auto or a positive number of threads",
                             self.score_threads)
        if self.vus_window < 0:
            raise InputError("params.yaml", "evaluate.vus_window", "a non-negative number of steps", self.vus_window)
        if self.bootstrap < 0:
            raise InputError("params.yaml", "evaluate.bootstrap", "a non-negative number of resamples", self.bootstrap)
        if not 0 < self.interval_level < 1:
            raise InputError("params.yaml", "evaluate.interval_level", "a level in (0, 1)", self.interval_level)
        if self.series_points < 10:
            raise InputError("params.yaml", "evaluate.series_points", "at least 10", self.series_points)
        if self.pr_points < 2:
            raise InputError("params.yaml", "evaluate.pr_points", "at least 2", self.pr_points)


def scoring_peak_memory_mb(device: Any) -> float:
    """Peak RSS of this process (KiB on Linux), or CUDA max allocated when scoring on a GPU."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        return max(rss, torch.cuda.max_memory_allocated(device) / 2**20)
    return rss


def explained_series(explain: dict[str, Any], n_steps: int) -> dict[str, np.ndarray]:
    """Per-step series among ``detector.explain`` outputs: ``key`` → 1-D array, ``key/sub`` for dicts.

    Anything that is not a length-``n_steps`` vector (scalars, per-channel tables) is left out.
    """
    out: dict[str, np.ndarray] = {}

    def keep(name: str, value: Any) -> None:
        arr = np.asarray(value) if isinstance(value, (np.ndarray, list, tuple)) else None
        if arr is not None and arr.ndim == 1 and len(arr) == n_steps and np.issubdtype(arr.dtype, np.number):
            out[name] = arr.astype(np.float64)

    for key, value in explain.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                keep(f"{key}/{sub}", v)
        else:
            keep(str(key), value)
    return out


def explained_scalars(explain: dict[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in explain.items()
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)}


def fusion_frame(ts: np.ndarray, series: dict[str, np.ndarray], max_points: int) -> pl.DataFrame:
    """Bucket means of each series over equal step buckets (ts = first step of the bucket)."""
    n = len(ts)
    bounds = np.unique(np.linspace(0, n, min(n, max_points) + 1).round().astype(np.int64))
    starts = bounds[:-1]
    cols: dict[str, Any] = {
        "t": starts,
        "ts": np.datetime_as_string(ts[starts].astype("datetime64[us]"), unit="auto", timezone="UTC"),
    }
    for name, arr in series.items():
        finite = np.isfinite(arr)
        sums = np.add.reduceat(np.where(finite, arr, 0.0), starts)
        counts = np.add.reduceat(finite.astype(np.int64), starts)
        cols[name] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return pl.DataFrame(cols)


def _csv(df: pl.DataFrame, path: Path) -> None:
    df.write_csv(path, float_precision=6, null_value="")


def load_detector(models_root: Path, ds: str, detector: str, schema) -> tuple[Any, dict]:
    from stages.nets.registry import detector_class

    mdir = Path(models_root) / ds / detector
    det_dir = mdir / "detector"
    if not (det_dir / "config.json").exists():
        raise InputError(det_dir / "config.json", None, f"a detector saved by `python -m stages.train {ds} {detector}`")
    train_info = read_json(mdir / "train.json")
    if not isinstance(train_info, dict):
        raise InputError(mdir / "train.json", None, "a JSON object", type(train_info).__name__)
    return detector_class(detector).load(det_dir, schema), train_info


def same_steps(scores: np.ndarray, ws: WindowSet) -> np.ndarray:
    """Every detector is judged on the same steps: those a windowed detector can score (the steps
    before the first window's newest ``stride`` steps have no full window, so no detector scores them)."""
    out = np.asarray(scores, dtype=np.float64).copy()
    out[: max(0, ws.window - min(ws.stride, ws.window))] = np.nan
    return out


def _num(info: dict, key: str, path: Path) -> float | None:
    v = info.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InputError(path, key, "a number", v)
    return float(v)


def run(ds: str, detector: str, raw: dict | None = None, windows_root: Path = Path("data/windows"),
        models_root: Path = Path("models"), metrics_root: Path = Path("metrics/eval"),
        word_pca_root: Path = Path("models/word_pca")) -> dict:
    from stages.embed_pca import load_word_pca
    from stages.nets.registry import detector_class

    raw = load_checked() if raw is None else raw
    # the detector's module first (torch for a torch detector only): deterministic_threads sets its threads
    cls = detector_class(detector)
    params = build(EvaluateParams, raw.get("evaluate"), where="evaluate")
    score_dtype = params.cpu_score_dtype if getattr(cls, "cpu_bf16_scoring", False) else "float32"
    if score_dtype != params.cpu_score_dtype:
        log.warning("%s/%s: evaluate.cpu_score_dtype=%s, but %s has no tested bf16 scoring path: it scores in "
                    "float32", ds, detector, params.cpu_score_dtype, detector)
    elif score_dtype == "bfloat16" and not cpu_has_native_bf16():
        log.warning("%s/%s: this CPU has no AVX512-BF16 or AMX: bf16 is emulated here and scores slower than "
                    "float32 (set evaluate.cpu_score_dtype=float32)", ds, detector)
    pins = deterministic_threads(pin_vectors=score_dtype == "float32")
    keep_freed_memory()  # one batch's freed tensors serve the next (heap.py): ~10% faster scoring
    n_threads, why = stage_scoring_threads(params.score_threads, cls.scores_depend_on_threads)
    set_scoring_threads(n_threads)
    wdir = windows_dir(ds, windows_root)
    word_pca = load_word_pca(word_pca_root)
    val: WindowSet = load_split(wdir, "val", word_pca)
    test: WindowSet = load_split(wdir, "test", word_pca)
    det, train_info = load_detector(models_root, ds, detector, test.schema)
    log.info("%s/%s: scoring with %s torch thread(s) (%s)", ds, detector,
             n_threads if n_threads is not None else getattr(det, "cpu_threads", "n/a"), why)
    train_json = Path(models_root) / ds / detector / "train.json"

    # 1. thresholds from scores only: calibrated on validation scores (val.labels is never read) and,
    #    for DSPOT, updated online through the test span with its non-alarming scores. Only the
    #    `contamination` rule reads labels: those of the first k faults of the few-shot training span.
    if params.threshold.method == "contamination" and params.threshold.contamination is None:
        protocol = build(ProtocolParams, raw.get("protocol"), where="protocol")
        fewshot = load_split(wdir, "fewshot", word_pca)
        seen, k = visible_labels(fewshot.labels, "fewshot_labels", protocol.labelled_events)
        params = dataclasses.replace(params, threshold=dataclasses.replace(
            params.threshold, contamination=float(seen.mean())))
        log.info("%s/%s: contamination %.3f from the labels of the first %d few-shot training faults", ds,
                 detector, params.threshold.contamination, k)
    with cpu_score_autocast(score_dtype):
        val_scores = det.score(val)
    if not np.isfinite(val_scores).any():
        raise InputError(Path(models_root) / ds / detector, "validation scores",
                         f"finite scores from {detector} on the validation split (all {len(val_scores)} are NaN/inf: "
                         "the model diverged or the split is shorter than a window)")

    # 2. score the test span, timed
    t0 = time.perf_counter()
    with cpu_score_autocast(score_dtype):
        test_scores = det.score(test)
    score_seconds = time.perf_counter() - t0
    if test_scores.shape != (test.n_steps,):
        raise ValueError(f"{detector}.score returned shape {test_scores.shape}, expected ({test.n_steps},)")
    val_scores, test_scores = same_steps(val_scores, val), same_steps(test_scores, test)
    thresholds = stream_thresholds(val_scores, test_scores, params.threshold)
    log.info("%s/%s: %s threshold from %d validation steps (test: median %.6g, last %.6g)", ds, detector,
             params.threshold.method, int(np.isfinite(val_scores).sum()), float(np.nanmedian(thresholds)),
             float(thresholds[-1]))
    with cpu_score_autocast(score_dtype):
        explain = det.explain(test) or {}
    device = getattr(det, "device", "cpu")

    # 3. metrics (test labels are read only here)
    step_s = test.schema.step_s
    metrics: dict[str, Any] = evaluate(test_scores, test.labels, thresholds, step_s=step_s,
                                       vus_window=params.vus_window)
    metrics["by_kind"] = evaluate_by_group(test_scores, test.labels, test.kinds, thresholds, step_s,
                                           vus_window=params.vus_window)
    if (test.severity[test.labels > 0] != "").any():
        metrics["by_severity"] = evaluate_by_group(test_scores, test.labels, test.severity, thresholds, step_s,
                                                   vus_window=params.vus_window)
    if params.bootstrap:
        ci = block_bootstrap_ci(test_scores, test.labels, thresholds, n_boot=params.bootstrap,
                                metrics=("auc_pr", "vus_pr", "event_f1", "auc_roc"),
                                level=params.interval_level, seed=0, vus_window=params.vus_window)
        metrics["ci"] = {k: list(v) for k, v in ci.items()}
    train_peak = _num(train_info, "peak_memory_mb", train_json)
    score_peak = scoring_peak_memory_mb(device)
    metrics.update(
        dataset=ds, detector=detector, threshold_method=params.threshold.method,
        contamination=params.threshold.contamination,
        protocol=train_info.get("protocol"), labelled_events=train_info.get("labelled_events"),
        data_share=train_info.get("data_share"), windows_digest=train_info.get("windows_digest"),
        normal_only=bool(train_info.get("normal_only", False)),
        n_test_windows=len(test), n_val_windows=len(val), n_train_windows=train_info.get("n_train_windows"),
        train_seconds=_num(train_info, "train_seconds", train_json),
        score_seconds=score_seconds,
        score_windows_per_s=len(test) / score_seconds if score_seconds > 0 else None,
        peak_memory_mb=max(score_peak, train_peak or 0.0), score_peak_memory_mb=score_peak,
        device=str(train_info.get("device", device)),
        cpu_score_dtype=score_dtype, cpu_vectors=pins["ATEN_CPU_CAPABILITY"],
        environment=environment(),
    )
    scalars = explained_scalars(explain)
    if scalars:
        metrics["explain"] = scalars

    # 4. plot data, all computed before anything is written
    # per row: the alarm and the threshold in force at that step (DSPOT moves it)
    series = score_series(test.ts, test_scores, test.labels, thresholds, params.series_points)
    series_schema = {"t": pl.Int64, "ts": pl.String, "score": pl.Float64, "threshold": pl.Float64,
                     "label": pl.Int64, "alarm": pl.Int64}
    scores_df = (pl.DataFrame([{k: r.get(k) for k in series_schema} for r in series], schema=series_schema,
                              orient="row") if series else pl.DataFrame(schema=series_schema))
    pr_df = pl.DataFrame(pr_curve(test_scores, test.labels, params.pr_points),
                         schema={"recall": pl.Float64, "precision": pl.Float64, "threshold": pl.Float64})
    weights = explained_series(explain, test.n_steps)
    fusion_df = fusion_frame(test.ts, weights, params.series_points) if weights else None

    # plot data and the metrics file are published together, all-or-nothing
    with staged_targets(Path(metrics_root) / ds / detector, Path(metrics_root) / ds / f"{detector}.json") as (tmp, js):
        tmp.mkdir()
        _csv(scores_df, tmp / "scores.csv")
        _csv(pr_df, tmp / "pr.csv")
        if fusion_df is not None:
            _csv(fusion_df, tmp / "fusion.csv")
        write_metrics_json(js, metrics)
    log.info("%s/%s: AUC-PR %s, F1 %s at threshold, event recall %s, %.0f windows/s", ds, detector,
             _fmt(metrics["auc_pr"]), _fmt(metrics["f1"]), _fmt(metrics["event_recall"]),
             metrics["score_windows_per_s"] or 0.0)
    return metrics


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.evaluate", description=__doc__)
    ap.add_argument("dataset")
    ap.add_argument("detector")
    args = ap.parse_args(argv)
    return run_stage(lambda: run(args.dataset, args.detector))


if __name__ == "__main__":
    raise SystemExit(main())
