"""Benchmark: the project's log miner (:class:`CachedMiner`) against plain Drain3, same lines, same run.

    python -m stages.bench_drain [--repeat 20] [--synthetic-hours 24] [--requests-per-s R] [--rounds 3]

Datasets: the real TrainTicket log lines of the Eadro chunk in ``../shared/data/tt-eadro`` (or
``$SHARED_DATA``) once and ``--repeat`` times over (each copy shifted past the previous one, so every
service sees its lines again in order), and the log lines of a synthetic eadro dump of
``--synthetic-hours`` written by the project's synthesiser. Each service gets a fresh miner and its
lines in mining order (:func:`clean_logs`), as in :func:`mine_templates`. Plain and cached runs
alternate (which goes first flips every round); speed is lines per CPU second (``process_time``)
of the mining loops (the project's masks its lines in batches with polars, as the logs stage does:
its polars threads' CPU time counts too), the median over rounds. Outputs are compared on
every round: cluster id of every line, every cluster's id, template and size, and (once) the
serialised Drain3 state. Prints a markdown table and writes ``bench/drain.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import jsonpickle
import polars as pl

from stages.core.cli import run_stage
from stages.core.io import write_json
from stages.features.drain_cache import CachedMiner, TokenMasker
from stages.features.log_templates import clean_logs, new_miner
from stages.features.params import LogsParams

log = logging.getLogger("stages.bench_drain")


@dataclass
class Run:
    cpu_s: float
    ids: dict[str, list[int]]  # service → cluster id per line
    clusters: dict[str, list[tuple[int, str, int]]]  # service → (id, template, size) per cluster
    miners: dict
    hits: int = 0


def service_lines(logs: pl.DataFrame) -> dict[str, list[str]]:
    """Each service's messages in the order mine_templates feeds them to its miner."""
    df = clean_logs(logs)
    out: dict[str, list[str]] = {}
    for service, message in zip(df["service"].to_list(), df["message"].to_list()):
        out.setdefault(service, []).append(message)
    return out


def repeated(logs: pl.DataFrame, times: int) -> pl.DataFrame:
    """``times`` copies of a dump, each shifted in time to start after the previous one ends."""
    span = int(logs["ts"].max() - logs["ts"].min()) + 1_000_000
    return pl.concat([logs.with_columns(pl.col("ts") + k * span) for k in range(times)])


def mine(lines: dict[str, list[str]], params: LogsParams, cached: bool) -> Run:
    ids, miners, hits, cpu = {}, {}, 0, 0.0
    masked: dict[str, list[str]] = {}
    if cached:  # as mine_services does: every service's lines masked together, then routed service by service
        every = pl.Series([m for msgs in lines.values() for m in msgs], dtype=pl.String)
        t0 = time.process_time()
        flat = TokenMasker(new_miner(params).masker).mask_all(every)
        cpu += time.process_time() - t0
        start = 0
        for service, msgs in lines.items():
            masked[service], start = flat[start:start + len(msgs)], start + len(msgs)
    for service, msgs in lines.items():
        if cached:
            miner = CachedMiner(new_miner(params))
            add = miner.add_masked
            t0 = time.process_time()
            ids[service] = [add(m) for m in masked[service]]
            cpu += time.process_time() - t0
            hits += miner.hits
            miners[service] = miner.miner
        else:
            miner = new_miner(params)
            add = miner.add_log_message
            t0 = time.process_time()
            ids[service] = [add(m)["cluster_id"] for m in msgs]
            cpu += time.process_time() - t0
            miners[service] = miner
    clusters = {s: [(c.cluster_id, c.get_template(), c.size) for c in m.drain.clusters] for s, m in miners.items()}
    return Run(cpu_s=cpu, ids=ids, clusters=clusters, miners=miners, hits=hits)


def compare(name: str, lines: dict[str, list[str]], params: LogsParams, rounds: int) -> dict:
    n = sum(len(v) for v in lines.values())
    plain_s, cached_s, identical, hits = [], [], True, 0
    for r in range(rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        runs = {c: mine(lines, params, c) for c in order}
        plain, cached = runs[False], runs[True]
        plain_s.append(plain.cpu_s)
        cached_s.append(cached.cpu_s)
        hits = cached.hits
        identical &= plain.ids == cached.ids and plain.clusters == cached.clusters
        if r == 0:
            identical &= all(jsonpickle.dumps(plain.miners[s].drain, keys=True)
                             == jsonpickle.dumps(cached.miners[s].drain, keys=True) for s in lines)
        log.info("%s round %d: plain %.3f s, cached %.3f s CPU", name, r, plain.cpu_s, cached.cpu_s)
    p, c = statistics.median(plain_s), statistics.median(cached_s)
    distinct = len({m for v in lines.values() for m in v})
    return {"dataset": name, "lines": n, "services": len(lines), "distinct_lines": distinct,
            "plain_lines_per_s": n / p, "cached_lines_per_s": n / c, "ratio": p / c, "identical": identical,
            "cache_hit_rate": hits / n if n else 0.0, "plain_cpu_s": plain_s, "cached_cpu_s": cached_s}


def table(rows: list[dict]) -> str:
    out = ["| dataset | lines | services | distinct lines | plain Drain3 lines/s/core | project miner lines/s/core "
           "| ratio | route-cache hits | identical |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        out.append(f"| {r['dataset']} | {r['lines']:,} | {r['services']} | {r['distinct_lines']:,} "
                   f"| {r['plain_lines_per_s']:,.0f} | {r['cached_lines_per_s']:,.0f} | {r['ratio']:.1f}x "
                   f"| {r['cache_hit_rate']:.1%} | {'yes' if r['identical'] else 'NO'} |")
    return "\n".join(out)


def synthetic_logs(hours: float, requests_per_s: float | None, workdir: Path) -> pl.DataFrame:
    from stages.formats import read_modality
    from stages.simulate.generate import generate
    from stages.simulate.params import SynthParams

    params = dataclasses.replace(SynthParams(), hours=hours)
    if requests_per_s is not None:
        params = dataclasses.replace(params, requests_per_s=requests_per_s)
    root = workdir / "bench_eadro"
    generate("bench_eadro", "eadro", root, params, seed=0)
    return read_modality("eadro", root, "logs")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.bench_drain", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20, help="copies of the real TT lines (default 20)")
    ap.add_argument("--synthetic-hours", type=float, default=24.0, help="length of the synthetic eadro dump")
    ap.add_argument("--requests-per-s", type=float, default=None,
                    help="synthetic traffic (default: the synthesiser's eadro rate)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating plain/cached rounds per dataset")
    ap.add_argument("--shared-data", default=os.environ.get("SHARED_DATA", "../shared/data"))
    args = ap.parse_args(argv)

    def run() -> None:
        from stages.formats import read_modality

        logging.getLogger("drain3").setLevel(logging.WARNING)  # one "Starting Drain3" line per miner
        params = LogsParams()
        rows = []
        tt = Path(args.shared_data) / "tt-eadro"
        if tt.is_dir():
            logs = read_modality("eadro", tt, "logs")
            rows.append(compare("real TT x1", service_lines(logs), params, args.rounds))
            rows.append(compare(f"real TT x{args.repeat}", service_lines(repeated(logs, args.repeat)), params,
                                args.rounds))
        else:
            log.warning("no real TT sample at %s: real-data rows skipped", tt)
        if args.synthetic_hours > 0:
            with tempfile.TemporaryDirectory(prefix="bench-drain-") as work:
                logs = synthetic_logs(args.synthetic_hours, args.requests_per_s, Path(work))
            rate = f", {args.requests_per_s:g} req/s" if args.requests_per_s is not None else ""
            rows.append(compare(f"synthetic eadro {args.synthetic_hours:g} h{rate}", service_lines(logs), params,
                                args.rounds))
        write_json({"rounds": args.rounds, "rows": rows}, Path("bench") / "drain.json")
        print(table(rows))

    return run_stage(run)


if __name__ == "__main__":
    sys.exit(main())
