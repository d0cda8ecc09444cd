"""`python -m stages.score`: a trained model scores a new dump of its system.

One tiny project is built once per module, the way the pipeline builds it (real synth, readers,
Drain3, MiniLM embeddings and word PCA, windows, every registered detector trained for an epoch),
then new dumps of the same system (other faults and traffic) are scored through the command.
"""
from __future__ import annotations

import hashlib
import html
import json
import logging
import os
import shutil
import subprocess
import struct
import sys
import zlib
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from stages import embed, embed_pca, labels, logs, metrics, score, traces, train, windows
from stages.core.device import autocast
from stages.core.errors import InputError
from stages.core.dspot import DSpot
from stages.core.windowset import FeatureSchema, load_split
from stages.features.metric_matrix import forward_fill, last_observed
from stages.nets.registry import DETECTORS, detector_class
from stages.scoring.alarms import CSV_COLUMNS
from stages.scoring.features import Carry, build_block, read_frames
from stages.scoring.frozen import Paths, load_frozen
from stages.simulate.generate import generate
from stages.simulate.params import SynthParams

REPO = Path(__file__).resolve().parents[1]
DS = "synth_tt"
START = "2022-04-18T08:00:00"
NEXT = "2022-04-18T14:00:00"  # the scored dumps follow the training dump
HOURS, NEW_HOURS = 6.0, 1.5


def tiny_params() -> dict:
    """params.yaml cut down so the whole project trains in well under a minute on one core."""
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["pipeline"].update(datasets=[DS], synthetic=[DS], detectors=sorted(DETECTORS))
    p["datasets"] = {DS: {"format": "eadro", "raw": f"data/raw/{DS}", "synthetic": True, "step_s": 30,
                          "sources": []}}
    p["synth"].update(hours=HOURS, services=5, fault_every_min=45.0, fault_min_gap_min=5.0,
                      fault_duration_min=[3.0, 8.0], requests_per_s={"eadro": 0.2, "gaia": 0.1, "msds": 0.01},
                      start_utc={"eadro": START, "gaia": START, "msds": START})
    p["split"].update(fewshot_percent=40, fewshot_blocks=2)
    p["windows"].update(length=8, stride=2)
    p["llm"].update(layers=1, pca_components=8)
    # a validation span of ~100 steps: DSPOT with a short memory and a lower initial level still fits
    p["evaluate"]["threshold"].update(dspot_depth=20, dspot_init_level=0.85, dspot_risk=0.01)
    p["iforest"].update(n_estimators=20)
    p["fuseguard"].update(d_model=16, heads=2, prototypes=4, freq_bins=4, freq_dim=4)
    p["fuseguard"]["train"].update(epochs=1, batch_size=16)
    p["kad_disformer"].update(d_model=16, ff_dim=16, pretrain_epochs=1, pretrain_samples=128, pretrain_batch=64,
                              replay_batch=16)
    p["kad_disformer"]["train"].update(epochs=1, max_train_windows=32)
    p["interfusion"].update(rnn_hidden=8, dense_hidden=8, decoder_hidden=16, flow_layers=2, flow_hidden=8,
                            pretrain_epochs=1, mcmc_iters=2, score_samples=2)
    p["interfusion"]["train"].update(epochs=1, max_train_windows=64)
    p["metalog"].update(hidden=16, attention=8)
    p["metalog"]["train"].update(epochs=1, max_train_windows=128)
    p["xlstm_logad"].update(embed_dim=16, oof_folds=0, container_max=500)
    p["xlstm_logad"]["train"].update(epochs=1, max_train_windows=128)
    return p


def synth_params(raw: dict, **override) -> SynthParams:
    from stages.core.params import build

    return build(SynthParams, {**raw["synth"], **override}, where="synth")


def new_dump(raw: dict, folder: Path, variant: str, **override) -> Path:
    """New data of the trained system: same services, templates and call graph, other faults and traffic."""
    starts = {**raw["synth"]["start_utc"], "eadro": NEXT}
    generate(DS, "eadro", folder, synth_params(raw, hours=NEW_HOURS, start_utc=starts, **override),
             raw["seed"], variant=variant)
    return folder


@pytest.fixture(scope="module")
def project(tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("score")
    raw = tiny_params()
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        generate(DS, "eadro", root / "data" / "raw" / DS, synth_params(raw), raw["seed"])
        for stage in (metrics, traces, logs, labels, embed):
            stage.run(DS, raw)
        embed_pca.run(raw)
        windows.run(DS, raw)
        for det in sorted(DETECTORS):
            train.run(DS, det, raw)
    dumps = {"new": new_dump(raw, root / "dumps" / "new", "a")}
    return root, raw, dumps


def run_score(root: Path, detector: str, dump: Path, out: Path, *extra: str) -> dict:
    """The command, in-process (``main`` is what ``python -m stages.score`` runs); exit code 0 asserted."""
    cwd = os.getcwd()
    os.chdir(root)
    try:
        rc = score.main([str(Path("models") / DS / detector), str(dump), "--out", str(out), *extra])
    finally:
        os.chdir(cwd)
    assert rc == 0, f"stages.score exited {rc}"
    return json.loads((out / "summary.json").read_text())


def tree_digest(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


def read_alarms(path: Path) -> pl.DataFrame:
    return pl.read_csv(path, infer_schema=False)


# ------------------------------------------------------------------ every detector, frozen state


def test_every_registered_detector_scores_a_new_dump(project, tmp_path):
    root, raw, dumps = project
    frozen = [root / "data" / "features" / DS, root / "data" / "windows" / DS, root / "models"]
    before = tree_digest(*frozen)
    for det in sorted(DETECTORS):
        out = tmp_path / det
        summary = run_score(root, det, dumps["new"], out)
        df = pl.read_parquet(out / "scores.parquet")
        assert {"ts", "score", "threshold", "alarm"} <= set(df.columns), det
        assert df.height == summary["steps_output"] > 0
        assert summary["steps_scored"] == int(df["score"].is_not_nan().sum()) > 0.9 * df.height, det
        assert set(np.diff(df["ts"].cast(pl.Int64).to_numpy())) == {30_000_000}, "the training grid step"
        alarms = read_alarms(out / "alarms.csv")
        assert alarms.columns == CSV_COLUMNS
        assert int(df["alarm"].sum()) == int(alarms["steps"].cast(pl.Int64).sum() if alarms.height else 0), det
        assert (out / "report.html").is_file() and (out / "state.json").is_file()
        assert summary["frozen_state"]["files"]["features/metrics_stats.json"]
        if det == "fuseguard":
            assert {"score_metric", "score_trace", "score_log", "weight_metric"} <= set(df.columns)
    assert tree_digest(*frozen) == before, "scoring changed the frozen state"


# ------------------------------------------------------------------ streaming continuity


CHUNKED = ("fuseguard", "kad_disformer", "interfusion", "iforest", "random")


@pytest.mark.parametrize("detector", CHUNKED)
def test_chunk_by_chunk_gives_the_alarms_of_the_whole(project, tmp_path, detector):
    """Three --to/--resume slices (cut off the stride, so steps are left pending) equal one run."""
    root, raw, dumps = project
    whole = tmp_path / "whole"
    run_score(root, detector, dumps["new"], whole)
    cuts = ["2022-04-18T14:25:10", "2022-04-18T15:02:40"]
    prev = None
    parts = []
    for i, to in enumerate(cuts + [None]):
        out = tmp_path / f"part{i}"
        extra = (["--to", to] if to else []) + (["--resume", str(prev)] if prev else [])
        summary = run_score(root, detector, dumps["new"], out, *extra)
        assert summary["resumed"] == (prev is not None)
        parts.append(out)
        prev = out
    a = pl.read_parquet(whole / "scores.parquet")
    b = pl.concat([pl.read_parquet(p / "scores.parquet") for p in parts], how="vertical_relaxed")
    assert a["ts"].to_list() == b["ts"].to_list()
    np.testing.assert_allclose(b["score"].to_numpy(), a["score"].to_numpy(), rtol=1e-5, atol=1e-7, equal_nan=True)
    np.testing.assert_allclose(b["threshold"].to_numpy(), a["threshold"].to_numpy(), rtol=1e-5, equal_nan=True)
    assert a["alarm"].to_list() == b["alarm"].to_list()
    merged = (pl.concat([read_alarms(p / "alarms.csv") for p in parts])
              .unique("start", keep="last", maintain_order=True))
    whole_alarms = read_alarms(whole / "alarms.csv")
    assert merged.select("start", "end", "steps", "modality", "open").equals(
        whole_alarms.select("start", "end", "steps", "modality", "open"))
    np.testing.assert_allclose(merged["peak_score"].cast(pl.Float64).to_numpy(),
                               whole_alarms["peak_score"].cast(pl.Float64).to_numpy(), rtol=1e-5)
    if detector == "random":  # uniform scores: DSPOT alarms on some, so the comparison above is not vacuous
        assert a["alarm"].sum() > 0


def test_eadro_chunk_folders_one_after_the_other_equal_the_whole_dump(project, tmp_path):
    """Real streams arrive as Eadro chunk folders: scoring them in turn with --resume equals the parent."""
    root, raw, dumps = project
    dump = new_dump(raw, tmp_path / "chunked", "c", chunk_hours=0.5)
    folders = sorted(p for p in dump.iterdir() if p.is_dir())
    assert len(folders) == 3
    whole = run_score(root, "fuseguard", dump, tmp_path / "whole")
    prev = None
    for i, folder in enumerate(folders):
        out = tmp_path / f"chunk{i}"
        run_score(root, "fuseguard", folder, out, *(["--resume", str(prev)] if prev else []))
        prev = out
    a = pl.read_parquet(tmp_path / "whole" / "scores.parquet")
    b = pl.concat([pl.read_parquet(tmp_path / f"chunk{i}" / "scores.parquet") for i in range(3)])
    assert whole["pending_steps"] == json.loads((prev / "summary.json").read_text())["pending_steps"]
    assert a["ts"].to_list() == b["ts"].to_list() and a["alarm"].to_list() == b["alarm"].to_list()
    np.testing.assert_allclose(b["score"].to_numpy(), a["score"].to_numpy(), rtol=1e-5, atol=1e-7, equal_nan=True)


def test_a_gap_longer_than_the_context_restarts_the_windows(project, tmp_path):
    root, raw, dumps = project
    first = tmp_path / "first"
    run_score(root, "iforest", dumps["new"], first, "--to", "2022-04-18T14:30:00")
    later = run_score(root, "iforest", dumps["new"], tmp_path / "later", "--from", "2022-04-18T15:00:00",
                      "--resume", str(first))
    assert any("stream restarted" in n for n in later["drift_notes"])
    assert later["span"]["first"].startswith("2022-04-18 15:00:00")
    assert later["warmup_steps"] > 0  # windows fill up again after the gap


def _utc_us(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()) * 1_000_000


def cut_dump(src: Path, dst: Path, cut: str, n_straddling: int = 12) -> tuple[Path, Path, Path, int]:
    """``src`` (one Eadro chunk) with ``n_straddling`` traces moved so that a caller's span starts just
    before ``cut`` and its callee's span just after, then cut there into two chunk folders, every
    modality by its own timestamp. Returns (the moved dump whole, part before, part after, cut µs).
    Eadro clocks (stages.formats.eadro): metrics UTC epoch s, span µs and log wall times UTC+8."""
    cut_us = _utc_us(cut)
    span_cut = cut_us + 8 * 3600 * 1_000_000
    chunk = next(p for p in src.iterdir() if p.is_dir())
    traces = json.loads((chunk / "spans.json").read_text())
    shift: dict[str, int] = {}
    for tr in traces:
        if len(shift) == n_straddling or tr["traceID"] in shift:
            continue
        spans = {sp["spanID"]: sp for sp in tr["spans"]}
        service = {pid: p["serviceName"] for pid, p in tr["processes"].items()}
        for sp in tr["spans"]:
            parent = spans.get(sp["references"][0]["spanID"]) if sp["references"] else None
            gap = sp["startTime"] - parent["startTime"] if parent else 0
            if parent and service[parent["processID"]] != service[sp["processID"]] and gap >= 2:
                shift[tr["traceID"]] = span_cut - gap // 2 - parent["startTime"]
                break
    assert len(shift) == n_straddling
    for tr in traces:  # repeated trace objects of the export move with their trace
        for sp in tr["spans"]:
            sp["startTime"] += shift.get(tr["traceID"], 0)
    logs = json.loads((chunk / "logs.json").read_text())
    log_cut = (datetime.fromisoformat(cut) + timedelta(hours=8)).strftime("%Y-%m-%d %H:%M:%S")
    # per part: which side of the cut each modality's own clock must be on (None: either)
    for name, before in (("whole", None), ("a", True), ("b", False)):
        def keep(t, at, before=before):
            return np.full(np.shape(t), True) if before is None else (np.asarray(t) < at) == before
        folder = dst / name / chunk.name
        (folder / "metrics").mkdir(parents=True)
        for csv in sorted((chunk / "metrics").glob("*.csv")):
            df = pl.read_csv(csv)
            df.filter(keep(df["timestamp"].to_numpy(), cut_us // 1_000_000)).write_csv(folder / "metrics" / csv.name)
        kept = [{**tr, "spans": [sp for sp in tr["spans"] if keep(sp["startTime"], span_cut)]} for tr in traces]
        (folder / "spans.json").write_text(json.dumps([tr for tr in kept if tr["spans"]]))
        (folder / "logs.json").write_text(json.dumps({svc: [ln for ln in lines if keep(ln[:19], log_cut)]
                                                      for svc, lines in logs.items()}))
    return dst / "whole", dst / "a", dst / "b", cut_us


def test_a_parent_span_before_the_cut_keeps_its_call_edge(project, tmp_path):
    """Pieces of a dump cut in time: a callee's span whose caller's span lies in the previous piece is
    resolved through the spans the stream state carries, so its call counts as in the whole."""
    root, raw, dumps = project
    whole, a, b, cut_us = cut_dump(dumps["new"], tmp_path / "cut", "2022-04-18T14:45:00")
    frozen = load_frozen(root / "models" / DS / "fuseguard", Paths(root))
    step = frozen.step_us
    fw, fa, fb = (read_frames("eadro", d, frozen.offsets) for d in (whole, a, b))
    assert fa.traces["start_ts"].max() < cut_us <= fb.traces["start_ts"].min()
    k0, k_cut, k1 = fw.data_steps(step)[0], cut_us // step, fw.data_steps(step)[1] + 1
    empty = Carry.empty(frozen.schema.n_metric, frozen.schema.n_edges)
    block_w = build_block(frozen, fw, k0, k1, empty)
    block_a = build_block(frozen, fa, k0, k_cut, empty)
    assert 0 < len(block_a.carry.parent_span_id) < fa.traces.height  # the spans near the cut, not all
    block_b = build_block(frozen, fb, k_cut, k1, block_a.carry)
    np.testing.assert_allclose(np.concatenate([block_a.trace, block_b.trace]), block_w.trace, rtol=1e-6, atol=1e-7)
    no_parents = Carry(block_a.carry.metric_value, block_a.carry.metric_k, block_a.carry.latency_value,
                       block_a.carry.latency_k)
    orphan = build_block(frozen, fb, k_cut, k1, no_parents)
    count = frozen.schema.edge_features.index("count")
    assert (block_b.trace[0, :, count] > orphan.trace[0, :, count]).any(), "the test cut no call edge"

    # the command, chunk after chunk, equals the whole (the carried spans go through state files)
    run_score(root, "fuseguard", whole, tmp_path / "whole")
    run_score(root, "fuseguard", a, tmp_path / "a")
    run_score(root, "fuseguard", b, tmp_path / "b", "--resume", str(tmp_path / "a"))
    w = pl.read_parquet(tmp_path / "whole" / "scores.parquet")
    c = pl.concat([pl.read_parquet(tmp_path / p / "scores.parquet") for p in ("a", "b")], how="vertical_relaxed")
    assert w["ts"].to_list() == c["ts"].to_list() and w["alarm"].to_list() == c["alarm"].to_list()
    for col in ("score", "score_trace", "deviation_trace"):
        np.testing.assert_allclose(c[col].to_numpy(), w[col].to_numpy(), rtol=1e-5, atol=1e-7, equal_nan=True)


def test_resume_with_nothing_new_changes_nothing_and_exits_0(project, tmp_path, caplog):
    """A cron run before new data arrived: one INFO line, outputs and state untouched, exit 0."""
    root, raw, dumps = project
    first = tmp_path / "first"
    run_score(root, "random", dumps["new"], first)
    before = tree_digest(first)
    caplog.set_level(logging.INFO, logger="stages.score")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for extra in ([], ["--to", "2022-04-18T15:00:00"]):  # the same dump again; a slice before the state's end
            caplog.clear()
            rc = score.main([f"models/{DS}/random", str(dumps["new"]), "--resume", str(first), "--out", str(first),
                             *extra])
            assert rc == 0
            lines = [r.getMessage() for r in caplog.records if r.name == "stages.score"]
            assert lines == ["nothing new after 2022-04-18 15:30:00.000000Z; state unchanged"], lines
        assert score.main([f"models/{DS}/random", str(dumps["new"]), "--resume", str(first),
                           "--out", str(tmp_path / "elsewhere")]) == 0
    finally:
        os.chdir(cwd)
    assert tree_digest(first) == before
    assert not (tmp_path / "elsewhere").exists()


# ------------------------------------------------------------------ drift


def _edit_dump(src: Path, dst: Path) -> dict[str, int]:
    """A copy of ``src`` with an unseen service (metrics, spans, logs), unseen log templates of a known
    service and one trained service's metrics removed; returns what was planted."""
    shutil.copytree(src, dst)
    chunk = sorted(p for p in dst.iterdir() if p.is_dir())[0]
    csvs = sorted((chunk / "metrics").glob("*.csv"))
    removed = csvs[0].stem
    shutil.copy(csvs[1], chunk / "metrics" / "ts-brand-new-service.csv")
    csvs[0].unlink()
    lines = json.loads((chunk / "logs.json").read_text())
    known = sorted(lines)[0]
    novel = [ln.split(" : ", 1)[0] + " : quantum flux capacitor overheated beyond repair" for ln in lines[known][:7]]
    lines[known] = lines[known] + novel
    lines["ts-brand-new-service"] = lines[known][:5]
    (chunk / "logs.json").write_text(json.dumps(lines))
    traces = json.loads((chunk / "spans.json").read_text())
    renamed = 0
    for tr in traces[:30]:
        roots = {s["processID"] for s in tr["spans"] if not s["references"]}
        others = sorted(set(tr["processes"]) - roots)
        if others:
            tr["processes"][others[0]]["serviceName"] = "ts-brand-new-service"
            renamed += 1
    (chunk / "spans.json").write_text(json.dumps(traces))
    return {"removed": removed, "known": known, "novel": len(novel), "renamed": renamed}


def test_unseen_entities_templates_and_edges_are_reported_not_fatal(project, tmp_path):
    root, raw, dumps = project
    planted = _edit_dump(dumps["new"], tmp_path / "edited")
    out = tmp_path / "out"
    summary = run_score(root, "fuseguard", tmp_path / "edited", out)
    drift = summary["drift"]
    assert "ts-brand-new-service" in drift["metrics"]["unseen_entities"]
    assert drift["metrics"]["n_unseen_channels"] == 7
    assert all(c.startswith(planted["removed"] + "/") for c in drift["metrics"]["missing_channels"])
    assert 1 <= drift["metrics"]["n_missing_channels"] <= 7
    assert drift["logs"]["unseen_services"] == {"ts-brand-new-service": 5}
    assert drift["logs"]["unseen_template_lines"].get(planted["known"], 0) >= planted["novel"]
    assert "ts-brand-new-service" in drift["traces"]["unseen_services"]
    assert drift["traces"]["n_unseen_edges"] >= 1 and drift["traces"]["unseen_edge_calls"] >= planted["renamed"]
    df = pl.read_parquet(out / "scores.parquet")
    total_unseen = drift["logs"]["n_unseen_template_lines"] + sum(drift["logs"]["unseen_services"].values())
    assert int(df["unseen_log_lines"].sum()) == total_unseen
    assert df["score"].is_not_nan().sum() > 0.9 * df.height
    notes = " | ".join(summary["drift_notes"])
    assert "unseen metric entities" in notes and "log lines of unseen templates" in notes
    assert "ts-brand-new-service" in (out / "report.html").read_text()


def test_missing_modality_and_other_sampling_interval(project, tmp_path):
    root, raw, dumps = project
    dump = new_dump(raw, tmp_path / "coarse", "b", metric_interval_s={"eadro": 90.0, "gaia": 30.0, "msds": 3.0})
    for f in dump.rglob("logs.json"):
        f.unlink()
    summary = run_score(root, "fuseguard", dump, tmp_path / "out")
    drift = summary["drift"]
    assert drift["missing_modalities"] == ["logs"]
    assert drift["grid"]["differs"] and drift["grid"]["dump_metric_interval_s"] == pytest.approx(90.0)
    assert summary["steps_scored"] > 0


# ------------------------------------------------------------------ the page


class PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.stack: list[str] = []
        self.in_chart = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "svg" and a.get("id") == "score-chart":
            self.in_chart = 1
        a["_in_chart"] = bool(self.in_chart)
        self.tags.append((tag, a))

    def handle_endtag(self, tag):
        if tag == "svg":
            self.in_chart = 0


def test_report_page_structure(project, tmp_path):
    root, raw, dumps = project
    seen_alarms = 0
    for det in ("fuseguard", "random"):
        out = tmp_path / det
        run_score(root, det, dumps["new"], out)
        page = (out / "report.html").read_text()
        parser = PageParser()
        parser.feed(page)
        tags = parser.tags
        names = [t for t, _ in tags]
        assert names.count("svg") >= 4 and "script" not in names and "link" not in names and "img" not in names
        lanes = [a["data-modality"] for t, a in tags if t == "svg" and "lane" in a.get("class", "").split()]
        assert lanes == ["metric", "trace", "log"]  # one lane per modality of the schema
        chart_alarms = [a for t, a in tags if t == "rect" and a.get("class") == "alarm" and a["_in_chart"]]
        n_alarms = read_alarms(out / "alarms.csv").height
        assert len(chart_alarms) == n_alarms
        assert page.count('class="card alarm-card"') == n_alarms
        seen_alarms += n_alarms
        for _, a in tags:  # no network: no URL anywhere in an attribute
            for v in a.values():
                assert not (isinstance(v, str) and ("://" in v or v.startswith("//"))), v
        assert "http://" not in page and "https://" not in page
    assert seen_alarms > 0


# ------------------------------------------------------------------ FuseGuard's own contributors


def _score_as_before(det, ws) -> np.ndarray:
    """FuseGuard's step scores computed as before its per-unit explanation existed (commit f3150e8), from
    the module's unit errors and calibration buffers: what score() must still return, bit for bit."""
    cfg, mod = det.config, det.module
    errs, weights = [], []
    for _, batch, out in det._inference_passes(ws):
        with autocast(det.device, cfg.train.amp):
            per = []
            for m, sq in mod.unit_errors(batch, out["recon"]).items():
                scale = getattr(mod, f"unit_scale_{m}")
                floor = max(1e-8, cfg.unit_scale_floor * float(scale.median())) if scale.numel() else 1e-8
                z = sq / scale.clamp_min(floor)
                k = max(1, int(np.ceil(cfg.score_top_fraction * z.shape[-1])))
                per.append(z.topk(k, dim=-1).values.mean(-1))
            errs.append(torch.stack(per, dim=1).float().cpu().numpy())
        weights.append(out["weights"].float().cpu().numpy())
    e = np.concatenate(errs) / mod.error_scale.detach().cpu().numpy()[None, :, None]
    return ws.steps_from_windows(det._combine(torch.from_numpy(e), torch.from_numpy(np.concatenate(weights))).numpy())


def _schema_unit(name: str, schema: FeatureSchema) -> str | None:
    """The modality of the schema unit ``name`` names (None: no such unit), read off the schema itself."""
    if name in schema.metric_channels:
        return "metric"
    edge, _, feature = name.rpartition("/")
    if feature in schema.edge_features and tuple(edge.split("->")) in {tuple(e) for e in schema.edges}:
        return "trace"
    service, _, rest = name.partition("/#")
    k = rest.split(" ", 1)[0]
    if k.isdigit() and (service, int(k)) in {tuple(c) for c in schema.log_columns}:
        return "log"
    return None


def test_frozen_state_reads_the_datasets_metric_overrides(project, tmp_path):
    """Scoring fills gaps as the dataset's metrics stage did: ``datasets.<name>.metrics`` overrides
    the ``metrics:`` section here too."""
    import copy

    root, raw, _ = project
    assert load_frozen(root / "models" / DS / "fuseguard", Paths(root)).max_gap_steps == raw["metrics"]["max_gap_steps"]
    changed = copy.deepcopy(raw)
    changed["datasets"][DS]["metrics"] = {"max_gap_steps": raw["metrics"]["max_gap_steps"] + 3}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    frozen = load_frozen(root / "models" / DS / "fuseguard", Paths(root, params=tmp_path / "params.yaml"))
    assert frozen.max_gap_steps == raw["metrics"]["max_gap_steps"] + 3
    changed["datasets"][DS]["metrics"] = {"max_gap": 1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    with pytest.raises(InputError, match=r"metrics \(with datasets\.synth_tt\.metrics\)"):
        load_frozen(root / "models" / DS / "fuseguard", Paths(root, params=tmp_path / "params.yaml"))


def test_fuseguard_explain_reads_the_scoring_pass_and_keeps_the_scores(project):
    root, raw, dumps = project
    frozen = load_frozen(root / "models" / DS / "fuseguard", Paths(root))
    det = detector_class("fuseguard").load(frozen.model_dir / "detector", frozen.schema)
    ws = load_split(frozen.paths.windows, "test", frozen.schema.word_pca)
    ws.schema = frozen.schema
    passes = []
    hook = det.module.register_forward_hook(lambda *_: passes.append(1))
    try:
        first = det.score(ws)
        n_passes = len(passes)
        ex = det.explain(ws)
        assert len(passes) == n_passes > 0, "explain ran the network again"
        again = det.score(ws)
    finally:
        hook.remove()
    np.testing.assert_array_equal(first, _score_as_before(det, ws))
    np.testing.assert_array_equal(again, first)

    units, unit_scores = ex["units"], ex["unit_scores"]
    assert unit_scores.shape == (ws.n_steps, len(units)) and unit_scores.dtype == np.float32
    modality = np.array([_schema_unit(u, frozen.schema) for u in units])
    assert None not in modality.tolist() and len(set(units)) == len(units)
    assert set(modality.tolist()) == set(ex["modality_scores"]) == {"metric", "trace", "log"}
    scored = np.isfinite(first)
    assert np.isfinite(unit_scores[scored]).all() and np.isnan(unit_scores[~scored]).all()
    for m, series in ex["modality_scores"].items():  # a modality's score: the mean of its top units' scores
        cols = unit_scores[scored][:, modality == m].astype(np.float64)
        k = max(1, int(np.ceil(det.config.score_top_fraction * cols.shape[1])))
        top = -np.sort(-cols, axis=1)[:, :k].mean(axis=1)
        np.testing.assert_allclose(top, series[scored], rtol=1e-5, atol=1e-7)


def test_fuseguard_alarms_name_its_top_units(project, tmp_path):
    """alarms.csv's top_contributors: FuseGuard's own per-unit errors, named as the schema's units; the
    page shows them per alarm, with their series."""
    root, raw, dumps = project
    out = tmp_path / "fg"
    run_score(root, "fuseguard", dumps["new"], out)
    schema = load_frozen(root / "models" / DS / "fuseguard", Paths(root)).schema
    alarms = read_alarms(out / "alarms.csv")
    assert alarms.height > 0, "the new dump raised no FuseGuard alarm: nothing to check"
    page = (out / "report.html").read_text()
    assert page.count("top contributors (per-unit normalised reconstruction error)") == alarms.height
    for row in alarms.iter_rows(named=True):
        contributors = row["top_contributors"]
        assert contributors, row
        name, value = contributors.split("; ")[0].rsplit("=", 1)
        assert _schema_unit(name, schema) is not None, name
        assert float(value) > 0
        assert f'aria-label="{html.escape(name)}"' in page  # its series is drawn on the alarm's card


# ------------------------------------------------------------------ a real browser


def _chromium() -> str | None:
    """The browser scripts/screenshot_report.sh picks (same order)."""
    return os.environ.get("CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def read_png(path: Path) -> np.ndarray:
    """(H, W, channels) uint8 of an 8-bit, non-interlaced PNG (stdlib zlib; filters undone here)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + size]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + size
    width, height, depth, colour, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    assert depth == 8 and interlace == 0, (depth, interlace)
    bpp, stride = channels, width * channels
    raw = zlib.decompress(b"".join(idat))
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.int64)
    for y in range(height):
        kind, row = raw[y * (stride + 1)], np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int64)
        if kind == 1:  # Sub: a running sum per channel
            row = row.reshape(width, bpp).cumsum(axis=0).reshape(-1) % 256
        elif kind == 2:  # Up
            row = (row + prev) % 256
        elif kind in (3, 4):  # Average, Paeth: byte by byte
            r, p = row.tolist(), prev.tolist()
            for i in range(stride):
                a = r[i - bpp] if i >= bpp else 0
                c = p[i - bpp] if i >= bpp else 0
                if kind == 3:
                    r[i] = (r[i] + (a + p[i]) // 2) % 256
                else:
                    est = a + p[i] - c
                    pa, pb, pc = abs(est - a), abs(est - p[i]), abs(est - c)
                    r[i] = (r[i] + (a if pa <= pb and pa <= pc else p[i] if pb <= pc else c)) % 256
            row = np.asarray(r, np.int64)
        out[y], prev = row, row
    return out.reshape(height, width, channels)


@pytest.mark.skipif(_chromium() is None, reason="Chromium not found (apt-get install chromium, or set "
                    "CHROMIUM=/path/to/chromium); test_report_page_structure checks the page without a browser")
def test_report_renders_in_a_real_browser(project, tmp_path):
    """scripts/screenshot_report.sh in headless Chromium: a PNG of the requested size that is not blank,
    and no console message from the page."""
    browser = _chromium()
    root, raw, dumps = project
    run_score(root, "fuseguard", dumps["new"], tmp_path / "fg")
    script = REPO / "scripts" / "screenshot_report.sh"
    env = dict(os.environ, CHROMIUM=browser, CHROMIUM_FLAGS="--enable-logging=stderr --v=0")

    def shoot(page: Path, png: Path, width: int, height: int) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(script), str(page), str(png), str(width), str(height)], env=env,
                              capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    png = tmp_path / "report.png"
    proc = shoot(tmp_path / "fg" / "report.html", png, 900, 700)
    img = read_png(png)
    assert img.shape[:2] == (700, 900)
    rgb = img[..., :3].astype(np.float64)
    assert rgb.var() > 0
    assert (rgb.max(axis=2) < 128).mean() > 0.002, "hardly anything dark drawn (text, lines)"
    assert len(np.unique(img[..., :3].reshape(-1, 3), axis=0)) > 20  # text, lines, shaded alarms
    # console messages reach stderr with these flags: a page that logs one shows it, ours shows none
    probe = tmp_path / "probe.html"
    probe.write_text('<!DOCTYPE html><html><body><script>console.error("probe-" + "message")</script></body></html>')
    if "probe-message" in shoot(probe, tmp_path / "probe.png", 200, 100).stderr:
        assert ":CONSOLE" not in proc.stderr, [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]


def test_screenshot_script_is_documented():
    script = REPO / "scripts" / "screenshot_report.sh"
    text = script.read_text()
    assert os.access(script, os.X_OK) and "--headless" in text and "--screenshot" in text


# ------------------------------------------------------------------ bad input


def test_unscorable_input_is_one_line_exit_2(project, tmp_path):
    root, raw, dumps = project
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "stages.score", f"models/{DS}/random", str(tmp_path / "nowhere")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "nowhere" in err[0] and "expected" in err[0]
    first = tmp_path / "first"
    run_score(root, "random", dumps["new"], first, "--to", "2022-04-18T14:30:00")
    os.chdir(root)
    try:  # another model's state cannot be resumed
        assert score.main([f"models/{DS}/iforest", str(dumps["new"]), "--resume", str(first),
                           "--out", str(tmp_path / "x")]) == 2
    finally:
        os.chdir(REPO)


# ------------------------------------------------------------------ building blocks


def test_seeded_forward_fill_continues_the_whole_matrix():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    x[rng.random(x.shape) < 0.6] = np.nan
    x[:20, 2] = np.nan
    for limit in (None, 0, 3):
        whole = forward_fill(x, limit)
        for cut in (1, 17, 40):
            value, k = last_observed(x[:cut], 0)
            age = np.where(k >= 0, cut - k, 0)
            tail = forward_fill(x[cut:], limit, value, age)
            np.testing.assert_array_equal(np.concatenate([forward_fill(x[:cut], limit), tail]), whole)


def test_dspot_state_round_trip_continues_exactly():
    rng = np.random.default_rng(1)
    calib, stream = rng.gumbel(size=600), rng.gumbel(size=900) + np.linspace(0, 2, 900)
    a = DSpot(50, 0.9, 0.01)
    assert a.calibrate(calib)
    whole = [a.step(x) for x in stream]
    b = DSpot(50, 0.9, 0.01)
    b.calibrate(calib)
    first = [b.step(x) for x in stream[:400]]
    c = DSpot.from_state(json.loads(json.dumps(b.to_state())))
    assert first + [c.step(x) for x in stream[400:]] == whole
