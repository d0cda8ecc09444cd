"""The traces stage's shortcuts give exactly what the general code gives (issue 11).

``clean_spans`` skips its sorts for spans that are already unique and in start order, callers
are found by row (one hash per id pair) instead of a join on two text columns, and each trace's
root comes from spans in start order without a sort. The previous code is kept here and compared
on random spans: tied start times, repeated ids, parents outside the trace, rootless (cyclic)
traces, shuffled rows, and hash collisions forced through a weak hash.
"""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from stages.core.frames import conform
from stages.features import trace_features as tf
from stages.formats import _common as c

CALL_COLUMNS = ["ts", "caller", "callee", "latency_s", "is_error", "trace_id", "span_id"]


def old_clean_spans(spans: pl.DataFrame) -> pl.DataFrame:
    df = conform(spans, "traces").with_row_index("_row").with_columns(
        pl.when(pl.col("service").is_null() | (pl.col("service").str.strip_chars() == ""))
        .then(pl.lit(tf.UNKNOWN_SERVICE)).otherwise(pl.col("service")).alias("service"),
        pl.col("operation").fill_null(""),
        pl.col("parent_id").replace("", None),
        pl.col("duration_s").fill_null(0.0),
        pl.col("is_error").fill_null(False),
    )
    unique = df.sort(["trace_id", "span_id", "start_ts", "_row"]).unique(["trace_id", "span_id"], keep="first",
                                                                          maintain_order=True)
    return unique.sort(["start_ts", "trace_id", "span_id"]).drop("_row")


def old_with_callers(spans: pl.DataFrame) -> pl.DataFrame:
    parents = spans.select("trace_id", pl.col("span_id").alias("parent_id"), pl.col("service").alias("caller"))
    return spans.join(parents, on=["trace_id", "parent_id"], how="left")


def old_roots(linked: pl.DataFrame) -> pl.DataFrame:
    return (linked.sort(["trace_id", "_root", "start_ts", "span_id"], descending=[False, True, False, False])
            .group_by("trace_id", maintain_order=True).first())


def random_spans(seed: int, n: int = 600, repeats: bool = False) -> pl.DataFrame:
    """Spans of ~n/6 traces: tied starts, parents in the trace, outside it or none, two-span cycles."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(n // 6):
        ids = [f"s{j}" for j in rng.permutation(8)[:int(rng.integers(1, 7))]]
        cyclic = len(ids) > 1 and rng.random() < 0.15
        for j, sid in enumerate(ids):
            if cyclic:
                parent = ids[(j + 1) % len(ids)]  # every span has a parent in the trace: no root
            else:
                parent = rng.choice([None, "gone", *ids[:j]]) if j else rng.choice([None, "gone"])
            rows.append((f"t{rng.integers(0, n // 4):03d}" if rng.random() < 0.1 else f"t{t:03d}", sid, parent,
                         str(rng.choice(["fe", "be", "db", ""])), f"op{j}", int(rng.integers(0, 40)) * 1000,
                         float(rng.random()), bool(rng.random() < 0.2)))
    df = pl.DataFrame(rows, schema=["trace_id", "span_id", "parent_id", "service", "operation", "start_ts",
                                    "duration_s", "is_error"], orient="row")
    if repeats:
        df = pl.concat([df, df.sample(n=len(rows) // 10, seed=seed)])
    return df


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("order", ["sorted", "shuffled", "repeats"])
def test_clean_spans_fast_path_is_the_general_one(seed: int, order: str):
    spans = random_spans(seed, repeats=order == "repeats")
    if order == "sorted":
        spans = old_clean_spans(spans)  # unique ids, start order: the fast path
        assert tf._in_start_order(spans) and c.span_ids_unique(spans)
    elif order == "shuffled":
        spans = spans.sample(fraction=1.0, shuffle=True, seed=seed)
    assert_frame_equal(tf.clean_spans(spans), old_clean_spans(spans))


def test_start_order_reads_ties_by_ids():
    base = {"start_ts": [1, 2, 2, 3], "trace_id": ["a", "a", "b", "a"], "span_id": ["x", "y", "a", "z"]}
    assert tf._in_start_order(pl.DataFrame(base))
    swapped = dict(base, trace_id=["a", "b", "a", "a"], span_id=["x", "a", "y", "z"])
    assert not tf._in_start_order(pl.DataFrame(swapped))
    same_trace = dict(base, trace_id=["a", "b", "b", "a"], span_id=["x", "b", "a", "z"])
    assert not tf._in_start_order(pl.DataFrame(same_trace))
    assert not tf._in_start_order(pl.DataFrame(dict(base, start_ts=[1, 3, 2, 4])))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("weak_hash", [False, True])
def test_callers_roots_aggregates_and_calls_as_before(seed: int, weak_hash: bool, monkeypatch):
    clean = old_clean_spans(random_spans(seed))
    if weak_hash:  # collisions everywhere: the exact join on the ids decides
        weak = c._pair_hash
        monkeypatch.setattr(c, "_pair_hash", lambda a, b: weak(a, b) % 3)
    key = ["trace_id", "span_id"]
    for spans in (clean, clean.sample(fraction=1.0, shuffle=True, seed=seed)):
        linked = tf.with_callers(spans)
        assert_frame_equal(linked.sort(key), old_with_callers(spans).sort(key))
        flagged = linked.with_columns(pl.col("caller").is_null().alias("_root"))
        assert_frame_equal(tf._roots(flagged).sort("trace_id"), old_roots(flagged).sort("trace_id"))
        old_linked = old_with_callers(spans)
        old_calls = (old_linked.filter(pl.col("caller").is_not_null() & (pl.col("caller") != pl.col("service")))
                     .select(pl.col("start_ts").alias("ts"), "caller", pl.col("service").alias("callee"),
                             pl.col("duration_s").alias("latency_s"), "is_error", "trace_id", "span_id")
                     .sort(tf.CALL_ORDER))
        assert_frame_equal(tf.service_calls(spans, with_ids=True), old_calls)
        assert_frame_equal(tf.service_calls(spans, with_ids=True, linked=linked), old_calls)
        assert_frame_equal(tf.trace_aggregates(spans, linked), tf.trace_aggregates(spans))
    linked = pl.col("parent_id").is_in(pl.col("span_id").implode()).fill_null(False)
    rootless = clean.group_by("trace_id").agg(linked.all().alias("all"))
    assert rootless["all"].any(), "the random spans hold a trace without a root"


def test_repeated_ids_take_the_join():
    spans = pl.DataFrame({"trace_id": ["t", "t", "t"], "span_id": ["a", "a", "b"], "parent_id": [None, None, "a"],
                          "service": ["fe", "fe2", "be"]})
    assert not c.span_ids_unique(spans)
    assert_frame_equal(tf.with_callers(spans).sort("span_id", "service"),
                       old_with_callers(spans).sort("span_id", "service"))
