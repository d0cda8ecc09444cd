"""Label grid: overlap rules, margins, joined kinds/entities, empty and bad fault records."""
from __future__ import annotations

import polars as pl
import pytest

from stages.core.errors import InputError
from stages.core.params import build
from stages.features.label_grid import clean_faults, label_grid
from stages.features.params import LabelsParams

S = 1_000_000
SCHEMA = {"start_ts": pl.Int64, "end_ts": pl.Int64, "entity": pl.Utf8, "kind": pl.Utf8}


def faults(rows) -> pl.DataFrame:
    return pl.DataFrame([(None if a is None else int(a * S), None if b is None else int(b * S), e, k)
                         for a, b, e, k in rows], schema=SCHEMA, orient="row")


def test_overlap_rules_margin_and_joined_names():
    f = clean_faults(faults([
        (23.0, 40.0, "route", "cpu_load"),  # starts mid-step 20; ends exactly on 40 → step 40 untouched
        (35.0, 52.0, "auth", "network_delay"),  # overlaps the first in step 30
        (35.0, 36.0, "auth", "cpu_load"),  # same step, same entity: names deduplicated
        (70.0, 70.0, None, "net"),  # zero length: marks the step holding its start; null entity → ""
    ]))
    lab = label_grid(f, 10, margin_s=15)
    assert lab.schema == {"ts": pl.Int64, "label": pl.Int8, "kind": pl.Utf8, "entity": pl.Utf8}
    # grid over [23 - 15, 70 + 15] = [8, 85] → steps 0 .. 80
    assert lab["ts"].to_list() == [t * S for t in range(0, 90, 10)]
    assert lab["label"].to_list() == [0, 0, 1, 1, 1, 1, 0, 1, 0]
    assert lab["kind"].to_list() == ["", "", "cpu_load", "cpu_load+network_delay", "network_delay",
                                     "network_delay", "", "net", ""]
    assert lab["entity"].to_list() == ["", "", "route", "auth+route", "auth", "auth", "", "", ""]


def test_no_faults_give_an_empty_all_normal_grid(caplog):
    with caplog.at_level("WARNING"):
        lab = label_grid(clean_faults(faults([])), 10, 60)
    assert lab.height == 0 and lab.columns == ["ts", "label", "kind", "entity"]
    assert "no faults" in caplog.text


def test_bad_fault_rows_name_the_row():
    with pytest.raises(InputError, match=r"raw/x: fault row 1 \(auth, cpu\): expected end_ts >= start_ts"):
        clean_faults(faults([(0, 10, "a", "k"), (50, 40, "auth", "cpu")]), source="raw/x")
    with pytest.raises(InputError, match="fault row 0: expected both start_ts and end_ts"):
        clean_faults(faults([(None, 10, "a", "k")]))
    with pytest.raises(InputError, match="labels.margin_s"):
        build(LabelsParams, {"margin_s": -1}, where="labels")


def test_faults_are_sorted_canonically():
    f = clean_faults(faults([(50, 60, "b", "y"), (10, 20, "a", "x")]))
    assert f.columns == ["start_ts", "end_ts", "entity", "kind"]
    assert f["entity"].to_list() == ["a", "b"]


def test_grid_never_extends_past_the_data(caplog):
    """A fault a year away (or one crossing the data's edge) must not stretch the grid (issue 10)."""
    year = 365 * 86_400
    f = clean_faults(faults([
        (100.0, 160.0, "a", "cpu"),
        (500.0, 2000.0, "b", "mem"),  # crosses the end of the data: clipped
        (100.0 + year, 200.0 + year, "c", "disk"),  # a year later: dropped
        (-5000.0, -4000.0, "d", "net"),  # before the data: dropped
    ]))
    with caplog.at_level("WARNING"):
        lab = label_grid(f, 10, margin_s=600, data_range=(0, 1000 * S))
    assert lab["ts"].min() == 0 and lab["ts"].max() == 1000 * S and lab.height == 101
    assert lab["label"].sum() == 6 + 50  # [100, 160) and [500, 1000]
    assert set(lab["kind"].unique()) == {"", "cpu", "mem"}
    assert "2 fault(s) lie wholly outside the data" in caplog.text and "disk on c at 1971-01-01" in caplog.text
    assert "1 fault(s) cross the edge of the data" in caplog.text and "mem on b" in caplog.text


def test_all_faults_outside_the_data_give_an_empty_grid(caplog):
    f = clean_faults(faults([(5000.0, 5100.0, "a", "cpu")]))
    with caplog.at_level("WARNING"):
        lab = label_grid(f, 10, 60, data_range=(0, 1000 * S))
    assert lab.height == 0 and "no faults inside the data" in caplog.text
    # without a data range the grid follows the faults, as before
    assert label_grid(f, 10, 0)["ts"].to_list() == [5000 * S, 5010 * S, 5020 * S, 5030 * S, 5040 * S, 5050 * S,
                                                    5060 * S, 5070 * S, 5080 * S, 5090 * S, 5100 * S]
