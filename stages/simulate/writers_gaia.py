"""GAIA MicroSS layout: metric CSVs per (instance, metric), monthly trace/business tables, run tables.

All times are written in UTC (string times are UTC wall time, epochs are UTC), so a reader needs
no clock offset for this synthetic GAIA dump. Files are appended chunk by chunk (a multi-GB dump
never sits in memory); monthly tables switch files at month boundaries.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import polars as pl

from stages.simulate.faults import Fault
from stages.simulate.templates import LEVEL_NAMES, render_messages
from stages.simulate.traffic import Chunk
from stages.simulate.writers_common import Writer, WriterContext, hex_ids, time_string, time_strings

METRICS = ("docker_cpu_total_pct", "docker_cpu_core_0_pct", "docker_memory_usage_pct", "docker_memory_rss_total",
           "docker_network_in_bytes", "docker_network_out_bytes")
TRACE_COLUMNS = ("timestamp", "host_ip", "service_name", "trace_id", "span_id", "parent_id", "start_time",
                 "end_time", "url", "status_code", "message")
MEMORY_LIMIT_BYTES = 4 * 1024**3


def fault_message(f: Fault) -> tuple[float, str]:
    """(log time, text) of a run-table row, in the real run tables' wording where GAIA has the kind."""
    start = time_string(f.start, "%Y-%m-%d %H:%M:%S%.6f")
    secs = int(round(f.duration))
    if f.kind == "memory_leak":
        return f.start + f.duration + 0.7, (f"[memory_anomalies] trigger a high memory program, start at {start} "
                                            f"and lasts {secs} seconds and use 1g memory")
    if f.kind == "cpu_hog":
        return f.start, f"[cpu_anomalies] trigger a parallel fast sorting program , start at {start} and lasts {secs} seconds"
    what = {"network_delay": "a network delay program", "network_loss": "a network packet loss program",
            "error_burst": "an exception burst program", "slow_dependency": "a slow response program"}[f.kind]
    return f.start, f"[{f.kind}] trigger {what}, start at {start} and lasts {secs} seconds"


class GaiaWriter(Writer):
    def __init__(self, ctx: WriterContext) -> None:
        super().__init__(ctx)
        for sub in ("metric", "trace", "business", "run"):
            (ctx.root / sub).mkdir(parents=True)
        d0, d1 = time_strings(np.asarray([ctx.t_start, ctx.t_end - 1]), "%Y-%m-%d")
        self.metric_paths = {
            (i, m): ctx.root / "metric" / f"{s.name}_{s.host_ip}_{m}_{d0}_{d1}.csv"
            for i, s in enumerate(ctx.system.services) for m in METRICS
        }
        self.started: set[Path] = set()

    def _append(self, path: Path, df: pl.DataFrame) -> None:
        """Append rows; the header goes in only when the file is created."""
        with open(path, "ab") as fh:
            df.write_csv(fh, include_header=path not in self.started)
        self.started.add(path)

    def _append_rows(self, path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
        with open(path, "a", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            if path not in self.started:
                w.writerow(header)
            w.writerows(rows)
        self.started.add(path)

    def write_chunk(self, chunk: Chunk, rng: np.random.Generator) -> None:
        self._metrics(chunk)
        self._traces(chunk)
        self._business(chunk)

    def _metrics(self, chunk: Chunk) -> None:
        m = chunk.metrics
        ms = pl.Series("timestamp", np.round(m.ts * 1000).astype(np.int64))
        for i, svc in enumerate(self.ctx.system.services):
            e = int(self.ctx.system.entity_of_service[i])
            values = {
                "docker_cpu_total_pct": np.round(m.cpu[:, e] * 100 / 4, 3),
                "docker_cpu_core_0_pct": np.round(np.clip(m.cpu[:, e] * 100, 0, 100), 3),
                "docker_memory_usage_pct": np.round(m.mem[:, e] * 100, 3),
                "docker_memory_rss_total": np.round(m.mem[:, e] * MEMORY_LIMIT_BYTES).astype(np.int64),
                "docker_network_in_bytes": np.round(m.rx[:, e] * 30).astype(np.int64),
                "docker_network_out_bytes": np.round(m.tx[:, e] * 30).astype(np.int64),
            }
            for name, v in values.items():
                self._append(self.metric_paths[(i, name)], pl.DataFrame([ms, pl.Series("value", v)]))
                self.counts["metric_rows"] += len(v)

    def _traces(self, chunk: Chunk) -> None:
        sp, system = chunk.spans, self.ctx.system
        if len(sp) == 0:
            return
        names = [s.name for s in system.services]
        span_hex = hex_ids(sp.uid, 16)
        parent_hex = [span_hex[p] if p >= 0 else "" for p in sp.parent_row.tolist()]
        svc = sp.service
        df = pl.DataFrame({
            "timestamp": np.round(sp.start * 1000).astype(np.int64),
            "host_ip": [system.services[s].host_ip for s in svc.tolist()],
            "service_name": [names[s] for s in svc.tolist()],
            "trace_id": hex_ids(sp.trace_uid, 16),
            "span_id": span_hex,
            "parent_id": parent_hex,
            "start_time": time_strings(sp.start, "%Y-%m-%d %H:%M:%S%.6f"),
            "end_time": time_strings(sp.start + sp.duration, "%Y-%m-%d %H:%M:%S%.6f"),
            "url": [f"http://{system.services[s].host_ip}:{system.services[s].port}/{op}"
                    for s, op in zip(svc.tolist(), sp.operation)],
            "status_code": np.where(sp.error, 500, 200),
            "message": np.where(sp.error, "error: Connection reset by peer", "").tolist(),
            "month": time_strings(sp.start, "%Y-%m"),
            "_svc": svc,
        })
        self.counts["traces"] += len(np.unique(sp.trace))
        self.counts["spans"] += df.height
        for (s, month), part in df.sort("timestamp", maintain_order=True).group_by(["_svc", "month"], maintain_order=True):
            path = self.ctx.root / "trace" / f"trace_table_{names[s]}_{month}.csv"
            self._append(path, part.select(TRACE_COLUMNS))

    def _business(self, chunk: Chunk) -> None:
        lg, system = chunk.logs, self.ctx.system
        if len(lg) == 0:
            return
        messages = render_messages(self.ctx.book, system, lg.template, lg.service, lg.peer, lg.u1, lg.u2, lg.num,
                                   lg.operation)
        stamps = time_strings(lg.ts, "%Y-%m-%d %H:%M:%S,%3f")
        trace_hex = hex_ids(chunk.spans.trace_uid, 16) if len(chunk.spans) else []
        levels = LEVEL_NAMES["gaia"]
        texts = []
        for stamp, lv, s, row, msg in zip(stamps, lg.level.tolist(), lg.service.tolist(), lg.trace_row.tolist(),
                                          messages):
            svc = system.services[s]
            tid = f"{trace_hex[row]} | " if row >= 0 else ""
            texts.append(f"{stamp} | {levels[lv]} | {svc.host_ip} | {svc.ip} | {svc.name} | {tid}{msg}\n")
        df = pl.DataFrame({
            "datetime": [t[:10] for t in stamps],
            "service": [system.services[s].name for s in lg.service.tolist()],
            "message": texts,
            "month": [t[:7] for t in stamps],
            "_svc": lg.service,
        })
        self.counts["log_lines"] += df.height
        for (s, month), part in df.group_by(["_svc", "month"], maintain_order=True):
            path = self.ctx.root / "business" / f"business_table_{system.services[s].name}_{month}.csv"
            self._append(path, part.select("datetime", "service", "message"))

    def finish(self) -> dict:
        """Run tables: fault rows in the real wording, plus the daily upload rows, with an index column."""
        system = self.ctx.system
        rows: list[tuple[float, str, str, str]] = []  # (time, instance, level, text)
        for f in self.ctx.faults:
            when, text = fault_message(f)
            rows.append((when, f.entity, "WARNING", text))
            if f.kind == "memory_leak":
                rows.append((when + 1800.0, f.entity, "WARNING", "[normal memory freed label] lasts ten minutes"))
        day = np.floor(self.ctx.t_start / 86400) * 86400
        while day < self.ctx.t_end:
            previous = time_string(day - 86400, "%Y-%m-%d")
            for k, what in enumerate(("business logs", "trace logs", "run_logs logs")):
                when = day + 3 * 3600 + 600 + 50 * k
                if self.ctx.t_start <= when < self.ctx.t_end:
                    rows.append((when, "dbservice1" if any(s.name == "dbservice1" for s in system.services)
                                 else system.services[0].name, "INFO", f"upload {what} on {previous} successfully"))
            day += 86400
        rows.sort(key=lambda r: (r[0], r[1]))
        by_name = {s.name: s for s in system.services}
        by_month: dict[str, list[tuple]] = {}
        for when, name, level, text in rows:
            stamp = time_string(when, "%Y-%m-%d %H:%M:%S,%3f")
            svc = by_name[name]
            msg = f"{stamp} | {level} | {svc.host_ip} | {svc.ip} | {name} | {text}\n"
            by_month.setdefault(stamp[:7], []).append((stamp[:10], name, msg))
        for month, month_rows in by_month.items():
            path = self.ctx.root / "run" / f"run_table_{month}.csv"
            self._append_rows(path, ("", "datetime", "service", "message"),
                              [(i, *r) for i, r in enumerate(month_rows)])
        self.counts["faults"] = len(self.ctx.faults)
        return dict(self.counts)
