"""Typed knobs of the synthetic generator (params.yaml section ``synth``).

One section serves all synthetic datasets; what differs per native format (the metric sampling
interval, the calendar start) is a per-format mapping, so a dataset's format picks its value.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from stages.core.errors import InputError
from stages.core.params import PARAMS_FILE

FORMATS = ("msds", "gaia", "eadro")

# Each kind has a different modality footprint (see faults.py); three of them touch ONE modality only.
FAULT_KINDS = ("cpu_hog", "memory_leak", "network_delay", "network_loss", "error_burst", "slow_dependency")


def _default_intervals() -> dict[str, float]:
    # eadro: cAdvisor at 1 Hz; gaia: MicroSS metric exports every ~30 s; msds: Glances every ~0.7 s,
    # which, printed with whole seconds, gives the duplicate seconds of the real CSVs.
    return {"eadro": 1.0, "gaia": 30.0, "msds": 0.7}


def _default_starts() -> dict[str, str]:
    # Calendar placement close to each public dataset (UTC).
    return {"eadro": "2022-04-18T08:00:00", "gaia": "2021-07-01T00:00:00", "msds": "2019-11-19T10:00:00"}


@dataclass(frozen=True)
class SynthParams:
    """Sizes and behaviour of the simulated system. Defaults give a few tens of MB per dataset."""

    hours: float = 12.0  # length of the dump
    start_utc: dict[str, str] = field(default_factory=_default_starts)  # ISO UTC start per format
    services: int = 10  # services (eadro/gaia instances; msds OpenStack services)
    msds_nodes: int = 5  # OpenStack hosts wally1NN that run the msds services
    request_types: int = 6  # distinct call trees (APIs) the frontend serves
    requests_per_s: float = 0.1  # mean traced request rate (the daily pattern modulates it)
    daily_amplitude: float = 0.5  # relative amplitude of the daily load sinusoid
    load_noise: float = 0.08  # relative noise of the load curve
    log_lines_per_request: float = 1.5  # mean log lines per service visit (services that log)
    silent_service_fraction: float = 0.3  # services that write no logs at all (like the real TT dump)
    warn_rate: float = 0.01  # fraction of normal log lines at WARN
    error_rate: float = 0.001  # fraction of normal log lines at ERROR
    metric_interval_s: dict[str, float] = field(default_factory=_default_intervals)
    fault_every_min: float = 30.0  # one fault per slot of this length, placed uniformly inside it
    fault_duration_min: float = 5.0
    fault_kinds: list[str] = field(default_factory=lambda: list(FAULT_KINDS))
    chunk_hours: float = 6.0  # generation/writing granularity (eadro: one TT.<start>D<end> folder each)
    repeated_trace_fraction: float = 0.05  # eadro: Jaeger export repeats some trace objects
    network_loss_probability: float = 0.4  # share of calls into the target that fail and are retried
    error_burst_lines_per_s: float = 2.0  # exception lines per second during an error_burst

    def validate(self) -> None:
        where = "synth"
        positive = {
            "hours": self.hours, "requests_per_s": self.requests_per_s, "fault_every_min": self.fault_every_min,
            "fault_duration_min": self.fault_duration_min, "chunk_hours": self.chunk_hours,
        }
        for key, value in positive.items():
            if value <= 0:
                raise InputError(PARAMS_FILE, f"{where}.{key}", "a positive number", value)
        if self.services < 3:
            raise InputError(PARAMS_FILE, f"{where}.services", "at least 3 services", self.services)
        if self.msds_nodes < 1:
            raise InputError(PARAMS_FILE, f"{where}.msds_nodes", "at least 1 node", self.msds_nodes)
        if self.request_types < 1:
            raise InputError(PARAMS_FILE, f"{where}.request_types", "at least 1", self.request_types)
        if self.fault_duration_min >= self.fault_every_min:
            raise InputError(PARAMS_FILE, f"{where}.fault_duration_min",
                             f"shorter than fault_every_min ({self.fault_every_min})", self.fault_duration_min)
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
                    "network_loss_probability"):
            value = getattr(self, key)
            if not 0 <= value < 1:
                raise InputError(PARAMS_FILE, f"{where}.{key}", "a fraction in [0, 1)", value)
