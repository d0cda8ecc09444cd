"""Bounded, floored, training-only scaling: flat training channels cannot explode, real shifts still show."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from stages.core.params import SplitParams
from stages.features.metric_matrix import metric_matrix
from stages.features.normalise import ScaleRule, apply_scaling, fit_scaling
from stages.features.params import MetricsParams, TracesParams
from stages.features.trace_features import trace_features

S = 1_000_000
SPLIT = SplitParams(train=0.6, val=0.2, test=0.2)


def points(series: dict[str, np.ndarray], step_s: float = 10) -> pl.DataFrame:
    rows = [(int(t * step_s * S), name.split("/")[0], name.split("/")[1], float(v))
            for name, values in series.items() for t, v in enumerate(values)]
    return pl.DataFrame(rows, schema={"ts": pl.Int64, "entity": pl.Utf8, "metric": pl.Utf8, "value": pl.Float64},
                        orient="row")


def test_robust_fit_ignores_a_fault_inside_the_training_span():
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 2.0, size=(1000, 1))
    x[100:250] += 500.0  # a 15 % fault in training: mean and std would follow it, median and IQR do not
    fit = fit_scaling(x, np.ones(1000, dtype=bool), ScaleRule())
    assert fit.centre[0] == pytest.approx(5.0, abs=0.4)
    assert np.std(x) > 100 and 1.8 < fit.scale[0] < 3.0 and fit.bound[0] == "spread"  # the IQR widens only a little


def test_sparse_channel_falls_back_to_the_mean_absolute_deviation():
    x = np.zeros((100, 1))
    x[::10] = 4000.0  # bytes received in bursts: IQR is 0
    fit = fit_scaling(x, np.ones(100, dtype=bool), ScaleRule())
    assert fit.centre[0] == 0.0
    assert fit.spread[0] == pytest.approx(1.2533 * 400.0) and fit.bound[0] == "spread"
    assert np.abs(apply_scaling(x, fit.centre, fit.scale, 10.0)).max() <= 10.0


def test_floors_and_clip_bound_every_value():
    x = np.array([[3.0, 0.0], [3.0, 0.0], [3.0, 0.0], [1e9, -1e9], [np.nan, np.inf]])
    rows = np.array([True, True, True, False, False])
    fit = fit_scaling(x, rows, ScaleRule(rel_floor=0.01, abs_floor=0.0, clip=10.0))
    assert list(fit.bound) == ["rel_floor", "unit"] and fit.scale.tolist() == [0.03, 1.0]
    z = apply_scaling(x, fit.centre, fit.scale, 10.0)
    assert z.dtype == np.float32 and np.abs(z).max() == 10.0
    assert z[4, 0] == 0.0 and z[4, 1] == 10.0  # a gap sits at the centre; +inf at the bound


def test_near_constant_metric_stays_bounded_and_a_real_shift_still_stands_out():
    rng = np.random.default_rng(1)
    n = 200  # 60 % training → steps 0..119
    mem = 3.0 + rng.normal(0, 1e-7, n)  # a memory gauge in GB that barely moves in training
    mem[150:170] += 0.6  # a 20 % leak later on
    cpu = 0.001 + np.abs(rng.normal(0, 3e-4, n))  # an idle service's CPU
    cpu[130:140] = 50.0  # a CPU-load fault: 1e5 training sds
    flat = np.full(n, 7.0)  # exactly constant in training ...
    flat[160:] = 9.0  # ... changing later
    frame, stats = metric_matrix(points({"svc/mem": mem, "svc/cpu": cpu, "svc/flat": flat}), 10, SPLIT,
                                 MetricsParams())
    z = frame.drop("ts").to_numpy()
    assert np.abs(z).max() <= 10.0
    m = frame["svc/mem"].to_numpy()
    assert stats["columns"]["svc/mem"]["bound"] == "rel_floor"  # 1 % of 3 GB, not the 1e-7 noise
    assert np.abs(m[:150]).max() < 0.01 and m[150:170].min() == 10.0  # noise ~0, the +20 % leak saturates
    c = frame["svc/cpu"].to_numpy()
    assert np.all(c[130:140] == 10.0) and np.abs(np.median(c[:120])) < 0.5
    # a column constant in training carries no learnable signal: it is dropped (listed), never ±1e5
    assert "svc/flat" not in frame.columns
    assert {"column": "svc/flat", "reason": "constant on the training span"} in stats["dropped"]
    assert stats["normalisation"]["clip"] == 10.0 and "rel_floor" in stats["normalisation"]["rule"]


SPAN_SCHEMA = {"trace_id": pl.Utf8, "span_id": pl.Utf8, "parent_id": pl.Utf8, "service": pl.Utf8,
               "operation": pl.Utf8, "start_ts": pl.Int64, "duration_s": pl.Float64, "is_error": pl.Boolean}


def test_constant_trace_edge_uses_its_unit_floor_and_a_shift_stands_out():
    rows = []
    for t in range(100):  # one call per 10 s step; 0.05 s each, never an error in training
        late = t >= 80
        rows += [(f"t{t}", "a", None, "fe", "op", t * 10 * S, 1.0, False),
                 (f"t{t}", "b", "a", "be", "op", t * 10 * S + 1, 5.0 if late else 0.05, late)]
        if t >= 90:  # a new edge after the training span: no reference, its latency is only centred
            rows.append((f"t{t}", "c", "b", "db", "op", t * 10 * S + 2, 30.0, False))
    out = trace_features(pl.DataFrame(rows, schema=SPAN_SCHEMA, orient="row"), 10, SPLIT, params=TracesParams())
    series, stats = out["series"], out["stats"]
    lat, err = series["fe->be/latency"].to_numpy(), series["fe->be/error_rate"].to_numpy()
    assert stats["columns"]["fe->be/latency"]["bound"] == "abs_floor"  # max(1 % of 0.05 s, 1 ms)
    assert stats["columns"]["fe->be/error_rate"]["scale"] == 0.2
    assert np.all(lat[:60] == 0) and np.all(lat[80:] == 10.0)  # 5 s against 50 ms: saturated, not ±5000
    assert np.all(err[:80] == 0) and np.all(err[80:] == 5.0)  # every call failing = 1.0 / 0.2
    assert stats["centred_only"] == ["be->db/latency"]
    assert np.all(series["be->db/latency"].to_numpy()[90:] == 10.0)  # 30 s, centre 0 scale 1, clipped
    assert np.abs(series.drop("ts").to_numpy()).max() <= 10.0


def test_real_tt_metrics_are_bounded(shared_data):
    from stages.formats import read_modality

    root = shared_data / "tt-eadro"
    if not root.is_dir():
        pytest.skip(f"the TrainTicket sample is not at {root}")
    pts = read_modality("eadro", root, "metrics")
    params = MetricsParams()
    frame, stats = metric_matrix(pts, 10, SPLIT, params)
    z = frame.drop("ts").to_numpy()
    assert np.all(np.isfinite(z)) and np.abs(z).max() <= params.clip  # a plain z-score reached 87,300 here
    train = (frame["ts"] < stats["fit_until_ts"]).to_numpy()
    assert np.median(np.abs(z[train])) < 1.0  # the bulk of the training cells stays at unit scale
    col = frame["ts-ticketinfo-service/cpu_usage_total"].to_numpy()
    assert np.abs(col).max() <= params.clip
    assert np.median(np.abs(col[train])) < 1.0
    assert stats["normalisation"]["clipped_share_train"] < 0.05
