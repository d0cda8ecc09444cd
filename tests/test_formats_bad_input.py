"""Bad input stops a reader with an InputError that names the file and the row/key (DESIGN §9).

Non-UTF-8 policy: replaced (with a warning) in log files, an error in structural files.
"""
from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import pytest

from stages.core.errors import InputError
from stages.formats import check_root, eadro, gaia, msds, read_dump, reader

T0 = 1_650_000_000  # a plausible epoch second (2022-04-15): times before 2000 are an error of their own


def _chunk(root: Path) -> Path:
    chunk = root / "TT.aDb"
    (chunk / "metrics").mkdir(parents=True)
    return chunk


def test_truncated_logs_json(tmp_path: Path):
    chunk = _chunk(tmp_path)
    (chunk / "logs.json").write_text('{"svc": ["2022-04-18 16:00:00.000  INFO 1 --- [m] a : x", ')
    with pytest.raises(InputError, match=r"logs\.json: line 1 column \d+: expected valid JSON"):
        eadro.read_logs(tmp_path, 0)


def test_truncated_spans_json_and_zip(tmp_path: Path):
    chunk = _chunk(tmp_path)
    (chunk / "spans.json").write_text('[{"traceID": "t", "spans": [{"traceID": "t",\n "spanID"')
    with pytest.raises(InputError, match=r"spans\.json: line 2 column \d+: expected valid JSON"):
        eadro.read_traces(tmp_path, 0)
    (chunk / "spans.json").unlink()
    with zipfile.ZipFile(chunk / "spans.json.zip", "w") as zf:
        zf.writestr("spans.json", '[{"traceID": "t", "spans": [')
    with pytest.raises(InputError, match=r"spans\.json\.zip!spans\.json: line 1"):
        eadro.read_traces(tmp_path, 0)


def test_span_missing_key_is_named(tmp_path: Path):
    chunk = _chunk(tmp_path)
    span = {"traceID": "t", "spanID": "s", "startTime": 1, "processID": "p1", "references": []}
    (chunk / "spans.json").write_text(json.dumps([{"traceID": "t", "processes": {"p1": {"serviceName": "a"}},
                                                   "spans": [span]}]))
    with pytest.raises(InputError, match=r"spans\.json: trace\[0\]\.spans\[0\]\.duration: expected key 'duration'"):
        eadro.read_traces(tmp_path, 0)


def test_truncated_and_malformed_fault_json(tmp_path: Path):
    _chunk(tmp_path)
    fault = tmp_path / "TT.fault-aDb.json"
    fault.write_text('{"faults": [{"name": "p_svc_1", "fault": "cpu_load", "start": 1')
    with pytest.raises(InputError, match=r"TT\.fault-aDb\.json: line 1 column \d+: expected valid JSON"):
        eadro.read_faults(tmp_path, 0)
    fault.write_text(json.dumps({"faults": [{"name": "p_svc_1", "fault": "cpu_load", "start": 1}]}))
    with pytest.raises(InputError, match=r"TT\.fault-aDb\.json: faults\[0\]\.duration: expected key 'duration'"):
        eadro.read_faults(tmp_path, 0)


def test_csv_missing_or_misspelt_column(tmp_path: Path):
    chunk = _chunk(tmp_path)
    (chunk / "metrics" / "svc.csv").write_text("timestamps,cpu\n1,2\n")
    with pytest.raises(InputError, match=r"svc\.csv: header: expected columns \['timestamp'\]"):
        eadro.read_metrics(tmp_path, 0)
    (tmp_path / "trace_table_a_2021-07.csv").write_text("trace_id,span_id\nt,s\n")
    with pytest.raises(InputError, match=r"trace_table_a_2021-07\.csv: header: expected columns .*missing"):
        gaia.read_traces(tmp_path, 0)
    (tmp_path / "run_table_2021-07.csv").write_text("datetime,servce,message\n")
    with pytest.raises(InputError, match=r"run_table_2021-07\.csv: header: .*'service'"):
        gaia.read_faults(tmp_path, 0)


def test_non_numeric_metric_value_names_the_row(tmp_path: Path):
    chunk = _chunk(tmp_path)
    rows = "".join(f"{T0 + i},{i}.5\n" for i in range(20_000)) + f"{T0 + 20000},oops\n"  # past polars' inference window
    (chunk / "metrics" / "svc.csv").write_text("timestamp,cpu\n" + rows)
    with pytest.raises(InputError, match=r"svc\.csv: row 20001 column 'cpu': expected a number, got 'oops'"):
        eadro.read_metrics(tmp_path, 0)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "db1_0.0.0.1_cpu_2021-07-01_2021-07-31.csv").write_text(f"timestamp,value\n{T0},2\n{T0 + 1},x1\n")
    with pytest.raises(InputError, match=r"cpu_2021-07-01_2021-07-31\.csv: row 2 column 'value'"):
        gaia.read_metrics(tmp_path / "m", 0)


def test_bad_time_names_the_row(tmp_path: Path):
    (tmp_path / "wally101_metrics.csv").write_text("now,cpu\n2019-10-11 21:11:16 CEST,1\n2019-13-11 21:11:17 CEST,2\n")
    with pytest.raises(InputError, match=r"wally101_metrics\.csv: row 2 column 'now': expected a date-time"):
        msds.read_metrics(tmp_path, 0)
    (tmp_path / "wally101_metrics.csv").write_text("now,cpu\n2019-10-11 21:11:16 XYZT,1\n")
    with pytest.raises(InputError, match=r"row 1 column 'now': expected a time zone"):
        msds.read_metrics(tmp_path, 0)


def test_non_utf8_replaced_in_logs_error_in_metrics(tmp_path: Path, caplog):
    chunk = _chunk(tmp_path)
    (chunk / "logs.json").write_bytes(b'{"svc": ["2022-04-18 16:00:00.000  INFO 1 --- [m] a : caf\xe9 \xff"]}')
    with caplog.at_level(logging.WARNING):
        lg = eadro.read_logs(tmp_path, 0)
    assert lg["message"][0] == "a : caf\ufffd \ufffd"
    assert "replaced 2 non-UTF-8" in caplog.text and "logs.json" in caplog.text
    (chunk / "metrics" / "svc.csv").write_bytes(b"timestamp,cpu\n1,2\n2,3\xff\n")
    with pytest.raises(InputError, match=r"svc\.csv: line 3 \(byte \d+\): expected UTF-8 text"):
        eadro.read_metrics(tmp_path, 0)


def test_empty_and_missing_folder(tmp_path: Path):
    with pytest.raises(InputError, match="expected a non-empty raw dump folder"):
        read_dump("eadro", tmp_path)
    with pytest.raises(InputError, match="expected an existing raw dump folder"):
        check_root(tmp_path / "nope")


def test_wrong_format_name():
    with pytest.raises(InputError, match=r"--format.*expected one of msds, gaia, eadro, got 'foo'"):
        reader("foo")


def test_logs_json_wrong_shape(tmp_path: Path):
    chunk = _chunk(tmp_path)
    (chunk / "logs.json").write_text(json.dumps({"svc": "not a list"}))
    with pytest.raises(InputError, match=r"logs\.json: key 'svc': expected a list of log-line strings"):
        eadro.read_logs(tmp_path, 0)


def test_rally_hook_with_bad_times(tmp_path: Path):
    report = {"info": {"rally_version": "x"}, "tasks": [{"subtasks": [{"workloads": [{"hooks": [
        {"config": {"action": {"sys_call": "sh ./restart_glance_container.sh"}},
         "results": [{"started_at": 10.0, "finished_at": 5.0}]}]}]}]}]}
    (tmp_path / "r.json").write_text(json.dumps(report))
    with pytest.raises(InputError, match=r"r\.json: tasks\[0\]\.subtasks\[0\]\.workloads\[0\]\.hooks\[0\]\.results\[0\]"):
        msds.read_faults(tmp_path, 0)


# ------------------------------------------------------------------ streamed JSON (DESIGN §8)


def _spans_text(n: int) -> str:
    """A pretty-printed Jaeger list of ``n`` one-span traces (several lines per trace)."""
    traces = [{"traceID": f"t{i}", "processes": {"p1": {"serviceName": "a"}},
               "spans": [{"traceID": f"t{i}", "spanID": "s", "startTime": i, "duration": 1, "processID": "p1"}]}
              for i in range(n)]
    return json.dumps(traces, indent=1)


def test_streamed_truncation_names_file_line_and_byte(tmp_path: Path, monkeypatch):
    from stages.formats import _common

    monkeypatch.setattr(_common, "JSON_READ_BYTES", 64)  # many reads: the error is not in the first block
    chunk = _chunk(tmp_path)
    text = _spans_text(50)
    cut = len(text) * 2 // 3
    (chunk / "spans.json").write_text(text[:cut])
    line, col = text[:cut].count("\n") + 1, cut - text[:cut].rfind("\n")
    with pytest.raises(InputError, match=rf"spans\.json: line {line} column {col}: expected valid JSON "
                                         rf"\(.*at byte {cut}, after \d+ item\(s\)\)"):
        eadro.read_traces(tmp_path, 0)
    (chunk / "spans.json").unlink()
    with zipfile.ZipFile(chunk / "spans.json.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("spans.json", text[:cut])
    with pytest.raises(InputError, match=rf"spans\.json\.zip!spans\.json: line {line} column {col}: expected valid JSON"):
        eadro.read_traces(tmp_path, 0)


def test_streamed_malformed_byte_is_pinned_like_json_does(tmp_path: Path, monkeypatch):
    from stages.formats import _common

    monkeypatch.setattr(_common, "JSON_READ_BYTES", 64)
    chunk = _chunk(tmp_path)
    text = _spans_text(50)
    at = text.index('"spanID":', len(text) // 2) + len('"spanID"')
    bad = text[:at] + ";" + text[at + 1:]  # ':' → ';' deep inside the file
    (chunk / "spans.json").write_text(bad)
    with pytest.raises(json.JSONDecodeError) as ref:
        json.loads(bad)
    with pytest.raises(InputError, match=rf"line {ref.value.lineno} column {ref.value.colno}: .*at byte {at}, after"):
        eadro.read_traces(tmp_path, 0)


def test_non_utf8_in_streamed_spans_is_an_error(tmp_path: Path):
    chunk = _chunk(tmp_path)
    data = _spans_text(3).encode().replace(b'"a"', b'"caf\xe9"', 1)
    (chunk / "spans.json").write_bytes(data)
    start = data.index(b"\xe9")
    line = data.count(b"\n", 0, start) + 1
    with pytest.raises(InputError, match=rf"spans\.json: line {line} \(byte {start}\): expected UTF-8 text"):
        eadro.read_traces(tmp_path, 0)


def test_non_utf8_logs_replaced_across_read_blocks(tmp_path: Path, monkeypatch, caplog):
    from stages.formats import _common

    monkeypatch.setattr(_common, "JSON_READ_BYTES", 3)  # multi-byte characters split between reads
    chunk = _chunk(tmp_path)
    (chunk / "logs.json").write_bytes('{"svc": ["2022-04-18 16:00:00.000  INFO 1 --- [m] a : é€ ok",\n'
                                      ' "2022-04-18 16:00:01.000  INFO 1 --- [m] a : '.encode() + b'\xff\xfe"]}')
    with caplog.at_level(logging.WARNING):
        lg = eadro.read_logs(tmp_path, 0)
    assert lg["message"].to_list() == ["a : é€ ok", "a : \ufffd\ufffd"]
    assert "replaced 2 non-UTF-8 byte sequence(s) (first on line 2)" in caplog.text


def test_wrong_top_level_is_named(tmp_path: Path):
    chunk = _chunk(tmp_path)
    (chunk / "spans.json").write_text(json.dumps({"traces": []}))
    with pytest.raises(InputError, match=r"spans\.json: top level: expected a list of Jaeger traces .*got 'dict'"):
        eadro.read_traces(tmp_path, 0)
    (chunk / "spans.json").write_text('"x"')
    with pytest.raises(InputError, match=r"top level: .*got 'str'"):
        eadro.read_traces(tmp_path, 0)
    (chunk / "spans.json").write_text(json.dumps({"data": []}))  # a spans file without a span: an error
    with pytest.raises(InputError, match=r"spans\.json: expected traces rows from at least one of its 1 traces file"):
        eadro.read_traces(tmp_path, 0)
    (chunk / "logs.json").write_text(json.dumps([["x"]]))
    with pytest.raises(InputError, match=r"logs\.json: top level: expected an object .*got 'list'"):
        eadro.read_logs(tmp_path, 0)


def test_walk_lists_files_in_path_order_with_tricky_names(tmp_path):
    """walk() sorts by parts (fast); the order is exactly sorted(Path) even where string order differs
    ('a-b/x' < 'a/x' as text, but the folder 'a' < 'a-b')."""
    from stages.formats._common import path_order, walk

    for rel in ["a-b/x.csv", "a/x.csv", "a.b/y.json", "A/z.csv", "é/z.csv", "a/b/c/d.json", "z.csv", "a b/q.csv"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("now\n1\n")
    (tmp_path / "folder.csv").mkdir()
    files, other = walk(tmp_path)
    assert files == sorted(files) and other == sorted(other)
    assert [p.relative_to(tmp_path).as_posix() for p in files][:3] == ["A/z.csv", "a/b/c/d.json", "a/x.csv"]
    assert other == [tmp_path / "a.b", tmp_path / "folder.csv"]  # folders named like data files
    mixed = [Path("/r/a-b/x"), Path("/r/a/x"), Path("/r/a.b"), Path("/r/a")]
    assert sorted(mixed, key=path_order) == sorted(mixed)


def test_walk_names_links_pipes_and_loops_and_roots_spelled_differently(tmp_path, monkeypatch):
    """The listing reads each entry's type from the folder listing: a symlinked file is a file, a
    folder reached twice is followed once, a link back into the tree, a broken link and a pipe are
    "other"; junk is skipped; the root's spelling ('x/', './x', 'x//') changes no order."""
    import os

    from stages.formats._common import walk

    for rel in ["a/x.csv", "b-c/y.csv", "z.json"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("now\n1\n")
    (tmp_path / "a" / "loop").symlink_to(tmp_path / "a")
    (tmp_path / "linked").symlink_to(tmp_path / "b-c")
    (tmp_path / "a" / "alias.csv").symlink_to(tmp_path / "z.json")
    (tmp_path / "broken.csv").symlink_to(tmp_path / "missing.csv")
    os.mkfifo(tmp_path / "pipe.csv")
    (tmp_path / "name.").mkdir()  # no suffix: not "named like a data file"
    (tmp_path / ".hidden.csv").write_text("x")
    (tmp_path / "__MACOSX").mkdir()
    (tmp_path / "__MACOSX" / "x.csv").write_text("x")
    files, other = walk(tmp_path)
    rel = lambda ps: [p.relative_to(tmp_path).as_posix() for p in ps]  # noqa: E731
    # the folder and its link are one folder: listed once, under the name met first in name order
    assert rel(files) == ["a/alias.csv", "a/x.csv", "b-c/y.csv", "z.json"]
    assert rel(other) == ["a/loop", "broken.csv", "linked", "pipe.csv"]
    monkeypatch.chdir(tmp_path.parent)
    for spelled in [f"{tmp_path.name}/", f"./{tmp_path.name}", f"{tmp_path.name}//"]:
        again = walk(Path(spelled))
        assert [rel([tmp_path.parent / p for p in ps]) for ps in again] == [rel(files), rel(other)]


def test_find_matches_names_as_fnmatchcase_and_sorts_only_what_it_keeps(tmp_path):
    """find() matches names as text, on one listing; it keeps exactly what ``fnmatch.fnmatchcase``
    on each sorted ``Path``'s name keeps, and ``odd_only`` names odd entries without listing files."""
    import fnmatch

    from stages.formats._common import _suffixes, find, walk, walk_text

    names = ["a/x.csv", "a/X.CSV", "b/y.json", "b/y.json.zip", "c/spans.json", "c/x.csv.bak", "d/[1].csv",
             "d/?.csv", "é/z.csv", "z.csv"]
    for rel in names:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("now\n1\n")
    (tmp_path / "dir.json").mkdir()
    (tmp_path / "gone.csv").symlink_to(tmp_path / "missing.csv")
    files, other = walk(tmp_path)
    walked = walk_text(tmp_path)
    # "*<text>" patterns take the endswith path, the others the regex on each name: both as fnmatchcase
    assert _suffixes(("*.json", "*.zip")) == (".json", ".zip") and _suffixes(("*",)) == ("",)
    assert _suffixes(("*.csv", "spans.json")) is None and _suffixes(("*[1].csv",)) is None
    for patterns in [("*.csv",), ("*.json",), ("*.json", "*.zip"), ("spans.json",), ("[[]1].csv",), ("*.CSV",),
                     ("*x.csv",), ("*",), ("*.csv", "spans.json"), ("*?.csv",), ("*json",)]:
        expect = [p for p in files if any(fnmatch.fnmatchcase(p.name, pat) for pat in patterns)]
        odd: list = []
        assert find(tmp_path, *patterns, odd=odd) == expect == find(tmp_path, *patterns, walked=walked)
        assert [p for p, _ in odd] == [p for p in other if any(fnmatch.fnmatchcase(p.name, pat) for pat in patterns)]
    odd = []
    assert find(tmp_path, "*.json", odd=odd, odd_only=True) == []
    assert [p.name for p, _ in odd] == ["dir.json"]
    assert find(tmp_path, "*.csv", exclude=["a/*"]) == [p for p in files if p.suffix == ".csv" and p.parent.name != "a"]
