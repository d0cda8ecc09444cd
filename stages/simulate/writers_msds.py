"""MSDS (OpenStack) layout: Glances CSV per node, an Elasticsearch log export, one OSProfiler JSON
per trace, and a Rally report whose hooks record the injected faults.

Clocks as in the real data: Glances ``now`` is local time with a ` CEST` suffix (UTC+2), log
``@timestamp`` is ISO UTC with ``Z``, OSProfiler payload timestamps are naive UTC, Rally epochs UTC.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from stages.simulate.templates import LEVEL_NAMES, render_messages
from stages.simulate.traffic import Chunk
from stages.simulate.writers_common import Writer, WriterContext, time_strings, uuid_ids

CEST_SHIFT_S = 2 * 3600
DUPLICATE_ROW_SHARE = 0.02  # Glances sometimes writes two rows in one printed second
CORES = 8
MEMORY_BYTES = 64 * 1024**3
LOG_FILE = "logs_aggregated_concurrent.csv"
REPORT_FILE = "j_synth_output.json"
TASK_UUID = "5a1f3c1e-0d7b-4c55-9a57-3f1d2b7e6a10"
WORKLOAD_UUID = "9c2b7d41-6e3a-4f1b-8d2e-7b5a1c0e3f92"


class MsdsWriter(Writer):
    def __init__(self, ctx: WriterContext) -> None:
        super().__init__(ctx)
        for sub in ("metrics", "logs", "traces"):
            (ctx.root / sub).mkdir(parents=True)
        self.started: set[Path] = set()
        # Rally iterations (one per trace) are spooled to a side file, then spliced into the report.
        self.iterations_path = ctx.root / ".rally_iterations.jsonl"
        self.n_iterations = 0
        self.fault_iteration = {i: None for i in range(len(ctx.faults))}

    def _append(self, path: Path, df: pl.DataFrame) -> None:
        with open(path, "ab") as fh:
            df.write_csv(fh, include_header=path not in self.started)
        self.started.add(path)

    def write_chunk(self, chunk: Chunk, rng: np.random.Generator) -> None:
        self._metrics(chunk, rng)
        self._logs(chunk)
        self._traces(chunk)

    def _metrics(self, chunk: Chunk, rng: np.random.Generator) -> None:
        m = chunk.metrics
        # Sub-second intervals repeat printed seconds by themselves; longer ones get a few repeated rows.
        rows = np.arange(len(m.ts))
        if self.ctx.params.metric_interval_s["msds"] >= 1.0:
            rows = np.sort(np.r_[rows, np.flatnonzero(rng.random(len(m.ts)) < DUPLICATE_ROW_SHARE)])
        now = [f"{t} CEST" for t in time_strings(np.floor(m.ts[rows]), "%Y-%m-%d %H:%M:%S", CEST_SHIFT_S)]
        window = max(1, int(round(60 / self.ctx.params.metric_interval_s["msds"])))
        for e, node in enumerate(self.ctx.system.entities):
            cpu = m.cpu[rows, e]
            user = np.clip(cpu * 40, 0, 95)
            system_pct = np.clip(user * 0.2, 0, 100 - user)
            run_queue = cpu * CORES * 0.6
            # The real glances_out.csv columns first, in their order; then further Glances fields.
            df = pl.DataFrame({
                "now": now,
                "cpu.user": np.round(user, 1),
                "mem.used": np.round(m.mem[rows, e] * MEMORY_BYTES).astype(np.int64),
                "load.cpucore": np.full(len(now), CORES),
                "load.min1": np.round(_moving_mean(run_queue, window), 2),
                "load.min5": np.round(_moving_mean(run_queue, 5 * window), 2),
                "load.min15": np.round(_moving_mean(run_queue, 15 * window), 2),
                "cpu.system": np.round(system_pct, 1),
                "cpu.idle": np.round(100 - user - system_pct, 1),
                "mem.percent": np.round(m.mem[rows, e] * 100, 1),
            })
            self._append(self.ctx.root / "metrics" / f"{node}_metrics.csv", df)
            self.counts["metric_rows"] += df.height

    def _logs(self, chunk: Chunk) -> None:
        lg, system = chunk.logs, self.ctx.system
        if len(lg) == 0:
            return
        messages = render_messages(self.ctx.book, system, lg.template, lg.service, lg.peer, lg.u1, lg.u2, lg.num,
                                   lg.operation)
        levels = LEVEL_NAMES["msds"]
        svc = lg.service.tolist()
        df = pl.DataFrame({
            "@timestamp": time_strings(lg.ts, "%Y-%m-%dT%H:%M:%S%.3fZ"),
            "Hostname": [system.services[s].host for s in svc],
            "log_level": [levels[v] for v in lg.level.tolist()],
            "programname": [system.services[s].name.split("@")[0] for s in svc],
            "python_module": [system.services[s].module for s in svc],
            "Payload": messages,
        })
        self._append(self.ctx.root / "logs" / LOG_FILE, df)
        self.counts["log_lines"] += df.height

    def _traces(self, chunk: Chunk) -> None:
        sp, system = chunk.spans, self.ctx.system
        n = len(sp)
        if n == 0:
            return
        base_ids = uuid_ids(sp.trace_uid)
        span_ids = uuid_ids(sp.uid, salt=0xC2B2AE3D27D4EB4F)
        starts = time_strings(sp.start, "%Y-%m-%dT%H:%M:%S%.6f")
        stops = time_strings(sp.start + sp.duration, "%Y-%m-%dT%H:%M:%S%.6f")
        parents = sp.parent_row.tolist()
        bounds = np.flatnonzero(np.r_[True, sp.trace[1:] != sp.trace[:-1], True])
        iterations = []
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            base = base_ids[a]
            t_root = float(sp.start[a])
            nodes: dict[int, dict] = {}
            top: list[dict] = []
            for i in range(a, b):
                s = system.services[int(sp.service[i])]
                kind = "wsgi" if s.os_service in ("api", "public") else "rpc"
                parent_id = span_ids[parents[i]] if parents[i] >= 0 else base
                payload = {"name": f"{kind}-start", "service": s.os_service, "timestamp": starts[i],
                           "trace_id": span_ids[i], "project": s.project, "parent_id": parent_id, "base_id": base}
                start_info: dict = {"host": s.host}
                if kind == "wsgi":
                    start_info["request"] = {"path": f"/v2.1/{sp.operation[i]}", "scheme": "http", "method": "GET",
                                             "query": ""}
                else:
                    start_info["function"] = {"name": f"{s.module}.{sp.operation[i]}", "args": "()", "kwargs": "{}"}
                stop = {"info": {"host": s.host}, "name": f"{kind}-stop", "service": s.os_service,
                        "timestamp": stops[i], "trace_id": span_ids[i], "project": s.project,
                        "parent_id": parent_id, "base_id": base}
                if sp.error[i]:
                    stop["info"]["etype"] = "ConnectionResetError"
                    stop["info"]["message"] = "[Errno 104] Connection reset by peer"
                node = {
                    "info": {
                        "exception": "ConnectionResetError: [Errno 104] Connection reset by peer" if sp.error[i] else "None",
                        "name": kind, "service": s.os_service,
                        "started": int(round((sp.start[i] - t_root) * 1000)),
                        f"meta.raw_payload.{kind}-stop": stop,
                        "finished": int(round((sp.start[i] + sp.duration[i] - t_root) * 1000)),
                        "project": s.project, "host": s.host,
                        f"meta.raw_payload.{kind}-start": {"info": start_info, **payload},
                    },
                    "parent_id": parent_id, "trace_id": span_ids[i], "children": [],
                }
                nodes[i] = node
                (nodes[parents[i]]["children"] if parents[i] >= 0 else top).append(node)
            infos = [nodes[i]["info"] for i in range(a, b)]
            stats: dict[str, dict] = {}
            for info in infos:
                st = stats.setdefault(info["name"], {"count": 0, "duration": 0})
                st["count"] += 1
                st["duration"] += info["finished"] - info["started"]
            doc = {"info": {"started": 0, "last_trace_started": max(x["started"] for x in infos),
                            "finished": max(x["finished"] for x in infos), "name": "total"},
                   "stats": stats, "children": top}
            (self.ctx.root / "traces" / f"{base}.json").write_text(json.dumps(doc), encoding="utf-8")
            self.n_iterations += 1
            duration = float(sp.start[a:b].max() - t_root + sp.duration[a])
            iterations.append({
                "timestamp": round(t_root, 6), "error": [], "duration": round(duration, 6), "idle_duration": 0.0,
                "output": {"additive": [], "complete": [{
                    "chart_plugin": "OSProfiler", "title": "OSProfiler Trace-ID",
                    "data": {"taskID": TASK_UUID, "workload_uuid": WORKLOAD_UUID, "iteration": self.n_iterations,
                             "trace_id": base, "conn_str": None}}]},
                "atomic_actions": [{"started_at": round(t_root, 6), "finished_at": round(t_root + duration, 6),
                                    "name": f"nova.{sp.operation[a]}", "children": []}],
            })
        # Rally hooks fire at an iteration: the first trace that starts at or after the fault.
        roots = sp.start[bounds[:-1]]
        first_iteration = self.n_iterations - len(roots) + 1
        for k, f in enumerate(self.ctx.faults):
            pos = int(np.searchsorted(roots, f.start))
            if self.fault_iteration[k] is None and pos < len(roots):
                self.fault_iteration[k] = first_iteration + pos
        self.counts["traces"] += len(bounds) - 1
        self.counts["spans"] += n
        with open(self.iterations_path, "a", encoding="utf-8") as fh:
            fh.writelines(json.dumps(it) + "\n" for it in iterations)

    def finish(self) -> dict:
        """Splice the spooled iterations into a Rally report whose hooks are the fault injections."""
        ctx = self.ctx
        hooks = []
        for k, f in enumerate(ctx.faults):
            call = f"sh ./inject_{f.kind}.sh {f.entity}"
            at = self.fault_iteration[k] or max(self.n_iterations, 1)
            hooks.append({
                "config": {"action": {"sys_call": call},
                           "trigger": {"event": {"at": [at], "unit": "iteration"}}, "description": "Run script"},
                "results": [{
                    "status": "success", "triggered_by": {"event_type": "iteration", "value": at},
                    "started_at": round(f.start, 6), "finished_at": round(f.end, 6),
                    "output": {"additive": [], "complete": [{
                        "chart_plugin": "TextArea", "title": "System call", "description": f"Args: {call}",
                        "data": ["RetCode: 0", f"StdOut: injecting {f.kind} on {f.entity} for "
                                 f"{int(round(f.duration))} seconds\n", "StdErr: "]}]},
                }],
            })
        created = time_strings(np.asarray([ctx.t_start]), "%Y-%m-%dT%H:%M:%S")[0]
        workload_head = {
            "uuid": WORKLOAD_UUID, "description": "Boot and delete a server.",
            "runner": {"constant": {"concurrency": 3, "times": self.n_iterations}}, "hooks": hooks,
            "scenario": {"NovaServers.boot_and_delete_server": {"force_delete": True}},
            "start_time": round(ctx.t_start, 6), "load_duration": round(ctx.t_end - ctx.t_start, 6),
            "failed_iteration_count": 0, "total_iteration_count": self.n_iterations, "created_at": created,
        }
        head = json.dumps({"info": {"generated_at": created, "rally_version": "1.5.1", "format_version": "1.2"},
                           "tasks": [{"uuid": TASK_UUID, "title": "", "status": "finished", "created_at": created,
                                      "subtasks": [{"title": "NovaServers.boot_and_delete_server",
                                                    "status": "finished", "workloads": [workload_head]}]}]})
        # Insert the "data" list (streamed from the spool) as the workload's last key.
        marker = head.rindex("}]}]}]}")
        with open(ctx.root / REPORT_FILE, "w", encoding="utf-8") as out:
            out.write(head[:marker] + ', "data": [')
            if self.iterations_path.exists():
                with open(self.iterations_path, encoding="utf-8") as spool:
                    for j, line in enumerate(spool):
                        out.write(("" if j == 0 else ", ") + line.rstrip("\n"))
                self.iterations_path.unlink()
            out.write("]" + head[marker:])
        self.counts["faults"] = len(ctx.faults)
        return dict(self.counts)


def _moving_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` samples (shorter at the start of a chunk)."""
    c = np.cumsum(np.r_[0.0, x])
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)
