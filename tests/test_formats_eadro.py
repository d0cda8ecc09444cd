"""Eadro reader: exact figures on the real TrainTicket chunk, and the layout quirks on a tiny synthetic dump.

The expected numbers were computed independently with plain ``json``/``csv`` on the sample.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import polars as pl
import pytest

from stages.core.errors import InputError
from stages.core.frames import SCHEMAS, US, conform
from stages.formats import eadro, read_dump

CHUNK = "TT.2022-04-19T001753D2022-04-19T020534"
LOG_LINES = {
    "ts-auth-service": 515, "ts-assurance-service": 166, "ts-basic-service": 495, "ts-contacts-service": 664,
    "ts-order-other-service": 166, "ts-order-service": 664, "ts-preserve-service": 913, "ts-route-service": 829,
    "ts-security-service": 913, "ts-ticketinfo-service": 330, "ts-travel-service": 2129,
    "ts-station-service": 248, "ts-verification-code-service": 425,
}


@pytest.fixture(scope="module")
def tt(shared_data: Path):
    return read_dump("eadro", shared_data / "tt-eadro")


def test_real_tt_metrics(tt):
    m = tt.metrics
    assert dict(m.schema) == SCHEMAS["metrics"]
    assert len(tt.files["metrics"]) == 27
    assert m.height == 27 * 6461 * 7 == 1_221_129
    assert m["entity"].n_unique() == 27 and "ts-auth-service" in m["entity"].to_list()
    assert sorted(m["metric"].unique()) == ["cpu_usage_system", "cpu_usage_total", "cpu_usage_user", "memory_usage",
                                            "memory_working_set", "rx_bytes", "tx_bytes"]
    assert m["ts"].min() == 1650269873 * US and m["ts"].max() == 1650276333 * US
    assert m["ts"].is_sorted()


def test_real_tt_traces_deduplicated(tt):
    t = tt.traces
    assert dict(t.schema) == SCHEMAS["traces"]
    assert t.height == 4327  # 17,673 span records in 1,900 (repeated) trace objects
    assert t["trace_id"].n_unique() == 805
    assert t.select("trace_id", "span_id").is_unique().all()
    assert t["parent_id"].is_null().sum() == 699
    assert t["service"].n_unique() == 15
    assert t["is_error"].sum() == 2  # error=true tag / http 500 on ts-travel-service
    # span clock runs +8 h: after the default offset the recent spans end where the metrics end
    recent = t.filter(pl.col("start_ts") > 1650200000 * US)
    assert recent.height == 4127
    assert recent["start_ts"].max() == 1650305097920000 - 28800 * US


def test_real_tt_logs(tt):
    lg = tt.logs
    assert dict(lg.schema) == SCHEMAS["logs"]
    counts = dict(lg.group_by("service").len().iter_rows())
    assert counts == LOG_LINES  # 14 services with empty lists contribute nothing
    assert dict(lg.group_by("level").len().iter_rows()) == {"INFO": 8455, "ERROR": 2}
    # '2022-04-18 16:18:53.093' is UTC+8 wall time → 08:18:53.093 UTC
    assert lg["ts"].min() == 1650269933093000
    assert lg["message"].str.starts_with("contacts.controller").any()


def test_real_tt_faults_line_up_with_metrics(tt):
    f = tt.faults
    assert dict(f.schema) == SCHEMAS["faults"]
    assert dict(f.group_by("kind").len().iter_rows()) == {"cpu_load": 3, "network_delay": 3, "network_loss": 3}
    assert sorted(f["entity"].unique()) == ["ts-auth-service", "ts-route-service", "ts-ticketinfo-service"]
    assert (f["end_ts"] - f["start_ts"] == 600 * US).all()
    first = f.row(0, named=True)
    assert first["start_ts"] == 1650269875883025 and first["kind"] == "cpu_load"
    cpu = tt.metrics.filter((pl.col("entity") == "ts-auth-service") & (pl.col("metric") == "cpu_usage_total"))
    inside = cpu.filter(pl.col("ts").is_between(first["start_ts"], first["end_ts"]))["value"].mean()
    after = cpu.filter(pl.col("ts").is_between(first["end_ts"] + 100 * US, first["end_ts"] + 700 * US))["value"].mean()
    assert inside > 100 * after


def test_chunk_folder_as_root_finds_sibling_fault_file(shared_data: Path):
    files = eadro.list_files(shared_data / "tt-eadro" / CHUNK)
    assert [p.name for p in files["faults"]] == ["TT.fault-2022-04-19T001753D2022-04-19T020534.json"]


# ------------------------------------------------------------------ synthetic layout quirks


def _jaeger(trace_id: str, spans: list[tuple[str, str | None, str, int, bool]]) -> dict:
    procs = {f"p{i}": {"serviceName": svc, "tags": []} for i, (_, _, svc, _, _) in enumerate(spans)}
    out = []
    for i, (sid, parent, _svc, start, err) in enumerate(spans):
        out.append({
            "traceID": trace_id, "spanID": sid, "operationName": f"op{i}",
            "references": [] if parent is None else [{"refType": "CHILD_OF", "traceID": trace_id, "spanID": parent}],
            "startTime": start, "duration": 2_000_000,
            "tags": [{"key": "http.status_code", "type": "int64", "value": 503 if err else 200}],
            "processID": f"p{i}",
        })
    return {"traceID": trace_id, "spans": out, "processes": procs, "warnings": None}


def write_chunk(root: Path, sys_: str, start_s: int, *, zipped: bool) -> Path:
    chunk = root / f"{sys_}.{start_s}D{start_s + 60}"
    (chunk / "metrics").mkdir(parents=True)
    rows = "\n".join(f"{start_s + i},{i * 0.5},{'' if i == 2 else 7}" for i in range(4))
    (chunk / "metrics" / "social-graph.csv").write_text(f"timestamp,cpu_usage_total,rx_bytes\n{rows}\n{start_s},9,9\n")
    (chunk / "logs.json").write_text(json.dumps({
        "social-graph": [
            "2022-04-18 16:00:00.000  WARN 1 --- [main] a.B : first",
            "java.lang.IllegalStateException: boom",
            "\tat a.B.c(B.java:1)",
        ],
        "media": [],
    }))
    trace = _jaeger(f"t{start_s % 1000}", [("s1", None, "nginx", (start_s + 8 * 3600) * US, False),
                           ("s2", "s1", "social-graph", (start_s + 8 * 3600) * US + 5, True)])
    payload = json.dumps({"data": [trace, trace]})  # repeated trace objects, as in the real export
    if zipped:
        with zipfile.ZipFile(chunk / "spans.json.zip", "w") as zf:
            zf.writestr("spans.json", payload)
            zf.writestr("__MACOSX/._spans.json", "junk")
    else:
        (chunk / "spans.json").write_text(payload)
    (root / f"{sys_}.fault-{start_s}D{start_s + 60}.json").write_text(json.dumps(
        {"faults": [{"name": "socialnetwork_social-graph_1", "fault": "cpu_load", "start": start_s + 1.5, "duration": 10}]}))
    return chunk


def test_synthetic_chunks_concatenate(tmp_path: Path):
    write_chunk(tmp_path, "SN", 1_600_000_000, zipped=True)
    write_chunk(tmp_path, "SN", 1_600_000_100, zipped=False)
    dump = read_dump("eadro", tmp_path)
    m = dump.metrics
    # empty cell dropped, duplicated and out-of-order timestamp kept as points
    assert m.height == 2 * (4 + 3 + 2)
    assert m["ts"].is_sorted()
    assert m.filter(pl.col("ts") == 1_600_000_000 * US).height == 4
    t = dump.traces
    assert t.height == 4 and t["trace_id"].n_unique() == 2  # each chunk's repeated trace kept once
    assert t.filter(pl.col("span_id") == "s2")["is_error"].all()
    assert t["start_ts"].min() == 1_600_000_000 * US  # -8 h default offset
    lg = dump.logs
    assert lg.height == 6 and set(lg["service"]) == {"social-graph"}
    assert set(lg["level"]) == {"WARNING"}  # WARN folded; continuation lines inherit
    assert lg["message"].to_list()[:3] == ["a.B : first", "java.lang.IllegalStateException: boom", "at a.B.c(B.java:1)"]
    f = dump.faults
    assert f["entity"].to_list() == ["social-graph", "social-graph"]
    assert f["start_ts"][0] == 1_600_000_001_500_000


def test_span_dedup_within_one_file(tmp_path: Path):
    write_chunk(tmp_path, "TT", 1_600_000_000, zipped=False)
    t = eadro.read_traces(tmp_path, 0.0)
    assert t.height == 2 and t["parent_id"].to_list() == [None, "s1"]


def test_fault_entity_rules():
    assert eadro.fault_entity("dockercomposemanifests_ts-auth-service_1", []) == "ts-auth-service"
    assert eadro.fault_entity("proj_compose-post-service_12", []) == "compose-post-service"
    assert eadro.fault_entity("plain-service", []) == "plain-service"
    assert eadro.fault_entity("x_ts-auth-service_1", ["ts-auth", "ts-auth-service"]) == "ts-auth-service"


def test_missing_modalities_are_none(tmp_path: Path):
    (tmp_path / "TT.aDb" / "metrics").mkdir(parents=True)
    (tmp_path / "TT.aDb" / "metrics" / "svc.csv").write_text("timestamp,cpu\n1650000001,0.5\n")
    assert eadro.read_logs(tmp_path, 0) is None and eadro.read_traces(tmp_path, 0) is None
    assert eadro.read_faults(tmp_path, 0) is None
    assert eadro.read_metrics(tmp_path, 2.0)["ts"].to_list() == [1650000003 * US]


@pytest.mark.parametrize("layout", ["list", "data", "zip"])
def test_span_chunks_give_the_same_frame_as_one_chunk(tmp_path: Path, monkeypatch, layout: str):
    """Traces streamed in chunks of 1 or 3 (repeats across chunks and files) equal one big chunk."""
    traces = [_jaeger(f"t{i}", [("s1", None, "nginx", 1_650_000_000 * US + i, False),
                                ("s2", "s1", f"svc{i % 3}", 1_650_000_000 * US + i, i % 4 == 0)]) for i in range(10)]
    partial = dict(traces[2], spans=traces[2]["spans"][1:])  # a repeat holding only some of its spans
    objects = traces + [traces[7], partial, traces[0]]
    for k, part in enumerate((objects[:8], objects[8:] + traces[3:5])):
        chunk = tmp_path / f"TT.{k}D{k + 1}"
        chunk.mkdir()
        payload = json.dumps(part if layout == "list" else {"data": part})
        if layout == "zip":
            with zipfile.ZipFile(chunk / "spans.json.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.writestr("spans.json", payload)
        else:
            (chunk / "spans.json").write_text(payload)
    whole = eadro.read_traces(tmp_path, 0.0)
    assert whole.height == 20 and whole.select("trace_id", "span_id").is_unique().all()
    for size in (1, 3):
        monkeypatch.setattr(eadro, "SPAN_CHUNK_TRACES", size)
        assert eadro.read_traces(tmp_path, 0.0).equals(whole)


def test_head_split_equals_the_line_regex_on_edge_lines():
    """The faster head-only split (issue 11) must give exactly _LINE's groups, and _BLANK_RUNS
    exactly r"\\s+" → " ", on lines with embedded newlines, tabs and Unicode blanks."""
    from stages.formats.eadro import _BLANK_RUNS, _LINE, _split_head

    lines = ["2022-04-18 16:18:53.138  INFO 1 --- [main] a.B : started in 3 s",
             "2022-04-18 16:18:53.138  INFO 1 --- [x] y : a\nb",      # newline in the text: no head
             "2022-04-18 16:18:53.138  INFO \n abc",                  # newline inside the blank run: head
             "2022-04-18 16:18:53 WARN", "2022-04-18 16:18:53 WARN  ", "2022-04-18 16:18:53.138  INFO\n",
             "2022-04-18T16:18:53,5\tERROR\u00a0x  y\u2028z", "\tat com.x.Y(Y.java:1)", "", "x\u00a0\u00a0y\t z"]
    df = pl.DataFrame({"raw": lines})
    want = df.with_columns(pl.col("raw").str.extract_groups(_LINE).alias("g")).unnest("g") \
        .rename({"1": "time", "2": "level", "3": "rest"})
    assert _split_head(df).equals(want)
    assert want["time"].null_count() == 5  # the cases above cover both outcomes
    assert df["raw"].str.replace_all(_BLANK_RUNS, " ").equals(df["raw"].str.replace_all(r"\s+", " "))


def _one_at_a_time(path: Path) -> pl.DataFrame:
    """The reader's former loop: each service parsed on its own, a repeated key replacing the earlier one."""
    from stages.formats.eadro import _parse_log_lines

    frames = {}
    for service, lines in json.loads(path.read_text(), object_pairs_hook=list):  # every key, repeats too
        frames[service] = _parse_log_lines(service, lines, path) if lines else None
    return conform(pl.concat([f for f in frames.values() if f is not None]), "logs")  # the reader's columns


def test_batched_services_equal_one_service_at_a_time(tmp_path: Path, caplog):
    """Parsing many services in one polars pass (issue 11) keeps the rows, the continuation lines,
    the per-service orphan warnings and the replacement of a repeated key."""
    t = "2022-04-18 16:18:5{}.138  {} 1 --- [main] a.B : {}"
    body = ('{"s1": ["orphan line", "' + t.format(1, "INFO", "x") + '", "\\tat y"],'
            ' "s2": [], "s3": ["' + t.format(2, "WARN", "w") + '"],'
            ' "s1": ["' + t.format(3, "ERROR", "again") + '", "more"],'
            ' "s4": ["lost", "' + t.format(4, "DEBUG", "d  e") + '"], "s3": null}')
    path = tmp_path / "logs.json"
    path.write_text(body)
    with caplog.at_level("WARNING"):
        got = pl.concat(eadro._read_log_file(path))
    batched_warnings = [r.getMessage() for r in caplog.records]
    caplog.clear()
    with caplog.at_level("WARNING"):
        want = _one_at_a_time(path)
    assert got.sort("service", maintain_order=True).equals(want.sort("service", maintain_order=True))
    assert set(got["service"]) == {"s1", "s4"}  # s3's null replaced its line, s2 logged nothing
    assert got.filter(pl.col("service") == "s1")["message"].to_list()[-1] == "more"  # the second s1 won
    assert sorted(batched_warnings) == sorted(r.getMessage() for r in caplog.records)
    assert any("key 's4': 1 line(s)" in w for w in batched_warnings)


def test_batched_services_raise_the_first_error_in_file_order(tmp_path: Path):
    """A bad time in an earlier service is reported before a later service's bad type, as before."""
    path = tmp_path / "logs.json"
    path.write_text('{"a": ["2022-04-18 16:18:53.138  INFO ok"], "b": ["2022-13-45 99:99:99.1  INFO bad"], "c": 5}')
    with pytest.raises(InputError, match="key 'b' item 0"):
        eadro._read_log_file(path)
