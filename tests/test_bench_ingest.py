"""``stages.bench ingest`` measures each reader in a fresh process with that process's own peak RSS.

Speed is never asserted here (benchmarks measure it); the test checks what the figures mean: one
project and one reference row per modality, the same files for both, and a peak RSS that does not
inherit the parent's.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from stages import bench_ingest


def tiny_msds(root: Path) -> None:
    (root / "metrics").mkdir(parents=True)
    (root / "metrics" / "wally117_metrics.csv").write_text(
        "now,cpu.user,mem.used\n" + "".join(f"2019-11-19 19:38:{i:02d} CET,{i}.5,{100 + i}\n" for i in range(40)))
    (root / "logs.csv").write_text("@timestamp,Hostname,log_level,programname,Payload\n"
                                   "2019-11-19T18:38:47.500Z,wally113,INFO,nova-compute,spawned\n")
    trace = {"info": {"name": "total", "started": 0, "finished": 9}, "children": [
        {"trace_id": "a", "parent_id": "b", "info": {"name": "wsgi", "project": "nova", "started": 0, "finished": 9,
                                                     "meta.raw_payload.wsgi-start": {"timestamp": "2019-11-19T18:38:47",
                                                                                     "base_id": "b"}},
         "children": []}]}
    (root / "t.json").write_text(json.dumps(trace))


def test_ingest_rows_and_own_peak(tmp_path: Path):
    tiny_msds(tmp_path / "dump")
    ballast = bytearray(600 * 2**20)  # the parent's peak: a child started by fork+exec inherits ru_maxrss
    ballast[::4096] = b"\x01" * len(ballast[::4096])
    args = argparse.Namespace(root=str(tmp_path / "dump"), format="msds", scale=None, fraction=None, repeat=1,
                              no_features=True, step_s=10.0, workdir=None, hours=1.0, requests_per_s=1.0)
    res = bench_ingest.bench_ingest(args)
    assert bench_ingest.peak_rss_mb() >= 600
    for modality, rows in (("metrics", 80), ("traces", 1), ("logs", 1)):
        proj, ref = res["modalities"][modality], res["reference"][modality]
        assert proj["rows"] == rows and proj["files"] == 1
        assert ref["rows"] == (40 if modality == "metrics" else rows)  # wide lines vs long points
        assert 0 < proj["peak_rss_mb"] < 600 and 0 < ref["peak_rss_mb"] < 600
    for modality, rows in (("metrics", 80), ("traces", 1), ("logs", 1)):  # as the stages read: parts, buckets
        bounded = res["bounded"][modality]
        assert bounded["rows"] == rows and bounded["parts"] == 1 and 0 < bounded["peak_rss_mb"] < 600
    table = res["table"].splitlines()
    # project, project bounded, the reference (read_csv per file) and the one-collect_all reference
    assert table[0].startswith("| modality | reader |") and len([t for t in table if t.startswith("| metrics")]) == 4
    assert any(t.startswith("| traces | project, bounded (1 bucket,") for t in table)
    assert res["reference_together"]["rows"] == 40 and "stage" not in res
    del ballast


def test_metrics_stage_against_the_plain_polars_stage(tmp_path: Path):
    tiny_msds(tmp_path / "dump")
    args = argparse.Namespace(root=str(tmp_path / "dump"), format="msds", scale=None, fraction=None, repeat=1,
                              no_features=False, step_s=10.0, workdir=None, hours=1.0, requests_per_s=1.0)
    res = bench_ingest.bench_ingest(args)
    stage = res["stage"]
    # 40 s of 1 Hz points on a 10 s grid: 4 steps of 2 columns, written to Parquet by both
    assert stage["reference"]["rows"] == 4 and stage["reference"]["columns"] == 2
    assert stage["project"]["rows"] == 4 and stage["project"]["columns"] == 2 and stage["project"]["stage_s"] > 0
    assert any(t.startswith("| metrics stage (read → Parquet)") for t in res["table"].splitlines())
    # the traces and logs stages as they run (buckets) beside their whole-frame paths: one span, one line
    traced, logged = res["bucket_stages"]["traces"], res["bucket_stages"]["logs"]
    assert traced["buckets"]["rows"] == 1 and traced["buckets"]["traces"] == 1 and traced["buckets"]["stage_s"] > 0
    assert traced["whole"]["rows"] == 1 and traced["whole"]["stage_s"] > 0
    assert logged["buckets"]["rows"] == 1 and logged["buckets"]["templates"] == 1 and logged["whole"]["stage_s"] > 0
    table = res["table"].splitlines()
    assert any(t.startswith("| traces, in buckets of whole traces") for t in table)
    assert any(t.startswith("| logs, in buckets of whole services") for t in table)


def test_stages_only(tmp_path: Path):
    """``--stages-only``: the three stages as they run, nothing else, beside the largest input file."""
    tiny_msds(tmp_path / "dump")
    args = argparse.Namespace(root=str(tmp_path / "dump"), format="msds", scale=None, fraction=None, repeat=1,
                              no_features=False, step_s=10.0, workdir=None, hours=1.0, requests_per_s=1.0,
                              stages_only=True, modalities=None)
    res = bench_ingest.bench_ingest(args)
    alone = res["stages_only"]
    assert alone["metrics"]["rows"] == 4 and alone["metrics"]["columns"] == 2
    assert alone["traces"]["rows"] == 1 and alone["logs"]["rows"] == 1
    assert all(r["largest_file_mb"] > 0 and r["peak_rss_mb"] > 0 for r in alone.values())
    assert not res["modalities"] and not res["reference"] and "stage" not in res
    assert sum(t.startswith(("| metrics |", "| traces |", "| logs |")) for t in res["table"].splitlines()) == 3
