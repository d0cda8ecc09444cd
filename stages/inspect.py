"""Dataset doctor: what a raw dump holds, per modality, and how well its clocks line up.

    python -m stages.inspect --format {msds,gaia,eadro} PATH [--json] [--offset MODALITY=SECONDS ...]

Reads the dump with the same readers the pipeline uses (so what it prints is what the stages
will see), then reports files, entities/services, row counts, the UTC time range, the sampling
step, faults by kind, and the pairwise time overlap of the modalities after clock offsets —
the first thing to check when a real dump gives empty windows or no labelled anomalies.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
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


def overlaps(stats: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Pairwise overlap of the modalities' [start, end] spans, in seconds and % of their union."""
    spans = {m: (s["start"], s["end"]) for m, s in stats.items() if s.get("present") and s.get("start") is not None}
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
    files = mod.list_files(root)
    report: dict[str, Any] = {"format": fmt, "path": str(root), "offsets_s": dataclasses.asdict(offsets),
                              "modalities": {}}
    for modality in MODALITIES:
        t0 = time.perf_counter()
        df = getattr(mod, f"read_{modality}")(root, getattr(offsets, modality))
        entry: dict[str, Any] = {"files": [str(p) for p in files.get(modality, [])],
                                 "read_s": round(time.perf_counter() - t0, 3), "present": df is not None}
        if df is not None:
            entry.update(summarise(modality, df))
            entry["start_iso"], entry["end_iso"] = iso(entry["start"]), iso(entry["end"])
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
        if s.get("step_s") is not None:
            rows.append((modality, "median step", f"{s['step_s']:g} s"))
        rows.append((modality, "read time", f"{s['read_s']:.2f} s"))
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
