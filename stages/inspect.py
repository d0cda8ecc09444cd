"""Dataset doctor: what a raw dump holds, per modality, and how well its clocks line up.

    python -m stages.inspect --format {msds,gaia,eadro} PATH [--json] [--offset MODALITY=SECONDS ...]

Reads the dump with the same readers the pipeline uses (so what it prints is what the stages
will see), then reports files (and the ones skipped, with why), entities/services, row counts,
the UTC time range, the sampling step, faults by kind, and the pairwise time overlap of the
modalities after clock offsets — the first thing to check when a real dump gives empty windows
or no labelled anomalies.

Overlap is measured on each modality's *main body*: its times are cut wherever nothing happens
for more than ``MAIN_BODY_GAP_S`` (the traces stage's stray rule), the largest piece is the
body, and the other pieces are listed apart as strays (the real TT export holds 200 spans from
38 h before the chunk; folded in, they would make the overlap read 3.7 %). Per entity (metric
entity, trace or log service), gaps longer than ``GAP_FACTOR`` × its mean step (its average
spacing: for bursty request streams the median is milliseconds) and at least ``MIN_GAP_S`` inside
the body are reported.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from stages.core.errors import InputError
from stages.core.frames import MODALITIES, US
from stages.core.logs import setup_logging
from stages.core.params import ClockOffsets
from stages.formats import check_root, reader
from stages.formats._common import SIDE_FILES

log = logging.getLogger(__name__)


def iso(us: int | None) -> str | None:
    if us is None:
        return None
    return datetime.fromtimestamp(us / US, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def _median_step_s(df: pl.DataFrame, ts: str, by: str | None) -> float | None:
    """Median gap between distinct consecutive times (per ``by`` group when given)."""
    if df.height < 2:
        return None
    keys = [by, ts] if by else [ts]
    d = df.select(keys).unique().sort(keys)
    diff = d.select(pl.col(ts).diff().over(by) if by else pl.col(ts).diff())[ts].drop_nulls()
    med = diff.filter(diff > 0).median()
    return None if med is None else float(med) / US


def _range(series: pl.Series, end: pl.Series | None = None) -> tuple[int | None, int | None]:
    if series.len() == 0:
        return None, None
    hi = end.max() if end is not None else series.max()
    return int(series.min()), int(hi)


def _counts(df: pl.DataFrame, col: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in df.group_by(col).len().sort(col).iter_rows()}


def summarise(modality: str, df: pl.DataFrame) -> dict[str, Any]:
    """Per-modality facts (all JSON-serialisable)."""
    if modality == "metrics":
        lo, hi = _range(df["ts"])
        return {"rows": df.height, "entities": sorted(df["entity"].unique().to_list()),
                "metrics": sorted(df["metric"].unique().to_list()),
                "duplicate_points": df.height - df.select("ts", "entity", "metric").unique().height,
                "start": lo, "end": hi, "step_s": _median_step_s(df, "ts", "entity")}
    if modality == "traces":
        end = df["start_ts"] + (df["duration_s"] * US).round(0).cast(pl.Int64)
        lo, hi = _range(df["start_ts"], end)
        return {"rows": df.height, "unique_traces": df["trace_id"].n_unique(),
                "unique_spans": df.select("trace_id", "span_id").unique().height,
                "root_spans": int(df["parent_id"].is_null().sum()), "error_spans": int(df["is_error"].sum()),
                "services": sorted(df["service"].unique().to_list()),
                "start": lo, "end": hi, "step_s": _median_step_s(df, "start_ts", None)}
    if modality == "logs":
        lo, hi = _range(df["ts"])
        return {"rows": df.height, "services": sorted(df["service"].unique().to_list()),
                "lines_per_service": _counts(df, "service"), "levels": _counts(df, "level"),
                "start": lo, "end": hi, "step_s": _median_step_s(df, "ts", None)}
    lo, hi = _range(df["start_ts"], df["end_ts"])
    return {"rows": df.height, "by_kind": _counts(df, "kind"), "entities": sorted(df["entity"].unique().to_list()),
            "start": lo, "end": hi, "step_s": None}


MAIN_BODY_GAP_S = 3600.0  # = params.yaml traces.max_gap_s default: longer silences cut a modality's body
GAP_FACTOR = 10.0  # an entity's gap: more than this many of its mean steps (its average spacing) ...
MIN_GAP_S = 60.0  # ... and at least this long
_TIME_COLUMN = {"metrics": ("ts", "entity"), "traces": ("start_ts", "service"), "logs": ("ts", "service")}


def main_body(ts: pl.Series, max_gap_s: float = MAIN_BODY_GAP_S) -> dict[str, Any]:
    """The largest piece of a modality's times between silences over ``max_gap_s``, and the strays."""
    if ts.len() == 0:
        return {"start": None, "end": None, "rows": 0, "strays": []}
    gap = int(round(max_gap_s * US))
    t = ts.sort()
    piece = (t.diff().fill_null(0) > gap).cum_sum()
    parts = (pl.DataFrame({"t": t, "piece": piece}).group_by("piece")
             .agg(pl.len().alias("rows"), pl.col("t").min().alias("start"), pl.col("t").max().alias("end"))
             .sort("piece"))
    main = parts.sort(["rows", "piece"], descending=[True, False]).row(0, named=True)
    strays = [{"rows": int(r["rows"]), "start": int(r["start"]), "end": int(r["end"]),
               "start_iso": iso(int(r["start"])), "end_iso": iso(int(r["end"]))}
              for r in parts.iter_rows(named=True) if r["piece"] != main["piece"]]
    return {"start": int(main["start"]), "end": int(main["end"]), "rows": int(main["rows"]), "strays": strays}


def entity_gaps(df: pl.DataFrame, ts: str, by: str, body: tuple[int, int]) -> dict[str, dict[str, Any]]:
    """Per entity: gaps inside the main body longer than GAP_FACTOR × its mean step (≥ MIN_GAP_S)."""
    lo, hi = body
    d = (df.select(by, ts).filter(pl.col(ts).is_between(lo, hi)).unique().sort([by, ts])
         .with_columns(pl.col(ts).diff().over(by).alias("_d")))
    med = d.filter(pl.col("_d") > 0).group_by(by).agg(pl.col("_d").mean().alias("_m"))
    limit = pl.max_horizontal(pl.col("_m") * GAP_FACTOR, pl.lit(MIN_GAP_S * US))
    gaps = d.join(med, on=by, how="left").filter(pl.col("_d") > limit)
    out: dict[str, dict[str, Any]] = {}
    for name, g in sorted(gaps.group_by(by), key=lambda kv: str(kv[0][0])):
        top = g.sort("_d", descending=True).row(0, named=True)
        out[str(name[0])] = {"gaps": g.height, "missing_s": float(g["_d"].sum()) / US,
                             "largest_s": float(top["_d"]) / US, "largest_from": iso(int(top[ts]) - int(top["_d"]))}
    return out


def overlaps(stats: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Pairwise overlap of the modalities' main bodies (see :func:`main_body`), in s and % of their union."""
    spans = {m: (s["body"]["start"], s["body"]["end"]) if "body" in s else (s["start"], s["end"])
             for m, s in stats.items() if s.get("present") and s.get("start") is not None}
    out = []
    names = [m for m in MODALITIES if m in spans]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            (a0, a1), (b0, b1) = spans[a], spans[b]
            inter = max(0, min(a1, b1) - max(a0, b0))
            union = max(a1, b1) - min(a0, b0)
            out.append({"a": a, "b": b, "overlap_s": inter / US,
                        "overlap_pct_of_union": round(100.0 * inter / union, 2) if union > 0 else 100.0})
    return out


def inspect_dump(fmt: str, root: Path, overrides: dict[str, float] | None = None) -> dict[str, Any]:
    mod = reader(fmt)
    root = check_root(Path(root))
    offsets = dataclasses.replace(mod.DEFAULT_OFFSETS, **(overrides or {}))
    found = mod.scan(root)
    report: dict[str, Any] = {"format": fmt, "path": str(root), "offsets_s": dataclasses.asdict(offsets),
                              "modalities": {},
                              "unclaimed": [{"file": str(p), "why": why} for p, why in found.unclaimed
                                            if p.name not in SIDE_FILES]}
    for modality in MODALITIES:
        t0 = time.perf_counter()
        df = getattr(mod, f"read_{modality}")(root, getattr(offsets, modality))
        entry: dict[str, Any] = {"files": [str(p) for p in found.files.get(modality, [])],
                                 "skipped": [{"file": str(p), "why": why} for p, why in found.skips(modality)],
                                 "read_s": round(time.perf_counter() - t0, 3), "present": df is not None}
        if df is not None:
            entry.update(summarise(modality, df))
            entry["start_iso"], entry["end_iso"] = iso(entry["start"]), iso(entry["end"])
            if modality in _TIME_COLUMN:
                ts, by = _TIME_COLUMN[modality]
                body = main_body(df[ts])
                body["start_iso"], body["end_iso"] = iso(body["start"]), iso(body["end"])
                entry["body"] = body
                entry["gaps"] = entity_gaps(df, ts, by, (body["start"], body["end"])) if df.height else {}
        report["modalities"][modality] = entry
    report["overlap"] = overlaps(report["modalities"])
    return report


# ------------------------------------------------------------------ text output


def _fmt_list(items: list[str], limit: int = 6) -> str:
    head = ", ".join(items[:limit])
    return head + (f", ... (+{len(items) - limit})" if len(items) > limit else "")


def render(report: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str]] = []
    for modality, s in report["modalities"].items():
        if not s["present"]:
            rows.append((modality, "status", "MISSING: no files of this modality under the root"))
            continue
        rows.append((modality, "files", f"{len(s['files'])} ({_fmt_list([Path(f).name for f in s['files']], 3)})"))
        if modality == "metrics":
            rows += [(modality, "entities", f"{len(s['entities'])}: {_fmt_list(s['entities'])}"),
                     (modality, "metrics", f"{len(s['metrics'])}: {_fmt_list(s['metrics'])}"),
                     (modality, "points", f"{s['rows']:,} ({s['duplicate_points']:,} repeated (ts, entity, metric))")]
        elif modality == "traces":
            rows += [(modality, "services", f"{len(s['services'])}: {_fmt_list(s['services'])}"),
                     (modality, "spans", f"{s['rows']:,} unique spans, {s['unique_traces']:,} unique traces, "
                                         f"{s['root_spans']:,} roots, {s['error_spans']:,} errors")]
        elif modality == "logs":
            rows += [(modality, "services", f"{len(s['services'])}: {_fmt_list(s['services'])}"),
                     (modality, "lines", f"{s['rows']:,}; levels {s['levels']}")]
        else:
            rows += [(modality, "faults", f"{s['rows']:,}; by kind {s['by_kind']}"),
                     (modality, "entities", f"{len(s['entities'])}: {_fmt_list(s['entities'])}")]
        rows.append((modality, "time range (UTC)", f"{s['start_iso']} .. {s['end_iso']}"))
        body = s.get("body")
        if body and body["strays"]:
            rows.append((modality, "main body (UTC)", f"{body['start_iso']} .. {body['end_iso']} ({body['rows']:,} rows)"))
            for st in body["strays"][:5]:
                rows.append((modality, "stray", f"{st['rows']:,} rows {st['start_iso']} .. {st['end_iso']} "
                                                f"(apart from the main body; not in the overlap)"))
            if len(body["strays"]) > 5:
                rows.append((modality, "stray", f"... (+{len(body['strays']) - 5} more pieces)"))
        if s.get("gaps"):
            worst = sorted(s["gaps"].items(), key=lambda kv: -kv[1]["largest_s"])
            listed = ", ".join(f"{k} {g['gaps']} (largest {g['largest_s']:,.0f} s from {g['largest_from']})"
                               for k, g in worst[:3])
            more = f", ... (+{len(worst) - 3})" if len(worst) > 3 else ""
            rows.append((modality, "gaps", f"{len(worst)} with gaps: {listed}{more}"))
        if s.get("step_s") is not None:
            rows.append((modality, "median step", f"{s['step_s']:g} s"))
        rows.append((modality, "read time", f"{s['read_s']:.2f} s"))
    for modality, s in report["modalities"].items():
        for item in s.get("skipped", []):
            rows.append((modality, "skipped", f"{item['file']} ({item['why']})"))
    for item in report.get("unclaimed", []):
        rows.append(("files", "unread", f"{item['file']} ({item['why']})"))
    for o in report["overlap"]:
        rows.append(("overlap", f"{o['a']} ~ {o['b']}", f"{o['overlap_s']:,.0f} s = {o['overlap_pct_of_union']}% of union"))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    head = [f"dump    {report['path']}  (format {report['format']})",
            f"offsets {', '.join(f'{k}={v:g}s' for k, v in report['offsets_s'].items())}", ""]
    return "\n".join(head + [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]) + "\n"


# ------------------------------------------------------------------ CLI


def _parse_offsets(items: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    known = [f.name for f in dataclasses.fields(ClockOffsets)]
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise InputError(None, "--offset", f"MODALITY=SECONDS with MODALITY in {known}", item)
        try:
            out[key] = float(value)
        except ValueError:
            raise InputError(None, f"--offset {key}", "a number of seconds", value) from None
        if not math.isfinite(out[key]):
            raise InputError(None, f"--offset {key}", "a finite number of seconds", value)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.inspect", description=__doc__.splitlines()[0])
    parser.add_argument("--format", required=True, help="msds, gaia or eadro")
    parser.add_argument("path", type=Path)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--offset", action="append", default=[], metavar="MODALITY=SECONDS",
                        help="clock offset added to a modality (overrides the format default)")
    args = parser.parse_args(argv)
    setup_logging("WARNING")
    try:
        report = inspect_dump(args.format, args.path, _parse_offsets(args.offset))
    except InputError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    sys.stdout.write(json.dumps(report, sort_keys=True) + "\n" if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
