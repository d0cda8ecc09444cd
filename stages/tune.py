"""Choose inference-time heuristics on development data only, and keep the record.

    python -m stages.tune [--datasets synth_msds_dev synth_gaia_dev synth_tt_dev] [--out metrics/tuning]

Needs the datasets' windows and trained FuseGuard models (run the pipeline on the `_dev` datasets
first, README "What was tuned"). It compares, on each dataset's test span (threshold-free AUC-PR
and VUS-PR, which need no threshold choice):

- FuseGuard's scoring: ``score_top_fraction`` × ``unit_scale_floor`` × ``score_weighting`` — one
  forward pass per window, every variant computed from the same reconstruction errors, each with its
  own per-modality error scale from the few-shot training windows (as ``fit`` computes it);
- IsolationForest's sample ``representation`` (window, summary, step), each fitted on the few-shot data.

The reported datasets never enter: the command refuses a dataset whose name does not end in ``_dev``
unless ``--allow-non-dev`` is given (for a user's own development split).
"""
from __future__ import annotations

import argparse
import itertools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from stages.core.cli import run_stage
from stages.core.errors import InputError
from stages.core.evaluation import evaluate, write_metrics_json
from stages.core.io import write_text
from stages.core.params import load_raw
from stages.core.windowset import WindowSet, load_split, windows_dir
from stages.embed_pca import load_word_pca

log = logging.getLogger("stages.tune")

TOP_FRACTIONS = (0.05, 0.2, 1.0)
FLOORS = (0.0, 0.1, 1.0)
WEIGHTINGS = ("uniform", "max", "fusion")
IFOREST_REPRESENTATIONS = ("window", "summary", "step")


def _unit_errors(det, ws: WindowSet) -> tuple[dict[str, list[np.ndarray]], list[np.ndarray], list[np.ndarray]]:
    """Squared unit errors (B, W, U) per modality, fusion weights (B, M) and window starts per batch."""
    from stages.core.device import autocast

    errs: dict[str, list[np.ndarray]] = {m: [] for m in det.modalities}
    weights, starts_all = [], []
    det.module.eval()
    with torch.inference_mode():
        for starts in tqdm(list(ws.batches(det.config.train.batch_size)), desc=f"forward {ws.name}", unit="batch",
                           disable=None):
            batch = det.make_batch(ws, starts)
            with autocast(det.device, det.config.train.amp):
                out = det.module(batch, consistency=False)
            for m, sq in det.module.unit_errors(batch, out["recon"]).items():
                errs[m].append(sq.float().cpu().numpy())
            weights.append(out["weights"].float().cpu().numpy())
            starts_all.append(np.asarray(starts))
    return errs, weights, starts_all


def _step_errors(det, errs: dict[str, list[np.ndarray]], top: float, floor: float) -> np.ndarray:
    """(N, M, W) per-modality step errors for one scoring variant."""
    out = []
    for m in det.modalities:
        scale = getattr(det.module, f"unit_scale_{m}").cpu().numpy()
        lo = max(1e-8, floor * float(np.median(scale))) if scale.size else 1e-8
        z = np.concatenate(errs[m]) / np.maximum(scale, lo)
        k = max(1, int(np.ceil(top * z.shape[-1])))
        out.append(np.sort(z, axis=-1)[..., -k:].mean(-1))
    return np.stack(out, axis=1)


def tune_fuseguard(ds: str, models_root: Path, fewshot: WindowSet, test: WindowSet, vus_window: int
                   ) -> list[dict[str, Any]]:
    from stages.nets.fuseguard import FuseGuard

    det = FuseGuard.load(models_root / ds / "fuseguard" / "detector", test.schema)
    tr_errs, _, _ = _unit_errors(det, fewshot)
    te_errs, te_w, te_starts = _unit_errors(det, test)
    weights = np.concatenate(te_w)
    starts = np.concatenate(te_starts)
    rows = []
    for top, floor in itertools.product(TOP_FRACTIONS, FLOORS):
        scale = np.maximum(_step_errors(det, tr_errs, top, floor).mean(axis=(0, 2)), 1e-8)
        e = _step_errors(det, te_errs, top, floor) / scale[None, :, None]
        for weighting in WEIGHTINGS:
            if weighting == "max":
                win = e.max(axis=1)
            elif weighting == "fusion":
                win = (weights[:, :, None] * e).sum(1)
            else:
                win = e.mean(axis=1)
            scores = test.steps_from_windows(win, starts)
            m = evaluate(scores, test.labels, float(np.nanmax(scores)), step_s=test.schema.step_s,
                         vus_window=vus_window)
            rows.append({"dataset": ds, "detector": "fuseguard", "score_top_fraction": top,
                         "unit_scale_floor": floor, "score_weighting": weighting,
                         "auc_pr": m["auc_pr"], "vus_pr": m.get("vus_pr"), "auc_roc": m["auc_roc"]})
    return rows


def tune_iforest(ds: str, raw: dict, fewshot: WindowSet, val: WindowSet, test: WindowSet, vus_window: int
                 ) -> list[dict[str, Any]]:
    from stages.nets.baselines import IsolationForestDetector

    rows = []
    seed = int(raw.get("seed", 0))
    for rep in IFOREST_REPRESENTATIONS:
        det = IsolationForestDetector.from_params({**(raw.get("iforest") or {}), "representation": rep},
                                                  fewshot.schema, seed=seed)
        det.fit(fewshot, val)
        scores = det.score(test)
        m = evaluate(scores, test.labels, float(np.nanmax(scores)), step_s=test.schema.step_s, vus_window=vus_window)
        rows.append({"dataset": ds, "detector": "iforest", "representation": rep, "auc_pr": m["auc_pr"],
                     "vus_pr": m.get("vus_pr"), "auc_roc": m["auc_roc"]})
    return rows


def summarise(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Mean AUC-PR / VUS-PR over datasets per variant, best first (by mean VUS-PR, then AUC-PR)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for variant, rs in groups.items():
        def mean(k: str) -> float:
            vals = [r[k] for r in rs if r.get(k) is not None and np.isfinite(r[k])]
            return float(np.mean(vals)) if vals else float("nan")
        out.append({**dict(zip(keys, variant)), "datasets": len(rs), "mean_auc_pr": mean("auc_pr"),
                    "mean_vus_pr": mean("vus_pr"), "mean_auc_roc": mean("auc_roc")})
    return sorted(out, key=lambda r: (-np.nan_to_num(r["mean_vus_pr"], nan=-1), -np.nan_to_num(r["mean_auc_pr"])))


def markdown(title: str, table: list[dict[str, Any]], keys: tuple[str, ...]) -> str:
    cols = list(keys) + ["datasets", "mean_auc_pr", "mean_vus_pr", "mean_auc_roc"]
    lines = [f"## {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table:
        lines.append("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def run(datasets: list[str], out: Path, allow_non_dev: bool = False, windows_root: Path = Path("data/windows"),
        models_root: Path = Path("models")) -> dict:
    bad = [d for d in datasets if not d.endswith("_dev")]
    if bad and not allow_non_dev:
        raise InputError(None, "--datasets", "development datasets (names ending in _dev): settings are never "
                         "chosen on the reported datasets", bad)
    raw = load_raw()
    vus_window = int(((raw.get("evaluate") or {}).get("vus_window")) or 100)
    word_pca = load_word_pca(Path("models/word_pca"))
    fg_rows, if_rows = [], []
    for ds in datasets:
        wdir = windows_dir(ds, windows_root)
        if not (wdir / "splits.json").exists():
            raise InputError(wdir / "splits.json", None, f"the windows of {ds} (run the pipeline on it first)")
        fewshot, val, test = (load_split(wdir, s, word_pca) for s in ("fewshot", "val", "test"))
        if_rows += tune_iforest(ds, raw, fewshot, val, test, vus_window)
        if (models_root / ds / "fuseguard" / "detector" / "config.json").exists():
            fg_rows += tune_fuseguard(ds, models_root, fewshot, test, vus_window)
        else:
            log.warning("%s: no trained FuseGuard under %s; skipping its scoring variants", ds, models_root)
    fg_keys = ("score_top_fraction", "unit_scale_floor", "score_weighting")
    result = {"datasets": datasets, "fuseguard": summarise(fg_rows, fg_keys) if fg_rows else [],
              "iforest": summarise(if_rows, ("representation",)), "rows": fg_rows + if_rows}
    write_metrics_json(out / "tuning.json", result)
    md = ["# Tuning on development data", "", f"Datasets: {', '.join(datasets)}. Test spans of these datasets "
          "only; variants ranked by mean VUS-PR, then AUC-PR.", ""]
    if fg_rows:
        md.append(markdown("FuseGuard scoring", result["fuseguard"], fg_keys))
    md.append(markdown("IsolationForest representation", result["iforest"], ("representation",)))
    write_text("\n".join(md), out / "tuning.md")
    log.info("tuning written to %s\n%s", out / "tuning.md", "\n".join(md))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.tune", description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["synth_msds_dev", "synth_gaia_dev", "synth_tt_dev"])
    ap.add_argument("--out", type=Path, default=Path("metrics/tuning"))
    ap.add_argument("--allow-non-dev", action="store_true")
    args = ap.parse_args(argv)
    return run_stage(lambda: run(args.datasets, args.out, args.allow_non_dev))


if __name__ == "__main__":
    raise SystemExit(main())
