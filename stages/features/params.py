"""Typed params of the four data-feature stages (``metrics``, ``traces``, ``logs``, ``labels``).

Defaults are CPU-friendly and fit the public dumps; each section of ``params.yaml`` is built
with :func:`stages.core.params.build`, so a misspelt key fails loudly.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from stages.core.errors import InputError
from stages.core.params import PARAMS_FILE


def _check_regexes(patterns: tuple[str, ...], where: str) -> None:
    for i, pattern in enumerate(patterns):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise InputError(PARAMS_FILE, f"{where}[{i}]", f"a valid regular expression ({exc})", pattern) from None


def _check_scaling(rel_floor: float, abs_floor: float, clip: float, where: str) -> None:
    if not 0.0 <= rel_floor < 1.0:
        raise InputError(PARAMS_FILE, f"{where}.rel_floor", "a fraction in [0, 1)", rel_floor)
    if not abs_floor >= 0.0:
        raise InputError(PARAMS_FILE, f"{where}.abs_floor", "a non-negative number", abs_floor)
    if not 0.0 < clip < float("inf"):
        raise InputError(PARAMS_FILE, f"{where}.clip", "a positive finite bound on scaled values", clip)


@dataclass(frozen=True)
class MetricsParams:
    """Wide metric matrix: which ``<entity>/<metric>`` channels to keep and how far to bridge gaps."""

    max_gap_steps: int = 6  # forward fill at most this many missing steps; longer gaps → training median
    include: tuple[str, ...] = ()  # regexes on "<entity>/<metric>"; empty keeps every channel
    exclude: tuple[str, ...] = ()  # regexes on "<entity>/<metric>"; applied after include
    # scaling (stages/features/normalise.py): scale = max(robust spread, rel_floor × |median|, abs_floor)
    rel_floor: float = 0.01  # a change of 1 % of a channel's training median is worth at most one unit
    abs_floor: float = 0.0  # in the channel's own unit; 0 because channels mix units (cores, bytes, GB)
    clip: float = 10.0  # scaled values are clipped to ±clip

    def validate(self) -> None:
        if self.max_gap_steps < 0:
            raise InputError(PARAMS_FILE, "metrics.max_gap_steps", "a non-negative integer", self.max_gap_steps)
        _check_scaling(self.rel_floor, self.abs_floor, self.clip, "metrics")
        _check_regexes(self.include, "metrics.include")
        _check_regexes(self.exclude, "metrics.exclude")


@dataclass(frozen=True)
class EdgeFloors:
    """Smallest scale of each edge feature, in its own unit: the change worth one unit when training was flat."""

    latency: float = 0.001  # seconds: 1 ms, about the jitter of one network hop
    count: float = 0.5  # log1p(calls per step): the Poisson noise of log(calls) at ~4 calls per step (1/√4)
    error_rate: float = 0.2  # fraction: one failed call in a step of ~5 calls is one unit

    def validate(self) -> None:
        for feat in ("latency", "count", "error_rate"):
            value = getattr(self, feat)
            if not value >= 0.0:
                raise InputError(PARAMS_FILE, f"traces.abs_floor.{feat}", "a non-negative number", value)


@dataclass(frozen=True)
class TracesParams:
    """Trace aggregates and call-edge series."""

    max_gap_s: float = 3600.0  # spans cut off from the main body by a longer gap are dropped as strays
    min_edge_count: int = 1  # an edge needs this many calls over the whole dump to enter the call graph
    # scaling of the edge series, as for metrics, with absolute floors in each feature's own unit
    rel_floor: float = 0.01
    abs_floor: EdgeFloors = EdgeFloors()
    clip: float = 10.0

    def validate(self) -> None:
        if self.max_gap_s <= 0:
            raise InputError(PARAMS_FILE, "traces.max_gap_s", "a positive number of seconds", self.max_gap_s)
        if self.min_edge_count < 1:
            raise InputError(PARAMS_FILE, "traces.min_edge_count", "at least 1", self.min_edge_count)
        _check_scaling(self.rel_floor, 0.0, self.clip, "traces")  # abs_floor: checked by EdgeFloors


@dataclass(frozen=True)
class MaskRule:
    """One Drain3 masking instruction: matches of ``pattern`` become ``<name>`` before clustering."""

    pattern: str
    name: str


# Order matters: the most specific shapes are masked first, so a UUID is not eaten as numbers.
DEFAULT_MASKS: tuple[MaskRule, ...] = (
    MaskRule(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b", "UUID"),
    MaskRule(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?(?![\w.])", "IP"),
    MaskRule(r"(?<!\w)(?:0[xX][0-9a-fA-F]+|(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{12,})(?!\w)", "HEX"),
    MaskRule(r"(?<!\w)[-+]?\d+(?:\.\d+)?(?!\w)", "NUM"),
)


@dataclass(frozen=True)
class LogsParams:
    """Drain3 template mining, run per service shard."""

    sim_th: float = 0.4
    depth: int = 4
    max_children: int = 100
    max_clusters: int | None = None  # None: unbounded (the miner never evicts a template)
    masking: bool = True  # apply ``masks`` before clustering
    masks: tuple[MaskRule, ...] = DEFAULT_MASKS
    min_count: int = 0  # templates seen fewer times are folded into one "<other>" template per service

    def validate(self) -> None:
        if not 0.0 < self.sim_th <= 1.0:
            raise InputError(PARAMS_FILE, "logs.sim_th", "a similarity in (0, 1]", self.sim_th)
        if self.depth < 3:
            raise InputError(PARAMS_FILE, "logs.depth", "at least 3 (Drain3's minimum)", self.depth)
        if self.max_children < 1:
            raise InputError(PARAMS_FILE, "logs.max_children", "at least 1", self.max_children)
        if self.max_clusters is not None and self.max_clusters < 1:
            raise InputError(PARAMS_FILE, "logs.max_clusters", "null or at least 1", self.max_clusters)
        if self.min_count < 0:
            raise InputError(PARAMS_FILE, "logs.min_count", "a non-negative integer", self.min_count)
        _check_regexes(tuple(m.pattern for m in self.masks), "logs.masks")


@dataclass(frozen=True)
class LabelsParams:
    """Per-step fault labels."""

    margin_s: float = 600.0  # the label grid extends this far before the first / after the last fault

    def validate(self) -> None:
        if self.margin_s < 0:
            raise InputError(PARAMS_FILE, "labels.margin_s", "a non-negative number of seconds", self.margin_s)
