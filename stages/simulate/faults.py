"""Fault schedule and each fault kind's footprint on the three modalities.

Footprints differ on purpose, so fusing modalities matters:

| kind            | metrics                 | traces                         | logs                     |
|-----------------|-------------------------|--------------------------------|--------------------------|
| cpu_hog         | cpu up strongly         | mild latency (own work x1.3)   | -                        |
| memory_leak     | memory ramps up         | -                              | -                        |
| network_delay   | mild rx/tx dip          | +150 ms into/at the target     | -                        |
| network_loss    | -                       | failed calls (errors) + retries| some caller ERROR lines  |
| error_burst     | -                       | -                              | ERROR lines, new templates |
| slow_dependency | -                       | the callee's own time x6       | -                        |

memory_leak, slow_dependency and error_burst each show in ONE modality only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.simulate.params import SynthParams
from stages.simulate.system import System

CPU_HOG_EXTRA = 0.7  # extra cores busy (fraction of one core) on the target
CPU_HOG_SLOWDOWN = 1.3
MEMORY_LEAK_PEAK = 0.35  # extra memory fraction reached at the end of the window
NETWORK_DELAY_S = 0.15  # extra one-way latency into the target
NETWORK_DELAY_TRAFFIC = 0.85  # rx/tx factor during a delay (fewer bytes per second)
SLOW_DEPENDENCY_FACTOR = 6.0
RETRY_TIMEOUT_S = 0.3


@dataclass(frozen=True)
class Fault:
    kind: str
    service: int  # target service index (msds: a service on the target node)
    start: float  # epoch seconds, UTC
    duration: float  # seconds
    affected: tuple[int, ...]  # services whose behaviour changes (msds: every service on the node)
    entity: str  # the target as the format's labels name it (service / instance / node)

    @property
    def end(self) -> float:
        return self.start + self.duration


def schedule_faults(system: System, t_start: float, t_end: float, params: SynthParams,
                    rng: np.random.Generator) -> list[Fault]:
    """One fault per ``fault_every_min`` slot, at a uniform position inside it, kinds in shuffled rounds.

    Slots tile the whole span, so every chronological split (even the first few percent of the
    training span) holds faults, and kinds rotate so each appears about equally often.
    """
    every = params.fault_every_min * 60.0
    duration = params.fault_duration_min * 60.0
    n_slots = int((t_end - t_start) // every)
    if n_slots == 0 and t_end - t_start > duration:
        n_slots = 1
        every = t_end - t_start
    kinds: list[str] = []
    while len(kinds) < n_slots:
        kinds.extend(rng.permutation(params.fault_kinds).tolist())
    n_services = len(system.services)
    logging_services = [i for i in range(1, n_services) if system.services[i].logs] or list(range(1, n_services))
    faults = []
    for slot in range(n_slots):
        kind = kinds[slot]
        margin = min(60.0, (every - duration) / 4)
        start = t_start + slot * every + margin + rng.random() * (every - duration - 2 * margin)
        # Callee-side kinds need a callee; error bursts need a service that logs.
        pool = logging_services if kind == "error_burst" else list(range(1, n_services))
        service = int(pool[rng.integers(len(pool))])
        host = system.services[service].host
        if system.fmt == "msds":
            affected = tuple(i for i, s in enumerate(system.services) if s.host == host)
            entity = host
        else:
            affected = (service,)
            entity = system.services[service].name
        faults.append(Fault(kind=kind, service=service, start=round(start, 6), duration=duration,
                            affected=affected, entity=entity))
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
            cpu[inside, e] += CPU_HOG_EXTRA
        elif f.kind == "memory_leak":
            progress = (ts[inside] - f.start) / f.duration
            mem[inside, e] += MEMORY_LEAK_PEAK * progress
        elif f.kind == "network_delay":
            rx[inside, e] *= NETWORK_DELAY_TRAFFIC
            tx[inside, e] *= NETWORK_DELAY_TRAFFIC
