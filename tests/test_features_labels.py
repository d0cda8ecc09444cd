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
