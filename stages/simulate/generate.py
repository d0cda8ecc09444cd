"""Generate one complete synthetic raw dump in a native format, chunk by chunk, atomically."""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stages.core.errors import InputError
from stages.core.io import atomic_dir
from stages.core.params import PARAMS_FILE
from stages.simulate.benign import schedule_background
from stages.simulate.faults import schedule_faults
from stages.simulate.params import FORMATS, SynthParams
from stages.simulate.system import build_system, stable_seed
from stages.simulate.templates import build_book
from stages.simulate.traffic import simulate_chunk
from stages.simulate.truth import truth_document, write_truth
from stages.simulate.writers_common import WriterContext
from stages.simulate.writers_eadro import NATIVE_KIND as EADRO_KIND
from stages.simulate.writers_eadro import EadroWriter
from stages.simulate.writers_gaia import GaiaWriter
from stages.simulate.writers_msds import MsdsWriter

log = logging.getLogger(__name__)
WRITERS = {"eadro": EadroWriter, "gaia": GaiaWriter, "msds": MsdsWriter}


def parse_start(text: str, fmt: str) -> float:
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(PARAMS_FILE, f"synth.start_utc.{fmt}", "an ISO date-time like 2022-04-18T08:00:00", text) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def chunk_bounds(t_start: float, t_end: float, chunk_s: float) -> list[tuple[float, float]]:
    edges = list(np.arange(t_start, t_end, chunk_s)) + [t_end]
    return [(float(a), float(b)) for a, b in zip(edges[:-1], edges[1:]) if b - a > 1e-6]


def generate(dataset_name: str, fmt: str, out_dir: str | Path, params: SynthParams, seed: int,
             variant: str | None = None) -> dict:
    """Write the dump of ``dataset_name`` at ``out_dir`` (replaced atomically) and return a summary.

    The dataset name enters the seed through a stable hash, so the three synthetic systems differ
    while each is byte-for-byte reproducible. Besides the native files, the dump holds the
    ground-truth sidecar ``synth_truth.json`` (faults with intensity and severity, benign events).
    ``variant`` keeps the same system (services, call graph, log templates) but draws other faults,
    benign events and traffic: new data of the system a model was trained on (``python -m stages.score``).
    """
    if fmt not in FORMATS:
        raise InputError(PARAMS_FILE, f"datasets.{dataset_name}.format", f"one of {', '.join(FORMATS)}", fmt)
    t_begin = time.perf_counter()
    ds_seed = stable_seed(seed, dataset_name)
    rng = np.random.default_rng(ds_seed)
    system = build_system(fmt, params, rng)
    book = build_book(system, rng)
    stream_seed = ds_seed
    if variant is not None:  # same system and template book, other faults, background and traffic
        stream_seed = stable_seed(ds_seed, "variant", variant)
        rng = np.random.default_rng(stream_seed)
    t_start = parse_start(params.start_utc[fmt], fmt)
    t_end = t_start + params.hours * 3600.0
    faults = schedule_faults(system, t_start, t_end, params, rng)
    background = schedule_background(system, t_start, t_end, params, rng)
    truth = truth_document(system, faults, background, t_start, t_end)
    chunks = chunk_bounds(t_start, t_end, params.chunk_hours * 3600.0)
    with atomic_dir(out_dir) as root:
        writer = WRITERS[fmt](WriterContext(root=root, system=system, book=book, faults=faults,
                                            t_start=t_start, t_end=t_end, params=params))
        trace_offset = 0
        for i, (t0, t1) in enumerate(tqdm(chunks, desc=f"synth {dataset_name}", unit="chunk", disable=None)):
            crng = np.random.default_rng(stable_seed(stream_seed, "chunk", str(i)))
            chunk = simulate_chunk(system, book, faults, background, t0, t1, t_start, trace_offset, params, crng)
            writer.write_chunk(chunk, crng)
            trace_offset += chunk.n_traces
        counts = writer.finish()
        write_truth(root, truth)
        n_bytes = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        n_files = sum(1 for p in root.rglob("*") if p.is_file())
    summary = {
        "dataset": dataset_name,
        "format": fmt,
        "seed": ds_seed,
        "start_ts": t_start,
        "end_ts": t_end,
        "services": [s.name for s in system.services],
        "entities": list(system.entities),
        "silent_services": [s.name for s in system.services if not s.logs],
        "edges": [[system.services[a].name, system.services[b].name] for a, b in system.edges],
        "faults": [
            {"kind": f.kind, "native_kind": _native_kind(fmt, f.kind), "entity": f.entity,
             "service": system.services[f.service].name, "start_ts": f.start, "end_ts": round(f.end, 6),
             "intensity": f.intensity, "severity": f.severity}
            for f in faults
        ],
        "benign": truth["benign"],
        "n_traces": counts["traces"],
        "n_spans": counts["spans"],
        "n_log_lines": counts["log_lines"],
        "n_metric_rows": counts["metric_rows"],
        "n_faults": counts["faults"],
        "n_files": n_files,
        "bytes": n_bytes,
        "seconds": round(time.perf_counter() - t_begin, 3),
    }
    log.info("synth %s (%s): %d traces, %d spans, %d log lines, %d faults, %.1f MB in %.1f s", dataset_name, fmt,
             summary["n_traces"], summary["n_spans"], summary["n_log_lines"], summary["n_faults"], n_bytes / 1e6,
             summary["seconds"])
    return summary


def _native_kind(fmt: str, kind: str) -> str:
    if fmt == "eadro":
        return EADRO_KIND.get(kind, kind)
    if fmt == "gaia":
        return {"cpu_hog": "cpu_anomalies", "memory_leak": "memory_anomalies"}.get(kind, kind)
    return kind
