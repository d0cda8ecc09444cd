"""Score a new raw dump with a trained detector: per-step scores, alarm segments, an HTML page.

    python -m stages.score MODEL_DIR DUMP [--format eadro|gaia|msds] [--from TS] [--to TS] [--out DIR]
                           [--resume DIR_OR_STATE] [--root DIR] [--features DIR] [--windows DIR] [--word-pca DIR]

``MODEL_DIR`` is ``models/<ds>/<detector>`` of a pipeline run; the dataset it was trained on
supplies the frozen state (:mod:`stages.scoring.frozen`). Writes into ``DIR`` (default
``data/scores/<ds>/<detector>``, replaced as a whole): ``scores.parquet``, ``alarms.csv``,
``report.html``, ``summary.json`` (with the ``drift`` section) and the stream state
(``state.json`` + ``context.npz``) that ``--resume`` continues from. TS: ISO date-time (UTC when
no zone is given) or epoch seconds; both are floored to the training grid step, ``--to`` exclusive.
Nothing read or computed here is written back to the model or its statistics. A ``--resume`` run
with nothing after the state's end (a cron job ahead of its data) logs one line and writes nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from stages.core.cli import run_stage
from stages.core.device import deterministic_threads, set_scoring_threads, stage_scoring_threads
from stages.core.heap import keep_freed_memory
from stages.core.errors import InputError
from stages.core.io import atomic_dir, dumps_json
from stages.core.windowset import WindowSet, load_split
from stages.formats import FORMATS
from stages.scoring import drift as drift_mod
from stages.scoring import report
from stages.scoring.alarms import (CSV_COLUMNS, Units, alarm_segments, feature_units, iso, modality_deviation,
                                   parse_explain)
from stages.scoring.features import Carry, build_block, read_frames
from stages.scoring.frozen import FrozenState, Paths, load_frozen
from stages.scoring.stream import (Context, StreamState, Threshold, calibrate, context_need, history_steps,
                                   keep_from, window_ends, window_set)

log = logging.getLogger("stages.score")
SPARK_PAD = 30  # steps of raw series shown on each side of an alarm
MODALITY_NAMES = {"metric": "metrics", "trace": "traces", "log": "logs"}


@dataclass
class ScoreArgs:
    model_dir: Path
    dump: Path
    format: str | None = None
    from_ts: str | None = None
    to_ts: str | None = None
    out: Path | None = None
    resume: Path | None = None
    paths: Paths = dataclasses.field(default_factory=Paths)


def parse_ts(text: str | None, flag: str) -> int | None:
    """ISO date-time (UTC unless it names a zone) or epoch seconds → epoch µs."""
    if text is None:
        return None
    try:
        return int(round(float(text) * 1_000_000))
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(None, flag, "an ISO date-time (2022-04-19T06:00:00) or epoch seconds", text) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(round(dt.timestamp() * 1_000_000))


def validation_threshold(frozen: FrozenState, det: Any) -> Threshold:
    """Calibrate the threshold exactly as the evaluate stage does: on the model's validation scores."""
    from stages.evaluate import same_steps

    params = frozen.threshold
    if params.method == "contamination" and params.contamination is None:
        from stages.core.params import build, load_raw
        from stages.core.protocol import ProtocolParams, visible_labels

        raw = load_raw(frozen.paths.params) if frozen.paths.params.is_file() else {}
        protocol = build(ProtocolParams, raw.get("protocol"), where="protocol")
        fewshot = load_split(frozen.paths.windows, "fewshot", frozen.schema.word_pca)
        seen, _ = visible_labels(fewshot.labels, "fewshot_labels", protocol.labelled_events)
        params = dataclasses.replace(params, contamination=float(seen.mean()))
    val: WindowSet = load_split(frozen.paths.windows, "val", frozen.schema.word_pca)
    val.schema = frozen.schema
    return calibrate(same_steps(det.score(val), val), params)


def start_stream(frozen: FrozenState, state: StreamState | None, lo: int, need: int
                 ) -> tuple[Context, int, Carry, list[str]]:
    """(context rows before ``k0``, the first step not output yet, gap-fill carry, notes) of this run."""
    schema = frozen.schema
    if state is None:
        return Context.empty(schema, lo), lo, Carry.empty(schema.n_metric, schema.n_edges), []
    notes = []
    if lo > state.next_k + need:
        notes.append(f"stream restarted: {(lo - state.next_k) * schema.step_s:g} s without data after "
                     f"{iso(state.next_k * frozen.step_us)}; {state.next_k - state.pending_k} pending step(s) dropped, "
                     "windows warm up again")
        return Context.empty(schema, lo), lo, state.carry, notes
    if lo < state.next_k:
        log.info("resuming at %s: earlier data of the dump was scored by a previous run",
                 iso(state.next_k * frozen.step_us))
    return state.context, state.pending_k, state.carry, notes


def _lanes(frozen: FrozenState, ex, units: Units, unseen: np.ndarray) -> tuple[list[report.Lane], dict]:
    """One lane per modality the schema has; the detector's own modality score when it has one."""
    lanes, cols = [], {}
    for m in ("metric", "trace", "log"):
        dev = modality_deviation(units, m)
        if dev is None:
            continue
        cols[f"deviation_{m}"] = dev
        if m in ex.modality_scores:
            series, label = ex.modality_scores[m], "detector score (normalised reconstruction error)"
        else:
            series, label = dev, "feature deviation from training median (mean of top 5% units)"
        lanes.append(report.Lane(m, label, series, unseen if m == "log" else None))
    return lanes, cols


def _sparks(rows: list[dict], units_all: Units, ctx_k0: int) -> list[list[tuple[str, np.ndarray, tuple[int, int]]]]:
    out = []
    n = units_all.value.shape[0]
    for r in rows:
        a, b = r["_start_k"] - ctx_k0, r["_end_k"] - ctx_k0
        lo, hi = max(0, a - SPARK_PAD), min(n, b + SPARK_PAD)
        graphs = []
        for name in r["_units"]:
            j = units_all.names.index(name)
            graphs.append((name, units_all.value[lo:hi, j], (max(a, lo) - lo, max(min(b, hi), lo) - lo)))
        out.append(graphs)
    return out


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def run(args: ScoreArgs) -> dict:
    from stages.nets.registry import detector_class

    t_start = time.perf_counter()
    frozen = load_frozen(args.model_dir, args.paths)  # files only: no numeric work before the pools are fixed
    cls = detector_class(frozen.detector)  # its module first (torch for a torch detector): then its threads are set
    deterministic_threads()
    keep_freed_memory()  # one batch's freed tensors serve the next (heap.py)
    set_scoring_threads(stage_scoring_threads("auto", cls.scores_depend_on_threads)[0])  # bits kept (device.py)
    schema, step_us = frozen.schema, frozen.step_us
    state = StreamState.load(args.resume) if args.resume is not None else None
    if state is not None and (state.dataset, state.detector, state.fingerprint) != (
            frozen.dataset, frozen.detector, frozen.fingerprint):
        raise InputError(args.resume, "fingerprint", f"a state of {frozen.dataset}/{frozen.detector} scored with this "
                         f"model and frozen statistics ({frozen.fingerprint})",
                         f"{state.dataset}/{state.detector} {state.fingerprint}")
    fmt = args.format or frozen.format
    if fmt not in FORMATS:
        raise InputError(None, "--format", f"one of {', '.join(FORMATS)} (the training dataset's format is unknown)",
                         fmt)
    offsets = frozen.offsets if fmt == frozen.format else None  # the training system's clocks; else the format's

    t0 = time.perf_counter()
    frames = read_frames(fmt, Path(args.dump), offsets)
    span = frames.data_steps(step_us)
    from_us, to_us = parse_ts(args.from_ts, "--from"), parse_ts(args.to_ts, "--to")
    lo = from_us // step_us if from_us is not None else span[0]
    hi = to_us // step_us if to_us is not None else span[1] + 1
    if state is not None and hi <= state.next_k:  # a cron run before new data arrived: not an error
        log.info("nothing new after %s; state unchanged", iso(state.next_k * step_us))
        return {"dataset": frozen.dataset, "detector": frozen.detector, "resumed": True, "nothing_new": True,
                "read_until": iso(state.next_k * step_us)}
    t_read = time.perf_counter() - t0
    from stages.nets.registry import detector_class

    t0 = time.perf_counter()
    det = detector_class(frozen.detector).load(frozen.model_dir / "detector", schema)
    t_load = time.perf_counter() - t0
    history = history_steps(det)
    need = context_need(frozen.window, frozen.stride, history)
    t0 = time.perf_counter()
    ctx, pending_k, carry, stream_notes = start_stream(frozen, state, lo, need)
    k0 = ctx.k0 + ctx.n
    if hi <= k0:
        raise InputError(args.dump, "--from/--to", f"steps to score after {iso(k0 * step_us)}",
                         f"the span ends at {iso(hi * step_us)}")
    block = build_block(frozen, frames, k0, hi, carry)
    ctx = ctx.extend(block)
    t_features = t_read + time.perf_counter() - t0

    t0 = time.perf_counter()
    threshold = state.threshold if state is not None else validation_threshold(frozen, det)
    t_calibrate = time.perf_counter() - t0
    t0 = time.perf_counter()
    ends = window_ends(ctx.k0, ctx.n, pending_k, frozen.window, frozen.stride)
    ws = window_set(schema, ctx, ends, frozen.window, frozen.stride)
    scores = det.score(ws) if len(ends) else np.full(ctx.n, np.nan)
    explain = (det.explain(ws) or {}) if len(ends) else {}
    t_score = time.perf_counter() - t0
    out_end = int(ends[-1]) if len(ends) else pending_k
    rows = slice(pending_k - ctx.k0, out_end - ctx.k0)
    score = np.asarray(scores, np.float64)[rows]
    thr, alarm = threshold.run(score)
    ex = parse_explain(explain, rows, ctx.n)
    units_all = feature_units(schema, ctx.metric, ctx.trace, ctx.log, frozen.log_fill, frozen.metric_scaling,
                              frozen.edge_scaling)
    units = Units(units_all.names, units_all.modality, units_all.deviation[rows], units_all.value[rows])
    alarm_rows, open_alarm = alarm_segments(pending_k, score, thr, alarm, ex, units, frozen.detector, step_us,
                                            state.open_alarm if state is not None else None)
    unseen = ctx.unseen[rows]
    lanes, lane_cols = _lanes(frozen, ex, units, unseen)

    ts = (pending_k + np.arange(len(score), dtype=np.int64)) * step_us
    drift = {**block.drift, "stream": stream_notes}
    notes = drift_mod.notes(drift)
    for line in notes:
        log.warning("drift: %s", line)
    new_state = StreamState(
        frozen.dataset, frozen.detector, frozen.fingerprint, next_k=hi, pending_k=out_end,
        context=ctx.tail(keep_from(out_end, ctx.k0, frozen.window, frozen.stride, history)), carry=block.carry,
        threshold=threshold, open_alarm=open_alarm,
        runs=(state.runs if state is not None else []) + [
            {"dump": str(args.dump), "from": iso(k0 * step_us), "to": iso(hi * step_us),
             "output_until": iso(out_end * step_us)}])
    summary: dict[str, Any] = {
        "dataset": frozen.dataset, "detector": frozen.detector, "model_dir": str(args.model_dir),
        "dump": str(args.dump), "format": fmt, "step_s": schema.step_s, "window": frozen.window,
        "stride": frozen.stride, "resumed": state is not None,
        "span": {"first": iso(ts[0]) if len(ts) else None,
                 "end": iso(out_end * step_us) if len(ts) else None, "read_until": iso(hi * step_us)},
        "steps_scored": int(np.isfinite(score).sum()), "steps_output": int(len(score)),
        "warmup_steps": int(np.isnan(score).sum()), "pending_steps": int(hi - out_end),
        "alarm_steps": int(alarm.sum()), "alarms": len(alarm_rows),
        "threshold": {"method": threshold.method, "last": _finite(float(thr[-1])) if len(thr) else None},
        "frozen_state": {"fingerprint": frozen.fingerprint, "files": frozen.digests},
        "drift": drift, "drift_notes": notes,
        "timing_s": {"load_model": t_load, "read_and_features": t_features, "calibrate": t_calibrate,
                     "score": t_score},
    }
    frame = pl.DataFrame({"ts": pl.Series(ts).cast(pl.Datetime("us", "UTC")), "score": score, "threshold": thr,
                          "alarm": alarm.astype(bool)})
    extra = {f"score_{m}": v for m, v in ex.modality_scores.items()}
    extra.update({f"weight_{m}": v for m, v in ex.fusion_weights.items()})
    extra.update(lane_cols)
    extra["unseen_log_lines"] = unseen
    frame = frame.with_columns([pl.Series(k, np.asarray(v)) for k, v in extra.items()])
    csv = pl.DataFrame([{k: r[k] for k in CSV_COLUMNS} for r in alarm_rows],
                       schema={"start": pl.String, "end": pl.String, "duration_s": pl.Float64, "steps": pl.Int64,
                               "peak_score": pl.Float64, "peak_at": pl.String, "threshold_at_peak": pl.Float64,
                               "modality": pl.String, "modality_scores": pl.String, "fusion_weights": pl.String,
                               "top_contributors": pl.String, "top_features": pl.String, "open": pl.Boolean},
                       orient="row")
    page = report.render(summary, ts, pending_k, score, thr, lanes, alarm_rows, _sparks(alarm_rows, units_all, ctx.k0),
                         notes)
    out = args.out or Path("data") / "scores" / frozen.dataset / frozen.detector
    summary["timing_s"]["total"] = time.perf_counter() - t_start
    with atomic_dir(out) as tmp:
        frame.write_parquet(tmp / "scores.parquet")
        csv.write_csv(tmp / "alarms.csv", float_precision=6)
        (tmp / "report.html").write_text(page, encoding="utf-8")
        (tmp / "summary.json").write_text(dumps_json(summary), encoding="utf-8")
        new_state.save(tmp)
    log.info("%s/%s on %s: %d steps scored (%s – %s), %d alarm segment(s), %d pending; %.1f s → %s",
             frozen.dataset, frozen.detector, args.dump, summary["steps_scored"], summary["span"]["first"],
             summary["span"]["end"], len(alarm_rows), summary["pending_steps"], summary["timing_s"]["total"], out)
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.score", description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", type=Path, help="models/<dataset>/<detector> of a pipeline run")
    ap.add_argument("dump", type=Path, help="the raw dump folder to score")
    ap.add_argument("--format", choices=FORMATS, help="raw format (default: the training dataset's)")
    ap.add_argument("--from", dest="from_ts", help="first time to score (ISO, UTC by default, or epoch s)")
    ap.add_argument("--to", dest="to_ts", help="end of the span to score, exclusive")
    ap.add_argument("--out", type=Path, help="output folder (default data/scores/<dataset>/<detector>)")
    ap.add_argument("--resume", type=Path, help="a previous run's output folder or its state.json")
    ap.add_argument("--root", type=Path, default=Path("."), help="repository root holding data/ and models/")
    ap.add_argument("--features", type=Path, help="the training dataset's data/features/<ds> folder")
    ap.add_argument("--windows", type=Path, help="the training dataset's data/windows/<ds> folder")
    ap.add_argument("--word-pca", type=Path, help="models/word_pca of the training run")
    ap.add_argument("--params", type=Path, help="params.yaml of the training run (default <root>/params.yaml)")
    a = ap.parse_args(argv)
    args = ScoreArgs(a.model_dir, a.dump, a.format, a.from_ts, a.to_ts, a.out, a.resume,
                     Paths(a.root, a.features, a.windows, a.word_pca, a.params))
    return run_stage(lambda: run(args))


if __name__ == "__main__":
    raise SystemExit(main())
