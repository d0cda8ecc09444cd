"""The synthetic benchmark must not give its labels away (issue 8).

A short dump per format, generated with the default ``synth:`` settings of params.yaml (only
``hours`` shortened), goes through the project's own feature stages (metrics, traces, logs,
labels) and the windows stage's alignment onto the common grid. No feature column may be
constant on every normal step yet differ from that constant on at least half of one fault
kind's steps: such a column would be a perfect rule ("any exception > 0") for that kind. The
ground-truth sidecar must show an irregular schedule, durations over 2-20 min, all three
severity classes and benign events.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from stages.core.params import build, load_raw
from stages.simulate.generate import generate
from stages.simulate.params import SynthParams
from stages.simulate.truth import TRUTH_FILE
from stages.windowing.align import EDGE_FEATURES, WindowParams, align

REPO = Path(__file__).resolve().parents[1]
HOURS = 24.0
SEED = 42
STEP_S = 10.0
FORMATS = ("eadro", "gaia", "msds")
GIVEAWAY_SHARE = 0.5  # a constant-on-normal column may differ on fewer than this share of a kind's steps
FEATURE_SECTIONS = ("split", "metrics", "traces", "logs", "labels")


def project_params() -> dict:
    return load_raw(REPO / "params.yaml")


def short_synth(raw: dict) -> SynthParams:
    """The default generator settings, only shorter."""
    return build(SynthParams, {**(raw.get("synth") or {}), "hours": HOURS}, where="synth")


def feature_columns(features: Path) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Every feature column on the common label grid, as the windows stage aligns them."""
    a = align(features, STEP_S, WindowParams())
    cols = {f"metric:{c}": a.metric[:, j] for j, c in enumerate(a.metric_channels)}
    for e, (caller, callee) in enumerate(a.edges):
        for k, feat in enumerate(EDGE_FEATURES):
            cols[f"trace:{caller}->{callee}/{feat}"] = a.trace[:, e, k]
    for j, (service, template) in enumerate(a.log_columns):
        cols[f"log:{service}/{template}"] = a.log[:, j]
    return cols, a.labels, a.kinds


def giveaways(cols: dict[str, np.ndarray], labels: np.ndarray, kinds: np.ndarray) -> list[str]:
    """Columns constant on all normal steps that differ from that constant on >= half of a kind's steps."""
    normal = labels == 0
    out = []
    for name, x in cols.items():
        ref = x[normal]
        if ref.size == 0:
            continue
        value = float(np.median(ref))
        tol = 1e-6 * max(1.0, abs(value))
        if np.abs(ref - value).max() > tol:
            continue  # varies in normal operation
        for kind in sorted(set(kinds[labels == 1].tolist())):
            steps = (labels == 1) & (kinds == kind)
            share = float((np.abs(x[steps] - value) > tol).mean())
            if share >= GIVEAWAY_SHARE:
                out.append(f"{name} is {value:g} on every normal step but differs on {share:.0%} of {kind} steps")
    return out


def _build(fmt: str, base: Path) -> dict:
    raw = project_params()
    name = f"giveaway_{fmt}"
    summary = generate(name, fmt, base / "raw" / name, short_synth(raw), seed=SEED)
    params = {"seed": SEED, "datasets": {name: {"format": fmt, "raw": f"raw/{name}", "synthetic": True,
                                                "step_s": STEP_S}},
              **{k: raw[k] for k in FEATURE_SECTIONS if k in raw}}
    from stages import labels, logs, metrics, traces

    cwd = os.getcwd()
    os.chdir(base)  # the stages write under ./data/features
    try:
        for stage in (metrics, traces, logs, labels):
            stage.run(name, params)
    finally:
        os.chdir(cwd)
    cols, lab, kinds = feature_columns(base / "data" / "features" / name)
    truth = json.loads((base / "raw" / name / TRUTH_FILE).read_text())
    return {"summary": summary, "cols": cols, "labels": lab, "kinds": kinds, "truth": truth}


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    """Built on first use, once per format."""
    cache: dict[str, dict] = {}

    def get(fmt: str) -> dict:
        if fmt not in cache:
            cache[fmt] = _build(fmt, tmp_path_factory.mktemp(f"giveaway_{fmt}"))
        return cache[fmt]

    return get


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_feature_column_gives_a_fault_kind_away(dumps, fmt):
    d = dumps(fmt)
    labels, kinds = d["labels"], d["kinds"]
    # Labels carry the format's native kind names (eadro: cpu_load); every kind must be present.
    assert labels.sum() > 0
    assert len(set(kinds[labels == 1].tolist())) == len(short_synth(project_params()).fault_kinds)
    bad = giveaways(d["cols"], labels, kinds)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("fmt", FORMATS)
def test_fault_schedule_is_irregular_and_graded(dumps, fmt):
    truth = dumps(fmt)["truth"]
    params = short_synth(project_params())
    faults = sorted(truth["faults"], key=lambda f: f["start_ts"])
    starts = np.asarray([f["start_ts"] for f in faults])
    ends = np.asarray([f["end_ts"] for f in faults])
    assert len(faults) >= 8
    spacing = np.diff(starts)
    assert spacing.std() / spacing.mean() > 0.25, "fault starts look periodic"
    assert (starts[1:] - ends[:-1]).min() >= params.fault_min_gap_min * 60 - 1e-6
    minutes = (ends - starts) / 60
    low, high = params.duration_range_min
    assert minutes.min() >= low - 1e-6 and minutes.max() <= high + 1e-6
    assert minutes.max() / minutes.min() >= 3, "durations must vary over the 2-20 min range"
    assert {f["severity"] for f in faults} == {"subtle", "moderate", "severe"}
    intensity = {s: [f["intensity"] for f in faults if f["severity"] == s] for s in ("subtle", "moderate", "severe")}
    assert max(intensity["subtle"]) < min(intensity["moderate"])
    assert max(intensity["moderate"]) < min(intensity["severe"])
    assert {f["kind"] for f in faults} == set(params.fault_kinds)


def test_benign_events_exist(dumps):
    seen = set()
    for fmt in FORMATS:
        truth = dumps(fmt)["truth"]
        kinds = {b["kind"] for b in truth["benign"]}
        assert {"noisy_service", "batch_job"} <= kinds, fmt
        for b in truth["benign"]:
            assert b["end_ts"] > b["start_ts"] and b["service"] in dumps(fmt)["summary"]["services"]
        seen |= kinds
    assert seen == {"deploy", "traffic_surge", "batch_job", "noisy_service"}
