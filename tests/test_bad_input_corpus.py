"""A corpus of corrupted dumps and parameter files (issue 10), each run through the stage that reads it.

Every case must end with exit 2 and ONE line on stderr that names the file and its row or key,
and must leave the previous good outputs byte-for-byte untouched (no staging folder left behind).
The dumps are small generated samples of the three native layouts (Eadro TT, GAIA MicroSS,
MSDS), written once per module; each case corrupts a fresh copy.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from stages import inspect as doctor
from stages import labels, logs, metrics, traces
from stages.core.errors import InputError
from stages.formats import eadro, gaia, msds

T0 = 1_650_000_000  # Eadro metric clock: 2022-04-15T05:20:00Z (logs and spans are written 8 h ahead)
G0 = 1_625_097_600  # GAIA: 2021-07-01T00:00:00Z
M0 = 1_574_157_600  # MSDS: 2019-11-19T10:00:00Z = 12:00:00 CEST
STAGES = {"metrics": metrics.main, "traces": traces.main, "logs": logs.main, "labels": labels.main}
FORMAT = {"tt": "eadro", "gaia": "gaia", "msds": "msds"}

PARAMS = """\
seed: 42
pipeline:
  datasets: [tt, gaia, msds]
  synthetic: []
  detectors: [random, pca]
datasets:
  tt: {format: eadro, raw: raw/tt, step_s: 10}
  gaia: {format: gaia, raw: raw/gaia, step_s: 10}
  msds: {format: msds, raw: raw/msds, step_s: 10}
split: {train: 0.6, val: 0.2, test: 0.2}
metrics: {max_gap_steps: 6}
traces: {max_gap_s: 3600}
logs: {sim_th: 0.4}
labels: {margin_s: 60}
"""


# ------------------------------------------------------------------ the good dumps


def _iso(t: float, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime(fmt)


def build_tt(root: Path) -> None:
    chunk = root / "TT.aDb"
    (chunk / "metrics").mkdir(parents=True)
    for k, svc in enumerate(("ts-a", "ts-b", "ts-c")):
        rows = "".join(f"{T0 + i},{(i * 7 + k) % 50 / 10},{1000 + (i % 13)}\n" for i in range(1800))
        (chunk / "metrics" / f"{svc}.csv").write_text("timestamp,cpu_usage_total,memory_usage\n" + rows)
    local = T0 + 28_800  # logs and spans: UTC+8 wall clock
    lines = {svc: [f"{_iso(local + 20 * i + k)}.000  INFO 1 --- [main] c.t.Api : request {i} served in {i % 9} ms"
                   for i in range(90)] for k, svc in enumerate(("ts-a", "ts-b"))}
    (chunk / "logs.json").write_text(json.dumps(lines))
    traces_ = []
    for i in range(30):
        start = (local + 60 * i) * 1_000_000
        spans = [{"traceID": f"t{i}", "spanID": f"t{i}a", "references": [], "startTime": start, "duration": 9000,
                  "processID": "p1", "operationName": "GET /a", "tags": []},
                 {"traceID": f"t{i}", "spanID": f"t{i}b", "startTime": start + 1000, "duration": 4000,
                  "references": [{"refType": "CHILD_OF", "traceID": f"t{i}", "spanID": f"t{i}a"}],
                  "processID": "p2", "operationName": "query", "tags": []}]
        traces_.append({"traceID": f"t{i}", "spans": spans,
                        "processes": {"p1": {"serviceName": "ts-a"}, "p2": {"serviceName": "ts-b"}}})
    (chunk / "spans.json").write_text(json.dumps(traces_, indent=1))
    faults = [{"name": "proj_ts-a_1", "fault": "cpu_load", "start": T0 + 600, "duration": 120},
              {"name": "proj_ts-b_1", "fault": "network_delay", "start": T0 + 1200, "duration": 60}]
    (root / "TT.fault-aDb.json").write_text(json.dumps({"faults": faults}, indent=1))


GAIA_TRACE_HEADER = "timestamp,host_ip,service_name,trace_id,span_id,parent_id,start_time,end_time,url,status_code,message\n"


def _gaia_log(t: float, text: str, level: str = "INFO") -> str:
    stamp = _iso(t) + ",250"
    return f'2021-07-01,webservice1,"{stamp} | {level} | 0.0.0.1 | 172.17.0.2 | webservice1 | {text}"\n'


def _gaia_fault(t: float, text: str, svc: str = "dbservice1") -> str:
    stamp = _iso(t) + ",616"
    return f'2021-07-01,{svc},"{stamp} | WARNING | 0.0.0.4 | 172.17.0.3 | {svc} | {text}"\n'


def _memory_fault(t: float, lasts: str = "600") -> str:
    return (f"[memory_anomalies] trigger a high memory program, start at {_iso(t)}.000000 and lasts {lasts} seconds "
            "and use 1g memory")


def build_gaia(root: Path) -> None:
    (root / "metric").mkdir(parents=True)
    for inst, ip in (("dbservice1", "0.0.0.4"), ("webservice1", "0.0.0.1"), ("redisservice1", "0.0.0.2")):
        rows = "".join(f"{(G0 + 30 * i) * 1000},{(i % 17) / 10}\n" for i in range(120))
        (root / "metric" / f"{inst}_{ip}_docker_cpu_total_norm_pct_2021-07-01_2021-07-31.csv").write_text(
            "timestamp,value\n" + rows)
    (root / "trace").mkdir()
    rows = []
    for i in range(30):
        s = (G0 + 120 * i) * 1000
        rows.append(f"{s},0.0.0.1,webservice1,g{i},g{i}a,,{s},{s + 80},/index,200,ok\n")
        rows.append(f"{s},0.0.0.2,redisservice1,g{i},g{i}b,g{i}a,{s + 10},{s + 30},/get,200,ok\n")
    (root / "trace" / "trace_table_webservice1_2021-07.csv").write_text(GAIA_TRACE_HEADER + "".join(rows))
    (root / "business").mkdir()
    (root / "business" / "business_table_webservice1_2021-07.csv").write_text(
        "datetime,service,message\n" + "".join(_gaia_log(G0 + 40 * i, f"call redis {i} ok") for i in range(80)))
    (root / "run").mkdir()
    (root / "run" / "run_table_2021-07.csv").write_text(
        "datetime,service,message\n" + _gaia_fault(G0 + 1200, _memory_fault(G0 + 600))
        + _gaia_fault(G0 + 2400, "[normal memory freed label] lasts ten minutes")
        + _gaia_fault(G0 + 3000, _memory_fault(G0 + 2700, "300"), "webservice1"))


def _osprofiler(base: str, t: float) -> dict:
    def node(sid: str, parent: str, project: str, started: int, finished: int, children: list) -> dict:
        payload = {"name": "wsgi-start", "service": "api", "project": project, "base_id": base, "trace_id": sid,
                   "parent_id": parent, "timestamp": _iso(t + started / 1000, "%Y-%m-%dT%H:%M:%S.%f"),
                   "info": {"request": {"path": "/v3/auth", "method": "GET"}}}
        return {"info": {"name": "wsgi", "service": "api", "project": project, "started": started,
                         "finished": finished, "exception": "None", "meta.raw_payload.wsgi-start": payload},
                "trace_id": sid, "parent_id": parent, "children": children}

    child = node(f"{base}-2", f"{base}-1", "glance", 5, 40, [])
    return {"info": {"name": "total", "started": 0, "finished": 60},
            "children": [node(f"{base}-1", base, "keystone", 0, 60, [child])]}


def build_msds(root: Path) -> None:
    (root / "metrics").mkdir(parents=True)
    for k in (101, 102, 103):
        rows = "".join(f"{_iso(M0 + 7200 + i)} CEST,{(i * k) % 97 / 10},{2000 + i % 11}\n" for i in range(600))
        (root / "metrics" / f"wally{k}_metrics.csv").write_text("now,cpu.user,mem.used\n" + rows)
    (root / "logs").mkdir()
    rows = "".join(f"{_iso(M0 + 6 * i, '%Y-%m-%dT%H:%M:%S')}.123Z,wally101,INFO,nova-compute,nova.compute,"
                   f"instance {i} spawned in {i % 5} s\n" for i in range(100))
    (root / "logs" / "logs_aggregated.csv").write_text(
        "@timestamp,Hostname,log_level,programname,python_module,Payload\n" + rows)
    (root / "traces").mkdir()
    for i in range(10):
        base = f"b{i:03d}"
        (root / "traces" / f"{base}.json").write_text(json.dumps(_osprofiler(base, M0 + 50 * i), indent=1))
    (root / "anomaly_label_sequential.csv").write_text(
        "anomaly_type,start_timestamp,end_timestamp,node_name\n"
        f"cpu_hog,{M0 + 100},{M0 + 160},wally101\nnet_loss,{M0 + 300},{M0 + 330},wally102\n")


# ------------------------------------------------------------------ helpers


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def set_line(path: Path, index: int, text: str) -> None:
    """Replace line ``index`` (0 = the CSV header, so data row n is line n)."""
    lines = lines_of(path)
    lines[index] = text if text.endswith("\n") else text + "\n"
    path.write_text("".join(lines))


def bad_byte(path: Path, index: int) -> None:
    """A non-UTF-8 byte inside line ``index`` (0-based; line ``index + 1`` in messages)."""
    lines = path.read_bytes().split(b"\n")
    lines[index] = lines[index][:3] + b"\xff" + lines[index][3:]
    path.write_bytes(b"\n".join(lines))


def csv_cell(path: Path, row: int, col: int, value: str) -> None:
    cells = lines_of(path)[row].rstrip("\n").split(",")
    cells[col] = value
    set_line(path, row, ",".join(cells))


def edit_json(path: Path, fn: Callable) -> None:
    """Change the parsed document in place with ``fn`` (its return value is ignored), write it back."""
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def params(fn: Callable[[str], str]) -> Callable[[Path], None]:
    def mutate(repo: Path) -> None:
        p = repo / "params.yaml"
        p.write_text(fn(p.read_text()))
    return mutate


def sub(old: str, new: str) -> Callable[[str], str]:
    def fn(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)
    return fn


@dataclass
class Case:
    id: str
    ds: str
    stage: str  # metrics | traces | logs | labels | inspect
    mutate: Callable[[Path], None]
    message: str  # regex the one stderr line must match: file and row/key named


TT, GA, MS = Path("raw/tt/TT.aDb"), Path("raw/gaia"), Path("raw/msds")
TTM, TTS, TTL, TTF = TT / "metrics/ts-a.csv", TT / "spans.json", TT / "logs.json", Path("raw/tt/TT.fault-aDb.json")
GAM = GA / "metric/dbservice1_0.0.0.4_docker_cpu_total_norm_pct_2021-07-01_2021-07-31.csv"
GAT, GAL, GAR = GA / "trace/trace_table_webservice1_2021-07.csv", GA / "business/business_table_webservice1_2021-07.csv", \
    GA / "run/run_table_2021-07.csv"
MSM, MSL, MST, MSF = MS / "metrics/wally101_metrics.csv", MS / "logs/logs_aggregated.csv", MS / "traces/b003.json", \
    MS / "anomaly_label_sequential.csv"


def at(rel: Path, fn: Callable[[Path], None]) -> Callable[[Path], None]:
    return lambda repo: fn(repo / rel)


def every(rels: list[Path], fn: Callable[[Path], None]) -> Callable[[Path], None]:
    def mutate(repo: Path) -> None:
        for rel in rels:
            fn(repo / rel)
    return mutate


def tt_metric_files(repo: Path) -> list[Path]:
    return sorted((repo / TT / "metrics").glob("*.csv"))


def span(ti: int, si: int, **changes) -> Callable[[Path], None]:
    def fn(data):
        data[ti]["spans"][si].update(changes)
    return at(TTS, lambda p: edit_json(p, fn))


def fault(i: int, **changes) -> Callable[[Path], None]:
    def fn(data):
        data["faults"][i].update(changes)
    return at(TTF, lambda p: edit_json(p, fn))


def to_dirs(repo: Path) -> None:
    for p in tt_metric_files(repo):
        p.unlink()
        p.mkdir()


def self_links(repo: Path) -> None:
    for p in tt_metric_files(repo):
        p.unlink()
        p.symlink_to(p.name)  # a symlink to itself


def raw_is_file(repo: Path) -> None:
    (repo / "raw/tt_file.csv").write_text("timestamp,cpu\n1650000000,1\n")
    p = repo / "params.yaml"
    p.write_text(p.read_text().replace("raw: raw/tt,", "raw: raw/tt_file.csv,"))


def osprofiler(path_fn: Callable[[dict], None]) -> Callable[[Path], None]:
    return at(MST, lambda p: edit_json(p, path_fn))


def rally(repo: Path) -> None:
    report = {"info": {"rally_version": "x"}, "tasks": [{"subtasks": [{"workloads": [{"hooks": [
        {"config": {"action": {"sys_call": "sh ./restart_nova_container.sh"}},
         "results": [{"started_at": M0 + 100.0, "finished_at": M0 + 160.0},
                     {"started_at": M0 + 900.0, "finished_at": M0 + 850.0}]}]}]}]}]}
    (repo / MS / "j_boot_delete_output.json").write_text(json.dumps(report))


CASES = [
    # ---------------------------------------------------------------- params.yaml (first stage that runs)
    Case("params-step-nan", "tt", "metrics", params(sub("step_s: 10}", "step_s: .nan}")),
         r"params\.yaml: datasets\.tt\.step_s: expected a finite number"),
    Case("params-step-inf", "tt", "metrics", params(sub("step_s: 10}", "step_s: .inf}")),
         r"params\.yaml: datasets\.tt\.step_s: expected a finite number"),
    Case("params-offset-nan", "tt", "metrics", params(sub("step_s: 10}", "step_s: 10, offsets: {logs: .nan}}")),
         r"params\.yaml: datasets\.tt\.offsets\.logs: expected a finite number"),
    Case("params-split-nan", "tt", "metrics", params(sub("train: 0.6", "train: .nan")),
         r"params\.yaml: split\.train: expected a finite number"),
    Case("params-seed-text", "tt", "metrics", params(sub("seed: 42", 'seed: "abc"')),
         r"params\.yaml: seed: expected an integer, got 'abc'"),
    Case("params-seed-bool", "tt", "metrics", params(sub("seed: 42", "seed: true")),
         r"params\.yaml: seed: expected an integer"),
    Case("params-misspelt-section", "tt", "metrics", params(sub("metrics: {", "metric: {")),
         r"params\.yaml: metric: expected a known section — did you mean 'metrics'\?"),
    Case("params-unknown-detector", "tt", "metrics", params(sub("[random, pca]", "[random, pcaa]")),
         r"params\.yaml: pipeline\.detectors\[1\]: expected a registered detector — did you mean 'pca'\?"),
    Case("params-unknown-dataset", "tt", "metrics", params(sub("datasets: [tt,", "datasets: [ttt,")),
         r"params\.yaml: pipeline\.datasets\[0\]: expected a dataset defined under datasets: — did you mean 'tt'\?"),
    Case("params-unknown-synthetic", "tt", "metrics", params(sub("synthetic: []", "synthetic: [synth_x]")),
         r"params\.yaml: pipeline\.synthetic\[0\]: expected a dataset defined under datasets:"),
    Case("params-detectors-not-list", "tt", "metrics", params(sub("detectors: [random, pca]", "detectors: pca")),
         r"params\.yaml: pipeline\.detectors: expected a list of names"),
    Case("params-unknown-pipeline-key", "tt", "metrics", params(sub("detectors:", "detector:")),
         r"params\.yaml: pipeline\.detector: expected a known key of 'pipeline' — did you mean 'detectors'\?"),
    Case("params-unknown-metrics-key", "tt", "metrics", params(sub("max_gap_steps: 6", "max_gap_step: 6")),
         r"params\.yaml: metrics\.max_gap_step: expected a known key of 'metrics' — did you mean 'max_gap_steps'\?"),
    Case("params-unknown-dataset-key", "tt", "metrics", params(sub("step_s: 10}", "stepsize: 10}")),
         r"params\.yaml: datasets\.tt\.stepsize: expected a known key of 'datasets\.tt' — did you mean 'step_s'\?"),
    Case("params-duplicate-section", "tt", "metrics", params(lambda t: t + "split: {train: 0.5}\n"),
         r"params\.yaml: line 15 column 1: expected valid YAML \(key 'split' given twice \(first on line 10\)\)"),
    Case("params-yaml-syntax", "tt", "metrics", params(sub("seed: 42", "seed: [42")),
         r"params\.yaml: line \d+ column \d+: expected valid YAML"),
    Case("params-format", "tt", "metrics", params(sub("format: eadro", "format: jaeger")),
         r"params\.yaml: datasets\.tt\.format: expected one of 'msds', 'gaia', 'eadro', got 'jaeger'"),
    Case("params-split-sum", "tt", "metrics", params(sub("test: 0.2}", "test: 0.3}")),
         r"params\.yaml: split: expected positive train/val/test fractions summing to 1"),
    Case("params-negative-gap", "tt", "metrics", params(sub("max_gap_steps: 6", "max_gap_steps: -1")),
         r"params\.yaml: metrics\.max_gap_steps: expected a non-negative integer"),
    Case("params-bad-regex", "tt", "metrics", params(sub("max_gap_steps: 6}", "max_gap_steps: 6, include: ['(']}")),
         r"params\.yaml: metrics\.include\[0\]: expected a valid regular expression"),
    Case("params-traces-inf", "tt", "traces", params(sub("max_gap_s: 3600", "max_gap_s: .inf")),
         r"params\.yaml: traces\.max_gap_s: expected a finite number"),
    Case("params-logs-simth", "tt", "logs", params(sub("sim_th: 0.4", "sim_th: 2")),
         r"params\.yaml: logs\.sim_th: expected a similarity in \(0, 1\]"),
    Case("params-labels-nan", "tt", "metrics", params(sub("margin_s: 60", "margin_s: .nan")),
         r"params\.yaml: labels\.margin_s: expected a finite number"),
    Case("params-raw-is-a-file", "tt", "metrics", raw_is_file,
         r"raw/tt_file\.csv: expected a raw dump folder, got 'a file'"),
    Case("params-raw-missing", "tt", "metrics", params(sub("raw: raw/tt,", "raw: raw/nope,")),
         r"raw/nope: expected an existing raw dump folder"),
    # ---------------------------------------------------------------- Eadro TT: metrics
    Case("tt-negative-timestamp", "tt", "metrics", at(TTM, lambda p: csv_cell(p, 5, 0, "-1650269923")),
         r"ts-a\.csv: row 5 column 'timestamp': expected a time after 2000-01-01.*got '1917-"),
    Case("tt-epoch-zero", "tt", "metrics", at(TTM, lambda p: csv_cell(p, 9, 0, "0")),
         r"ts-a\.csv: row 9 column 'timestamp': expected a time after 2000-01-01.*1970-01-01"),
    Case("tt-year-typo", "tt", "metrics", at(TTM, lambda p: csv_cell(p, 1700, 0, str(T0 + 1699 + 3 * 365 * 86400))),
         r"ts-a\.csv: row 1700 column 'timestamp': expected a time within a year of the metrics median"),
    Case("tt-non-numeric", "tt", "metrics", at(TTM, lambda p: csv_cell(p, 42, 1, "oops")),
         r"ts-a\.csv: row 42 column 'cpu_usage_total': expected a number, got 'oops'"),
    Case("tt-header-only", "tt", "metrics", lambda r: [p.write_text("timestamp,cpu_usage_total,memory_usage\n")
                                                        for p in tt_metric_files(r)],
         r"ts-a\.csv: expected metrics rows from at least one of its 3 metrics file\(s\), got 'none; this one: "
         r"header only"),
    Case("tt-metric-files-are-folders", "tt", "metrics", to_dirs,
         r"metrics/ts-a\.csv: expected metrics rows .*a folder, not a file"),
    Case("tt-metric-self-symlinks", "tt", "metrics", self_links,
         r"metrics/ts-a\.csv: expected metrics rows .*a broken or looping symlink"),
    Case("tt-non-utf8", "tt", "metrics", at(TTM, lambda p: bad_byte(p, 4)),
         r"ts-a\.csv: line 5 \(byte \d+\): expected UTF-8 text"),
    Case("tt-misspelt-time-column", "tt", "metrics", at(TTM, lambda p: set_line(p, 0, "timestmp,cpu_usage_total,memory_usage")),
         r"ts-a\.csv: header: expected columns \['timestamp'\]"),
    Case("tt-empty-metric-file", "tt", "metrics", at(TTM, lambda p: p.write_text("")),
         r"ts-a\.csv: header: expected a CSV with columns \['timestamp'\], got 'an empty file'"),
    Case("tt-bad-time-text", "tt", "metrics", at(TTM, lambda p: csv_cell(p, 7, 0, "yesterday")),
         r"ts-a\.csv: row 7 column 'timestamp': expected a date-time or epoch number, got 'yesterday'"),
    # ---------------------------------------------------------------- Eadro TT: traces
    Case("tt-negative-span-duration", "tt", "traces", span(3, 1, duration=-5),
         r"spans\.json: trace\[3\]\.spans\[1\]\.duration: expected a non-negative duration \(µs\), got -5"),
    Case("tt-span-start-in-seconds", "tt", "traces", span(4, 0, startTime=1_650_028_800),
         r"spans\.json: trace\[4\]\.spans\[0\] column 'startTime': expected a time after 2000-01-01"),
    Case("tt-span-missing-duration", "tt", "traces", at(TTS, lambda p: edit_json(p, lambda d: d[2]["spans"][0].pop("duration"))),
         r"spans\.json: trace\[2\]\.spans\[0\]\.duration: expected key 'duration'"),
    Case("tt-span-unknown-process", "tt", "traces", span(6, 1, processID="p9"),
         r"spans\.json: trace\[6\]\.spans\[1\]\.processID: expected a processID listed"),
    Case("tt-span-start-text", "tt", "traces", span(1, 0, startTime="soon"),
         r"spans\.json: trace\[1\]\.spans\[0\]\.startTime/duration: expected numbers \(µs\)"),
    Case("tt-spans-truncated", "tt", "traces", at(TTS, lambda p: p.write_text(p.read_text()[:4000])),
         r"spans\.json: line \d+ column \d+: expected valid JSON"),
    Case("tt-spans-zip-not-zip", "tt", "traces", at(TTS, lambda p: (p.unlink(), (p.parent / "spans.json.zip").write_text("PK?"))),
         r"spans\.json\.zip: expected a valid zip archive"),
    Case("tt-spans-top-level", "tt", "traces", at(TTS, lambda p: p.write_text('"spans"')),
         r"spans\.json: top level: expected a list of Jaeger traces"),
    Case("tt-spans-no-span", "tt", "traces", at(TTS, lambda p: p.write_text('{"data": []}')),
         r"spans\.json: expected traces rows from at least one of its 1 traces file\(s\), got 'none; this one: no span'"),
    Case("tt-span-year-typo", "tt", "traces", span(29, 1, startTime=(T0 + 28_800 + 2 * 365 * 86400) * 1_000_000),
         r"spans\.json: trace\[29\]\.spans\[1\] column 'startTime': expected a time within a year of the traces median"),
    # ---------------------------------------------------------------- Eadro TT: logs
    Case("tt-logs-truncated", "tt", "logs", at(TTL, lambda p: p.write_text(p.read_text()[:500])),
         r"logs\.json: line 1 column \d+: expected valid JSON"),
    Case("tt-logs-not-a-list", "tt", "logs", at(TTL, lambda p: edit_json(p, lambda d: d.update({"ts-b": "oops"}))),
         r"logs\.json: key 'ts-b': expected a list of log-line strings"),
    Case("tt-log-bad-date", "tt", "logs", at(TTL, lambda p: edit_json(
        p, lambda d: d["ts-a"].__setitem__(3, "2022-13-45 13:20:05.000  INFO 1 --- [main] c.t.Api : x"))),
         r"logs\.json: key 'ts-a' item 3 column 'line time': expected a date-time"),
    Case("tt-log-1999", "tt", "logs", at(TTL, lambda p: edit_json(
        p, lambda d: d["ts-a"].__setitem__(5, "1999-12-31 23:59:59.000  INFO 1 --- [main] c.t.Api : x"))),
         r"logs\.json: key 'ts-a' item 5 column 'line time': expected a time after 2000-01-01"),
    Case("tt-logs-top-level-list", "tt", "logs", at(TTL, lambda p: p.write_text('[["x"]]')),
         r"logs\.json: top level: expected an object mapping service"),
    # ---------------------------------------------------------------- Eadro TT: faults
    Case("tt-fault-negative-duration", "tt", "labels", fault(1, duration=-60),
         r"TT\.fault-aDb\.json: faults\[1\]\.start/duration: expected an epoch-seconds start and a non-negative"),
    Case("tt-fault-missing-start", "tt", "labels", at(TTF, lambda p: edit_json(p, lambda d: d["faults"][0].pop("start"))),
         r"TT\.fault-aDb\.json: faults\[0\]\.start: expected key 'start'"),
    Case("tt-fault-epoch-zero", "tt", "labels", fault(0, start=0),
         r"TT\.fault-aDb\.json: faults\[0\]\.start: expected a time after 2000-01-01"),
    Case("tt-fault-years-away", "tt", "labels", at(TTF, lambda p: edit_json(p, lambda d: d["faults"].append(
        {"name": "proj_ts-c_1", "fault": "cpu_load", "start": T0 + 2 * 365 * 86400, "duration": 60}))),
         r"TT\.fault-aDb\.json: faults\[2\]\.start: expected a time within a year of the faults median"),
    Case("tt-faults-not-list", "tt", "labels", at(TTF, lambda p: p.write_text('{"faults": {"a": 1}}')),
         r"TT\.fault-aDb\.json: faults: expected a list of fault objects"),
    # ---------------------------------------------------------------- GAIA
    Case("gaia-negative-timestamp", "gaia", "metrics", at(GAM, lambda p: csv_cell(p, 4, 0, "-1650269923000")),
         r"docker_cpu_total_norm_pct_2021-07-01_2021-07-31\.csv: row 4 column 'timestamp': expected a time after 2000"),
    Case("gaia-value-text", "gaia", "metrics", at(GAM, lambda p: csv_cell(p, 11, 1, "abc")),
         r"dbservice1_.*\.csv: row 11 column 'value': expected a number, got 'abc'"),
    Case("gaia-metric-name-off-pattern", "gaia", "metrics", lambda r: [
        p.rename(p.with_name(p.name.replace("_2021-07-31", ""))) for p in (r / GA / "metric").glob("*.csv")],
         r"dbservice1_0\.0\.0\.4_docker_cpu_total_norm_pct_2021-07-01\.csv: expected metrics rows .*name outside the"),
    Case("gaia-metric-header-only", "gaia", "metrics", lambda r: [
        p.write_text("timestamp,value\n") for p in (r / GA / "metric").glob("*.csv")],
         r"\.csv: expected metrics rows from at least one of its 3 metrics file\(s\).*header only"),
    Case("gaia-metric-year-typo", "gaia", "metrics", at(GAM, lambda p: csv_cell(p, 100, 0, str((G0 + 3000 + 2 * 365 * 86400) * 1000))),
         r"dbservice1_.*\.csv: row 100 column 'timestamp': expected a time within a year of the metrics median"),
    Case("gaia-span-ends-before-start", "gaia", "traces", at(GAT, lambda p: csv_cell(p, 2, 7, str((G0 - 60) * 1000))),
         r"trace_table_webservice1_2021-07\.csv: row 2 column 'end_time': expected a time >= start_time"),
    Case("gaia-span-bad-time", "gaia", "traces", at(GAT, lambda p: csv_cell(p, 5, 6, "2021-07-01 25:61:00")),
         r"trace_table_webservice1_2021-07\.csv: row 5 column 'start_time': expected a date-time"),
    Case("gaia-span-status-text", "gaia", "traces", at(GAT, lambda p: csv_cell(p, 8, 9, "OK")),
         r"trace_table_webservice1_2021-07\.csv: row 8 column 'status_code': expected a number, got 'OK'"),
    Case("gaia-trace-missing-column", "gaia", "traces", at(GAT, lambda p: set_line(p, 0, GAIA_TRACE_HEADER.replace("end_time", "end"))),
         r"trace_table_webservice1_2021-07\.csv: header: expected columns .*missing \['end_time'\]"),
    Case("gaia-span-1990", "gaia", "traces", at(GAT, lambda p: (csv_cell(p, 3, 6, "631152000000"),
                                                               csv_cell(p, 3, 7, "631152000050"))),
         r"trace_table_webservice1_2021-07\.csv: row 3 column 'start_time': expected a time after 2000-01-01"),
    Case("gaia-log-1990", "gaia", "logs", at(GAL, lambda p: set_line(p, 6, _gaia_log(631_152_000, "old").rstrip("\n"))),
         r"business_table_webservice1_2021-07\.csv: row 6 column 'message time': expected a time after 2000-01-01"),
    Case("gaia-log-missing-column", "gaia", "logs", at(GAL, lambda p: set_line(p, 0, "datetime,service,msg")),
         r"business_table_webservice1_2021-07\.csv: header: expected columns \['service', 'message'\]"),
    Case("gaia-fault-negative-duration", "gaia", "labels", at(GAR, lambda p: set_line(
        p, 3, _gaia_fault(G0 + 3000, _memory_fault(G0 + 2700, "-300"), "webservice1"))),
         r"run_table_2021-07\.csv: row 3 column 'message': expected a non-negative fault duration"),
    Case("gaia-fault-1970", "gaia", "labels", at(GAR, lambda p: set_line(p, 1, _gaia_fault(G0 + 1200, _memory_fault(60)))),
         r"run_table_2021-07\.csv: row 1 column 'message start time': expected a time after 2000-01-01"),
    Case("gaia-fault-years-away", "gaia", "labels", at(GAR, lambda p: p.write_text(
        p.read_text() + _gaia_fault(G0 + 3600, _memory_fault(G0 + 3 * 365 * 86400)) + _gaia_fault(
            G0 + 3700, _memory_fault(G0 + 3500)))),
         r"run_table_2021-07\.csv: row 4 column 'message start time': expected a time within a year of the faults median"),
    Case("gaia-run-table-missing-column", "gaia", "labels", at(GAR, lambda p: set_line(p, 0, "datetime,servce,message")),
         r"run_table_2021-07\.csv: header: expected columns \['service', 'message'\]"),
    Case("gaia-fault-bad-start", "gaia", "labels", at(GAR, lambda p: set_line(p, 1, _gaia_fault(
        G0 + 1200, "[memory_anomalies] trigger a high memory program, start at 2021-13-01 00:10:00.000000 and lasts 600 seconds"))),
         r"run_table_2021-07\.csv: row 1 column 'message start time \(memory_anomaly\)': expected a date-time"),
    # ---------------------------------------------------------------- MSDS
    Case("msds-bad-zone", "msds", "metrics", at(MSM, lambda p: csv_cell(p, 3, 0, "2019-11-19 12:00:02 XYZT")),
         r"wally101_metrics\.csv: row 3 column 'now': expected a time zone among"),
    Case("msds-bad-date", "msds", "metrics", at(MSM, lambda p: csv_cell(p, 12, 0, "2019-13-19 12:00:11 CEST")),
         r"wally101_metrics\.csv: row 12 column 'now': expected a date-time"),
    Case("msds-1999", "msds", "metrics", at(MSM, lambda p: csv_cell(p, 20, 0, "1999-11-19 12:00:19 CEST")),
         r"wally101_metrics\.csv: row 20 column 'now': expected a time after 2000-01-01"),
    Case("msds-value-text", "msds", "metrics", at(MSM, lambda p: csv_cell(p, 30, 1, "n/a")),
         r"wally101_metrics\.csv: row 30 column 'cpu\.user': expected a number, got 'n/a'"),
    Case("msds-time-column-renamed", "msds", "metrics", lambda r: [set_line(p, 0, "time,cpu.user,mem.used")
                                                                  for p in (r / MS / "metrics").glob("*.csv")],
         r"wally101_metrics\.csv: expected metrics rows .*no Glances 'now'"),
    Case("msds-span-finished-before-started", "msds", "traces", osprofiler(
        lambda d: d["children"][0]["children"][0]["info"].update(finished=1)),
         r"b003\.json: children\[0\]\.children\[0\]\.info\.finished: expected a time >= info\.started \(5\), got 1"),
    Case("msds-span-missing-info", "msds", "traces", osprofiler(lambda d: d["children"][0].pop("info")),
         r"b003\.json: children\[0\]\.info: expected key 'info'"),
    Case("msds-span-bad-timestamp", "msds", "traces", osprofiler(
        lambda d: d["children"][0]["info"]["meta.raw_payload.wsgi-start"].update(timestamp="2019-11-19T25:00:00.000000")),
         r"b003\.json: children\[0\] column 'meta\.raw_payload\.\*-start\.timestamp': expected a date-time"),
    Case("msds-span-1990", "msds", "traces", osprofiler(
        lambda d: d["children"][0]["info"]["meta.raw_payload.wsgi-start"].update(timestamp="1990-01-01T00:00:00.000000")),
         r"b003\.json: children\[0\] column 'meta\.raw_payload\.\*-start\.timestamp': expected a time after 2000"),
    Case("msds-log-bad-time", "msds", "logs", at(MSL, lambda p: csv_cell(p, 9, 0, "2019-11-19T25:00:00.123Z")),
         r"logs_aggregated\.csv: row 9 column '@timestamp': expected a date-time"),
    Case("msds-log-1980", "msds", "logs", at(MSL, lambda p: csv_cell(p, 17, 0, "1980-01-01T00:00:00.000Z")),
         r"logs_aggregated\.csv: row 17 column '@timestamp': expected a time after 2000-01-01"),
    Case("msds-label-ends-before-start", "msds", "labels", at(MSF, lambda p: csv_cell(p, 2, 2, str(M0 + 200))),
         r"anomaly_label_sequential\.csv: row 2 column 'end_timestamp': expected a time >= start_timestamp"),
    Case("msds-label-epoch-zero", "msds", "labels", at(MSF, lambda p: csv_cell(p, 1, 1, "0")),
         r"anomaly_label_sequential\.csv: row 1 column 'start_timestamp': expected a time after 2000-01-01"),
    Case("msds-rally-finish-before-start", "msds", "labels", rally,
         r"j_boot_delete_output\.json: tasks\[0\]\.subtasks\[0\]\.workloads\[0\]\.hooks\[0\]\.results\[1\]"),
    Case("msds-label-missing-column", "msds", "labels", at(MSF, lambda p: set_line(
        p, 0, "anomaly_type,start_timestamp,end_ts,node_name")),
         r"anomaly_label_sequential\.csv: header: expected columns .*missing \['end_timestamp'\]"),
    # ---------------------------------------------------------------- the doctor on the same inputs
    Case("doctor-negative-timestamp", "tt", "inspect", at(TTM, lambda p: csv_cell(p, 5, 0, "-1650269923")),
         r"ts-a\.csv: row 5 column 'timestamp': expected a time after 2000-01-01.*1917-"),
    Case("doctor-gaia-span-backwards", "gaia", "inspect", at(GAT, lambda p: csv_cell(p, 2, 7, str((G0 - 60) * 1000))),
         r"trace_table_webservice1_2021-07\.csv: row 2 column 'end_time'"),
    Case("doctor-msds-label-backwards", "msds", "inspect", at(MSF, lambda p: csv_cell(p, 2, 2, str(M0 + 200))),
         r"anomaly_label_sequential\.csv: row 2 column 'end_timestamp'"),
]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A project with the three good dumps and every feature stage's outputs of them."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "params.yaml").write_text(PARAMS)
    build_tt(root / "raw/tt")
    build_gaia(root / "raw/gaia")
    build_msds(root / "raw/msds")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for ds in FORMAT:
            for name, main in STAGES.items():
                assert main([ds]) == 0, (ds, name)
    return root


@pytest.fixture
def repo(base: Path, tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(base, root, symlinks=True)
    monkeypatch.chdir(root)
    return root


def test_the_corpus_is_big_enough():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
    assert {c.ds for c in CASES} == set(FORMAT) and sum(c.id.startswith("params-") for c in CASES) >= 20


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_named_line_and_keeps_outputs(case: Case, repo: Path, capsys):
    before = {ds: digests(repo / "data/features" / ds) for ds in FORMAT}
    assert all(before.values())
    case.mutate(repo)
    capsys.readouterr()
    if case.stage == "inspect":
        rc = doctor.main(["--format", FORMAT[case.ds], str(repo / "raw" / case.ds)])
    else:
        rc = STAGES[case.stage]([case.ds])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc == 2, err[-3000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert re.search(case.message, lines[0]), lines[0]
    assert {ds: digests(repo / "data/features" / ds) for ds in FORMAT} == before
    assert not (repo / ".staging").exists()


# ------------------------------------------------------------------ accepted, but never silently


def run_ok(ds: str, stage: str) -> None:
    assert STAGES[stage]([ds]) == 0


def test_one_odd_metric_file_is_named_with_its_columns(repo: Path, caplog):
    set_line(repo / TTM, 0, "timestamp,cpu_usage_totl,memory_usage")
    with caplog.at_level("WARNING"):
        run_ok("tt", "metrics")
    assert re.search(r"ts-a\.csv: columns differ from the 2 other metrics files of the dump: missing "
                     r"\['cpu_usage_total'\], extra \['cpu_usage_totl'\]", caplog.text)


def test_skipped_files_are_listed(repo: Path, caplog):
    (repo / TT / "metrics/ts-d.csv").write_text("timestamp,cpu_usage_total,memory_usage\n")  # header only
    (repo / TT / "metrics/ts-e.csv").mkdir()  # a folder named like a metric file
    (repo / TT / "metrics/ts-f.csv").symlink_to("ts-f.csv")  # a symlink to itself
    (repo / GA / "metric/dbservice2_0.0.0.5_docker_cpu_2021-07-01.csv").write_text("timestamp,value\n1,2\n")
    (repo / MS / "metrics/wally104_metrics.csv").write_text("time,cpu.user\n2019-11-19 12:00:00 CEST,1\n")
    with caplog.at_level("WARNING"):
        for ds in FORMAT:
            run_ok(ds, "metrics")
    text = caplog.text
    assert re.search(r"metrics: 3 file\(s\) skipped: .*ts-e\.csv \(a folder, not a file\); .*ts-f\.csv "
                     r"\(a broken or looping symlink\); .*ts-d\.csv \(header only, no data row\)", text)
    assert "dbservice2_0.0.0.5_docker_cpu_2021-07-01.csv (name outside the pattern" in text
    assert "wally104_metrics.csv (no Glances 'now' and no Elasticsearch '@timestamp' column)" in text


def test_unknown_gaia_fault_kind_is_kept_as_other(repo: Path, caplog):
    text = "[disk_anomalies] start at 2021-07-01 00:50:00.000000 and lasts 120 seconds"
    (repo / GAR).write_text((repo / GAR).read_text() + _gaia_fault(G0 + 3100, text))
    with caplog.at_level("WARNING"):
        f = gaia.read_faults(repo / GA, 0)
    assert f.filter(f["kind"] == "other").rows() == [(G0 * 1_000_000 + 3000 * 1_000_000,
                                                      (G0 + 3120) * 1_000_000, "dbservice1", "other")]
    assert "run_table_2021-07.csv: 1 row(s) name no known fault kind and are kept as kind 'other' (row 4" in caplog.text


def test_cyclic_self_parent_and_reused_span_ids_are_counted_warnings(repo: Path, caplog):
    def corrupt(d):
        d[0]["spans"][0]["references"] = [{"refType": "CHILD_OF", "spanID": "t0a"}]  # its own parent
        d[1]["spans"][0]["references"] = [{"refType": "CHILD_OF", "spanID": "t1b"}]  # t1a ↔ t1b: a cycle
        d[2]["spans"].append(dict(d[2]["spans"][1], duration=999_999))  # spanID t2b reused, other content
    edit_json(repo / TTS, corrupt)
    with caplog.at_level("WARNING"):
        spans = eadro.read_traces(repo / "raw/tt", 0)
    assert "1 span id(s) reused by different spans (2 records); the first record of each is kept (trace t2 span t2b)" \
        in caplog.text
    assert re.search(r"3 span\(s\) in 2 trace\(s\) are their own parent \(1\) or sit on a parent cycle \(2\); "
                     r"their parent links are cut .*trace t0 span t0a", caplog.text)
    cut = spans.filter(spans["span_id"].is_in(["t0a", "t1a", "t1b"]))
    assert cut["parent_id"].null_count() == 3 and spans.height == 60
    run_ok("tt", "traces")
    graph = json.loads((repo / "data/features/tt/call_graph.json").read_text())
    assert graph["edges"] == [["ts-a", "ts-b"]]  # no ts-b → ts-a edge made up from the cycle


def test_library_calls_raise_the_same_input_error(repo: Path):
    csv_cell(repo / MSF, 2, 2, str(M0 + 200))
    with pytest.raises(InputError, match=r"anomaly_label_sequential\.csv: row 2 column 'end_timestamp'") as err:
        msds.read_faults(repo / MS, 0)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a folder whatever its permission bits")
def test_unreadable_metrics_folder_is_an_error(repo: Path, capsys):
    folder = repo / TT / "metrics"
    folder.chmod(0)
    try:
        assert metrics.main(["tt"]) == 2
    finally:
        folder.chmod(0o755)
    assert re.search(r"TT\.aDb/metrics: expected a readable folder", capsys.readouterr().err)


def test_the_project_params_pass_the_check(repo_root: Path):
    """The committed params.yaml names only known sections, detectors and datasets (light check)."""
    from stages.core.params import check_pipeline, load_raw

    check_pipeline(load_raw(repo_root / "params.yaml"))
