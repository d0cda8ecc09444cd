"""What the new dump holds that the model never saw, described (not fatal): the ``drift`` section.

Each function takes what the feature builder observed and returns a JSON-ready dict; lists are
cut to ``LIST_LIMIT`` names with the full count beside them. :func:`notes` turns the section into
the one-line findings the log and the page show first.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from stages.core.windowset import FeatureSchema

LIST_LIMIT = 50
GRID_TOLERANCE = 1.5  # a sampling interval off by more than this factor from training's is flagged


def _cut(names: Iterable[str]) -> list[str]:
    return sorted(names)[:LIST_LIMIT]


def _top_counts(counts: dict[str, int]) -> dict[str, int]:
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:LIST_LIMIT]
    return {k: int(v) for k, v in top}


def metric_drift(seen: Iterable[str], schema: FeatureSchema, observed: np.ndarray,
                 dropped: Iterable[str] = ()) -> dict:
    """``seen``: every ``entity/metric`` column of the dump in the scored span; ``observed``: per schema
    channel, whether it had a finite point; ``dropped``: columns the metrics stage saw in training and
    dropped (constant there, or without training data), which are not new."""
    seen = set(seen)
    known = set(schema.metric_channels)
    was_dropped = (seen - known) & set(dropped)
    unseen = seen - known - was_dropped
    entities = set(schema.metric_entities)
    unseen_entities = {c.split("/", 1)[0] for c in unseen} - entities
    missing = [c for c, ok in zip(schema.metric_channels, observed) if not ok]
    return {"unseen_entities": _cut(unseen_entities), "n_unseen_entities": len(unseen_entities),
            "unseen_channels": _cut(unseen), "n_unseen_channels": len(unseen),
            "missing_channels": _cut(missing), "n_missing_channels": len(missing),
            "channels_scored": int(np.sum(observed)), "n_dropped_in_training": len(was_dropped)}


def trace_drift(edge_calls: dict[str, int], services: Iterable[str], schema: FeatureSchema) -> dict:
    """``edge_calls``: calls per ``caller->callee`` edge in the scored span; ``services``: span services."""
    known_edges = {f"{a}->{b}" for a, b in schema.edges}
    unseen = {e: n for e, n in edge_calls.items() if e not in known_edges}
    missing = [e for e in sorted(known_edges) if not edge_calls.get(e)]
    unseen_services = set(services) - set(schema.services)
    return {"unseen_edges": _top_counts(unseen), "n_unseen_edges": len(unseen),
            "unseen_edge_calls": int(sum(unseen.values())),
            "missing_edges": _cut(missing), "n_missing_edges": len(missing),
            "unseen_services": _cut(unseen_services), "n_unseen_services": len(unseen_services)}


def log_drift(lines: dict[str, int], unmatched: dict[str, int], known_services: set[str]) -> dict:
    """Per service: lines in the span and lines no saved template matches; services without a
    saved miner count entirely as unseen."""
    unseen_services = {s: n for s, n in lines.items() if s not in known_services}
    unseen_templates = {s: n for s, n in unmatched.items() if s in known_services and n}
    total = int(sum(lines.values()))
    return {"lines": total, "matched_lines": total - int(sum(unmatched.values())),
            "unseen_template_lines": _top_counts(unseen_templates),
            "n_unseen_template_lines": int(sum(unseen_templates.values())),
            "unseen_services": _top_counts(unseen_services), "n_unseen_services": len(unseen_services),
            "note": "lines no saved Drain3 template matches are counted here per service and contribute nothing "
                    "to the features (a new template would need embedding with the training backbone)"}


def grid_drift(step_s: float, dump_interval_s: float | None, train_observed_share: float | None) -> dict:
    """The dump's metric sampling interval against the one training implies (features are always built
    on the training grid step; what changes with the interval is how many points a step averages).

    Training's interval is estimated from the share of grid steps its channels had a point in
    (``1 - missing_fraction`` of ``metrics_stats.json``): ``step / share`` when below 1; with a point in
    every step it is only known to be at most one step (``training_interval_is_upper_bound``).
    ``differs``: the dump is sampled more coarsely or finely than that (by more than ``GRID_TOLERANCE``).
    """
    train_interval, upper = None, False
    if train_observed_share is not None and train_observed_share > 0:
        upper = train_observed_share >= 0.999
        train_interval = step_s / min(1.0, train_observed_share)
    differs = False
    if dump_interval_s is not None and train_interval is not None:
        ratio = max(dump_interval_s, step_s) / max(train_interval, step_s)
        differs = not (1 / GRID_TOLERANCE <= ratio <= GRID_TOLERANCE)
        if not upper and dump_interval_s < step_s / GRID_TOLERANCE:  # training had gaps, the dump averages
            differs = True
    per_step = step_s / dump_interval_s if dump_interval_s else None
    return {"step_s": step_s, "dump_metric_interval_s": dump_interval_s,
            "training_metric_interval_s": train_interval, "training_interval_is_upper_bound": upper,
            "dump_points_per_step": per_step, "differs": differs}


COUNT_NOTES = (  # (section, count key, note) of every count worth a line
    ("metrics", "n_unseen_entities", "{n_unseen_entities} unseen metric entities (e.g. {first})"),
    ("metrics", "n_unseen_channels", "{n_unseen_channels} unseen metric channels, ignored"),
    ("metrics", "n_missing_channels", "{n_missing_channels} trained metric channels without data"),
    ("traces", "n_unseen_edges", "{n_unseen_edges} unseen call edges ({unseen_edge_calls} calls), ignored"),
    ("traces", "n_unseen_services", "{n_unseen_services} unseen services in traces"),
    ("traces", "n_missing_edges", "{n_missing_edges} trained call edges without calls"),
    ("logs", "n_unseen_template_lines", "{n_unseen_template_lines} log lines of unseen templates ({per})"),
    ("logs", "n_unseen_services", "{n_unseen_services} services log without a trained miner"),
)


def notes(drift: dict) -> list[str]:
    """Human one-liners of everything unusual in a drift section (empty: nothing to say)."""
    out = []
    if drift.get("missing_modalities"):
        out.append(f"missing modalities: {', '.join(drift['missing_modalities'])} (their features sit at the "
                   "training median)")
    g = drift.get("grid") or {}
    if g.get("differs"):
        bound = "≤ " if g["training_interval_is_upper_bound"] else "~"
        out.append(f"metric sampling interval {g['dump_metric_interval_s']:.3g} s differs from training's "
                   f"{bound}{g['training_metric_interval_s']:.3g} s (grid step {g['step_s']:g} s)")
    elif (g.get("dump_points_per_step") or 0) >= GRID_TOLERANCE:
        out.append(f"metrics sampled every {g['dump_metric_interval_s']:.3g} s: each {g['step_s']:g} s grid step "
                   f"averages ~{g['dump_points_per_step']:.0f} points (training's interval is known only to be "
                   f"≤ {g['training_metric_interval_s']:.3g} s)")
    for section, key, text in COUNT_NOTES:
        part = drift.get(section) or {}
        if part.get(key):
            out.append(text.format(**part, first=", ".join(part.get("unseen_entities", [])[:3]),
                                   per=", ".join(f"{s}: {n}" for s, n in
                                                 list(part.get("unseen_template_lines", {}).items())[:3])))
    return out + list(drift.get("stream", []))
