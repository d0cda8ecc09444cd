"""Fault schedule and each fault kind's footprint on the three modalities.

Footprints differ on purpose, so fusing modalities matters:

| kind            | metrics                 | traces                         | logs                     |
|-----------------|-------------------------|--------------------------------|--------------------------|
| cpu_hog         | cpu up                  | mild latency (own work slower) | -                        |
| memory_leak     | memory ramps up         | -                              | -                        |
| network_delay   | mild rx/tx dip          | extra latency into/at the target | -                      |
| network_loss    | -                       | failed calls (errors) + retries| some caller ERROR lines  |
| error_burst     | -                       | -                              | more exception lines     |
| slow_dependency | -                       | the callee's own time x(1+0.5 I) | -                      |

memory_leak, slow_dependency and error_burst each show in ONE modality only, and every footprint
overlaps something normal operation also does (see traffic.py and benign.py): a fault is a
change in rate or size, not a signal that exists only during faults.

Each fault has an intensity ``I``: its effect in units of about one standard deviation of the
affected signal's short-term normal variation (per 10 s step), drawn log-uniformly, so faults
range from subtle (I about 1-2) to severe; ``severity`` names the class.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.simulate.params import SynthParams
from stages.simulate.system import System

# Effect of one unit of intensity (about 1 σ of the affected signal in normal operation).
CPU_UNIT = 0.03  # extra cores busy on the target
CPU_SLOWDOWN_UNIT = 0.015  # relative own-time slowdown of the target's spans
MEMORY_UNIT = 0.012  # extra memory fraction reached at the end of the window
DELAY_UNIT_S = 0.006  # extra one-way latency into the target (and in its replies)
DELAY_TRAFFIC_UNIT = 0.0075  # relative rx/tx drop (fewer bytes per second)
LOSS_UNIT = 0.025  # probability that a call into the target fails and is retried
BURST_UNIT = 0.03  # extra exception lines per second at the target
SLOW_DEPENDENCY_UNIT = 0.5  # relative own-time slowdown of the callee
RETRY_TIMEOUT_S = 0.3
SEVERITY_EDGES = (2.5, 7.0)  # intensity below the first: subtle; below the second: moderate; else severe
GAP_REGULARITY = 2.0  # Dirichlet concentration of the spare time between faults (1 = uniform spacings)


@dataclass(frozen=True)
class Fault:
    kind: str
    service: int  # target service index (msds: a service on the target node)
    start: float  # epoch seconds, UTC
    duration: float  # seconds
    affected: tuple[int, ...]  # services whose behaviour changes (msds: every service on the node)
    entity: str  # the target as the format's labels name it (service / instance / node)
    intensity: float = 10.0  # effect in σ units of the affected signal
    severity: str = "severe"  # subtle | moderate | severe, from the intensity

    @property
    def end(self) -> float:
        return self.start + self.duration


def severity_of(intensity: float) -> str:
    if intensity < SEVERITY_EDGES[0]:
        return "subtle"
    if intensity < SEVERITY_EDGES[1]:
        return "moderate"
    return "severe"


def _log_uniform(low: float, high: float, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.exp(rng.uniform(np.log(low), np.log(high), n)) if high > low else np.full(n, low)


def fault_times(t_start: float, t_end: float, params: SynthParams,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(starts, durations) in seconds: random, never periodic, at least ``fault_min_gap_min`` apart.

    About one fault per ``fault_every_min``; the spare time between faults is split by a
    Dirichlet draw, so faults cover the whole span (every split holds some) at irregular times.
    """
    span = t_end - t_start
    gap = params.fault_min_gap_min * 60.0
    n = int(round(span / (params.fault_every_min * 60.0)))
    low, high = params.duration_range_min
    durations = _log_uniform(low * 60.0, high * 60.0, n, rng)
    while n > 0 and durations[:n].sum() + (n + 1) * gap > span:
        n -= 1
    durations = durations[:n]
    if n == 0:
        return np.zeros(0), np.zeros(0)
    spare = span - durations.sum() - (n + 1) * gap
    parts = rng.dirichlet(np.full(n + 1, GAP_REGULARITY)) * spare
    before = np.cumsum(gap + parts[:-1]) + np.r_[0.0, np.cumsum(durations[:-1])]
    return t_start + before, durations


def schedule_faults(system: System, t_start: float, t_end: float, params: SynthParams,
                    rng: np.random.Generator) -> list[Fault]:
    """Faults at random times with random durations and intensities; kinds in shuffled rounds.

    Rounds keep the kinds balanced: any run of 6k consecutive faults holds each kind at least
    k-1 times, so every chronological split sees every kind.
    """
    starts, durations = fault_times(t_start, t_end, params, rng)
    n = len(starts)
    kinds: list[str] = []
    while len(kinds) < n:
        kinds.extend(rng.permutation(params.fault_kinds).tolist())
    intensities = _log_uniform(*params.intensity_range, n, rng)
    n_services = len(system.services)
    logging_services = [i for i in range(1, n_services) if system.services[i].logs] or list(range(1, n_services))
    faults = []
    for i in range(n):
        kind = kinds[i]
        # Callee-side kinds need a callee; error bursts need a service that logs.
        pool = logging_services if kind == "error_burst" else list(range(1, n_services))
        service = int(pool[rng.integers(len(pool))])
        host = system.services[service].host
        if system.fmt == "msds":
            affected = tuple(j for j, s in enumerate(system.services) if s.host == host)
            entity = host
        else:
            affected = (service,)
            entity = system.services[service].name
        intensity = round(float(intensities[i]), 4)
        faults.append(Fault(kind=kind, service=service, start=round(float(starts[i]), 6),
                            duration=round(float(durations[i]), 3), affected=affected, entity=entity,
                            intensity=intensity, severity=severity_of(intensity)))
    return faults


def active(faults: list[Fault], t0: float, t1: float) -> list[Fault]:
    return [f for f in faults if f.start < t1 and f.end > t0]


def apply_metric_faults(faults: list[Fault], system: System, ts: np.ndarray, cpu: np.ndarray,
                        mem: np.ndarray, rx: np.ndarray, tx: np.ndarray) -> None:
    """Change the (time x entity) metric arrays in place during each fault window."""
    for f in faults:
        inside = (ts >= f.start) & (ts < f.end)
        if not inside.any():
            continue
        e = int(system.entity_of_service[f.service])
        if f.kind == "cpu_hog":
            cpu[inside, e] += CPU_UNIT * f.intensity
        elif f.kind == "memory_leak":
            progress = (ts[inside] - f.start) / f.duration
            mem[inside, e] += MEMORY_UNIT * f.intensity * progress
        elif f.kind == "network_delay":
            factor = max(0.5, 1.0 - DELAY_TRAFFIC_UNIT * f.intensity)
            rx[inside, e] *= factor
            tx[inside, e] *= factor
