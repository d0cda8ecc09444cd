"""The four feature stages end to end: outputs, determinism, atomicity, missing modalities, real TT chunk."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from stages import labels as labels_stage
from stages import logs as logs_stage
from stages import metrics as metrics_stage
from stages import traces as traces_stage
from stages.core.errors import InputError
from stages.core.frames import SCHEMAS
from stages.features.publish import staged_outputs

S = 1_000_000
STAGES = {"metrics": metrics_stage, "traces": traces_stage, "logs": logs_stage, "labels": labels_stage}
MODALITY = {"metrics": "metrics", "traces": "traces", "logs": "logs", "labels": "faults"}
RAW = {"datasets": {"toy": {"format": "eadro", "raw": "raw/toy", "step_s": 10}},
       "split": {"train": 0.6, "val": 0.2, "test": 0.2}}


def toy_frames(seed: int = 7) -> dict[str, pl.DataFrame]:
    """A small dump: 10 minutes of 1 Hz metrics, ~60 traces, ~200 log lines, two faults."""
    rng = np.random.default_rng(seed)
    t0 = 1_650_000_000 * S
    ts = t0 + np.arange(600) * S
    metrics = pl.concat([
        pl.DataFrame({"ts": ts, "entity": e, "metric": m, "value": rng.normal(10, 2, ts.size)})
        for e in ("svc-a", "svc-b") for m in ("cpu", "mem")])
    rows = []
    for i, start in enumerate(t0 + np.sort(rng.integers(0, 600, 60)) * S):
        tid = f"t{i:03d}"
        rows += [(tid, f"{tid}-0", None, "svc-a", "GET /", int(start), float(rng.uniform(0.1, 0.5)), False),
                 (tid, f"{tid}-1", f"{tid}-0", "svc-b", "query", int(start) + 1000, float(rng.uniform(0.01, 0.1)),
                  bool(rng.random() < 0.1))]
    spans = pl.DataFrame(rows, schema=SCHEMAS["traces"], orient="row")
    lt = t0 + np.sort(rng.integers(0, 600 * S, 200))
    msgs = [f"request {int(n)} served in {int(ms)} ms" if k else f"cache miss for key {int(n)}"
            for n, ms, k in zip(rng.integers(0, 999, 200), rng.integers(1, 90, 200), rng.random(200) < 0.7)]
    logs = pl.DataFrame({"ts": lt, "service": np.where(rng.random(200) < 0.5, "svc-a", "svc-b"),
                         "level": "INFO", "message": msgs})
    faults = pl.DataFrame({"start_ts": [t0 + 300 * S, t0 + 450 * S], "end_ts": [t0 + 360 * S, t0 + 500 * S],
                           "entity": ["svc-b", "svc-a"], "kind": ["cpu_load", "network_delay"]})
    return {"metrics": metrics, "traces": spans, "logs": logs, "faults": faults}


@pytest.fixture
def toy(monkeypatch, tmp_path):
    """Stage modules read the toy frames instead of a raw dump; outputs land under tmp_path."""
    frames = toy_frames()
    monkeypatch.chdir(tmp_path)

    def fake_read(fmt, root, modality, offsets=None):
        return frames.get(modality)

    def fake_range(fmt, root, offsets=None, modalities=("metrics",)):
        df = frames.get("metrics")
        return (int(df["ts"].min()), int(df["ts"].max())) if df is not None and df.height else None

    def fake_parts(fmt, root, offsets=None, part_bytes=None):  # the metrics stage reads in parts
        df = frames.get("metrics")
        return iter([] if df is None else [df])

    def fake_buckets(fmt, root, spill_dir, offsets=None, bucket_bytes=None):  # the traces stage reads in buckets
        df = frames.get("traces")
        return iter([] if df is None else [df])

    for mod in STAGES.values():
        if hasattr(mod, "read_modality"):
            monkeypatch.setattr(mod, "read_modality", fake_read)
    monkeypatch.setattr(STAGES["metrics"], "read_metric_parts", fake_parts)
    monkeypatch.setattr(STAGES["traces"], "read_trace_buckets", fake_buckets)

    def fake_log_buckets(fmt, root, spill_dir, offsets=None, bucket_bytes=None):  # the logs stage reads in buckets
        df = frames.get("logs")
        return iter([] if df is None else [df])

    monkeypatch.setattr(STAGES["logs"], "read_log_buckets", fake_log_buckets)
    monkeypatch.setattr(STAGES["labels"], "data_time_range", fake_range)
    return frames


def outputs(name: str) -> list[str]:
    return STAGES[name].OUTPUTS


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_each_stage_writes_its_outputs(toy, tmp_path):
    out = tmp_path / "data/features/toy"
    summaries = {name: mod.run("toy", RAW) for name, mod in STAGES.items()}
    for name in STAGES:
        assert all((out / f).exists() for f in outputs(name)), name
    assert not list(out.glob(".staging-*"))
    m = pl.read_parquet(out / "metrics.parquet")
    assert m.columns == ["ts", "svc-a/cpu", "svc-a/mem", "svc-b/cpu", "svc-b/mem"] and m.height == 60
    assert summaries["traces"]["edges"] == 1
    assert json.loads((out / "call_graph.json").read_text())["edges"] == [["svc-a", "svc-b"]]
    counts = pl.read_parquet(out / "log_counts.parquet")
    assert counts.drop("ts").sum().sum_horizontal().item() == 200
    lab = pl.read_parquet(out / "labels.parquet")
    assert lab["label"].sum() == 6 + 5  # [300, 360) and [450, 500) on a 10 s grid
    stats = json.loads((out / "metrics_stats.json").read_text())
    assert stats["fit_until_ts"] == summaries["metrics"]["fit_until_ts"]


def test_outputs_are_byte_identical_across_runs(toy, tmp_path):
    out = tmp_path / "data/features/toy"
    for mod in STAGES.values():
        mod.run("toy", RAW)
    first = snapshot(out)
    for mod in STAGES.values():
        mod.run("toy", RAW)
    assert snapshot(out) == first
    assert "drain3/index.json" in first and "drain3/service_0000.drain3" in first


def test_a_failure_mid_stage_keeps_the_previous_outputs(toy, tmp_path, monkeypatch):
    out = tmp_path / "data/features/toy"
    for mod in STAGES.values():
        mod.run("toy", RAW)
    before = snapshot(out)
    before_metrics = before["metrics.parquet"]

    def broken(*args, **kwargs):
        raise RuntimeError("disk full while saving the miners")

    from stages.features import log_buckets

    monkeypatch.setattr(log_buckets, "save_miners", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        logs_stage.run("toy", RAW)
    assert snapshot(out) == before
    # bad input in the traces stage: an InputError, and the previous trace outputs stay
    toy["traces"] = toy["traces"].with_columns(pl.lit(-1.0).alias("duration_s"))
    with pytest.raises(InputError, match="non-negative duration"):
        traces_stage.run("toy", RAW)
    assert snapshot(out) == before
    # the other stages' outputs are untouched, and no staging folder is left behind
    assert (out / "metrics.parquet").read_bytes() == before_metrics
    assert all((out / f).exists() for f in outputs("labels"))
    assert not list(out.glob(".staging-*"))


def test_a_dataset_narrows_its_own_metrics(toy, tmp_path):
    """``datasets.<name>.metrics`` overrides the ``metrics:`` section for that dataset alone (a wide
    dump narrowed with ``include`` leaves the other datasets' channels as they were); a bad
    override is named with the dataset."""
    import copy

    raw = copy.deepcopy(RAW)
    raw["metrics"] = {"exclude": ["/mem$"]}
    raw["datasets"]["wide"] = {**raw["datasets"]["toy"], "metrics": {"include": ["^svc-a/"]}}
    metrics_stage.run("toy", raw)
    metrics_stage.run("wide", raw)
    columns = {ds: [c for c in pl.read_parquet_schema(tmp_path / f"data/features/{ds}/metrics.parquet") if c != "ts"]
               for ds in ("toy", "wide")}
    assert columns == {"toy": ["svc-a/cpu", "svc-b/cpu"], "wide": ["svc-a/cpu"]}  # the global exclude still applies
    raw["datasets"]["wide"]["metrics"] = {"include": ["("]}
    with pytest.raises(InputError, match=r"metrics\.include\[0\].*regular expression"):
        metrics_stage.run("wide", raw)
    raw["datasets"]["wide"]["metrics"] = {"max_gap": 3}
    with pytest.raises(InputError, match=r"metrics \(with datasets\.wide\.metrics\)"):
        metrics_stage.run("wide", raw)


def test_metrics_stage_in_chunks(toy, tmp_path, monkeypatch):
    """The stage with its table forced into chunks of steps (step means spilled): the same cells and
    stats file, no spill left behind; a failure in the last chunk keeps the previous outputs."""
    from stages.features import metric_table

    out = tmp_path / "data/features/toy"
    metrics_stage.run("toy", RAW)
    whole = {f: (out / f).read_bytes() for f in outputs("metrics")}
    monkeypatch.setattr(metric_table, "MEANS_HOLD_BYTES", 0)
    monkeypatch.setattr(metric_table, "WHOLE_BYTES", 0)
    monkeypatch.setattr(metric_table, "CHUNK_BYTES", 4 * 4 * 7)  # 4 columns: 7 steps per chunk
    summary = metrics_stage.run("toy", RAW)
    assert summary["row_groups_written_in_chunks"] == 9 and summary["steps"] == 60
    assert (out / "metrics_stats.json").read_bytes() == whole["metrics_stats.json"]
    (tmp_path / "whole.parquet").write_bytes(whole["metrics.parquet"])
    assert pl.read_parquet(out / "metrics.parquet").equals(pl.read_parquet(tmp_path / "whole.parquet"))
    assert not [p for p in out.rglob("*") if ".spill" in str(p) or p.suffix == ".npy"]
    chunked = {f: (out / f).read_bytes() for f in outputs("metrics")}
    calls = []
    real = metric_table.apply_scaling

    def fails_late(*args, **kwargs):
        calls.append(1)
        if len(calls) == 9:  # one part, nine chunks
            raise RuntimeError("killed in the last chunk")
        return real(*args, **kwargs)

    monkeypatch.setattr(metric_table, "apply_scaling", fails_late)
    with pytest.raises(RuntimeError, match="last chunk"):
        metrics_stage.run("toy", RAW)
    assert {f: (out / f).read_bytes() for f in outputs("metrics")} == chunked
    assert not list(out.glob(".staging-*"))


def test_staged_outputs_refuse_an_incomplete_set(tmp_path):
    with pytest.raises(RuntimeError, match="did not produce"):
        with staged_outputs(tmp_path, ["a.txt", "b.txt"]) as tmp:
            (tmp / "a.txt").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_missing_modalities_give_empty_tables(toy, tmp_path):
    toy.clear()
    out = tmp_path / "data/features/toy"
    summaries = {name: mod.run("toy", RAW) for name, mod in STAGES.items()}
    assert pl.read_parquet(out / "metrics.parquet").columns == ["ts"]
    assert pl.read_parquet(out / "trace_series.parquet").height == 0
    assert pl.read_parquet(out / "log_templates.parquet").height == 0
    assert pl.read_parquet(out / "labels.parquet").height == 0
    assert summaries["labels"]["faults"] == 0


def test_cli_reports_bad_input_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("datasets:\n  toy: {format: eadro, raw: raw/missing}\n")
    for name, mod in STAGES.items():
        assert mod.main(["toy"]) == 2, name
        assert "raw/missing: expected an existing raw dump folder" in capsys.readouterr().err
    assert not list((tmp_path / "data/features/toy").glob("*.parquet"))
    (tmp_path / "params.yaml").write_text("datasets:\n  toy: {format: eadro, raw: raw/missing}\nlogs: {sim: 1}\n")
    assert logs_stage.main(["toy"]) == 2
    assert "logs.sim" in capsys.readouterr().err


# ------------------------------------------------------------------ the real TrainTicket chunk


@pytest.fixture(scope="module")
def tt(shared_data, tmp_path_factory):
    pytest.importorskip("stages.formats.eadro")
    raw = {"datasets": {"tt": {"format": "eadro", "raw": str(shared_data / "tt-eadro"), "step_s": 10}}}
    root = tmp_path_factory.mktemp("tt")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        summaries = {name: mod.run("tt", raw) for name, mod in STAGES.items()}
    return root / "data/features/tt", summaries, raw


def test_real_tt_metrics(tt):
    out, s, _ = tt
    m = pl.read_parquet(out / "metrics.parquet")
    stats = json.loads((out / "metrics_stats.json").read_text())
    assert m.width - 1 + len(stats["dropped"]) == 27 * 7  # 27 services × 7 cAdvisor columns
    assert m.width - 1 == s["metrics"]["columns"] > 100
    assert np.all(np.diff(m["ts"].to_numpy()) == 10 * S)
    assert np.all(np.isfinite(m.drop("ts").to_numpy()))
    train = m.filter(pl.col("ts") < stats["fit_until_ts"]).drop("ts").to_numpy()
    assert np.all(np.isfinite(train)) and np.abs(np.median(train, axis=0)).max() < 0.3  # median-centred
    assert np.abs(m.drop("ts").to_numpy()).max() <= 10.0  # bounded: clipped at metrics.clip


def test_real_tt_traces(tt):
    out, s, _ = tt
    assert s["traces"]["stray_spans_dropped"] == 200  # the leftovers ~38 h before the chunk
    assert s["traces"]["traces"] == 705 and s["traces"]["edges"] == 10 and s["traces"]["services"] == 13
    agg = pl.read_parquet(out / "trace_aggregates.parquet")
    assert agg["trace_id"].n_unique() == agg.height == 705
    graph = json.loads((out / "call_graph.json").read_text())
    assert ["ts-travel-service", "ts-route-service"] in graph["edges"]
    assert all(a != b for a, b in graph["edges"])
    series = pl.read_parquet(out / "trace_series.parquet")
    assert series.width == 1 + 3 * len(graph["edges"])


def test_real_tt_logs_and_miner_reload(tt, shared_data):
    out, s, raw = tt
    assert s["logs"]["lines"] == 8457 and s["logs"]["services"] == 13
    templates = pl.read_parquet(out / "log_templates.parquet")
    assert templates["template_id"].to_list() == list(range(templates.height))
    assert templates["count"].sum() == 8457
    assert pl.read_parquet(out / "log_counts.parquet").drop("ts").sum().sum_horizontal().item() == 8457
    from stages.features.log_templates import clean_logs, load_miners
    from stages.formats import read_modality
    ds = raw["datasets"]["tt"]
    # log_events keeps the mining order within equal (ts, service): sort the lines the same way
    lines = clean_logs(read_modality("eadro", Path(ds["raw"]), "logs")).sort(["ts", "service"], maintain_order=True)
    events = pl.read_parquet(out / "log_events.parquet")
    miners = load_miners(out / "drain3")
    matched = [miners.match(svc, msg) for svc, msg in zip(lines["service"], lines["message"])]
    assert matched == events["template_id"].to_list()  # the reloaded miners reproduce every line's template


def test_real_tt_labels(tt):
    out, s, _ = tt
    assert s["labels"]["faults"] == 9
    assert s["labels"]["kinds"] == ["cpu_load", "network_delay", "network_loss"]
    lab = pl.read_parquet(out / "labels.parquet")
    assert lab["label"].sum() == 9 * 61  # nine 600 s faults, none step-aligned, none overlapping
    assert set(lab.filter(pl.col("label") == 1)["entity"].unique()) <= {
        "ts-auth-service", "ts-route-service", "ts-ticketinfo-service"}
