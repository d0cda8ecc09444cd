"""`python -m stages.inspect`: the dataset doctor, on the real TT chunk (text and JSON) and on bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages import inspect

CHUNK = Path("tt-eadro/TT.2022-04-19T001753D2022-04-19T020534")


@pytest.fixture(scope="module")
def tt_json(shared_data: Path) -> dict:
    import io
    import contextlib

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert inspect.main(["--format", "eadro", str(shared_data / CHUNK), "--json"]) == 0
    lines = buf.getvalue().strip().splitlines()
    assert len(lines) == 1  # ONE JSON object
    return json.loads(lines[0])


def test_json_report(tt_json: dict):
    mods = tt_json["modalities"]
    assert tt_json["offsets_s"] == {"metrics": 0.0, "traces": -28800.0, "logs": -28800.0, "faults": 0.0}
    assert len(mods["metrics"]["files"]) == 27 and mods["metrics"]["rows"] == 1_221_129
    assert mods["metrics"]["step_s"] == 1.0 and len(mods["metrics"]["entities"]) == 27
    assert mods["metrics"]["start_iso"] == "2022-04-18T08:17:53Z"
    assert mods["traces"]["unique_traces"] == 805 and mods["traces"]["unique_spans"] == 4327
    assert mods["logs"]["rows"] == 8457 and len(mods["logs"]["services"]) == 13
    assert mods["faults"]["by_kind"] == {"cpu_load": 3, "network_delay": 3, "network_loss": 3}
    pairs = {(o["a"], o["b"]): o for o in tt_json["overlap"]}
    assert len(pairs) == 6
    assert pairs[("metrics", "logs")]["overlap_pct_of_union"] > 95
    # the export's leftover spans from ~38 h earlier are listed apart, not folded into the overlap
    strays = mods["traces"]["body"]["strays"]
    assert [s["rows"] for s in strays] == [200] and strays[0]["start_iso"].startswith("2022-04-16T10:14")
    assert mods["traces"]["body"]["rows"] == 4127 and mods["metrics"]["body"]["strays"] == []
    assert pairs[("metrics", "traces")]["overlap_pct_of_union"] > 75
    assert mods["metrics"]["gaps"] == {}  # 1 Hz cAdvisor series without holes


def test_text_report_and_offset_override(shared_data: Path, capsys):
    assert inspect.main(["--format", "eadro", str(shared_data / CHUNK), "--offset", "logs=0"]) == 0
    out = capsys.readouterr().out
    assert "logs=0s" in out and "traces=-28800s" in out
    for needle in ("metrics  entities", "27: ts-assurance-service", "805 unique traces", "8,457",
                   "{'cpu_load': 3, 'network_delay': 3, 'network_loss': 3}", "median step", "overlap  metrics ~ logs",
                   "traces   stray", "200 rows 2022-04-16T10:14"):
        assert needle in out
    # without the -8 h log offset the logs start 8 h after the metrics: no overlap
    assert "metrics ~ logs    0 s = 0.0% of union" in out


T0 = 1_650_000_000  # 2022-04-15, epoch s


def test_missing_modality_is_a_line_not_a_crash(tmp_path: Path, capsys):
    (tmp_path / "TT.aDb" / "metrics").mkdir(parents=True)
    (tmp_path / "TT.aDb" / "metrics" / "a.csv").write_text(f"timestamp,cpu\n{T0},1\n{T0 + 1},2\n")
    assert inspect.main(["--format", "eadro", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for modality in ("traces", "logs", "faults"):
        assert f"{modality:<8} status" in out and "MISSING" in out
    assert inspect.main(["--format", "eadro", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["modalities"]["logs"]["present"] is False and report["overlap"] == []


@pytest.mark.parametrize("args, message", [
    (["--format", "foo", "."], "expected one of msds, gaia, eadro, got 'foo'"),
    (["--format", "gaia", "/no/such/dump"], "/no/such/dump: expected an existing raw dump folder"),
    (["--format", "gaia", ".", "--offset", "clock=3"], "--offset: expected MODALITY=SECONDS"),
    (["--format", "gaia", ".", "--offset", "logs=abc"], "--offset logs: expected a number of seconds"),
    (["--format", "gaia", ".", "--offset", "logs=nan"], "--offset logs: expected a finite number of seconds"),
    (["--format", "eadro", "README.md"], "README.md: expected a raw dump folder, got 'a file'"),
])
def test_bad_arguments_exit_nonzero_without_traceback(args, message, capsys):
    assert inspect.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_entity_gaps_strays_and_skipped_files(tmp_path: Path, capsys):
    metrics = tmp_path / "TT.aDb" / "metrics"
    metrics.mkdir(parents=True)
    whole = "".join(f"{T0 + i},1\n" for i in range(3600))
    holed = "".join(f"{T0 + i},1\n" for i in range(3600) if not 1000 <= i < 1600)  # 10 min missing
    stray = "".join(f"{T0 - 86_400 + i},1\n" for i in range(5))  # a day before the body
    (metrics / "a.csv").write_text("timestamp,cpu\n" + whole)
    (metrics / "b.csv").write_text("timestamp,cpu\n" + holed + stray)
    (metrics / "c.csv").write_text("timestamp,cpu\n")  # header only: skipped, named
    (tmp_path / "TT.aDb" / "notes.json").write_text("{}")  # read by no reader: named
    assert inspect.main(["--format", "eadro", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    m = report["modalities"]["metrics"]
    assert m["gaps"] == {"b": {"gaps": 1, "missing_s": 601.0, "largest_s": 601.0,
                               "largest_from": "2022-04-15T05:36:39Z"}}  # T0 + 999 s
    assert [(s["rows"], s["start_iso"]) for s in m["body"]["strays"]] == [(5, "2022-04-14T05:20:00Z")]
    assert report["unclaimed"][0]["file"].endswith("notes.json")
    assert inspect.main(["--format", "eadro", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "metrics  gaps" in out and "b 1 (largest 601 s" in out and "metrics  stray" in out
    assert "notes.json" in out


def test_implausible_time_is_one_line_naming_file_and_row(tmp_path: Path, capsys):
    """The doctor used to accept a metric row stamped -1650269923 and show a start in 1917."""
    metrics = tmp_path / "TT.aDb" / "metrics"
    metrics.mkdir(parents=True)
    (metrics / "a.csv").write_text(f"timestamp,cpu\n{T0},1\n-1650269923,2\n")
    assert inspect.main(["--format", "eadro", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a.csv: row 2 column 'timestamp': expected a time after 2000-01-01" in err[0]
    assert "1917-" in err[0]
