"""Normal change that is NOT a fault: deploys with restarts, traffic surges, nightly batch jobs,
a noisy service, and the GC pauses every service has.

Why: if only faults ever change anything, "something changed" equals "a fault" and a detector
learns nothing about anomalies. These events are drawn once per dump (seeded), are never
labelled, and are listed in the ground-truth sidecar so an analysis can tell them apart.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.simulate.params import SynthParams
from stages.simulate.system import System

DAY_S = 86400.0
SURGE_RAMP_S = 90.0
BATCH_HOUR_UTC = 2.0  # nightly jobs start around 02:00 UTC
RESTART_FAIL_PROBABILITY = 0.6  # calls into a restarting service fail (and are retried) this often
WARMUP_SLOWDOWN = 1.5  # own time x(1 + this) right after a start, decaying over the warm-up
BATCH_SLOWDOWN = 1.2  # own time of the batch service's spans while its job runs
GC_SLOWDOWN = (1.5, 3.0)  # own time of calls that hit a GC pause
STARTUP_CPU = (0.2, 0.4)  # extra cores while a restarted service starts
STARTUP_CPU_S = 60.0
WARM_MEMORY_TAU_S = 900.0  # memory a service builds after a start (caches, pools) fills with this time constant


@dataclass(frozen=True)
class Restart:
    """One service restart of a deploy: unavailable for ``down_s``, then slower for ``warmup_s``."""

    service: int
    start: float
    down_s: float
    warmup_s: float

    @property
    def up(self) -> float:
        return self.start + self.down_s

    @property
    def end(self) -> float:
        return self.up + self.warmup_s


@dataclass(frozen=True)
class Surge:
    start: float
    duration: float
    factor: float  # load multiplier at the plateau

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True)
class BatchJob:
    service: int
    start: float
    duration: float
    cpu: float  # extra cores
    io: float  # rx/tx multiplier

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True)
class Background:
    """Everything unlabelled that changes the system's behaviour over the dump."""

    restarts: tuple[Restart, ...]
    surges: tuple[Surge, ...]
    batches: tuple[BatchJob, ...]
    noisy: frozenset[int]  # services with higher variance throughout
    gc_start: tuple[np.ndarray, ...]  # per service: sorted GC pause starts
    gc_end: tuple[np.ndarray, ...]
    gc_cpu: tuple[np.ndarray, ...]  # per pause: extra cores
    heap_amp: np.ndarray  # per service: heap sawtooth amplitude (memory fraction)
    warm_mem: np.ndarray  # per service: memory built up after a start

    def heap_resets(self, service: int) -> np.ndarray:
        """Times the service's heap drops: every GC pause and every stop of a restart."""
        restarts = [r.start for r in self.restarts if r.service == service]
        return np.sort(np.r_[self.gc_start[service], restarts])

    def sidecar(self, system: System, t_start: float, t_end: float) -> list[dict]:
        """Benign events for ``synth_truth.json`` (epoch seconds UTC, the metric clock)."""
        names = [s.name for s in system.services]
        hosts = [s.host for s in system.services]
        out = [{"kind": "deploy", "service": names[r.service], "entity": hosts[r.service],
                "start_ts": round(r.start, 6), "end_ts": round(r.end, 6)} for r in self.restarts]
        out += [{"kind": "traffic_surge", "service": names[0], "entity": hosts[0], "start_ts": round(s.start, 6),
                 "end_ts": round(s.end, 6), "factor": round(s.factor, 4)} for s in self.surges]
        out += [{"kind": "batch_job", "service": names[b.service], "entity": hosts[b.service],
                 "start_ts": round(b.start, 6), "end_ts": round(b.end, 6)} for b in self.batches]
        out += [{"kind": "noisy_service", "service": names[s], "entity": hosts[s], "start_ts": round(t_start, 6),
                 "end_ts": round(t_end, 6)} for s in sorted(self.noisy)]
        return sorted(out, key=lambda e: (e["start_ts"], e["kind"], e["service"]))


def poisson_times(rate_per_s: float, t0: float, t1: float, rng: np.random.Generator) -> np.ndarray:
    n = int(rng.poisson(max(rate_per_s, 0.0) * max(t1 - t0, 0.0)))
    return np.sort(t0 + rng.random(n) * (t1 - t0))


def schedule_background(system: System, t_start: float, t_end: float, params: SynthParams,
                        rng: np.random.Generator) -> Background:
    n = len(system.services)
    days = (t_end - t_start) / DAY_S
    callees = np.arange(1, n)
    noisy = rng.choice(callees, size=min(params.noisy_services, len(callees)), replace=False).tolist()

    restarts: list[Restart] = []
    for t in poisson_times(params.deploys_per_day / DAY_S, t_start, t_end, rng):
        k = int(rng.integers(1, min(3, len(callees)) + 1))
        at = float(t)
        for s in rng.choice(callees, size=k, replace=False).tolist():  # rolling: one service after another
            down, warm = float(rng.uniform(15, 45)), float(rng.uniform(120, 300))
            if at + down + warm < t_end:
                restarts.append(Restart(service=int(s), start=round(at, 6), down_s=down, warmup_s=warm))
            at += down + float(rng.uniform(60, 180))
    restarts.sort(key=lambda r: (r.start, r.service))

    surges = []
    for t in poisson_times(params.surges_per_day / DAY_S, t_start, t_end, rng):
        duration = float(rng.uniform(10, 30)) * 60.0
        if t + duration < t_end:
            surges.append(Surge(start=round(float(t), 6), duration=duration, factor=float(rng.uniform(2.0, 3.0))))

    batch_pool = [s for s in callees.tolist() if s not in noisy] or callees.tolist()
    batch_services = rng.choice(batch_pool, size=min(params.batch_jobs, len(batch_pool)), replace=False).tolist()
    batches = []
    first_night = np.floor(t_start / DAY_S) * DAY_S + BATCH_HOUR_UTC * 3600.0
    for d in range(int(np.ceil(days)) + 1):
        for s in batch_services:
            start = first_night + d * DAY_S + float(rng.uniform(-600, 600))
            duration = float(rng.uniform(20, 40)) * 60.0
            if t_start <= start and start + duration < t_end:
                batches.append(BatchJob(service=int(s), start=round(start, 6), duration=duration,
                                        cpu=float(rng.uniform(0.15, 0.35)), io=float(rng.uniform(2.0, 4.0))))
    batches.sort(key=lambda b: (b.start, b.service))

    gc_start, gc_end, gc_cpu = [], [], []
    for _ in range(n):
        # Start an hour early so the heap sawtooth is defined from the first sample on.
        starts = poisson_times(params.gc_per_hour / 3600.0, t_start - 3600.0, t_end, rng)
        gc_start.append(starts)
        gc_end.append(starts + rng.uniform(4, 12, len(starts)))
        gc_cpu.append(rng.uniform(0.05, 0.15, len(starts)))
    return Background(
        restarts=tuple(restarts), surges=tuple(surges), batches=tuple(batches), noisy=frozenset(noisy),
        gc_start=tuple(gc_start), gc_end=tuple(gc_end), gc_cpu=tuple(gc_cpu),
        heap_amp=rng.uniform(0.01, 0.03, n), warm_mem=rng.uniform(0.04, 0.08, n))


# ------------------------------------------------------------------ effects (vectorised helpers)


def window_index(t: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Index of the window [starts[i], ends[i]) holding each t (sorted, non-overlapping starts), or -1."""
    if len(starts) == 0:
        return np.full(len(t), -1, dtype=np.int64)
    i = np.searchsorted(starts, t, side="right") - 1
    ok = (i >= 0) & (t < ends[np.maximum(i, 0)])
    return np.where(ok, i, -1)


def load_factor(t: np.ndarray, surges: tuple[Surge, ...]) -> np.ndarray:
    """Load multiplier from traffic surges (a trapezoid: ramp up, plateau, ramp down)."""
    out = np.ones(len(t))
    for s in surges:
        if s.end <= t[0] or s.start >= t[-1]:
            continue
        up = np.clip((t - s.start) / SURGE_RAMP_S, 0, 1)
        down = np.clip((s.end - t) / SURGE_RAMP_S, 0, 1)
        out *= 1.0 + (s.factor - 1.0) * np.minimum(up, down)
    return out


def sawtooth(t: np.ndarray, resets: np.ndarray, amp: float) -> np.ndarray:
    """Heap in use: grows linearly between resets and drops to zero at each (amplitude ``amp``)."""
    if len(resets) < 2:
        return np.zeros(len(t))
    i = np.clip(np.searchsorted(resets, t, side="right") - 1, 0, len(resets) - 2)
    prev, nxt = resets[i], resets[i + 1]
    frac = np.clip((t - prev) / np.maximum(nxt - prev, 1e-9), 0, 1)
    return amp * np.where(t >= resets[-1], np.clip((t - resets[-1]) / np.maximum(nxt - prev, 1e-9), 0, 1), frac)


def warm_memory(t: np.ndarray, ups: np.ndarray, level: float) -> np.ndarray:
    """Memory a service builds after each start: ``level`` (1 - exp(-age / tau)); full before the first restart."""
    if len(ups) == 0:
        return np.full(len(t), level)
    i = np.searchsorted(ups, t, side="right") - 1
    age = np.where(i >= 0, t - ups[np.maximum(i, 0)], np.inf)
    return level * (1.0 - np.exp(-age / WARM_MEMORY_TAU_S))
