"""``python -m stages.bench pipeline``: every stage of the pipeline on one dump, each in its own process.

    python -m stages.bench pipeline --scale gaia [--fraction 0.1] [--workdir DIR]
    python -m stages.bench pipeline --format gaia --root DUMP [--step-s 20] [--detectors random,pca,fuseguard]

How long would the pipeline take on my telemetry, and how much memory does it need? The dump
(generated as ``bench ingest`` generates it, or one of yours) becomes the dataset ``bench`` of a
scratch workspace ``<workdir>/pipeline``. Its ``params.yaml`` is this project's, with that dataset
added (``sources: []``: no other system to learn from) and ``pipeline.datasets: [bench]``. Each
stage's own command then runs there in turn, as ``dvc repro`` runs it (``python -m stages.<stage>
bench``; no dvc bookkeeping). Per stage: wall seconds and the stage process's own peak RSS
(``ru_maxrss`` of ``wait4``, so not the bench's). Also the grid's size, and each detector's AUC-PR
with its interval beside the floors: the numbers are the evaluate stage's own.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from stages.core.errors import InputError

log = logging.getLogger("stages.bench_pipeline")
ROOT = Path(__file__).resolve().parents[1]
DATA_STAGES = ("metrics", "traces", "logs", "labels", "embed", "windows", "sources")
DATASET = "bench"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    from stages.bench_ingest import SCALES

    ap.add_argument("--scale", choices=sorted(SCALES), default=None, help="generate a dump of this dataset's size")
    ap.add_argument("--fraction", type=float, default=None, help="of the --scale size (its default otherwise)")
    ap.add_argument("--format", choices=("eadro", "gaia", "msds"), default="gaia")
    ap.add_argument("--root", default=None, help="an existing dump in --format's layout (nothing is generated)")
    ap.add_argument("--hours", type=float, default=24.0, help="generated dump without --scale")
    ap.add_argument("--requests-per-s", type=float, default=2.0, help="generated dump without --scale")
    ap.add_argument("--step-s", type=float, default=20.0, help="the grid step of the bench dataset")
    ap.add_argument("--detectors", default=None, help="comma-separated (default: params.yaml's pipeline.detectors)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"), help="the params.yaml the workspace starts from")
    ap.add_argument("--workdir", default=None, help="where the dump and the workspace go (reused dumps)")


def workspace_params(base: dict, dump: Path, fmt: str, step_s: float, detectors: list[str]) -> dict:
    """``base`` with the dump as the only dataset of the pipeline."""
    raw = copy.deepcopy(base)
    raw.setdefault("datasets", {})[DATASET] = {"format": fmt, "raw": str(dump.resolve()), "synthetic": False,
                                               "step_s": step_s, "sources": []}
    raw.setdefault("pipeline", {}).update(datasets=[DATASET], synthetic=[], detectors=detectors)
    return raw


def run_stage_process(module: str, args: list[str], cwd: Path, log_path: Path) -> dict:
    """One stage's command in a fresh interpreter: wall seconds and its own peak RSS (MiB)."""
    from stages.bench_ingest import child_env

    with open(log_path, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, env=child_env())
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-1500:]
        raise RuntimeError(f"bench pipeline: `python -m {module} {' '.join(args)}` failed (rc {proc.returncode}; "
                           f"log {log_path}):\n{tail}")
    return {"stage": module.removeprefix("stages."), "args": args, "wall_s": round(wall, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024.0, 1)}


def bench_pipeline(args: argparse.Namespace) -> dict:
    from stages.bench_ingest import ensure_dump

    base = yaml.safe_load(Path(args.params).read_text())
    detectors = args.detectors.split(",") if args.detectors else list(base["pipeline"]["detectors"])
    unknown = [d for d in detectors if d not in base["pipeline"]["detectors"]]
    if unknown:
        raise InputError("--detectors", unknown[0], f"one of {base['pipeline']['detectors']}")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-pipeline-"))
    work.mkdir(parents=True, exist_ok=True)
    dump, fmt, summary, gen_s = ensure_dump(args)
    ws = work / "pipeline"
    if ws.exists():
        shutil.rmtree(ws)  # every stage from scratch
    (ws / "logs").mkdir(parents=True)
    (ws / "params.yaml").write_text(yaml.safe_dump(workspace_params(base, dump, fmt, args.step_s, detectors),
                                                   sort_keys=False))
    plan = [("stages.embed_pca", [])] + [(f"stages.{s}", [DATASET]) for s in DATA_STAGES]
    for det in detectors:
        plan += [("stages.train", [DATASET, det]), ("stages.evaluate", [DATASET, det])]
    rows = []
    for module, stage_args in plan:
        name = "_".join([module.removeprefix("stages."), *stage_args[1:]])
        rows.append(run_stage_process(module, stage_args, ws, ws / "logs" / f"{name}.log"))
        log.info("%s: %.1f s, %.0f MiB", name, rows[-1]["wall_s"], rows[-1]["peak_rss_mb"])
    data = json.loads((ws / "metrics" / "data" / f"{DATASET}.json").read_text())
    results = {}
    for det in detectors:
        ev = json.loads((ws / "metrics" / "eval" / DATASET / f"{det}.json").read_text())
        results[det] = {k: ev.get(k) for k in ("auc_pr", "vus_pr", "event_f1", "score_windows_per_s")}
        results[det]["auc_pr_ci"] = (ev.get("ci") or {}).get("auc_pr")
    out = {"dump": str(dump), "format": fmt, "generate_s": gen_s, "step_s": args.step_s, "steps": data["steps"],
           "channels": data["channels"], "windows": {k: v["windows"] for k, v in data["splits"].items()},
           "stages": rows, "detectors": results, "total_s": round(sum(r["wall_s"] for r in rows), 1),
           "dump_summary": {k: summary[k] for k in ("n_spans", "n_log_lines", "n_faults", "metric_series", "bytes")
                            if k in summary}, "workspace": str(ws)}
    out["table"] = table(out)
    return out


def table(out: dict) -> str:
    ch = out["channels"]
    lines = [f"grid: {out['steps']:,} steps of {out['step_s']:g} s × ({ch['metrics']} metric + "
             f"{3 * ch['trace_edges']} trace-edge + {ch['log_columns']} log) columns; windows {out['windows']}",
             "", "| stage | wall s | peak RSS MiB |", "|---|---:|---:|"]
    for r in out["stages"]:
        lines.append(f"| {' '.join([r['stage'], *r['args'][1:]])} | {r['wall_s']:.1f} | {r['peak_rss_mb']:,.0f} |")
    lines.append(f"| all | {out['total_s']:.1f} | |")
    lines += ["", "| detector | AUC-PR [95% interval] | VUS-PR | event F1 | scoring windows/s |", "|---|---|---:|---:|---:|"]
    for det, r in out["detectors"].items():
        ci = r["auc_pr_ci"] or [None, None]
        interval = f" [{_num(ci[0])}, {_num(ci[1])}]" if any(v is not None for v in ci) else " (no interval)"
        lines.append(f"| {det} | {_num(r['auc_pr'])}{interval} | {_num(r['vus_pr'])} | {_num(r['event_f1'])} | "
                     f"{r['score_windows_per_s'] or 0:,.0f} |")
    return "\n".join(lines)


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"
