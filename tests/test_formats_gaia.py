"""GAIA reader: fault recovery from the real run tables (exact counts computed independently with
``csv`` + ``re``), and metric / trace / business-log parsing on small files in the documented layout."""
from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from stages.core.frames import SCHEMAS, US
from stages.formats import gaia

RUN = Path("gaia/MicroSS/run/run")
EXPECTED = {  # file → faults per kind (rows that are not injections are skipped)
    "run_table_2021-07.csv": {"memory_anomaly": 370, "login_failure": 8033, "file_moving": 20, "access_denied": 8},
    "run_table_2021-07.FILTERED_no_login_failure_rows.csv":
        {"memory_anomaly": 652, "file_moving": 43, "access_denied": 15, "cpu_anomaly": 15},
    "run_table_2021-08.csv":
        {"memory_anomaly": 318, "cpu_anomaly": 34, "file_moving": 13, "login_failure": 7855, "access_denied": 7},
    "run_table_2021-08.FILTERED_no_login_failure_rows.csv":
        {"memory_anomaly": 715, "cpu_anomaly": 66, "file_moving": 36, "access_denied": 20},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_run_table_faults_by_kind(shared_data: Path, tmp_path: Path, name: str):
    (tmp_path / name).symlink_to(shared_data / RUN / name)  # one table alone, with or without index column
    f = gaia.read_faults(tmp_path, 0.0)
    assert dict(f.schema) == SCHEMAS["faults"]
    assert dict(f.group_by("kind").len().iter_rows()) == EXPECTED[name]
    assert f["entity"].str.contains(r"^(db|web|mob|log|redis)service[12]$").all()
    assert (f["end_ts"] > f["start_ts"]).all()


def test_real_run_table_windows(shared_data: Path):
    f = gaia.read_faults(shared_data / "gaia", 0.0)
    # first July row: dbservice1 memory, "start at 2021-07-01 11:44:26.882752 and lasts 600 seconds"
    row = f.filter((pl.col("entity") == "dbservice1") & (pl.col("kind") == "memory_anomaly")).row(0, named=True)
    assert row["start_ts"] == 1625139866882752 and row["end_ts"] - row["start_ts"] == 600 * US
    dur = f.with_columns(((pl.col("end_ts") - pl.col("start_ts")) / US).alias("d"))
    spans = {k: (lo, hi) for k, lo, hi in dur.group_by("kind").agg(pl.col("d").min().alias("lo"), pl.col("d").max().alias("hi")).iter_rows()}
    assert spans["login_failure"] == (11.0, 11.0) and spans["access_denied"] == (3600.0, 3600.0)
    assert spans["cpu_anomaly"][1] < 10  # the 13 mis-logged ~30-day cpu windows were clipped
    assert f.height == f.unique().height


def test_metric_file_name_split():
    m = gaia.METRIC_NAME.match("dbservice1_0.0.0.4_docker_cpu_core_0_norm_pct_2021-07-01_2021-07-31.csv")
    assert (m["instance"], m["ip"], m["metric"]) == ("dbservice1", "0.0.0.4", "docker_cpu_core_0_norm_pct")
    m = gaia.METRIC_NAME.match("system_10.0.0.1_system_load_1_2021-07-15_2021-07-31.csv")
    assert (m["instance"], m["metric"]) == ("system", "system_load_1")


def write_dump(root: Path) -> None:
    (root / "metric").mkdir(parents=True)
    (root / "metric" / "redisservice1_0.0.0.1_docker_memory_usage_total_2021-07-01_2021-07-31.csv").write_text(
        "timestamp,value\n1625097630000,5.5\n1625097600000,4\n1625097660000,\n")
    (root / "metric" / "README.csv").write_text("not,a,metric\n")
    (root / "trace").mkdir()
    (root / "trace" / "trace_table_webservice1_2021-07.csv").write_text(
        "timestamp,host_ip,service_name,trace_id,span_id,parent_id,start_time,end_time,url,status_code,message\n"
        "1625097600000,0.0.0.1,webservice1,t1,a,,2021-07-01 00:00:00.100000,2021-07-01 00:00:00.600000,/index,200,ok\n"
        "1625097600000,0.0.0.1,mobservice1,t1,b,a,1625097600200,1625097600300,/login,200,an Error here\n"
        "1625097600000,0.0.0.1,redisservice1,t1,c,None,1625097600250,1625097600260,/get,500.0,\n"
        "1625097600000,0.0.0.1,redisservice1,t1,c,None,1625097600250,1625097600260,/get,500.0,\n")
    (root / "business").mkdir()
    (root / "business" / "business_table_webservice1_2021-07.csv").write_text(
        "datetime,service,message\n"
        '2021-07-01,webservice1,"2021-07-01 00:00:01,250 | INFO | 0.0.0.1 | 172.17.0.2 | webservice1 | '
        '3a9b7c1d2e3f4a5b | call redis ok\n"\n'
        '2021-07-01,webservice1,"2021-07-01 00:00:00,100 | WARN | 0.0.0.1 | 172.17.0.2 | webservice1 | slow | path"\n'
        '2021-07-01,webservice1,"(Background on this error at: http://sqlalche.me/e/14/e3q8)"\n')


def test_synthetic_metrics_traces_logs(tmp_path: Path):
    write_dump(tmp_path)
    m = gaia.read_metrics(tmp_path, 0.0)
    assert m.rows() == [(1625097600 * US, "redisservice1", "docker_memory_usage_total", 4.0),
                        (1625097630 * US, "redisservice1", "docker_memory_usage_total", 5.5)]
    t = gaia.read_traces(tmp_path, 10.0)
    assert dict(t.schema) == SCHEMAS["traces"]
    assert t["span_id"].to_list() == ["a", "b", "c"]  # duplicated row dropped, sorted by start
    assert t["parent_id"].to_list() == [None, "a", None]
    assert t["start_ts"][0] == (1625097600 + 10) * US + 100_000
    assert t["duration_s"].to_list() == pytest.approx([0.5, 0.1, 0.01])
    assert t["is_error"].to_list() == [False, True, True]
    assert t["operation"][1] == "/login"
    lg = gaia.read_logs(tmp_path, 0.0)
    assert lg["message"].to_list() == ["slow | path", "(Background on this error at: http://sqlalche.me/e/14/e3q8)",
                                       "call redis ok"]
    assert lg["level"].to_list() == ["WARNING", "WARNING", "INFO"]
    assert lg["ts"][0] == 1625097600 * US + 100_000
    assert gaia.read_faults(tmp_path, 0.0) is None
