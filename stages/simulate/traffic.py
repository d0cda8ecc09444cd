"""One chunk of simulated time: requests → spans and log events, load → metrics (all vectorised).

A chunk is generated from its own derived random stream, so a long dump is produced chunk by
chunk with bounded memory and the bytes do not depend on anything but the seed and the params.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.simulate import faults as F
from stages.simulate.params import SynthParams
from stages.simulate.system import System, load_curve
from stages.simulate.templates import ERROR, INFO, WARN, TemplateBook

_U63 = np.iinfo(np.int64).max


@dataclass
class Spans:
    """Server-side spans, one row each; parent_row indexes rows of the same chunk (-1: root)."""

    trace: np.ndarray  # int64 trace number (dump-wide)
    trace_uid: np.ndarray  # uint64 random trace id
    uid: np.ndarray  # uint64 random span id (the root's equals the trace id, as in Jaeger)
    parent_row: np.ndarray  # int64
    service: np.ndarray  # int64
    operation: list[str]
    start: np.ndarray  # float64 epoch s (UTC)
    duration: np.ndarray  # float64 s
    net: np.ndarray  # float64 s one-way network latency from the caller
    error: np.ndarray  # bool
    retry: np.ndarray  # bool: a failed attempt that was retried

    def __len__(self) -> int:
        return len(self.start)


@dataclass
class Logs:
    ts: np.ndarray  # float64 epoch s (UTC), sorted
    service: np.ndarray  # int64
    level: np.ndarray  # int8 (INFO/WARN/ERROR)
    template: np.ndarray  # int64
    peer: np.ndarray  # int64 service named in the message
    trace_row: np.ndarray  # int64 span row of the request (-1: none)
    u1: np.ndarray  # uint64 random words for ids
    u2: np.ndarray
    num: np.ndarray  # int64 small numbers
    operation: list[str]

    def __len__(self) -> int:
        return len(self.ts)


@dataclass
class Metrics:
    ts: np.ndarray  # float64 epoch s of each sample
    cpu: np.ndarray  # (T, E) cores busy
    mem: np.ndarray  # (T, E) fraction of the memory limit in use
    rx: np.ndarray  # (T, E) bytes/s
    tx: np.ndarray  # (T, E) bytes/s


@dataclass
class Chunk:
    t0: float
    t1: float
    spans: Spans
    logs: Logs
    metrics: Metrics
    n_traces: int


def _load(t0: float, t1: float, t_start: float, params: SynthParams, rng: np.random.Generator):
    """Per-second load over [t0, t1) with minute-scale noise (smooth, like real traffic)."""
    seconds = np.arange(np.floor(t0), np.ceil(t1), dtype=np.float64)
    minutes = np.floor((seconds - seconds[0]) / 60).astype(np.int64)
    noise = rng.normal(0.0, params.load_noise, minutes[-1] + 1)[minutes]
    return seconds, load_curve(seconds, t_start, params, noise)


def _requests(seconds: np.ndarray, load: np.ndarray, t0: float, t1: float, params: SynthParams,
              rng: np.random.Generator) -> np.ndarray:
    counts = rng.poisson(params.requests_per_s * load)
    times = np.repeat(seconds, counts) + rng.random(int(counts.sum()))
    times = np.sort(times[(times >= t0) & (times < t1)])
    return times


def _simulate_type(tree, times: np.ndarray, system: System, faults: list[F.Fault], params: SynthParams,
                   rng: np.random.Generator):
    """Per-request, per-node latency and start arrays for one request type (shape R x M)."""
    R, M = len(times), len(tree.services)
    svc = tree.services
    self_mean = np.asarray([system.services[s].self_s for s in svc])
    net_mean = np.asarray([system.services[s].net_s for s in svc])
    own = rng.lognormal(np.log(self_mean) - 0.18, 0.6, size=(R, M))
    net = rng.lognormal(np.log(net_mean) - 0.08, 0.4, size=(R, M))
    net[:, 0] = 0.0
    failed = np.zeros((R, M), dtype=bool)
    for f in faults:
        in_window = (times >= f.start) & (times < f.end)
        if not in_window.any():
            continue
        nodes = np.flatnonzero(np.isin(svc, f.affected))
        if f.kind == "cpu_hog":
            own[np.ix_(in_window, nodes)] *= F.CPU_HOG_SLOWDOWN
        elif f.kind == "slow_dependency":
            own[np.ix_(in_window, nodes[nodes > 0])] *= F.SLOW_DEPENDENCY_FACTOR
        elif f.kind == "network_delay":
            # The delayed link slows requests into the target and the target's own replies
            # (so the delay shows in the callee's span, as in the real TT data, and in its callers').
            callee = nodes[nodes > 0]
            net[np.ix_(in_window, callee)] += F.NETWORK_DELAY_S * (1 + 0.3 * rng.random((in_window.sum(), len(callee))))
            own[np.ix_(in_window, nodes)] += F.NETWORK_DELAY_S * (1 + 0.3 * rng.random((in_window.sum(), len(nodes))))
        elif f.kind == "network_loss":
            callee = nodes[nodes > 0]
            hit = rng.random((in_window.sum(), len(callee))) < params.network_loss_probability
            failed[np.ix_(in_window, callee)] |= hit
    wait = failed * F.RETRY_TIMEOUT_S * (1 + 0.2 * rng.random((R, M)))
    dur = own.copy()
    for m in range(M - 1, 0, -1):  # reverse pre-order: children complete before their parent
        dur[:, tree.parents[m]] += 2 * net[:, m] + dur[:, m] + wait[:, m]
    start = np.empty((R, M))
    start[:, 0] = times
    cursor = times + 0.2 * own[:, 0]
    cursors = np.empty((R, M))
    cursors[:, 0] = cursor
    for m in range(1, M):
        p = tree.parents[m]
        start[:, m] = cursors[:, p] + wait[:, m] + net[:, m]
        cursors[:, p] += wait[:, m] + 2 * net[:, m] + dur[:, m]
        cursors[:, m] = start[:, m] + 0.2 * own[:, m]
    return start, dur, net, failed, wait


def simulate_chunk(system: System, book: TemplateBook, faults: list[F.Fault], t0: float, t1: float,
                   t_start: float, trace_offset: int, params: SynthParams, rng: np.random.Generator) -> Chunk:
    seconds, load = _load(t0, t1, t_start, params, rng)
    times = _requests(seconds, load, t0, t1, params, rng)
    kinds = rng.choice(len(system.trees), size=len(times), p=system.weights)
    live = F.active(faults, t0 - 60, t1 + 60)

    span_parts: list[dict] = []
    log_parts: list[dict] = []
    row_base = 0
    trace_numbers = np.arange(len(times), dtype=np.int64) + trace_offset
    trace_uids = rng.integers(1, _U63, size=len(times), dtype=np.int64).astype(np.uint64)
    for k, tree in enumerate(system.trees):
        sel = np.flatnonzero(kinds == k)
        if len(sel) == 0:
            continue
        R, M = len(sel), len(tree.services)
        start, dur, net, failed, wait = _simulate_type(tree, times[sel], system, live, params, rng)
        # Rows r*M + m: request-major, so a trace's spans are contiguous and pre-ordered.
        uid = rng.integers(1, _U63, size=(R, M), dtype=np.int64).astype(np.uint64)
        uid[:, 0] = trace_uids[sel]
        rows = row_base + np.arange(R * M).reshape(R, M)
        parent_row = np.where(tree.parents[None, :] >= 0, rows[:, np.maximum(tree.parents, 0)], -1)
        ops = list(tree.operations) * R
        span_parts.append(dict(
            trace=np.repeat(trace_numbers[sel], M), trace_uid=np.repeat(trace_uids[sel], M), uid=uid.ravel(),
            parent_row=parent_row.ravel(), service=np.tile(tree.services, R), operation=ops,
            start=start.ravel(), duration=dur.ravel(), net=net.ravel(), error=np.zeros(R * M, dtype=bool),
            retry=np.zeros(R * M, dtype=bool)))
        row_base += R * M
        # Failed first attempts (network loss): an error span at the callee, before the retry.
        fr, fm = np.nonzero(failed)
        if len(fr):
            n = len(fr)
            span_parts.append(dict(
                trace=trace_numbers[sel][fr], trace_uid=trace_uids[sel][fr],
                uid=rng.integers(1, _U63, size=n, dtype=np.int64).astype(np.uint64),
                parent_row=parent_row[fr, fm], service=tree.services[fm],
                operation=[tree.operations[m] for m in fm.tolist()],
                start=start[fr, fm] - wait[fr, fm], duration=0.9 * wait[fr, fm], net=net[fr, fm],
                error=np.ones(n, dtype=bool), retry=np.ones(n, dtype=bool)))
            row_base += n
            # Some of those failures are logged by the caller (if it logs at all).
            caller = tree.services[tree.parents[fm]]
            logged = (rng.random(n) < 0.5) & np.asarray([system.services[c].logs for c in caller.tolist()])
            if logged.any():
                i = np.flatnonzero(logged)
                log_parts.append(dict(
                    ts=start[fr[i], fm[i]] - 0.05 * wait[fr[i], fm[i]], service=caller[i],
                    level=np.full(len(i), ERROR, dtype=np.int8), template=np.full(len(i), book.loss),
                    peer=tree.services[fm[i]], trace_row=rows[fr[i], 0]))
        # Ordinary log lines: a Poisson number per visit of a logging service.
        for m in range(M):
            s = int(tree.services[m])
            if not system.services[s].logs:
                continue
            counts = rng.poisson(params.log_lines_per_request, size=R)
            n = int(counts.sum())
            if n == 0:
                continue
            r = np.repeat(np.arange(R), counts)
            u = rng.random(n)
            level = np.where(u < params.error_rate, ERROR, np.where(u < params.error_rate + params.warn_rate, WARN, INFO))
            choice = rng.integers(0, 1 << 30, size=n)
            pools = {INFO: book.info[s], WARN: book.warn[s], ERROR: book.error[s]}
            template = np.empty(n, dtype=np.int64)
            for lv, pool in pools.items():
                mask = level == lv
                template[mask] = pool[choice[mask] % len(pool)]
            child_nodes = np.flatnonzero(tree.parents == m)
            peer = tree.services[child_nodes[choice % len(child_nodes)]] if len(child_nodes) else np.full(n, s)
            log_parts.append(dict(
                ts=start[r, m] + rng.random(n) * dur[r, m], service=np.full(n, s), level=level.astype(np.int8),
                template=template, peer=peer, trace_row=rows[r, 0]))

    # Error bursts: exception lines from new templates at the target, nothing else changes.
    for f in live:
        if f.kind != "error_burst":
            continue
        a, b = max(f.start, t0), min(f.end, t1)
        if b <= a:
            continue
        n = int(rng.poisson(params.error_burst_lines_per_s * (b - a)))
        targets = [s for s in f.affected if system.services[s].logs] or [f.service]
        log_parts.append(dict(
            ts=a + rng.random(n) * (b - a), service=np.asarray(targets)[rng.integers(0, len(targets), n)],
            level=np.full(n, ERROR, dtype=np.int8),
            template=book.exceptions[rng.integers(0, len(book.exceptions), n)],
            peer=rng.integers(0, len(system.services), n), trace_row=np.full(n, -1)))

    spans, new_pos = _concat_spans(span_parts)
    logs = _concat_logs(log_parts, spans, new_pos, rng)
    metrics = _metrics(system, live, seconds, load, t0, t1, t_start, params, rng)
    return Chunk(t0=t0, t1=t1, spans=spans, logs=logs, metrics=metrics, n_traces=len(times))


def _concat_spans(parts: list[dict]) -> tuple[Spans, np.ndarray]:
    """Concatenate span parts; also return old row -> new row (log lines point at span rows)."""
    if not parts:
        e = np.zeros(0)
        empty = Spans(np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.int64),
                      np.zeros(0, np.int64), [], e, e, e, np.zeros(0, bool), np.zeros(0, bool))
        return empty, np.zeros(0, np.int64)
    cat = {k: (sum((p[k] for p in parts), []) if k == "operation" else np.concatenate([p[k] for p in parts]))
           for k in parts[0]}
    # Order by trace then start, so each trace's spans are contiguous; remap parent rows.
    order = np.lexsort((cat["start"], cat["trace"]))
    new_pos = np.empty_like(order)
    new_pos[order] = np.arange(len(order))
    parent = cat["parent_row"][order]
    cat["parent_row"] = np.where(parent >= 0, new_pos[np.maximum(parent, 0)], -1)
    for k in cat:
        if k == "parent_row":
            continue
        cat[k] = [cat[k][i] for i in order.tolist()] if k == "operation" else cat[k][order]
    return Spans(**cat), new_pos


def _concat_logs(parts: list[dict], spans: Spans, new_pos: np.ndarray, rng: np.random.Generator) -> Logs:
    if not parts:
        parts = [dict(ts=np.zeros(0), service=np.zeros(0, np.int64), level=np.zeros(0, np.int8),
                      template=np.zeros(0, np.int64), peer=np.zeros(0, np.int64), trace_row=np.zeros(0, np.int64))]
    cat = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
    tr = cat["trace_row"].astype(np.int64)
    if len(new_pos):
        tr = np.where(tr >= 0, new_pos[np.maximum(tr, 0)], -1)
    order = np.argsort(cat["ts"], kind="stable")
    n = len(order)
    tr = tr[order]
    operation = [spans.operation[i] if i >= 0 else "handle" for i in tr.tolist()]
    return Logs(ts=cat["ts"][order], service=cat["service"][order].astype(np.int64), level=cat["level"][order],
                template=cat["template"][order].astype(np.int64), peer=cat["peer"][order].astype(np.int64),
                trace_row=tr,
                u1=rng.integers(1, _U63, size=n, dtype=np.int64).astype(np.uint64),
                u2=rng.integers(1, _U63, size=n, dtype=np.int64).astype(np.uint64),
                num=rng.integers(0, 1000, size=n), operation=operation)


def _metrics(system: System, live: list[F.Fault], seconds: np.ndarray, load: np.ndarray, t0: float, t1: float,
             t_start: float, params: SynthParams, rng: np.random.Generator) -> Metrics:
    """Resource series on the format's sampling grid (anchored at the dump start, so chunks line up)."""
    interval = params.metric_interval_s[system.fmt]
    first = int(np.ceil((t0 - t_start) / interval - 1e-9))
    last = int(np.ceil((t1 - t_start) / interval - 1e-9))
    ts = t_start + np.arange(first, last) * interval
    ts = ts[(ts >= t0) & (ts < t1)]
    L = np.interp(ts, seconds, load)[:, None]
    visits = system.entity_visits / max(system.entity_visits.max(), 1e-9)
    E = len(system.entities)
    prof = system.entity_profile  # per-entity constants, drawn once with the system
    base_cpu, gain_cpu = prof[:, 0], prof[:, 1] * visits
    base_mem, base_net = prof[:, 2], prof[:, 3] * visits
    T = len(ts)
    cpu = base_cpu + gain_cpu * L + rng.normal(0, 0.01, (T, E))
    mem = base_mem + 0.02 * L + rng.normal(0, 0.002, (T, E))
    rx = base_net * L * (1 + rng.normal(0, 0.08, (T, E)))
    tx = 1.3 * base_net * L * (1 + rng.normal(0, 0.08, (T, E)))
    F.apply_metric_faults(live, system, ts, cpu, mem, rx, tx)
    return Metrics(ts=ts, cpu=np.clip(cpu, 0, None), mem=np.clip(mem, 0, 1), rx=np.clip(rx, 0, None),
                   tx=np.clip(tx, 0, None))
