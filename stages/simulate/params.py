"""Typed knobs of the synthetic generator (params.yaml section ``synth``).

One section serves all synthetic datasets; what differs per native format (the metric sampling
interval, the calendar start, optionally the request rate) is a per-format mapping, so a
dataset's format picks its value.

Faults come at seeded random times with random durations and intensities, and everything a
fault produces also happens in normal operation (retries, timeouts, 5xx, GC pauses, slow
requests) or in benign, unlabelled change (deploys, surges, batch jobs, a noisy service), so no
single feature gives the labels away.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from stages.core.errors import InputError
from stages.core.params import PARAMS_FILE

FORMATS = ("msds", "gaia", "eadro")

# Each kind has a different modality footprint (see faults.py); three of them touch ONE modality only.
FAULT_KINDS = ("cpu_hog", "memory_leak", "network_delay", "network_loss", "error_burst", "slow_dependency")


def _default_intervals() -> dict[str, float]:
    # eadro: cAdvisor (1 Hz in the real dump, 10 s here to keep a week cheap); gaia: MicroSS metric
    # exports every ~30 s; msds: Glances every few seconds, printed with whole seconds.
    return {"eadro": 10.0, "gaia": 30.0, "msds": 3.0}


def _default_rates() -> dict[str, float]:
    # msds writes one JSON file per trace (and its traces are large): fewer, bigger requests.
    return {"eadro": 0.1, "gaia": 0.1, "msds": 0.01}


def _default_starts() -> dict[str, str]:
    # Calendar placement close to each public dataset (UTC).
    return {"eadro": "2022-04-18T08:00:00", "gaia": "2021-07-01T00:00:00", "msds": "2019-11-19T10:00:00"}


def _range(value: float | list[float]) -> tuple[float, float]:
    """A number means a fixed value; a pair [low, high] a log-uniform range."""
    if isinstance(value, (int, float)):
        return float(value), float(value)
    return float(value[0]), float(value[1])


@dataclass(frozen=True)
class SynthParams:
    """Sizes and behaviour of the simulated system."""

    hours: float = 168.0  # length of the dump
    start_utc: dict[str, str] = field(default_factory=_default_starts)  # ISO UTC start per format
    services: int = 10  # services (eadro/gaia instances; msds OpenStack services)
    msds_nodes: int = 5  # OpenStack hosts wally1NN that run the msds services
    request_types: int = 6  # distinct call trees (APIs) the frontend serves
    # Traced requests per second: one rate for every format, or one per format.
    requests_per_s: float | dict[str, float] = field(default_factory=_default_rates)
    daily_amplitude: float = 0.5  # relative amplitude of the daily load sinusoid
    load_noise: float = 0.08  # relative noise of the load curve
    log_lines_per_request: float = 0.7  # mean log lines per service visit (services that log)
    silent_service_fraction: float = 0.3  # services that write no logs at all (like the real TT dump)
    warn_rate: float = 0.01  # fraction of normal log lines at WARN
    error_rate: float = 0.001  # fraction of normal log lines at ERROR
    metric_interval_s: dict[str, float] = field(default_factory=_default_intervals)
    # -- faults: random times, durations and intensities; kinds in shuffled rounds
    fault_every_min: float = 110.0  # mean spacing of fault starts (random, never periodic)
    fault_min_gap_min: float = 10.0  # quiet time between the end of a fault and the next start
    fault_duration_min: float | list[float] = field(default_factory=lambda: [2.0, 20.0])  # [low, high]: log-uniform
    fault_intensity: float | list[float] = field(default_factory=lambda: [1.0, 20.0])  # effect in σ of the signal
    fault_kinds: list[str] = field(default_factory=lambda: list(FAULT_KINDS))
    chunk_hours: float = 6.0  # generation/writing granularity (eadro: one TT.<start>D<end> folder each)
    repeated_trace_fraction: float = 0.05  # eadro: Jaeger export repeats some trace objects
    # -- normal operation: what faults produce also happens at a base rate
    call_error_probability: float = 0.005  # sporadic 5xx on every call edge (failed attempt, then a retry)
    slow_request_probability: float = 0.004  # a call whose own work takes 4-15x longer (the latency tail)
    exception_lines_per_hour: float = 12.0  # per logging service: exceptions from retries and timeouts
    gc_per_hour: float = 4.0  # per service: GC pauses (cpu and latency blip, heap sawtooth drops)
    # -- benign, unlabelled change
    deploys_per_day: float = 2.0  # rolling deploys, each restarting 1-3 services
    surges_per_day: float = 1.0  # traffic surges (x2-3 load for 10-30 min)
    batch_jobs: int = 1  # services running a nightly batch job (cpu / io burst)
    noisy_services: int = 1  # services with higher variance throughout

    def request_rate(self, fmt: str) -> float:
        rate = self.requests_per_s
        return float(rate[fmt]) if isinstance(rate, dict) else float(rate)

    @property
    def duration_range_min(self) -> tuple[float, float]:
        return _range(self.fault_duration_min)

    @property
    def intensity_range(self) -> tuple[float, float]:
        return _range(self.fault_intensity)

    def validate(self) -> None:
        where = "synth"
        positive = {"hours": self.hours, "fault_every_min": self.fault_every_min, "chunk_hours": self.chunk_hours}
        for key, value in positive.items():
            if value <= 0:
                raise InputError(PARAMS_FILE, f"{where}.{key}", "a positive number", value)
        if isinstance(self.requests_per_s, dict):
            missing = [f for f in FORMATS if f not in self.requests_per_s]
            bad = {k: v for k, v in self.requests_per_s.items() if v <= 0}
            if missing or bad:
                raise InputError(PARAMS_FILE, f"{where}.requests_per_s", f"a positive rate for every format "
                                 f"{list(FORMATS)}", missing or bad)
        elif self.requests_per_s <= 0:
            raise InputError(PARAMS_FILE, f"{where}.requests_per_s", "a positive number", self.requests_per_s)
        if self.services < 3:
            raise InputError(PARAMS_FILE, f"{where}.services", "at least 3 services", self.services)
        if self.msds_nodes < 1:
            raise InputError(PARAMS_FILE, f"{where}.msds_nodes", "at least 1 node", self.msds_nodes)
        if self.request_types < 1:
            raise InputError(PARAMS_FILE, f"{where}.request_types", "at least 1", self.request_types)
        for key in ("fault_duration_min", "fault_intensity"):
            value = getattr(self, key)
            if isinstance(value, list) and len(value) != 2:
                raise InputError(PARAMS_FILE, f"{where}.{key}", "a number or a pair [low, high]", value)
            low, high = _range(value)
            if not 0 < low <= high:
                raise InputError(PARAMS_FILE, f"{where}.{key}", "0 < low <= high", value)
        if self.fault_min_gap_min < 0:
            raise InputError(PARAMS_FILE, f"{where}.fault_min_gap_min", "a non-negative number",
                             self.fault_min_gap_min)
        shortest = self.duration_range_min[0]
        if shortest + self.fault_min_gap_min >= self.fault_every_min:
            raise InputError(PARAMS_FILE, f"{where}.fault_duration_min",
                             f"a shortest fault that, with fault_min_gap_min ({self.fault_min_gap_min}), fits into "
                             f"fault_every_min ({self.fault_every_min})", self.fault_duration_min)
        unknown = [k for k in self.fault_kinds if k not in FAULT_KINDS]
        if unknown or not self.fault_kinds:
            raise InputError(PARAMS_FILE, f"{where}.fault_kinds", f"a non-empty subset of {list(FAULT_KINDS)}",
                             unknown or self.fault_kinds)
        for name, mapping in (("metric_interval_s", self.metric_interval_s), ("start_utc", self.start_utc)):
            missing = [f for f in FORMATS if f not in mapping]
            if missing:
                raise InputError(PARAMS_FILE, f"{where}.{name}", f"a value for every format {list(FORMATS)}", missing)
        bad = {k: v for k, v in self.metric_interval_s.items() if v <= 0}
        if bad:
            raise InputError(PARAMS_FILE, f"{where}.metric_interval_s", "positive seconds", bad)
        for key in ("silent_service_fraction", "warn_rate", "error_rate", "repeated_trace_fraction",
                    "call_error_probability", "slow_request_probability"):
            value = getattr(self, key)
            if not 0 <= value < 1:
                raise InputError(PARAMS_FILE, f"{where}.{key}", "a fraction in [0, 1)", value)
        for key in ("exception_lines_per_hour", "gc_per_hour", "deploys_per_day", "surges_per_day", "batch_jobs",
                    "noisy_services"):
            if getattr(self, key) < 0:
                raise InputError(PARAMS_FILE, f"{where}.{key}", "a non-negative number", getattr(self, key))
