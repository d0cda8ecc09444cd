"""MSDS reader: Glances metrics, the OSProfiler trace and Rally hook faults from the real samples
(counts computed independently with ``csv``/``json``), plus logs and third-party labels."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from stages.core.frames import SCHEMAS, US
from stages.formats import msds

WORK = Path("msds/snedelkoski_repo/workloads")


def test_real_glances_metrics(shared_data: Path):
    m = msds.read_metrics(shared_data / WORK / "network_create_delete_config", 0.0)
    assert dict(m.schema) == SCHEMAS["metrics"]
    assert set(m["entity"]) == {"glances_out"}  # node unknown → file stem
    assert sorted(m["metric"].unique()) == ["cpu.user", "load.cpucore", "load.min1", "load.min15", "load.min5", "mem.used"]
    assert m.height == 9887 * 6  # every row kept, 3,060 of them repeat a second
    per_ts = m.filter(pl.col("metric") == "cpu.user").group_by("ts").len()
    assert per_ts.height == 6827 and int((per_ts["len"] - 1).sum()) == 3060
    # '2019-10-11 21:11:16 CEST' = 19:11:16 UTC
    assert m["ts"].min() == 1570821076 * US


def test_real_osprofiler_trace(shared_data: Path):
    t = msds.read_traces(shared_data / WORK / "create_delete_image_config", 0.0)
    assert dict(t.schema) == SCHEMAS["traces"]
    assert t.height == 12 and set(t["trace_id"]) == {"8f6ff588-fcb6-4983-883c-282f78922756"}
    assert t["parent_id"].is_null().sum() == 11
    child = t.filter(pl.col("parent_id").is_not_null()).row(0, named=True)
    assert child["span_id"].startswith("7967078c") and child["parent_id"].startswith("24968a47")
    assert child["service"] == "keystone"
    assert dict(t.group_by("service").len().iter_rows()) == {"keystone": 5, "glance": 7}
    first = t.row(0, named=True)  # wsgi-start 2019-11-18T12:19:05.045692, 102 ms
    assert first["start_ts"] == 1574079545045692 and first["duration_s"] == pytest.approx(0.102)
    assert first["operation"] == "wsgi GET /"
    assert "wsgi PUT /v2/images/<id>/file" in t["operation"].to_list()
    assert not t["is_error"].any()


def test_real_rally_hook_faults(shared_data: Path):
    files = msds.list_files(shared_data / "msds")
    assert len(files["faults"]) == 3 and all(p.suffix == ".json" for p in files["faults"])  # labels not mixed in
    f = msds.read_faults(shared_data / "msds", 0.0)
    assert dict(f.schema) == SCHEMAS["faults"]
    assert f.rows() == [
        (1574186026522152, 1574186029594851, "glance_api", "container_restart"),
        (1574186796028661, 1574186798426868, "glance_api", "container_restart"),
        (1574187685403098, 1574187687677400, "glance_api", "container_restart"),
        (1574203903166326, 1574203943408740, "nova_compute", "container_restart"),  # hook exited 1: kept
        (1574207991691805, 1574208036260247, "nova_compute", "container_restart"),
    ]
    assert msds.read_logs(shared_data / "msds", 0.0) is None


def test_real_third_party_labels(shared_data: Path):
    f = msds.read_faults(shared_data / "msds" / "KMdsy_fork", 0.0)
    assert f.height == 8 + 31
    assert dict(f.group_by("kind").len().iter_rows()) == {"boot": 9, "image": 15, "network": 15}
    assert set(f["entity"]) == {"openstack"}
    # the epoch columns win over the (mislabelled 'CEST') strings
    assert f["start_ts"].min() == 1574186026522152


def test_synthetic_logs_and_node_metrics(tmp_path: Path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "logs_aggregated.csv").write_text(
        "@timestamp,Hostname,log_level,programname,python_module,Payload\n"
        "2019-11-19T18:38:47.500Z,wally113,warn,nova-compute,nova.compute.manager,\"Instance\n  spawned\"\n"
        "2019-11-19T18:38:46.000Z,wally117,INFO,,,plain line\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "wally117_metrics_nov.csv").write_text(
        "now,cpu.user,hostname,mem.used\n2019-11-19 19:38:46 CET,1.5,wally117,10\n2019-11-19 19:38:46 CET,nan,wally117,11\n")
    lg = msds.read_logs(tmp_path, 0.0)
    assert lg.rows() == [(1574188726 * US, "wally117", "INFO", "plain line"),
                         (1574188727 * US + 500_000, "nova-compute", "WARNING", "Instance spawned")]
    m = msds.read_metrics(tmp_path, 0.0)
    assert set(m["entity"]) == {"wally117"} and set(m["metric"]) == {"cpu.user", "mem.used"}
    assert m.height == 3 and m["ts"].unique().to_list() == [1574188726 * US]  # CET = UTC+1; NaN dropped


def test_osprofiler_error_and_missing_payload(tmp_path: Path):
    trace = {"info": {"name": "total", "started": 0, "finished": 50}, "children": [
        {"trace_id": "a", "parent_id": "base", "info": {
            "name": "wsgi", "project": "nova", "started": 0, "finished": 40, "exception": "None",
            "meta.raw_payload.wsgi-start": {"timestamp": "2019-11-19T10:00:00.000000", "base_id": "base",
                                            "info": {"request": {"method": "GET", "path": "/v2/servers/12"}}}},
         "children": [{"trace_id": "b", "parent_id": "a", "info": {
             "name": "db", "project": "nova", "started": 10, "finished": 30, "exception": "OperationalError"},
             "children": []}]}]}
    (tmp_path / "t.json").write_text(json.dumps(trace))
    t = msds.read_traces(tmp_path, 0.0)
    assert t["span_id"].to_list() == ["a", "b"] and t["parent_id"].to_list() == [None, "a"]
    assert t["is_error"].to_list() == [False, True]
    assert t["start_ts"][1] - t["start_ts"][0] == 10_000  # placed from the trace anchor
    assert t["operation"][0] == "wsgi GET /v2/servers/<id>"
