"""Drain3 log templates: per-service mining, counts/events consistency, saved miners, odd input."""
from __future__ import annotations

import polars as pl
import pytest

from stages.core.errors import InputError
from stages.core.params import build
from stages.features.log_templates import (
    OTHER_TEMPLATE, load_miners, log_counts, mine_templates, save_miners,
)
from stages.features.params import LogsParams

S = 1_000_000
PARAMS = LogsParams()
SCHEMA = {"ts": pl.Int64, "service": pl.Utf8, "level": pl.Utf8, "message": pl.Utf8}


def lines(rows) -> pl.DataFrame:
    return pl.DataFrame([(int(t * S), s, lvl, m) for t, s, lvl, m in rows], schema=SCHEMA, orient="row")


ROWS = [
    (0.5, "auth", "INFO", "user 17 logged in from 10.0.0.1"),
    (3.0, "auth", "INFO", "user 42 logged in from 10.0.0.7:8080"),
    (12.0, "auth", "WARN", "token 123e4567-e89b-12d3-a456-426614174000 expired"),
    (14.0, "auth", "INFO", "user 9 logged in from 192.168.1.20"),
    (15.0, "route", "INFO", "route 0x1f3a computed in 12.5 ms"),
    (2.0, "route", "INFO", "route 0xbeef computed in 3 ms"),
    (27.0, "route", "ERROR", "span reported 279a3663a120e1df failed"),
    (29.0, "auth", "WARN", "token 00000000-0000-0000-0000-000000000001 expired"),
]


def test_masked_lines_share_a_template_and_ids_are_contiguous():
    mined = mine_templates(lines(ROWS), PARAMS, 10)
    t = mined.templates
    assert t["template_id"].to_list() == list(range(t.height))
    assert t.schema == {"template_id": pl.Int64, "template": pl.Utf8, "service": pl.Utf8, "count": pl.Int64,
                        "first_ts": pl.Int64}
    texts = dict(zip(t["template"], t["count"]))
    assert texts["user <NUM> logged in from <IP>"] == 3
    assert texts["token <UUID> expired"] == 2
    assert texts["route <HEX> computed in <NUM> ms"] == 2
    assert texts["span reported <HEX> failed"] == 1
    # services sorted, then first-seen order within a service
    assert t["service"].to_list() == ["auth", "auth", "route", "route"]
    assert t.filter(pl.col("template") == "token <UUID> expired")["first_ts"].item() == 12 * S


def test_counts_events_and_templates_agree():
    mined = mine_templates(lines(ROWS), PARAMS, 10)
    ev = mined.events
    assert ev.height == len(ROWS)
    assert ev["ts"].is_sorted()
    assert ev.columns == ["ts", "step_ts", "service", "template_id", "level"]
    assert (ev["step_ts"] == (ev["ts"] // (10 * S)) * (10 * S)).all()
    per_template = ev.group_by("template_id").len().sort("template_id")
    assert per_template["len"].to_list() == mined.templates["count"].to_list()
    counts = log_counts(ev, mined.templates, 10)
    assert counts["ts"].to_list() == [0, 10 * S, 20 * S]
    assert counts.columns[1:] == [f"{s}/{k}" for s, k in zip(mined.templates["service"], mined.templates["template_id"])]
    assert all(counts.schema[c] == pl.Float32 for c in counts.columns[1:])
    assert counts.drop("ts").sum().sum_horizontal().item() == len(ROWS)
    login = mined.templates.filter(pl.col("template").str.starts_with("user"))["template_id"].item()
    assert counts[f"auth/{login}"].to_list() == [2.0, 1.0, 0.0]


def test_mining_is_deterministic_whatever_the_input_order():
    a = mine_templates(lines(ROWS), PARAMS, 10)
    b = mine_templates(lines(ROWS[::-1]), PARAMS, 10)
    assert a.templates.equals(b.templates) and a.events.equals(b.events)


def test_rare_templates_fold_into_other_per_service():
    mined = mine_templates(lines(ROWS), LogsParams(min_count=2), 10)
    t = mined.templates
    assert t.filter(pl.col("template") == OTHER_TEMPLATE)["service"].to_list() == ["route"]
    other = t.filter(pl.col("template") == OTHER_TEMPLATE).row(0, named=True)
    assert other["count"] == 1 and other["first_ts"] == 27 * S
    assert t["template_id"].to_list() == list(range(t.height))
    assert mined.events.filter(pl.col("template_id") == other["template_id"]).height == 1


def test_blank_services_null_messages_and_replacement_characters_do_not_crash():
    rows = [(1.0, "", "INFO", "caf\ufffd \ufffd\ufffd broken bytes"), (2.0, None, None, None),
            (3.0, "  ", "INFO", "caf\ufffd \ufffd\ufffd broken bytes")]
    mined = mine_templates(lines(rows), PARAMS, 10)
    assert set(mined.templates["service"]) == {"unknown"}
    assert mined.templates["count"].sum() == 3
    assert mined.events["level"].to_list() == ["INFO", "", "INFO"]


def test_no_lines_give_empty_tables():
    mined = mine_templates(lines([]), PARAMS, 10)
    assert mined.templates.height == 0 and mined.events.height == 0
    assert log_counts(mined.events, mined.templates, 10).columns == ["ts"]


def test_saved_miners_parse_new_lines_with_the_same_ids(tmp_path):
    mined = mine_templates(lines(ROWS), PARAMS, 10)
    save_miners(mined, PARAMS, tmp_path / "drain3")
    assert sorted(p.name for p in (tmp_path / "drain3").iterdir()) == [
        "index.json", "service_0000.drain3", "service_0001.drain3"]
    miners = load_miners(tmp_path / "drain3")
    ids = dict(zip(mined.templates["template"], mined.templates["template_id"]))
    assert miners.match("auth", "user 5 logged in from 172.16.0.3") == ids["user <NUM> logged in from <IP>"]
    assert miners.match("auth", "token 9d7c2e3a-0000-4000-8000-aaaaaaaaaaaa expired") == ids["token <UUID> expired"]
    assert miners.match("route", "route 0xabc computed in 1 ms") == ids["route <HEX> computed in <NUM> ms"]
    assert miners.match("auth", "something never seen before at all") is None
    assert miners.match("nobody", "user 5 logged in from 172.16.0.3") is None
    # every mined line is matched back to the template it was counted under
    again = [miners.match(s, m) for _, s, _, m in ROWS]
    by_line = mine_templates(lines(ROWS), PARAMS, 10).events  # sorted by ts: re-sort ROWS the same way
    expected = dict(zip(zip(by_line["ts"].to_list(), by_line["service"].to_list()), by_line["template_id"].to_list()))
    assert again == [expected[(int(t * S), s)] for t, s, _, _ in ROWS]


def test_saved_state_is_byte_identical_across_runs(tmp_path):
    for run in ("a", "b"):
        save_miners(mine_templates(lines(ROWS), PARAMS, 10), PARAMS, tmp_path / run)
    for p in (tmp_path / "a").iterdir():
        assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes()


def test_damaged_or_missing_miner_state_is_reported(tmp_path):
    with pytest.raises(InputError, match="run the logs stage first"):
        load_miners(tmp_path / "nothing")
    save_miners(mine_templates(lines(ROWS), PARAMS, 10), PARAMS, tmp_path / "d")
    (tmp_path / "d" / "service_0001.drain3").write_bytes(b"not a drain3 state")
    with pytest.raises(InputError, match="service_0001.drain3: expected a readable Drain3 state"):
        load_miners(tmp_path / "d")


def test_logs_params_are_checked():
    p = build(LogsParams, {"sim_th": 0.5, "masks": [{"pattern": r"\d+", "name": "N"}], "min_count": 3}, where="logs")
    assert p.masks[0].name == "N" and p.min_count == 3
    with pytest.raises(InputError, match="logs.sim_th"):
        build(LogsParams, {"sim_th": 1.5}, where="logs")
    with pytest.raises(InputError, match=r"logs.masks\[0\]"):
        build(LogsParams, {"masks": [{"pattern": "(", "name": "X"}]}, where="logs")
