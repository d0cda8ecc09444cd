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


@dataclass(frozen=True)
class MetricsParams:
    """Wide metric matrix: which ``<entity>/<metric>`` channels to keep and how far to bridge gaps."""

    max_gap_steps: int = 6  # forward fill at most this many missing steps; longer gaps → training mean
    include: tuple[str, ...] = ()  # regexes on "<entity>/<metric>"; empty keeps every channel
    exclude: tuple[str, ...] = ()  # regexes on "<entity>/<metric>"; applied after include

    def validate(self) -> None:
        if self.max_gap_steps < 0:
            raise InputError(PARAMS_FILE, "metrics.max_gap_steps", "a non-negative integer", self.max_gap_steps)
        _check_regexes(self.include, "metrics.include")
        _check_regexes(self.exclude, "metrics.exclude")


@dataclass(frozen=True)
class TracesParams:
    """Trace aggregates and call-edge series."""

    max_gap_s: float = 3600.0  # spans cut off from the main body by a longer gap are dropped as strays
    min_edge_count: int = 1  # an edge needs this many calls over the whole dump to enter the call graph

    def validate(self) -> None:
        if self.max_gap_s <= 0:
            raise InputError(PARAMS_FILE, "traces.max_gap_s", "a positive number of seconds", self.max_gap_s)
        if self.min_edge_count < 1:
            raise InputError(PARAMS_FILE, "traces.min_edge_count", "at least 1", self.min_edge_count)


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
