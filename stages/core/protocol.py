"""Named, equal learning protocols (DESIGN §7): what data and which labels a detector may learn from.

Every detector of one protocol learns from the same few-shot data subset (the spread blocks of
the training span written by ``windows@ds``):

- ``unsupervised``: the few-shot data and no label at all (every training label reads 0);
- ``fewshot_labels``: the same data plus the labels of the first ``labelled_events`` fault events
  in it (time order). Steps of later events read 0 — unlabelled, as in an incident log that holds
  only the first few tickets; the detector cannot tell them from normal time.

Label-supervised methods (MetaLog, the xLSTM detector) need ``fewshot_labels``; the others read no
training label under either protocol, so their results do not depend on it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from stages.core.errors import InputError
from stages.core.params import PARAMS_FILE

PROTOCOLS = ("unsupervised", "fewshot_labels")
LABEL_SUPERVISED = frozenset({"metalog", "xlstm_logad"})


def _default_by_detector() -> dict[str, str]:
    return {name: "fewshot_labels" for name in sorted(LABEL_SUPERVISED)}


@dataclass(frozen=True)
class ProtocolParams:
    """``protocol:`` section: the protocol of each detector and the label budget of ``fewshot_labels``."""

    default: Literal["unsupervised", "fewshot_labels"] = "unsupervised"
    by_detector: dict[str, str] = field(default_factory=_default_by_detector)
    labelled_events: int = 5

    def validate(self) -> None:
        for det, name in self.by_detector.items():
            if name not in PROTOCOLS:
                raise InputError(PARAMS_FILE, f"protocol.by_detector.{det}", f"one of {list(PROTOCOLS)}", name)
        if self.labelled_events < 1:
            raise InputError(PARAMS_FILE, "protocol.labelled_events", "at least 1", self.labelled_events)

    def protocol_for(self, detector: str) -> str:
        name = self.by_detector.get(detector, self.default)
        if detector in LABEL_SUPERVISED and name == "unsupervised":
            raise InputError(PARAMS_FILE, f"protocol.by_detector.{detector}",
                             f"'fewshot_labels' for {detector}: it learns from labelled anomalies and has no "
                             "label-free variant here", name)
        return name


def event_segments(labels: np.ndarray) -> np.ndarray:
    lab = (np.asarray(labels) > 0).astype(np.int8)
    d = np.diff(np.concatenate([[0], lab, [0]]))
    return np.stack([np.flatnonzero(d == 1), np.flatnonzero(d == -1)], axis=1)


def visible_labels(labels: np.ndarray, protocol: str, labelled_events: int) -> tuple[np.ndarray, int]:
    """The training labels a detector may read under ``protocol``, and how many events they hold."""
    out = np.zeros(len(labels), dtype=np.int8)
    if protocol == "unsupervised":
        return out, 0
    segs = event_segments(labels)[:labelled_events]
    for a, b in segs:
        out[a:b] = 1
    return out, int(len(segs))


def windows_digest(ts: np.ndarray, starts: np.ndarray) -> str:
    """Fingerprint of the exact window start times a detector learned from (equal protocols check)."""
    h = hashlib.sha256(np.ascontiguousarray(np.asarray(ts)[np.asarray(starts, dtype=np.int64)]).tobytes())
    return h.hexdigest()[:16]
