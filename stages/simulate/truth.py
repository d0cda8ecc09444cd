"""The ground-truth sidecar ``<raw>/synth_truth.json`` of a synthetic dump.

The native fault records (Eadro fault files, GAIA run tables, MSDS Rally hooks) only say what,
where and when; the sidecar adds each fault's intensity and severity class and lists the benign
(unlabelled) events, so evaluations can break results down by severity and check false alarms
against deploys, surges and batch jobs. Times are epoch seconds UTC, the metric clock.
"""
from __future__ import annotations

import json
from pathlib import Path

from stages.simulate.benign import Background
from stages.simulate.faults import Fault
from stages.simulate.system import System

TRUTH_FILE = "synth_truth.json"


def truth_document(system: System, faults: list[Fault], background: Background, t_start: float,
                   t_end: float) -> dict:
    return {
        "faults": [{"kind": f.kind, "entity": f.entity, "service": system.services[f.service].name,
                    "start_ts": round(f.start, 6), "end_ts": round(f.end, 6), "intensity": f.intensity,
                    "severity": f.severity} for f in faults],
        "benign": background.sidecar(system, t_start, t_end),
        "start_ts": round(t_start, 6),
        "end_ts": round(t_end, 6),
    }


def write_truth(root: Path, doc: dict) -> None:
    (Path(root) / TRUTH_FILE).write_text(json.dumps(doc, indent=1), encoding="utf-8")


def read_truth(root: Path) -> dict | None:
    """The sidecar of a synthetic dump, or None for a dump without one (real data)."""
    path = Path(root) / TRUTH_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
