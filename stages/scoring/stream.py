"""Streaming continuity: what one score run hands to the next, so pieces score like the whole.

Windows end on absolute grid steps that are multiples of the stride (``k % stride == 0``), so a
step is always scored by the same window whichever piece it arrives in. A run outputs the steps up
to its last window end; the few steps after it (fewer than a stride) are *pending* and scored by
the next run. The state keeps the context the next windows need (``window - stride`` steps plus
the detector's look-back (:func:`history_steps`), and the pending steps), the gap-fill
carry of the features, the DSPOT threshold model and an alarm segment still open at the end.

Saved as ``state.json`` (scalars, the DSPOT state: floats round-trip exactly through ``json``)
plus ``context.npz`` (arrays) in the output folder; ``--resume`` takes that folder or the json.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stages.core.dspot import DSpot
from stages.core.errors import InputError
from stages.core.evaluation import ThresholdParams, choose_threshold
from stages.core.windowset import FeatureSchema, WindowSet
from stages.scoring.features import Carry, StepBlock

log = logging.getLogger(__name__)
STATE_FILE = "state.json"
CONTEXT_FILE = "context.npz"
VERSION = 1


# ------------------------------------------------------------------ threshold


@dataclass
class Threshold:
    """The operating threshold of a stream: a DSPOT model that keeps learning, or a constant."""

    method: str
    dspot: DSpot | None = None
    value: float | None = None

    def run(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(threshold in force, alarm) per score, in order; the DSPOT model is updated as it goes."""
        n = len(scores)
        if self.dspot is None:
            thr = np.full(n, float(self.value))
            return thr, np.nan_to_num(scores, nan=-np.inf) > thr
        thr, alarm = np.empty(n), np.zeros(n, dtype=bool)
        for i, x in enumerate(np.asarray(scores, np.float64).tolist()):
            thr[i], alarm[i] = self.dspot.step(x)
        return thr, alarm

    def to_json(self) -> dict:
        return {"method": self.method, "value": self.value,
                "dspot": self.dspot.to_state() if self.dspot is not None else None}

    @classmethod
    def from_json(cls, d: dict) -> "Threshold":
        return cls(d["method"], DSpot.from_state(d["dspot"]) if d.get("dspot") else None, d.get("value"))


def calibrate(val_scores: np.ndarray, params: ThresholdParams) -> Threshold:
    """The threshold of the evaluate stage, from validation scores only (no label is read here)."""
    s = np.asarray(val_scores, np.float64)
    s = s[np.isfinite(s)]
    if len(s) == 0:
        raise InputError("validation split", "scores", "finite validation scores to calibrate the threshold on")
    if params.method == "dspot":
        model = DSpot(params.dspot_depth, params.dspot_init_level, params.dspot_risk, params.dspot_refit_every)
        if model.calibrate(s):
            return Threshold("dspot", dspot=model)
        q = float(np.quantile(s, params.quantile))
        log.warning("DSPOT cannot be fitted on the validation scores: constant %.4g quantile %.6g",
                    params.quantile, q)
        return Threshold("dspot_fallback_quantile", value=q)
    return Threshold(params.method, value=choose_threshold(s, params))


# ------------------------------------------------------------------ context rows


@dataclass
class Context:
    """Feature rows of absolute steps [k0, k0 + n) in the schema's layout."""

    k0: int
    metric: np.ndarray
    trace: np.ndarray
    log: np.ndarray
    log_events: np.ndarray  # [t relative to k0, service, template]
    unseen: np.ndarray

    @property
    def n(self) -> int:
        return len(self.metric)

    @classmethod
    def empty(cls, schema: FeatureSchema, k0: int) -> "Context":
        return cls(k0, np.zeros((0, schema.n_metric), np.float32),
                   np.zeros((0, schema.n_edges, len(schema.edge_features)), np.float32),
                   np.zeros((0, schema.n_log), np.float32), np.zeros((0, 3), np.int64), np.zeros(0, np.int64))

    def extend(self, block: StepBlock) -> "Context":
        if block.k0 != self.k0 + self.n:
            raise ValueError(f"block starts at step {block.k0}, context ends at {self.k0 + self.n}")
        ev = block.log_events.copy()
        ev[:, 0] += self.n
        return Context(self.k0, np.concatenate([self.metric, block.metric]),
                       np.concatenate([self.trace, block.trace]), np.concatenate([self.log, block.log]),
                       np.concatenate([self.log_events, ev]), np.concatenate([self.unseen, block.unseen_lines]))

    def tail(self, from_k: int) -> "Context":
        a = min(max(0, from_k - self.k0), self.n)
        ev = self.log_events[self.log_events[:, 0] >= a].copy()
        ev[:, 0] -= a
        return Context(self.k0 + a, self.metric[a:], self.trace[a:], self.log[a:], ev, self.unseen[a:])

    def arrays(self) -> dict[str, np.ndarray]:
        return {"ctx_metric": self.metric, "ctx_trace": self.trace, "ctx_log": self.log,
                "ctx_log_events": self.log_events, "ctx_unseen": self.unseen}


def window_ends(row0: int, n_rows: int, pending_k: int, window: int, stride: int) -> np.ndarray:
    """Absolute (exclusive) ends of the windows a run scores: multiples of ``stride``, the whole window
    inside the rows, and past the steps already output."""
    lo = max(row0 + window, pending_k + 1)
    first = -(-lo // stride) * stride
    return np.arange(first, row0 + n_rows + 1, stride, dtype=np.int64)


def window_set(schema: FeatureSchema, ctx: Context, ends: np.ndarray, window: int, stride: int) -> WindowSet:
    """The rows as a WindowSet whose windows end at ``ends`` (absolute); labels are unknown (0)."""
    T = ctx.n
    step_us = int(round(schema.step_s * 1_000_000))
    return WindowSet(schema=schema, ts=(ctx.k0 + np.arange(T, dtype=np.int64)) * step_us, metric=ctx.metric,
                     trace=ctx.trace, log=ctx.log, labels=np.zeros(T, np.int8), kinds=np.full(T, "", dtype="<U1"),
                     log_events=ctx.log_events, window=window, stride=stride, name="score",
                     starts=(ends - window - ctx.k0).astype(np.int64), origin=ctx.k0)


# ------------------------------------------------------------------ the state


@dataclass
class StreamState:
    """What the next run of the same stream needs."""

    dataset: str
    detector: str
    fingerprint: str  # FrozenState.fingerprint: the model and statistics the stream was scored with
    next_k: int  # the next absolute step the stream expects
    pending_k: int  # the first step not output yet
    context: Context
    carry: Carry
    threshold: Threshold
    open_alarm: dict[str, Any] | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)

    def save(self, folder: Path) -> None:
        doc = {"version": VERSION, "dataset": self.dataset, "detector": self.detector,
               "fingerprint": self.fingerprint, "next_k": self.next_k, "pending_k": self.pending_k,
               "context_k0": self.context.k0, "threshold": self.threshold.to_json(), "open_alarm": self.open_alarm,
               "runs": self.runs}
        (folder / STATE_FILE).write_text(json.dumps(doc, indent=1, sort_keys=True), encoding="utf-8")
        with open(folder / CONTEXT_FILE, "wb") as fh:
            np.savez(fh, **self.context.arrays(), **self.carry.arrays())

    @classmethod
    def load(cls, path: str | Path) -> "StreamState":
        path = Path(path)
        state_path = path / STATE_FILE if path.is_dir() else path
        ctx_path = state_path.parent / CONTEXT_FILE
        for p in (state_path, ctx_path):
            if not p.is_file():
                raise InputError(p, None, "the state a previous `python -m stages.score` run saved (--resume)")
        try:
            doc = json.loads(state_path.read_text(encoding="utf-8"))
            if doc.get("version") != VERSION:
                raise InputError(state_path, "version", f"state version {VERSION}", doc.get("version"))
            with np.load(ctx_path, allow_pickle=False) as z:
                ctx = Context(int(doc["context_k0"]), z["ctx_metric"], z["ctx_trace"], z["ctx_log"],
                              z["ctx_log_events"], z["ctx_unseen"])
                carry = Carry.from_arrays(z)
            return cls(doc["dataset"], doc["detector"], doc["fingerprint"], int(doc["next_k"]),
                       int(doc["pending_k"]), ctx, carry, Threshold.from_json(doc["threshold"]),
                       doc.get("open_alarm"), list(doc.get("runs", [])))
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(state_path, None, f"a readable score state ({type(exc).__name__}: {exc})") from None


def history_steps(detector: Any) -> int:
    """Grid steps before a window's first step that a detector's score reads.

    Only KAD-Disformer looks back: its history features read ``history_periods`` × each KPI's dominant
    period earlier (``periods``, fixed at training). Every other detector reads its window alone.
    Kept here rather than on the detector so the trained models (and their DVC stages) stay as they are.
    """
    cfg, periods = getattr(detector, "config", None), getattr(detector, "periods", None)
    if not getattr(cfg, "use_history", False) or periods is None or not len(periods):
        return 0
    return int(np.max(periods)) * int(getattr(cfg, "history_periods", 1))


def context_need(window: int, stride: int, history: int) -> int:
    """Steps before the next window end that the next run reads."""
    return window - stride + history


def keep_from(out_end: int, row0: int, window: int, stride: int, history: int) -> int:
    """First absolute step the next run needs: the next window's start minus the detector's history."""
    return max(row0, out_end + stride - window - history)
