"""``python -m stages.bench ingest``: each modality's reader against a plain reference reader (issue 11).

    python -m stages.bench ingest [--format eadro] [--hours 24] [--requests-per-s 2] [--repeat 1]
    python -m stages.bench ingest --scale gaia|msds|eadro [--fraction F] [--repeat 1]
    python -m stages.bench ingest --format eadro --root ../shared/data/tt-eadro     (an existing dump)

A synthetic dump is generated (or reused from ``--workdir``), then for metrics, traces and logs
the project's reader (``stages.formats.read_modality``, then its feature step) and the plain
reference reader of :mod:`stages.bench_reference` each run on the same files in a FRESH
interpreter (``python -m stages.bench_ingest child``, spec on stdin): nothing is shared or inherited.
Peak RSS is the child's own high-water mark, ``VmHWM`` in ``/proc/self/status``;
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is used only where /proc is absent, because on
Linux a child started by fork+exec inherits the parent's ``maxrss`` (a bench parent that has
just generated a large dump would report its own peak for every modality). With ``--repeat``
each child runs that many times, project and reference alternating: the fastest time and the
highest peak are reported.

Each modality's reader is also timed as the stages read (``project, bounded``): metric points in
parts of whole series (``read_metric_parts``), spans and lines in buckets of whole traces and
services, spilled to disk (``read_trace_buckets``, ``read_log_buckets``), each frame counted and
dropped. ``read_modality`` returns the whole frame, so its peak grows with the dump; the bounded
row's peak is what reading costs at any size.

Metric CSVs get two references: the issue's (``polars.read_csv`` per file, then one concat) and
one ``collect_all`` of every file's ``scan_csv`` (parallel; under polars 2 the faster of the two
on many small files). With the feature steps on (the default), the whole ``metrics`` stage as it runs (the dump's points
part by part, ``write_metric_table``: a large grid in chunks of steps, Parquet and stats JSON) is also timed against
:func:`stages.bench_reference.metric_stage`, the same stage in plain polars; and the ``traces``
and ``logs`` stages as they run (spans in buckets of whole traces, lines in buckets of whole
services, every table written) beside their whole-frame paths (``read_modality``, then the same
tables written from the one frame). ``--stages-only`` times just the three stages as they run, for
a dump too large for the whole-frame paths and the plain references, beside the largest input file
(the issue's bound: ≤ 3× that file or 1.5 GiB).

Printed: a markdown table (rows/s, MB/s, peak RSS, project/reference ratios), then the JSON
also written to ``bench/ingest_<format>.json``.

``--scale`` sizes, with their sources (``--fraction`` scales the volume, default in brackets):

- ``gaia`` [0.1]: GAIA MicroSS per the CloudWise GAIA-DataSet README: two weeks of data, more
  than 6,500 metrics and 7,000,000 log items, 10 service instances (the run tables'
  dbservice1 ... webservice2), metrics every ~30 s (DESIGN §4). Generated: 336 h, 10
  instances, 30 s metrics, ``fraction`` x 2.3 traced requests/s (this generator writes ~2.5
  business-log lines per request, so about ``fraction`` x 7 M lines), and its 60 metric
  series (6 per instance) copied under new metric names up to ``fraction`` x 6,500 series.
  The full size (fraction 1: ~13 M spans, ~2 GB of trace tables, 262 M metric points) does
  not fit this 2-core, 23 GiB machine within minutes, hence the default fraction.
- ``msds`` [1.0]: the MSDS concurrent workload: three Rally workloads from 2019-11-19 18:38:46
  to 11-20 03:08:41 CEST (8.5 h, ``anomaly_label/run_time.csv`` of the KMdsy fork), 2,000
  OSProfiler trace ids in the boot-delete workload alone (``traceids_j_boot_delete.txt``),
  Glances at ~1 Hz per node (DESIGN §4). Generated: 8.5 h, ``fraction`` x 0.1 traces/s
  (~3,000 trace files), 1 s metrics on the generator's 5 wally nodes.
- ``eadro`` [1.0]: the public Eadro TrainTicket chunk (``../shared/data/tt-eadro``, README):
  27 services, metrics at 1 Hz, 6,461 s per chunk, 1,900 trace objects per chunk (0.29/s).
  The size of the whole Eadro collection is not documented in the sources at hand, so the
  scale is ``fraction`` x 12 such chunks (21.5 h).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("stages.bench")

MODALITIES = ("metrics", "traces", "logs")


@dataclass(frozen=True)
class Scale:
    """Generator settings standing for one real dataset (module docstring: sizes and sources)."""

    hours: float
    requests_per_s: float  # at fraction 1
    metric_interval_s: float
    services: int
    fraction: float  # default share of the documented volume
    chunk_hours: float | None = None
    metric_series: int | None = None  # metric files copied up to this many series (at fraction 1)


SCALES = {
    "gaia": Scale(hours=336.0, requests_per_s=2.3, metric_interval_s=30.0, services=10, fraction=0.1,
                  metric_series=6500),
    "msds": Scale(hours=8.5, requests_per_s=0.1, metric_interval_s=1.0, services=10, fraction=1.0),
    "eadro": Scale(hours=12 * 6461 / 3600, requests_per_s=1900 / 6461, metric_interval_s=1.0, services=27,
                   fraction=1.0, chunk_hours=6461 / 3600),
}


def peak_rss_mb() -> float:
    """This process's own peak RSS (MiB): VmHWM; ru_maxrss only where /proc is absent (see module doc)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------ child


def _child(spec: dict) -> dict:
    """One measurement in this fresh process; imports happen before the clock starts."""
    import polars  # noqa: F401 - imported before the clock starts, for both readers alike

    fmt, root, modality = spec["format"], Path(spec["root"]), spec["modality"]
    if spec["what"] == "reference_stage":
        return _reference_stage(spec)
    if spec["what"] == "project_stage":
        return _project_stage(spec)
    if spec["what"] == "project_bounded":
        return _project_bounded(spec)
    if spec["what"] in ("reference", "reference_together"):
        from stages import bench_reference

        t0 = time.perf_counter()
        files = [Path(p) for p in spec["files"]]
        if spec["what"] == "reference_together":
            frame = bench_reference.csvs_together(files)
        else:
            frame = bench_reference.read(fmt, modality, files)
        return {"rows": frame.height, "read_s": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb()}
    from stages.formats import read_modality, reader

    reader(fmt)
    t0 = time.perf_counter()
    frame = read_modality(fmt, root, modality)
    out = {"rows": 0 if frame is None else frame.height, "read_s": time.perf_counter() - t0,
           "peak_rss_mb": peak_rss_mb()}
    if spec.get("features") and frame is not None:
        t1 = time.perf_counter()
        _features(frame, modality, spec["step_s"])
        now = time.perf_counter()
        out.update(features_s=now - t1, stage_s=now - t0, peak_rss_with_features_mb=peak_rss_mb())
    return out


def _project_bounded(spec: dict) -> dict:
    """The stages' own reading, without their features: metric points in parts of whole series,
    spans in buckets of whole traces, lines in buckets of whole services (spilled), each frame
    counted and dropped. Its peak is what a reader holds at this dump size."""
    from stages.formats import read_log_buckets, read_metric_parts, read_trace_buckets, reader

    fmt, root, modality = spec["format"], Path(spec["root"]), spec["modality"]
    reader(fmt)  # the format's module imported before the clock starts, as for the whole read
    with tempfile.TemporaryDirectory(prefix="bench-bounded-") as tmp:
        t0 = time.perf_counter()
        if modality == "metrics":
            frames = read_metric_parts(fmt, root)
        elif modality == "traces":
            frames = read_trace_buckets(fmt, root, Path(tmp))
        else:
            frames = read_log_buckets(fmt, root, Path(tmp))
        rows = parts = 0
        for frame in frames:
            rows, parts = rows + frame.height, parts + 1
        took = time.perf_counter() - t0
    return {"rows": rows, "parts": parts, "read_s": took, "peak_rss_mb": peak_rss_mb()}


def _project_stage(spec: dict) -> dict:
    """The ``metrics`` stage's own path on the dump: its points part by part, the table, Parquet and stats."""
    if spec["modality"] in ("traces", "logs"):
        return _project_bucket_stage(spec)
    from stages.core.io import write_json
    from stages.core.params import SplitParams
    from stages.features.metric_table import write_metric_table
    from stages.features.params import MetricsParams
    from stages.formats import read_metric_parts

    with tempfile.TemporaryDirectory(prefix="bench-stage-") as tmp:
        spill = Path(tmp) / "spill"
        spill.mkdir()
        t0 = time.perf_counter()
        parts = read_metric_parts(spec["format"], Path(spec["root"]))
        table = write_metric_table(parts, Path(tmp) / "metrics.parquet", spill, spec["step_s"], SplitParams(),
                                   MetricsParams())
        write_json(table.stats, Path(tmp) / "metrics_stats.json")
        took = time.perf_counter() - t0
    return {"rows": table.steps, "columns": table.columns, "row_groups_in_chunks": table.row_groups,
            "read_s": took, "stage_s": took, "peak_rss_mb": peak_rss_mb()}


def _project_bucket_stage(spec: dict) -> dict:
    """The ``traces`` or ``logs`` stage's own path: rows in buckets of whole traces or services
    (spilled), every table written."""
    from stages.core.params import SplitParams
    from stages.features.log_buckets import write_log_tables
    from stages.features.params import LogsParams, TracesParams
    from stages.features.trace_buckets import write_trace_tables
    from stages.formats import read_log_buckets, read_trace_buckets

    fmt, root, step_s = spec["format"], Path(spec["root"]), spec["step_s"]
    with tempfile.TemporaryDirectory(prefix="bench-bucket-stage-") as tmp:
        out, spill = Path(tmp) / "out", Path(tmp) / "spill"
        out.mkdir()
        spill.mkdir()
        t0 = time.perf_counter()
        if spec["modality"] == "traces":
            got = write_trace_tables(read_trace_buckets(fmt, root, spill), out, spill, step_s, SplitParams(),
                                     TracesParams())
            rows, extra = got.spans_read, {"traces": got.traces}
        else:
            got = write_log_tables(read_log_buckets(fmt, root, spill), out, spill, LogsParams(), step_s)
            rows, extra = got.lines, {"templates": got.templates}
        took = time.perf_counter() - t0
    return {"rows": rows, **extra, "read_s": took, "stage_s": took, "peak_rss_mb": peak_rss_mb()}


def _write_metric_outputs(matrix, stats: dict):
    """The metrics stage's two outputs, written as the stage writes them (into a temporary folder)."""
    from stages.core.io import write_json, write_parquet

    with tempfile.TemporaryDirectory(prefix="bench-stage-") as tmp:
        write_parquet(matrix, Path(tmp) / "metrics.parquet")
        write_json(stats, Path(tmp) / "metrics_stats.json")
    return matrix


def _reference_stage(spec: dict) -> dict:
    """The plain polars metrics stage (:func:`stages.bench_reference.metric_stage`) on the same files."""
    from stages import bench_reference
    from stages.core.params import SplitParams
    from stages.features.params import MetricsParams

    with tempfile.TemporaryDirectory(prefix="bench-ref-stage-") as tmp:
        t0 = time.perf_counter()
        z = bench_reference.metric_stage([Path(p) for p in spec["files"]], spec["step_s"], Path(tmp) / "m.parquet",
                                         MetricsParams().max_gap_steps, SplitParams().train)
        took = time.perf_counter() - t0
    return {"rows": z.height, "columns": z.width - 1, "read_s": took, "stage_s": took, "peak_rss_mb": peak_rss_mb()}


def _features(frame, modality: str, step_s: float) -> None:
    """The modality's feature step; for metrics the whole stage's outputs too (Parquet and stats JSON,
    into a temporary folder), so the time compares with the reference stage's."""
    from stages.core.params import SplitParams
    from stages.features.params import LogsParams, MetricsParams

    if modality == "metrics":
        from stages.features.metric_matrix import metric_matrix

        _write_metric_outputs(*metric_matrix(frame, step_s, SplitParams(), MetricsParams()))
    elif modality == "traces":  # the whole-frame path of the traces stage, its four tables written
        from stages.features.params import TracesParams
        from stages.features.trace_buckets import write_trace_tables

        with tempfile.TemporaryDirectory(prefix="bench-whole-") as tmp:
            write_trace_tables([frame], Path(tmp), Path(tmp), step_s, SplitParams(), TracesParams())
    elif modality == "logs":  # the whole-frame path of the logs stage, its tables and miners written
        from stages.features.log_buckets import write_log_tables

        with tempfile.TemporaryDirectory(prefix="bench-whole-") as tmp:
            write_log_tables([frame], Path(tmp), Path(tmp), LogsParams(), step_s)


def child_env() -> dict[str, str]:
    """This environment, with the project importable from any working directory."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    return env


def run_child(module: str, spec: dict, label: str) -> dict:
    """Run ``python -m <module> child`` with ``spec`` on stdin in a fresh interpreter; its last stdout
    line is the JSON result."""
    proc = subprocess.run([sys.executable, "-m", module, "child"], input=json.dumps(spec),
                          capture_output=True, text=True, env=child_env(), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bench child failed ({label}): rc {proc.returncode}, {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _spawn(spec: dict) -> dict:
    return run_child("stages.bench_ingest", spec, f"{spec['what']} {spec['modality']}")


def _measure(specs: list[dict], repeat: int) -> list[dict]:
    """Each spec ``repeat`` times, alternating, so that a busy machine slows both readers alike."""
    runs: list[list[dict]] = [[] for _ in specs]
    for _ in range(repeat):
        for spec, done in zip(specs, runs):
            done.append(_spawn(spec))
    out = []
    for done in runs:
        best = min(done, key=lambda r: r["read_s"])
        out.append({**best, "peak_rss_mb": max(r["peak_rss_mb"] for r in done), "runs": len(done)})
    return out


# ------------------------------------------------------------------ dump


def _params(args: argparse.Namespace):
    from stages.simulate.params import SynthParams

    base = SynthParams()
    if not args.scale:
        return dataclasses.replace(base, hours=args.hours, requests_per_s=args.requests_per_s), None
    s, f = SCALES[args.scale], args.fraction if args.fraction is not None else SCALES[args.scale].fraction
    params = dataclasses.replace(
        base, hours=s.hours, services=s.services, requests_per_s=s.requests_per_s * f,
        metric_interval_s={**base.metric_interval_s, args.scale: s.metric_interval_s},
        chunk_hours=s.chunk_hours or base.chunk_hours)
    return params, (round(s.metric_series * f) if s.metric_series else None)


def _copy_metric_series(root: Path, fmt: str, target: int) -> int:
    """GAIA: metric files again under new metric names until ``target`` series exist (one file each):
    hard links where the file system allows (full size: ~5 GB of series otherwise), else copies."""
    from stages.formats import reader

    files = reader(fmt).scan(root).files["metrics"]
    have, k = len(files), 0
    while have < target and files:
        for p in files:
            if have >= target:
                break
            # <instance>_<ip>_<metric>_<from>_<to>.csv: a new metric name before the two dates
            stem, d1, d2 = p.stem.rsplit("_", 2)
            new = p.with_name(f"{stem}-copy{k}_{d1}_{d2}.csv")
            if not new.exists():  # a root grown before (a copy's name taken): never overwrite a series
                _link_or_copy(p, new)
                have += 1
        k += 1
    return have


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def ensure_dump(args: argparse.Namespace) -> tuple[Path, str, dict, float]:
    """(root, format, generator summary, generation seconds or NaN when reused or given)."""
    from stages.simulate.generate import generate

    if args.root:
        return Path(args.root), args.format, {}, float("nan")
    fmt = args.scale or args.format
    params, series = _params(args)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-ingest-"))
    tag = f"{fmt}_{params.hours:g}h_{params.requests_per_s:g}rps" + (f"_{series}series" if series else "")
    root = work / f"bench_{tag}"
    summary_path = work / f"bench_{tag}.summary.json"
    if (root / ".complete").exists():
        return root, fmt, json.loads(summary_path.read_text()), float("nan")
    t0 = time.perf_counter()
    summary = generate(f"bench_{fmt}", fmt, root, params, seed=0)
    if series:
        summary["metric_series"] = _copy_metric_series(root, fmt, series)
    gen_s = time.perf_counter() - t0
    summary_path.write_text(json.dumps(summary, default=str))
    (root / ".complete").touch()
    return root, fmt, summary, gen_s


# ------------------------------------------------------------------ report


def _row(modality: str, who: str, r: dict, files: int, mb: float, ref: dict | None) -> str:
    t, rows = r["read_s"], r["rows"]
    ratio_t = f"{t / ref['read_s']:.2f}" if ref and ref["read_s"] else "—"
    ratio_m = f"{r['peak_rss_mb'] / ref['peak_rss_mb']:.2f}" if ref and ref["peak_rss_mb"] else "—"
    return (f"| {modality} | {who} | {files} | {mb:.1f} | {rows:,} | {t:.2f} | {rows / t if t else 0:,.0f} | "
            f"{mb / t if t else 0:.1f} | {r['peak_rss_mb']:.0f} | {ratio_t} | {ratio_m} |")


def table(results: dict) -> str:
    lines = ["| modality | reader | files | input MB | rows | read s | rows/s | MB/s | peak RSS MiB | time / ref | "
             "RSS / ref |", "|---|---|---|---|---|---|---|---|---|---|---|"] if results["modalities"] else []
    for modality, m in results["modalities"].items():
        if m.get("files", 0) == 0:
            continue
        ref = results["reference"].get(modality)
        lines.append(_row(modality, "project", m, m["files"], m["input_mb"], ref))
        bounded = results.get("bounded", {}).get(modality)
        if bounded:
            unit = {"metrics": "part", "traces": "bucket", "logs": "bucket"}[modality] + "s" * (bounded["parts"] != 1)
            lines.append(_row(modality, f"project, bounded ({bounded['parts']} {unit}, as the stage reads)", bounded,
                              m["files"], m["input_mb"], ref))
        if ref:
            lines.append(_row(modality, "reference", ref, m["files"], m["input_mb"], None))
    together = results.get("reference_together")
    if together:
        proj = results["modalities"]["metrics"]
        lines.append(_row("metrics", "reference, one `collect_all`", together, proj["files"], proj["input_mb"], None))
        lines.append(f"| | project ÷ `collect_all` reference | | | | | | | | "
                     f"{proj['read_s'] / together['read_s']:.2f} | {proj['peak_rss_mb'] / together['peak_rss_mb']:.2f} |")
    stage = results.get("stage")
    if stage:
        proj, ref = stage["project"], stage["reference"]
        lines += ["", "| metrics stage (read → Parquet) | s | peak RSS MiB | time / ref | RSS / ref |", "|---|---|---|---|---|",
                  f"| project: the stage's parts, `write_metric_table`, Parquet + stats | {proj['stage_s']:.2f} | "
                  f"{proj['peak_rss_mb']:.0f} | {proj['stage_s'] / ref['stage_s']:.2f} | "
                  f"{proj['peak_rss_mb'] / ref['peak_rss_mb']:.2f} |",
                  f"| reference: plain polars ({ref['columns']:,} columns × {ref['rows']:,} steps) | "
                  f"{ref['stage_s']:.2f} | {ref['peak_rss_mb']:.0f} | — | — |"]
    staged = results.get("bucket_stages")
    if staged:
        lines += ["", "| stage (read → every table written) | s | peak RSS MiB | time / whole | RSS / whole |",
                  "|---|---|---|---|---|"]
        for modality, r in staged.items():
            b, w = r["buckets"], r["whole"]
            whole_s, whole_mb = w.get("stage_s", float("nan")), w.get("peak_rss_with_features_mb", float("nan"))
            unit = "traces" if modality == "traces" else "services"
            lines += [f"| {modality}, in buckets of whole {unit}, as the stage runs | {b['stage_s']:.2f} | "
                      f"{b['peak_rss_mb']:.0f} | {b['stage_s'] / whole_s:.2f} | {b['peak_rss_mb'] / whole_mb:.2f} |",
                      f"| {modality}, the whole frame (`read_modality`, then the same tables) | {whole_s:.2f} | "
                      f"{whole_mb:.0f} | — | — |"]
    alone = results.get("stages_only")
    if alone:
        lines += ["", "| stage as it runs (read → every output written) | files | input MB | largest file MB | s | "
                  "peak RSS MiB | peak / largest file |", "|---|---|---|---|---|---|---|"]
        for modality, r in alone.items():
            per_file = r["peak_rss_mb"] / max(r["largest_file_mb"], 1e-9)
            lines.append(f"| {modality} | {r['files']:,} | {r['input_mb']:.1f} | {r['largest_file_mb']:.1f} | "
                         f"{r['stage_s']:.2f} | {r['peak_rss_mb']:.0f} | {per_file:.1f} |")
    lines.append("")
    lines.append("rows: rows of each reader's frame (the reference's metric rows are the files' wide lines, the "
                 "project's are long points); input MB: bytes on disk (a .zip counts compressed); peak RSS: the "
                 "child process's own VmHWM.")
    return "\n".join(lines).lstrip("\n")


def bench_ingest(args: argparse.Namespace) -> dict:
    from stages.formats import reader

    root, fmt, summary, gen_s = ensure_dump(args)
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    log.info("dump: %.1f MB at %s (generated in %.1f s)", size / 2**20, root, gen_s)
    listed = reader(fmt).list_files(root)
    results = {"format": fmt, "scale": args.scale, "hours": None, "requests_per_s": None,
               "dump_mb": round(size / 2**20, 1), "generate_s": round(gen_s, 1), "summary": summary,
               "modalities": {}, "reference": {}}
    params, _ = _params(args)
    if not args.root:
        results["hours"], results["requests_per_s"] = params.hours, params.requests_per_s
    results["root"] = str(root)
    for modality in getattr(args, "modalities", None) or MODALITIES:
        files = [str(p) for p in listed.get(modality, [])]
        mb = sum(Path(p).stat().st_size for p in files) / 2**20
        spec = {"format": fmt, "root": str(root), "modality": modality, "files": files, "step_s": args.step_s}
        if getattr(args, "stages_only", False):
            if files:
                (alone,) = _measure([{**spec, "what": "project_stage"}], args.repeat)
                largest = max(Path(p).stat().st_size for p in files) / 2**20
                results.setdefault("stages_only", {})[modality] = {
                    **alone, "step_s": args.step_s, "files": len(files), "input_mb": round(mb, 2),
                    "largest_file_mb": round(largest, 4)}
            continue
        specs = [{**spec, "what": "project", "features": not args.no_features}]
        specs += [{**spec, "what": "reference"}] if files else []
        specs += [{**spec, "what": "project_bounded"}] if files else []
        if modality == "metrics" and files:
            specs.append({**spec, "what": "reference_together"})
        staged = modality == "metrics" and files and not args.no_features
        specs += [{**spec, "what": "reference_stage"}, {**spec, "what": "project_stage"}] if staged else []
        bucketed = modality in ("traces", "logs") and files and not args.no_features
        specs += [{**spec, "what": "project_stage"}] if bucketed else []
        proj, *ref = _measure(specs, args.repeat)
        if files:
            results.setdefault("bounded", {})[modality] = ref.pop(1)
        if bucketed:
            results.setdefault("bucket_stages", {})[modality] = {"step_s": args.step_s, "buckets": ref.pop(),
                                                                  "whole": proj}
        if modality == "metrics" and files:
            results["reference_together"] = ref.pop(1)
        if staged:
            ref, ref_stage, proj_stage = ref[:1], ref[1], ref[2]
            results["stage"] = {"step_s": args.step_s, "reference": ref_stage, "project": proj_stage}
        results["modalities"][modality] = {**proj, "files": len(files), "input_mb": round(mb, 2),
                                           "rows_per_s": round(proj["rows"] / proj["read_s"], 1)
                                           if proj["read_s"] else None}
        if ref:
            results["reference"][modality] = ref[0]
        log.info("%s: project %s reference %s", modality, proj, results["reference"].get(modality))
    results["table"] = table(results)
    return results


def add_arguments(a: argparse.ArgumentParser) -> None:
    a.add_argument("--format", default="eadro", choices=["eadro", "gaia", "msds"])
    a.add_argument("--hours", type=float, default=24.0)
    a.add_argument("--requests-per-s", type=float, default=2.0)
    a.add_argument("--scale", choices=sorted(SCALES), default=None,
                   help="synthesise a dump at a real dataset's documented size (see the module docstring for "
                        "the sizes and sources); overrides --format, --hours and --requests-per-s")
    a.add_argument("--root", default=None,
                   help="measure this existing dump (of --format) instead of generating one, e.g. a real sample")
    a.add_argument("--fraction", type=float, default=None,
                   help="share of the documented volume for --scale (default: gaia 0.1, msds 1, eadro 1)")
    a.add_argument("--repeat", type=int, default=1, help="runs per measurement: fastest time, highest peak")
    a.add_argument("--no-features", action="store_true", help="time the readers only, not the feature steps")
    a.add_argument("--step-s", type=float, default=10.0)
    a.add_argument("--workdir", default=None, help="where dumps are generated (and reused on a second run)")
    a.add_argument("--stages-only", action="store_true",
                   help="time only the stages as they run (no whole-frame path, no plain references): for a dump "
                        "whose whole frame does not fit in memory")
    a.add_argument("--modality", dest="modalities", action="append", choices=list(MODALITIES), default=None,
                   help="measure only this modality (repeatable; default: all three)")


if __name__ == "__main__":
    if sys.argv[1:] == ["child"]:  # the spec comes on stdin: thousands of file names overflow argv
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        print(json.dumps(_child(json.loads(sys.stdin.read()))))
    else:
        sys.exit("usage: python -m stages.bench ingest ... (this module's own entry is the bench's child)")
