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


def _kahan_mean(values: list[float]) -> float:
    total, carry = values[0], 0.0
    for v in values[1:]:
        y = v - carry
        t = total + y
        carry = (t - total) - y
        total = t
    return total / len(values)


def test_step_means_are_row_order_kahan_means_and_repeatable(monkeypatch):
    """Each cell's mean is the compensated sum of its points in row order over their count, the
    same bits whatever slices of whole steps the points are taken in, and the bits polars'
    group_by mean gives on cells of a few points (the committed data)."""
    import stages.features.metric_matrix as mm

    rng = np.random.default_rng(5)
    n = 6000
    ts = np.sort(rng.integers(0, 300, n)) * S  # ~20 points per 20 s cell and column
    rows = [(int(t) / S, "e", str(rng.choice(["m1", "m2", "m3"])), float(v))
            for t, v in zip(ts, rng.normal(1e3, 1e2, n) * 10.0 ** rng.integers(-8, 8, n))]
    pts = mm.with_column_names(points(rows))
    col_index = {c: i for i, c in enumerate(sorted(pts["column"].unique().to_list()))}
    step = 20 * S
    x = mm.step_means(pts, col_index, 0, 15, step)
    cells: dict = {}
    for t, _, m, v in rows:
        cells.setdefault((int(t * S) // step, col_index[f"e/{m}"]), []).append(v)
    expect = np.full((15, 3), np.nan)
    for (k, c), vs in cells.items():
        expect[k, c] = _kahan_mean(vs)
    assert np.array_equal(x.view(np.int64), expect.view(np.int64))
    slices = mm._whole_step_slices
    for rows_per_pass in (7, 100, 10**9):
        assert (len(slices(pts, step, rows_per_pass)) > 1) == (rows_per_pass < n)  # several passes, or one
        monkeypatch.setattr(mm, "_whole_step_slices", lambda df, st, r=rows_per_pass: slices(df, st, r))
        assert np.array_equal(mm.step_means(pts, col_index, 0, 15, step).view(np.int64), x.view(np.int64))
    few = pts.filter(pl.int_range(pl.len()).over("column") % 50 < 4)  # a few points per cell
    ours = mm.step_means(few, col_index, 0, 15, step)
    means = (few.with_columns((pl.col("ts") // step).alias("k")).group_by(["k", "column"]).agg(pl.col("value").mean()))
    theirs = np.full((15, 3), np.nan)
    theirs[means["k"].to_numpy(), means["column"].replace_strict(col_index, return_dtype=pl.Int64).to_numpy()] = \
        means["value"].to_numpy()
    assert np.array_equal(ours.view(np.int64), theirs.view(np.int64))


def test_fill_and_scaling_by_column_blocks_equal_one_pass(monkeypatch):
    import stages.features.metric_matrix as mm
    import stages.features.normalise as nz

    rng = np.random.default_rng(9)
    x = rng.normal(size=(200, 150))
    x[rng.random(x.shape) < 0.4] = np.nan
    seed, age = rng.normal(size=150), rng.integers(1, 5, 150)
    seed[::3] = np.nan
    centre, scale = rng.normal(size=150), rng.uniform(0.1, 2, 150)
    x[:, 7] = 2.5  # constant on the training rows
    x[:120, 9] = np.nan  # no training value
    train = np.arange(200) < 120
    rule = nz.ScaleRule()

    def passes():
        fit = nz.fit_scaling(x, train, rule)
        in_place = x.copy()
        filled = mm.forward_fill(in_place, 3, seed, age, in_place=True)
        assert filled is in_place
        col_major = nz.apply_scaling(x, centre, scale, 5.0, order="F")
        assert col_major.flags.f_contiguous
        return [mm.forward_fill(x, 3, seed, age), nz.apply_scaling(x, centre, scale, 5.0), filled, col_major,
                mm.is_constant(x, train, fit.centre), *(getattr(fit, f) for f in (
                    "centre", "spread", "scale", "bound", "observed", "missing_fraction"))]

    blocks = passes()
    monkeypatch.setattr(mm, "_FILL_COLUMNS", 10**6)
    monkeypatch.setattr(nz, "_SCALE_COLUMNS", 10**6)
    monkeypatch.setattr(nz, "_FIT_COLUMNS", 10**6)
    one = passes()
    assert blocks[4][7] and not blocks[4][8]
    for a, b in zip(blocks, one):
        assert a.dtype == b.dtype
        if a.dtype == object:
            assert list(a) == list(b)
        else:
            assert np.array_equal(a, b, equal_nan=True) and np.array_equal(np.ascontiguousarray(np.nan_to_num(a)).view(np.uint8),
                                                                          np.ascontiguousarray(np.nan_to_num(b)).view(np.uint8))


def test_scaling_in_place_gives_the_plain_expression_bits():
    """apply_scaling computes (x - centre) / scale with one temporary: the dtype of each step and
    every bit are the plain expression's, for float64, float32 and integer inputs."""
    import warnings

    import stages.features.normalise as nz

    def plain(x, centre, scale, clip):
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            z = (x - centre) / scale
        return np.clip(np.nan_to_num(z, nan=0.0, posinf=clip, neginf=-clip), -clip, clip).astype(np.float32)

    rng = np.random.default_rng(3)
    for dtype in (np.float64, np.float32, np.int64):
        for centre, scale in ((rng.normal(size=40) * 100, rng.uniform(0, 2, 40)),
                              (np.float32(3.3) * np.ones(40, np.float32), np.full(40, 0.7, np.float32)), (3.3, 0.7)):
            x = (rng.normal(size=(300, 40)) * 1e3).astype(dtype)
            if dtype != np.int64:
                x[rng.random(x.shape) < 0.2] = np.nan
                x[0, :3] = [np.inf, -np.inf, 1e300 if dtype == np.float64 else 3e38]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                got = nz.apply_scaling(x, centre, scale, 10.0)
            want = plain(x, centre, scale, 10.0)
            assert got.dtype == want.dtype == np.float32 and np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_a_grid_larger_than_memory_is_a_clear_error(monkeypatch):
    """The metric grid is checked against what the machine can still allocate before it is built:
    an error naming the params to change, not a kernel OOM kill part way through the stage."""
    import stages.core.memory as memory

    rows = [(k * 10, "svc", f"m{j}", float(k * (j + 1))) for k in range(50) for j in range(3)]
    monkeypatch.setattr(memory, "available_bytes", lambda: 12 * 50 * 3 - 1)
    with pytest.raises(InputError, match=r"params.yaml: datasets.<name>.step_s / datasets.<name>.metrics.include / "
                                         r"exclude: expected a metric grid of 50 steps × 3 columns that fits in memory"):
        metric_matrix(points(rows), 10, SPLIT, MetricsParams())
    monkeypatch.setattr(memory, "available_bytes", lambda: 12 * 50 * 3)
    frame, _ = metric_matrix(points(rows), 10, SPLIT, MetricsParams())
    assert frame.shape == (50, 4)
    monkeypatch.setattr(memory, "available_bytes", lambda: None)  # no /proc/meminfo: no check
    assert metric_matrix(points(rows), 10, SPLIT, MetricsParams())[0].shape == (50, 4)


def test_available_memory_is_read_from_the_kernel():
    from stages.core.memory import available_bytes

    have = available_bytes()
    assert have is None or have > 0
