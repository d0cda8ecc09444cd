"""Metric matrix: grid alignment, step means, bounded gap fill, training-only statistics."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from stages.core.errors import InputError
from stages.core.params import SplitParams, build
from stages.features.metric_matrix import forward_fill, metric_matrix, with_column_names
from stages.features.params import MetricsParams

S = 1_000_000
SPLIT = SplitParams(train=0.5, val=0.25, test=0.25)


def points(rows: list[tuple[float, str, str, float]]) -> pl.DataFrame:
    return pl.DataFrame(
        {"ts": [int(r[0] * S) for r in rows], "entity": [r[1] for r in rows], "metric": [r[2] for r in rows],
         "value": [r[3] for r in rows]},
        schema={"ts": pl.Int64, "entity": pl.Utf8, "metric": pl.Utf8, "value": pl.Float64})


def raw_values(frame: pl.DataFrame, stats: dict, col: str) -> np.ndarray:
    """Undo the scaling (valid for unclipped cells) to compare with hand-computed step values."""
    s = stats["columns"][col]
    return frame[col].to_numpy().astype(np.float64) * s["scale"] + s["centre"]


def test_grid_is_aligned_to_the_step_and_holds_step_means():
    # step 10 s; points from 13 s to 47 s → grid 10, 20, 30, 40 (every step present)
    df = points([(13, "a", "cpu", 1.0), (17, "a", "cpu", 3.0), (25, "a", "cpu", 5.0),
                 (31, "a", "cpu", 9.0), (33, "a", "cpu", 11.0), (47, "a", "cpu", 20.0)])
    frame, stats = metric_matrix(df, 10, SPLIT, MetricsParams())
    assert frame.columns == ["ts", "a/cpu"]
    assert frame["ts"].to_list() == [10 * S, 20 * S, 30 * S, 40 * S]
    assert frame.schema["a/cpu"] == pl.Float32 and frame.schema["ts"] == pl.Int64
    # cutoff = 10 + 0.5 * 30 = 25 s → training steps 10, 20 with means 2, 5
    assert stats["fit_until_ts"] == 25 * S
    col = stats["columns"]["a/cpu"]
    assert col["centre"] == pytest.approx(3.5)  # median
    assert col["scale"] == pytest.approx(1.5 / 1.349) and col["bound"] == "spread"  # IQR 2.75..4.25
    np.testing.assert_allclose(raw_values(frame, stats, "a/cpu")[:3], [2.0, 5.0, 10.0], rtol=1e-6)
    assert frame["a/cpu"][3] == 10.0  # (20 - 3.5) / 1.11 = 14.8, clipped to metrics.clip
    assert stats["normalisation"]["clip"] == 10.0 and stats["normalisation"]["clipped_share_train"] == 0.0


def test_out_of_order_and_duplicate_timestamps_give_the_same_matrix():
    rows = [(0, "a", "m", 1.0), (0, "a", "m", 3.0), (12, "a", "m", 4.0), (25, "b", "m", 2.0), (38, "b", "m", 6.0),
            (38, "a", "m", 7.0)]
    ordered, _ = metric_matrix(points(rows), 10, SPLIT, MetricsParams())
    shuffled, _ = metric_matrix(points(rows[::-1]), 10, SPLIT, MetricsParams())
    assert ordered.equals(shuffled)


def test_gaps_are_forward_filled_up_to_the_limit_then_take_the_training_mean():
    # observed at steps 0, 1, 2, 7; steps 3..6 missing; max_gap_steps=2 fills 3 and 4 only
    df = points([(0, "a", "m", 1.0), (10, "a", "m", 2.0), (20, "a", "m", 3.0), (70, "a", "m", 10.0),
                 (95, "a", "m", 0.0)])
    frame, stats = metric_matrix(df, 10, SplitParams(train=0.4, val=0.3, test=0.3),
                                 MetricsParams(max_gap_steps=2, clip=100))
    z = frame["a/m"].to_numpy()
    col = stats["columns"]["a/m"]
    # training span: ts < 36 s → steps 0..3, observed 1, 2, 3 (step 3 missing → counts as missing)
    assert col["centre"] == pytest.approx(2.0)
    assert col["missing_fraction"] == pytest.approx(0.25)
    raw = z * col["scale"] + col["centre"]
    np.testing.assert_allclose(raw[:8], [1, 2, 3, 3, 3, 2, 2, 10], rtol=1e-6)  # steps 5, 6: training median
    assert z[5] == 0.0 and z[6] == 0.0
    assert "max_gap_steps" in stats["gap_fill"]


def test_statistics_do_not_move_when_test_span_values_change():
    base = [(t, "a", "m", float(t % 7)) for t in range(0, 100)]
    changed = [(t, "a", "m", v if t < 60 else 1000.0 + v) for t, _, _, v in base]
    f1, s1 = metric_matrix(points(base), 10, SPLIT, MetricsParams())
    f2, s2 = metric_matrix(points(changed), 10, SPLIT, MetricsParams())
    assert s1 == s2
    train = f1["ts"] < s1["fit_until_ts"]
    assert f1.filter(train).equals(f2.filter(train))
    assert not f1.equals(f2)


def test_constant_and_all_nan_columns_are_dropped_and_logged(caplog):
    df = points([(t, "a", "flat", 5.0) for t in range(0, 50)]
                + [(t, "a", "nan", float("nan")) for t in range(0, 50)]
                + [(t, "a", "late", float(t)) for t in range(40, 50)]  # only in the test span
                + [(t, "b", "ok", float(t % 3)) for t in range(0, 50)])
    with caplog.at_level("INFO"):
        frame, stats = metric_matrix(df, 10, SPLIT, MetricsParams())
    assert frame.columns == ["ts", "b/ok"]
    assert sorted(d["column"] for d in stats["dropped"]) == ["a/flat", "a/late", "a/nan"]
    assert "dropped 3 of 4 metric columns" in caplog.text


def test_include_and_exclude_select_channels_and_columns_are_sorted():
    df = points([(t, e, m, float(t + i)) for t in range(0, 60) for i, (e, m) in
                 enumerate([("z", "cpu"), ("a", "cpu"), ("a", "mem"), ("b", "cpu")])])
    frame, _ = metric_matrix(df, 10, SPLIT, MetricsParams(include=("cpu$",), exclude=("^b/",)))
    assert frame.columns == ["ts", "a/cpu", "z/cpu"]


def test_no_points_give_an_empty_table():
    frame, stats = metric_matrix(points([]), 10, SPLIT, MetricsParams())
    assert frame.height == 0 and frame.columns == ["ts"]
    assert stats["fit_until_ts"] is None


def test_bad_params_name_the_key():
    with pytest.raises(InputError, match=r"metrics.include\[0\].*regular expression"):
        build(MetricsParams, {"include": ["(unclosed"]}, where="metrics")
    with pytest.raises(InputError, match="metrics.max_gap_steps"):
        build(MetricsParams, {"max_gap_steps": -1}, where="metrics")
    with pytest.raises(InputError, match="metrics.max_gap"):
        build(MetricsParams, {"max_gap": 3}, where="metrics")
    with pytest.raises(InputError, match="metrics.clip"):
        build(MetricsParams, {"clip": 0}, where="metrics")
    with pytest.raises(InputError, match="metrics.rel_floor"):
        build(MetricsParams, {"rel_floor": -0.1}, where="metrics")


def test_forward_fill_limit():
    x = np.array([[np.nan], [1.0], [np.nan], [np.nan], [np.nan], [2.0]])
    np.testing.assert_array_equal(forward_fill(x, 2)[:, 0], [np.nan, 1, 1, 1, np.nan, 2])
    np.testing.assert_array_equal(forward_fill(x, None)[:, 0], [np.nan, 1, 1, 1, 1, 2])
    np.testing.assert_array_equal(forward_fill(x, 0)[:, 0], x[:, 0])


def test_column_names_are_made_per_pair_and_equal_the_text_per_point():
    """``<entity>/<metric>`` from the pairs' category codes equals the text built per point, for text
    and Categorical keys alike; a null key reads as empty text (the per-point path)."""
    rows = [(0, "b", "cpu", 1.0), (1, "a", "mem", 2.0), (2, "b", "cpu", 3.0), (3, "a", "cpu", 4.0), (4, "a/b", "c", 5.0)]
    text = points(rows)
    for frame in (text, text.cast({"entity": pl.Categorical, "metric": pl.Categorical})):
        got = with_column_names(frame)
        assert got["column"].dtype == pl.Categorical
        assert got["column"].cast(pl.Utf8).to_list() == ["b/cpu", "a/mem", "b/cpu", "a/cpu", "a/b/c"]
        assert got.drop("column").equals(frame.cast({"entity": pl.Categorical, "metric": pl.Categorical}))
    holed = text.with_columns(pl.when(pl.col("ts") == S).then(None).otherwise(pl.col("metric")).alias("metric"))
    assert with_column_names(holed)["column"].cast(pl.Utf8).to_list() == ["b/cpu", "a/", "b/cpu", "a/cpu", "a/b/c"]
