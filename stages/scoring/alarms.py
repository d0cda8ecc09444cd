"""Alarm segments an on-call engineer can act on: when, how bad, which modality fired, what contributed.

A segment is a maximal run of alarming steps. Its contributors come from the detector's own
``explain`` where it has them (FuseGuard: per-modality and per-unit normalised errors and fusion
weights; KAD-Disformer: per-KPI scores; InterFusion: per-metric contributions) and, for every detector,
from the features themselves: the units (metric channels, edge features, log templates) that sat
farthest from their training median during the segment (``top_features``; |z| of the frozen
scaling for metrics and traces, |log1p count − training median| for logs). A segment still
alarming at the end of a run is ``open``: its sums travel in the stream state and the next run's
row for it (same start) replaces this one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stages.core.evaluation import segments
from stages.core.units import unit_names
from stages.core.windowset import FeatureSchema
from stages.windowing.align import EDGE_FEATURES

TOP = 5
MODALITY_OF = {"kad_disformer": "metric", "interfusion": "metric", "metalog": "log", "xlstm_logad": "log"}
CSV_COLUMNS = ["start", "end", "duration_s", "steps", "peak_score", "peak_at", "threshold_at_peak", "modality",
               "modality_scores", "fusion_weights", "top_contributors", "top_features", "open"]


@dataclass
class Explained:
    """The per-step parts of a detector's ``explain`` output, cut to the rows a run outputs."""

    modality_scores: dict[str, np.ndarray] = field(default_factory=dict)
    fusion_weights: dict[str, np.ndarray] = field(default_factory=dict)
    contributor_names: list[str] = field(default_factory=list)
    contributors: np.ndarray | None = None  # (T, C)
    contributor_kind: str = ""


def parse_explain(explain: dict[str, Any], rows: slice, n_steps: int) -> Explained:
    """Pick the known per-step explanations out of ``explain`` (arrays over ``n_steps``), sliced to ``rows``."""
    out = Explained()

    def series(d: Any) -> dict[str, np.ndarray]:
        if not isinstance(d, dict):
            return {}
        return {str(k): np.asarray(v, np.float64)[rows] for k, v in d.items()
                if np.ndim(v) == 1 and len(v) == n_steps}

    out.modality_scores = series(explain.get("modality_scores"))
    out.fusion_weights = series(explain.get("fusion_weights"))
    for key, names_key, kind in (("channel_scores", "channels", "per-KPI score"),
                                 ("contributions", "channels", "per-metric contribution"),
                                 ("unit_scores", "units", "per-unit normalised reconstruction error")):
        arr = explain.get(key)
        names = explain.get(names_key)
        if arr is not None and np.ndim(arr) == 2 and len(arr) == n_steps and names is not None \
                and np.shape(arr)[1] == len(names):
            out.contributors = np.asarray(arr[rows], np.float64)
            out.contributor_names = [str(n) for n in names]
            out.contributor_kind = kind
            break
    return out


@dataclass
class Units:
    """Every feature unit with its modality and per-step deviation from the training median."""

    names: list[str]
    modality: np.ndarray  # (U,) "metric" | "trace" | "log"
    deviation: np.ndarray  # (T, U)
    value: np.ndarray  # (T, U) the plotted value in the unit's own terms (see feature_units)


def feature_units(schema: FeatureSchema, metric: np.ndarray, trace: np.ndarray, log: np.ndarray,
                  log_fill: np.ndarray, metric_scaling=None, edge_scaling: dict | None = None) -> Units:
    """Deviation: |z| of the frozen scaling (metrics, edge features), |log1p count - training median| (logs).
    Value: back in the unit's own terms where the scalings are given (metric units, seconds, log1p calls,
    error fraction; a value beyond ±clip spreads shows at the clip) and lines per step for logs."""
    T = len(metric)
    trace_flat = trace.reshape(T, -1)
    names, modality = unit_names(schema)
    m_val = metric * metric_scaling.scale + metric_scaling.centre if metric_scaling is not None else metric
    t_val = trace.astype(np.float64)
    if edge_scaling is not None and trace.shape[1]:
        t_val = np.stack([trace[:, :, i] * edge_scaling[f].scale + edge_scaling[f].centre
                          for i, f in enumerate(EDGE_FEATURES)], axis=2)
    value = np.concatenate([m_val, t_val.reshape(T, -1), np.expm1(log)], axis=1).astype(np.float64)
    dev = np.concatenate([np.abs(metric), np.abs(trace_flat), np.abs(log - log_fill[None, :])], axis=1)
    return Units(names, modality, dev.astype(np.float64), value)


def modality_deviation(units: Units, modality: str, top_fraction: float = 0.05) -> np.ndarray | None:
    """Per step: mean of the top ``top_fraction`` (at least one) deviations of one modality's units."""
    cols = units.modality == modality
    if not cols.any():
        return None
    d = np.sort(units.deviation[:, cols], axis=1)[:, ::-1]
    k = max(1, int(round(cols.sum() * top_fraction)))
    return d[:, :k].mean(axis=1)


def _fmt(pairs: list[tuple[str, float]]) -> str:
    return "; ".join(f"{n}={v:.4g}" for n, v in pairs)


def _ranked(names: list[str], sums: np.ndarray, n: int, top: int = TOP) -> list[tuple[str, float]]:
    if sums is None or not len(names) or n == 0:
        return []
    mean = np.asarray(sums, np.float64) / n
    order = np.argsort(-np.nan_to_num(mean, nan=-np.inf), kind="stable")[:top]
    return [(names[i], float(mean[i])) for i in order if np.isfinite(mean[i])]


def _new_acc(k: int) -> dict[str, Any]:
    return {"start_k": k, "end_k": k, "steps": 0, "peak": -np.inf, "peak_k": k, "thr_at_peak": None,
            "modality_sums": {}, "weight_sums": {}, "contrib_sums": None, "unit_sums": None}


def _add(acc: dict, a: int, b: int, k0: int, score: np.ndarray, thr: np.ndarray, ex: Explained,
         units: Units) -> None:
    seg = slice(a, b)
    i = a + int(np.nanargmax(score[seg]))
    if score[i] > acc["peak"]:
        acc["peak"], acc["peak_k"], acc["thr_at_peak"] = float(score[i]), k0 + i, float(thr[i])
    acc["end_k"] = k0 + b
    acc["steps"] += b - a
    for key, src in (("modality_sums", ex.modality_scores), ("weight_sums", ex.fusion_weights)):
        for m, v in src.items():
            acc[key][m] = acc[key].get(m, 0.0) + float(np.nansum(v[seg]))
    if ex.contributors is not None:
        s = np.nansum(ex.contributors[seg], axis=0)
        acc["contrib_sums"] = (s if acc["contrib_sums"] is None else np.asarray(acc["contrib_sums"]) + s).tolist()
    u = units.deviation[seg].sum(axis=0)
    acc["unit_sums"] = (u if acc["unit_sums"] is None else np.asarray(acc["unit_sums"]) + u).tolist()


def fired_modality(acc: dict, detector: str) -> str:
    if acc["modality_sums"]:
        return max(sorted(acc["modality_sums"]), key=lambda m: acc["modality_sums"][m])
    return MODALITY_OF.get(detector, "all")


def segment_row(acc: dict, detector: str, ex: Explained, units: Units, step_us: int, is_open: bool) -> dict:
    n = acc["steps"]
    modality = fired_modality(acc, detector)
    in_mod = np.ones(len(units.names), bool) if modality == "all" else units.modality == modality
    unit_sums = np.where(in_mod, np.asarray(acc["unit_sums"]), -np.inf)
    top_units = [(nm, v) for nm, v in _ranked(units.names, unit_sums, n) if np.isfinite(v)]
    top_contrib = _ranked(ex.contributor_names, acc["contrib_sums"], n)
    known = set(units.names)  # the detector's own top units where they are feature units, else the deviations
    plotted = [nm for nm, _ in top_contrib if nm in known][:3] or [nm for nm, _ in top_units[:3]]
    return {
        "start": iso(acc["start_k"] * step_us), "end": iso(acc["end_k"] * step_us),
        "duration_s": (acc["end_k"] - acc["start_k"]) * step_us / 1e6, "steps": n,
        "peak_score": acc["peak"], "peak_at": iso(acc["peak_k"] * step_us), "threshold_at_peak": acc["thr_at_peak"],
        "modality": modality,
        "modality_scores": _fmt(sorted(((m, s / n) for m, s in acc["modality_sums"].items()), key=lambda x: -x[1])),
        "fusion_weights": _fmt(sorted((m, s / n) for m, s in acc["weight_sums"].items())),
        "top_contributors": _fmt(top_contrib),
        "top_features": _fmt(top_units), "open": is_open,
        "_units": plotted, "_contrib_kind": ex.contributor_kind if top_contrib else "",
        "_start_k": acc["start_k"], "_end_k": acc["end_k"],
    }


def alarm_segments(k0: int, score: np.ndarray, thr: np.ndarray, alarm: np.ndarray, ex: Explained, units: Units,
                   detector: str, step_us: int, open_alarm: dict | None) -> tuple[list[dict], dict | None]:
    """Rows of alarms.csv for the output rows starting at absolute step ``k0`` (continuing ``open_alarm``
    when it ended right where these rows start), and the segment still open at their end.

    An open segment the previous run reported that does not continue here is reported again, closed.
    """
    if not len(alarm):
        return [], open_alarm
    rows, still_open = [], None
    segs = segments(alarm.astype(np.int8))
    continues = open_alarm is not None and open_alarm["end_k"] == k0 and len(segs) and segs[0][0] == 0
    if open_alarm is not None and not continues:
        rows.append(segment_row(open_alarm, detector, ex, units, step_us, False))
    for j, (a, b) in enumerate(segs):
        acc = open_alarm if j == 0 and continues else _new_acc(k0 + int(a))
        _add(acc, int(a), int(b), k0, score, thr, ex, units)
        is_open = int(b) == len(alarm)
        rows.append(segment_row(acc, detector, ex, units, step_us, is_open))
        if is_open:
            still_open = acc
    return rows, still_open


def iso(ts_us: int) -> str:
    return str(np.datetime64(int(ts_us), "us")).replace("T", " ") + "Z"
