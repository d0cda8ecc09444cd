"""One chunk of simulated time: requests → spans and log events, load → metrics (all vectorised).

A chunk is generated from its own derived random stream, so a long dump is produced chunk by
chunk with bounded memory and the bytes do not depend on anything but the seed and the params.

Normal operation is not clean: calls fail sporadically (5xx, then a retry) on every edge, some
calls are slow (the latency tail), GC pauses slow a service and blip its cpu, services log
exceptions from retries and timeouts, and benign events (benign.py) restart services, surge
traffic and run batch jobs. Faults (faults.py) change the rate or size of these signals.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.simulate import benign as B
from stages.simulate import faults as F
from stages.simulate.params import SynthParams
from stages.simulate.system import System, load_curve
from stages.simulate.templates import ERROR, INFO, WARN, TemplateBook

_U63 = np.iinfo(np.int64).max
LATENCY_SIGMA = 0.6  # log-normal spread of a call's own work
NOISY_LATENCY_SIGMA = 1.0
NOISY_FACTOR = 3.0  # the noisy service: this many times the noise, errors, warnings and exceptions
SLOW_FACTOR = (4.0, 15.0)  # own-time multiplier of a slow (tail) call
QUICK_FAILURE_S = (0.005, 0.05)  # a sporadic 5xx returns this fast; timeouts take RETRY_TIMEOUT_S
LOGGED_FAILURE_SHARE = 0.5  # callers that log write a line for this share of failed calls
RESTART_EXCEPTIONS = (1, 4)  # exception lines a restarting service writes while it starts (range)
BATCH_PROGRESS_S = 60.0


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


def _load(t0: float, t1: float, t_start: float, params: SynthParams, bg: B.Background, rng: np.random.Generator):
    """Per-second load over [t0, t1) with minute-scale noise (smooth, like real traffic) and surges."""
    seconds = np.arange(np.floor(t0), np.ceil(t1), dtype=np.float64)
    minutes = np.floor((seconds - seconds[0]) / 60).astype(np.int64)
    noise = rng.normal(0.0, params.load_noise, minutes[-1] + 1)[minutes]
    return seconds, load_curve(seconds, t_start, params, noise) * B.load_factor(seconds, bg.surges)


def _requests(seconds: np.ndarray, load: np.ndarray, t0: float, t1: float, rate: float,
              rng: np.random.Generator) -> np.ndarray:
    counts = rng.poisson(rate * load)
    times = np.repeat(seconds, counts) + rng.random(int(counts.sum()))
    times = np.sort(times[(times >= t0) & (times < t1)])
    return times


def _normal_behaviour(tree, times: np.ndarray, system: System, bg: B.Background, params: SynthParams,
                      rng: np.random.Generator):
    """Own work, network time, failures (and which are timeouts) of every call, without faults."""
    R, M = len(times), len(tree.services)
    svc = tree.services
    noisy = np.isin(svc, list(bg.noisy))
    self_mean = np.asarray([system.services[s].self_s for s in svc])
    net_mean = np.asarray([system.services[s].net_s for s in svc])
    sigma = np.where(noisy, NOISY_LATENCY_SIGMA, LATENCY_SIGMA)
    own = rng.lognormal(np.log(self_mean) - sigma ** 2 / 2, sigma, size=(R, M))
    net = rng.lognormal(np.log(net_mean) - 0.08, 0.4, size=(R, M))
    net[:, 0] = 0.0
    slow = rng.random((R, M)) < params.slow_request_probability
    own[slow] *= rng.uniform(*SLOW_FACTOR, int(slow.sum()))
    p_error = params.call_error_probability * np.where(noisy, NOISY_FACTOR, 1.0)
    failed = rng.random((R, M)) < p_error[None, :]
    failed[:, 0] = False  # a failed call is retried by its caller; the root has none
    timeout = np.zeros((R, M), dtype=bool)
    for s in np.unique(svc).tolist():
        nodes = np.flatnonzero(svc == s)
        gc = B.window_index(times, bg.gc_start[s], bg.gc_end[s]) >= 0
        if gc.any():
            own[np.ix_(gc, nodes)] *= rng.uniform(*B.GC_SLOWDOWN, (int(gc.sum()), 1))
        for r in bg.restarts:
            if r.service != s or r.end <= times[0] or r.start >= times[-1]:
                continue
            down = (times >= r.start) & (times < r.up)
            callee = nodes[nodes > 0]
            hit = down[:, None] & (rng.random((R, len(callee))) < B.RESTART_FAIL_PROBABILITY)
            failed[:, callee] |= hit
            timeout[:, callee] |= hit
            warm = (times >= r.up) & (times < r.end)
            boost = 1.0 + B.WARMUP_SLOWDOWN * np.exp(-3.0 * (times[warm] - r.up) / r.warmup_s)
            own[np.ix_(warm, nodes)] *= boost[:, None]
        for b in bg.batches:
            if b.service == s:
                own[np.ix_((times >= b.start) & (times < b.end), nodes)] *= B.BATCH_SLOWDOWN
    return own, net, failed, timeout


def _apply_trace_faults(tree, times: np.ndarray, faults: list[F.Fault], own: np.ndarray, net: np.ndarray,
                        failed: np.ndarray, timeout: np.ndarray, rng: np.random.Generator) -> None:
    svc = tree.services
    for f in faults:
        in_window = (times >= f.start) & (times < f.end)
        if not in_window.any():
            continue
        nodes = np.flatnonzero(np.isin(svc, f.affected))
        callee = nodes[nodes > 0]
        n_in = int(in_window.sum())
        if f.kind == "cpu_hog":
            own[np.ix_(in_window, nodes)] *= 1.0 + F.CPU_SLOWDOWN_UNIT * f.intensity
        elif f.kind == "slow_dependency":
            own[np.ix_(in_window, callee)] *= 1.0 + F.SLOW_DEPENDENCY_UNIT * f.intensity
        elif f.kind == "network_delay":
            # The delayed link slows requests into the target and the target's own replies
            # (so the delay shows in the callee's span, as in the real TT data, and in its callers').
            delay = F.DELAY_UNIT_S * f.intensity
            net[np.ix_(in_window, callee)] += delay * (1 + 0.3 * rng.random((n_in, len(callee))))
            own[np.ix_(in_window, nodes)] += delay * (1 + 0.3 * rng.random((n_in, len(nodes))))
        elif f.kind == "network_loss":
            hit = rng.random((n_in, len(callee))) < min(0.9, F.LOSS_UNIT * f.intensity)
            failed[np.ix_(in_window, callee)] |= hit
            timeout[np.ix_(in_window, callee)] |= hit


def _simulate_type(tree, times: np.ndarray, system: System, faults: list[F.Fault], bg: B.Background,
                   params: SynthParams, rng: np.random.Generator):
    """Per-request, per-node latency and start arrays for one request type (shape R x M)."""
    R, M = len(times), len(tree.services)
    own, net, failed, timeout = _normal_behaviour(tree, times, system, bg, params, rng)
    _apply_trace_faults(tree, times, faults, own, net, failed, timeout, rng)
    u = rng.random((R, M))
    wait = failed * np.where(timeout, F.RETRY_TIMEOUT_S * (1 + 0.2 * u),
                             QUICK_FAILURE_S[0] + (QUICK_FAILURE_S[1] - QUICK_FAILURE_S[0]) * u)
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


def _line_parts(ts: np.ndarray, service, level: int, template, peer, n: int | None = None) -> dict:
    n = len(ts) if n is None else n
    return dict(ts=np.asarray(ts, dtype=np.float64), service=np.broadcast_to(np.asarray(service), n).astype(np.int64),
                level=np.full(n, level, dtype=np.int8),
                template=np.broadcast_to(np.asarray(template), n).astype(np.int64),
                peer=np.broadcast_to(np.asarray(peer), n).astype(np.int64), trace_row=np.full(n, -1))


def _exception_lines(system: System, book: TemplateBook, bg: B.Background, live: list[F.Fault], t0: float,
                     t1: float, params: SynthParams, rng: np.random.Generator) -> list[dict]:
    """Exceptions from retries and timeouts at every logging service; error bursts raise the rate."""
    parts = []
    n_services = len(system.services)
    for s, svc in enumerate(system.services):
        if not svc.logs:
            continue
        rate = params.exception_lines_per_hour / 3600.0 * (NOISY_FACTOR if s in bg.noisy else 1.0)
        ts = B.poisson_times(rate, t0, t1, rng)
        if len(ts):
            parts.append(_line_parts(ts, s, ERROR, book.exceptions[rng.integers(0, len(book.exceptions), len(ts))],
                                     rng.integers(0, n_services, len(ts))))
    for f in live:
        if f.kind != "error_burst":
            continue
        a, b = max(f.start, t0), min(f.end, t1)
        if b <= a:
            continue
        targets = [s for s in f.affected if system.services[s].logs] or [f.service]
        ts = B.poisson_times(F.BURST_UNIT * f.intensity, a, b, rng)
        parts.append(_line_parts(ts, np.asarray(targets)[rng.integers(0, len(targets), len(ts))], ERROR,
                                 book.exceptions[rng.integers(0, len(book.exceptions), len(ts))],
                                 rng.integers(0, n_services, len(ts))))
    return parts


def _benign_lines(system: System, book: TemplateBook, bg: B.Background, t0: float, t1: float,
                  rng: np.random.Generator) -> list[dict]:
    """Shutdown/startup lines (and a few startup exceptions) of restarts; batch job lines."""
    parts = []
    for r in bg.restarts:
        if not system.services[r.service].logs:
            continue
        s = r.service
        if t0 <= r.start < t1:
            parts.append(_line_parts(np.asarray([r.start]), s, INFO, book.shutdown[s][:1], s))
        if t0 <= r.up < t1:
            steps = book.startup[s]
            ts = r.up + np.cumsum(rng.uniform(0.2, 3.0, len(steps)))
            parts.append(_line_parts(ts, s, INFO, steps, s))
            k = int(rng.integers(RESTART_EXCEPTIONS[0], RESTART_EXCEPTIONS[1] + 1))
            parts.append(_line_parts(r.up + rng.uniform(0, 20, k), s, ERROR,
                                     book.exceptions[rng.integers(0, len(book.exceptions), k)], s))
    for b in bg.batches:
        s = b.service
        if not system.services[s].logs or b.end <= t0 or b.start >= t1:
            continue
        started, progress, finished = book.batch[s]
        ticks = np.arange(b.start + BATCH_PROGRESS_S, b.end, BATCH_PROGRESS_S)
        ts = np.r_[b.start, ticks, b.end]
        template = np.r_[started, np.full(len(ticks), progress), finished]
        keep = (ts >= t0) & (ts < t1)
        parts.append(_line_parts(ts[keep], s, INFO, template[keep], s))
    return parts


def simulate_chunk(system: System, book: TemplateBook, faults: list[F.Fault], bg: B.Background, t0: float,
                   t1: float, t_start: float, trace_offset: int, params: SynthParams,
                   rng: np.random.Generator) -> Chunk:
    seconds, load = _load(t0, t1, t_start, params, bg, rng)
    times = _requests(seconds, load, t0, t1, params.request_rate(system.fmt), rng)
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
        start, dur, net, failed, wait = _simulate_type(tree, times[sel], system, live, bg, params, rng)
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
        # Failed first attempts (5xx, restarts, network loss): an error span at the callee, before the retry.
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
            logged = ((rng.random(n) < LOGGED_FAILURE_SHARE)
                      & np.asarray([system.services[c].logs for c in caller.tolist()]))
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
            boost = NOISY_FACTOR if s in bg.noisy else 1.0
            p_err, p_warn = params.error_rate * boost, params.warn_rate * boost
            level = np.where(u < p_err, ERROR, np.where(u < p_err + p_warn, WARN, INFO))
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

    log_parts += _exception_lines(system, book, bg, live, t0, t1, params, rng)
    log_parts += _benign_lines(system, book, bg, t0, t1, rng)
    spans, new_pos = _concat_spans(span_parts)
    logs = _concat_logs(log_parts, spans, new_pos, rng)
    metrics = _metrics(system, live, bg, seconds, load, t0, t1, t_start, params, rng)
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


def _metrics(system: System, live: list[F.Fault], bg: B.Background, seconds: np.ndarray, load: np.ndarray,
             t0: float, t1: float, t_start: float, params: SynthParams, rng: np.random.Generator) -> Metrics:
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
    noisy = np.zeros(E, dtype=bool)
    noisy[[int(system.entity_of_service[s]) for s in bg.noisy]] = True
    boost = np.where(noisy, NOISY_FACTOR, 1.0)
    T = len(ts)
    cpu = base_cpu + gain_cpu * L + rng.normal(0, 0.01, (T, E)) * boost
    mem = base_mem + 0.02 * L + rng.normal(0, 0.002, (T, E)) * boost
    rx = base_net * L * (1 + rng.normal(0, 0.08, (T, E)) * boost)
    tx = 1.3 * base_net * L * (1 + rng.normal(0, 0.08, (T, E)) * boost)
    for s in range(len(system.services)):
        e = int(system.entity_of_service[s])
        # Heap sawtooth (drops at GC pauses and restarts) and memory built up since the last start.
        mem[:, e] += B.sawtooth(ts, bg.heap_resets(s), float(bg.heap_amp[s]))
        ups = np.asarray([r.start for r in bg.restarts if r.service == s])
        mem[:, e] += B.warm_memory(ts, ups, float(bg.warm_mem[s]))
        i = B.window_index(ts, bg.gc_start[s], bg.gc_end[s])
        cpu[i >= 0, e] += bg.gc_cpu[s][i[i >= 0]]
    for r in bg.restarts:
        e = int(system.entity_of_service[r.service])
        starting = (ts >= r.up) & (ts < r.up + B.STARTUP_CPU_S)
        cpu[starting, e] += rng.uniform(*B.STARTUP_CPU)
    for b in bg.batches:
        e = int(system.entity_of_service[b.service])
        running = (ts >= b.start) & (ts < b.end)
        cpu[running, e] += b.cpu
        rx[running, e] *= b.io
        tx[running, e] *= b.io
    F.apply_metric_faults(live, system, ts, cpu, mem, rx, tx)
    return Metrics(ts=ts, cpu=np.clip(cpu, 0, None), mem=np.clip(mem, 0, 1), rx=np.clip(rx, 0, None),
                   tx=np.clip(tx, 0, None))
