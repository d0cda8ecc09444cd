"""Eadro TrainTicket layout: ``TT.<start>D<end>/`` chunk folders plus ``TT.fault-<start>D<end>.json``.

Clock quirks of the real export are reproduced: metric epochs are UTC, log strings are UTC+8
wall time, span epochs (µs) run +8 h ahead, and folder names read +16 h (the real sample's
``TT.2022-04-19T001753...`` holds metrics from 2022-04-18 08:17:53 UTC).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from stages.core.frames import US
from stages.simulate.templates import LEVEL_NAMES, render_messages
from stages.simulate.traffic import Chunk
from stages.simulate.writers_common import Writer, WriterContext, hex_ids, time_strings

LOG_SHIFT_S = 8 * 3600
SPAN_SHIFT_S = 8 * 3600
FOLDER_SHIFT_S = 16 * 3600
NATIVE_KIND = {"cpu_hog": "cpu_load"}  # the other kinds keep their names (network_* already match)
METRIC_COLUMNS = ("timestamp", "cpu_usage_system", "cpu_usage_total", "cpu_usage_user", "memory_usage",
                  "memory_working_set", "rx_bytes", "tx_bytes")
_MIX = 0x9E3779B97F4A7C15
_MASK63 = (1 << 63) - 1


def chunk_name(t0: float, t1: float) -> str:
    a, b = time_strings(np.asarray([t0, t1]), "%Y-%m-%dT%H%M%S", FOLDER_SHIFT_S)
    return f"{a}D{b}"


class EadroWriter(Writer):
    def __init__(self, ctx: WriterContext) -> None:
        super().__init__(ctx)
        self.processes = [
            {"serviceName": s.name, "tags": [
                {"key": "hostname", "type": "string", "value": f"{0xA1D4B310B9E9 + 7919 * i:012x}"},
                {"key": "ip", "type": "string", "value": s.ip},
                {"key": "jaeger.version", "type": "string", "value": "Java-0.30.6"}]}
            for i, s in enumerate(ctx.system.services)
        ]

    # ------------------------------------------------------------------ chunk
    def write_chunk(self, chunk: Chunk, rng: np.random.Generator) -> None:
        name = chunk_name(chunk.t0, chunk.t1)
        folder = self.ctx.root / f"TT.{name}"
        (folder / "metrics").mkdir(parents=True)
        self._metrics(folder / "metrics", chunk)
        self._logs(folder / "logs.json", chunk)
        self._spans(folder / "spans.json", chunk, rng)
        self._faults(self.ctx.root / f"TT.fault-{name}.json", chunk)

    def _metrics(self, folder: Path, chunk: Chunk) -> None:
        m = chunk.metrics
        ts = m.ts.round(3)
        stamp = pl.Series("timestamp", ts.astype(np.int64)) if np.all(ts == np.floor(ts)) else pl.Series("timestamp", ts)
        for e, entity in enumerate(self.ctx.system.entities):
            cpu = m.cpu[:, e]
            df = pl.DataFrame([
                stamp,
                pl.Series("cpu_usage_system", np.round(cpu * 0.08, 4)),
                pl.Series("cpu_usage_total", np.round(cpu, 6)),
                pl.Series("cpu_usage_user", np.round(cpu * 0.9, 4)),
                pl.Series("memory_usage", np.round(m.mem[:, e] * 0.01, 7)),
                pl.Series("memory_working_set", np.round(m.mem[:, e] * 0.00999, 7)),
                pl.Series("rx_bytes", np.round(m.rx[:, e], 1)),
                pl.Series("tx_bytes", np.round(m.tx[:, e], 1)),
            ])
            df.write_csv(folder / f"{entity}.csv")
            self.counts["metric_rows"] += df.height

    def _logs(self, path: Path, chunk: Chunk) -> None:
        lg, system = chunk.logs, self.ctx.system
        messages = render_messages(self.ctx.book, system, lg.template, lg.service, lg.peer, lg.u1, lg.u2, lg.num,
                                   lg.operation)
        stamps = time_strings(lg.ts, "%Y-%m-%d %H:%M:%S%.3f", LOG_SHIFT_S)
        levels = LEVEL_NAMES["eadro"]
        exec_no = (lg.u2 % np.uint64(10) + np.uint64(1)).tolist()
        by_service: dict[str, list[str]] = {s.name: [] for s in system.services}
        for stamp, lv, s, x, msg in zip(stamps, lg.level.tolist(), lg.service.tolist(), exec_no, messages):
            svc = system.services[s]
            thread = f"http-nio-{svc.port}-exec-{x}"[-15:]
            by_service[svc.name].append(f"{stamp} {levels[lv]:>5} 1 --- [{thread}] {svc.module:<40.40} : {msg}")
        path.write_text(json.dumps(by_service), encoding="utf-8")
        self.counts["log_lines"] += len(messages)

    def _spans(self, path: Path, chunk: Chunk, rng: np.random.Generator) -> None:
        sp, system = chunk.spans, self.ctx.system
        n = len(sp)
        starts_us = np.round((sp.start + SPAN_SHIFT_S) * US).astype(np.int64).tolist()
        durs_us = np.maximum(np.round(sp.duration * US), 1).astype(np.int64).tolist()
        nets_us = np.round(sp.net * US).astype(np.int64).tolist()
        uids = sp.uid.tolist()
        trace_hex = hex_ids(sp.trace_uid)
        services = sp.service.tolist()
        parents = sp.parent_row.tolist()
        errors = sp.error.tolist()
        traces: list[dict] = []
        bounds = np.flatnonzero(np.r_[True, sp.trace[1:] != sp.trace[:-1], True]) if n else np.asarray([0])
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            spans, proc_ids = [], {}
            for i in range(a, b):
                s = services[i]
                pid = proc_ids.setdefault(s, f"p{len(proc_ids) + 1}")
                svc = system.services[s]
                status = 503 if errors[i] else 200
                url = f"http://{svc.name}:{svc.port}/api/v1/{svc.name.removeprefix('ts-')}/{sp.operation[i]}"
                server_tags = [
                    {"key": "http.status_code", "type": "int64", "value": status},
                    {"key": "component", "type": "string", "value": "java-web-servlet"},
                    {"key": "span.kind", "type": "string", "value": "server"},
                ]
                if parents[i] < 0:
                    server_tags += [{"key": "sampler.type", "type": "string", "value": "const"},
                                    {"key": "sampler.param", "type": "bool", "value": True}]
                server_tags += [{"key": "http.url", "type": "string", "value": url},
                                {"key": "http.method", "type": "string", "value": "POST"}]
                if errors[i]:
                    server_tags.append({"key": "error", "type": "bool", "value": True})
                server_tags.append({"key": "internal.span.format", "type": "string", "value": "proto"})
                span_id = f"{uids[i]:x}"
                refs = []
                if parents[i] >= 0:
                    # The caller's client span sits between the two server spans, as in Jaeger.
                    p = parents[i]
                    client_id = f"{(uids[i] * _MIX) & _MASK63:x}"
                    caller = services[p]
                    caller_pid = proc_ids.setdefault(caller, f"p{len(proc_ids) + 1}")
                    client_tags = [
                        {"key": "http.status_code", "type": "int64", "value": status},
                        {"key": "component", "type": "string", "value": "java-spring-rest-template"},
                        {"key": "span.kind", "type": "string", "value": "client"},
                        {"key": "http.url", "type": "string", "value": url},
                        {"key": "peer.port", "type": "int64", "value": svc.port},
                        {"key": "http.method", "type": "string", "value": "POST"},
                    ]
                    if errors[i]:
                        client_tags.append({"key": "error", "type": "bool", "value": True})
                    client_tags.append({"key": "internal.span.format", "type": "string", "value": "proto"})
                    spans.append(self._span(trace_hex[i], client_id, "POST", f"{uids[p]:x}",
                                            starts_us[i] - nets_us[i], durs_us[i] + 2 * nets_us[i],
                                            client_tags, caller_pid))
                    refs = client_id
                spans.append(self._span(trace_hex[i], span_id, sp.operation[i], refs or None, starts_us[i],
                                        durs_us[i], server_tags, pid))
            processes = {pid: self.processes[s] for s, pid in proc_ids.items()}
            traces.append({"traceID": trace_hex[a], "spans": spans, "processes": processes, "warnings": None})
            self.counts["spans"] += len(spans)
        self.counts["traces"] += len(traces)
        # The real export repeats some trace objects; readers must de-duplicate.
        repeats = [traces[i] for i in np.flatnonzero(rng.random(len(traces)) < self.ctx.params.repeated_trace_fraction)]
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("[\n")
            for j, trace in enumerate(traces + repeats):
                fh.write(("" if j == 0 else ",\n") + json.dumps(trace, separators=(",", ":")))
            fh.write("\n]\n")

    @staticmethod
    def _span(trace_id: str, span_id: str, operation: str, parent: str | None, start_us: int, dur_us: int,
              tags: list[dict], pid: str) -> dict:
        refs = [{"refType": "CHILD_OF", "traceID": trace_id, "spanID": parent}] if parent else []
        return {"traceID": trace_id, "spanID": span_id, "flags": 1, "operationName": operation,
                "references": refs, "startTime": start_us, "duration": dur_us, "tags": tags, "logs": [],
                "processID": pid, "warnings": None}

    def _faults(self, path: Path, chunk: Chunk) -> None:
        mine = [f for f in self.ctx.faults if chunk.t0 <= f.start < chunk.t1]
        doc = {
            "start": round(chunk.t0, 6),
            "faults": [{"name": f"dockercomposemanifests_{f.entity}_1", "fault": NATIVE_KIND.get(f.kind, f.kind),
                        "start": f.start, "duration": int(round(f.duration))} for f in mine],
            "end": round(chunk.t1, 6),
        }
        path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
        self.counts["faults"] += len(mine)
