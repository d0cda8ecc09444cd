"""DVC stage ``report``: every (dataset, detector) evaluation in tables a reviewer can trust.

Reads ``metrics/eval/<ds>/<detector>.json`` for ``pipeline.datasets`` × ``pipeline.detectors`` and
``metrics/data/<ds>.json`` (split sizes and the best-single-column oracle); a missing file is listed
as missing (a partial ``dvc repro`` still gets a report). Rows are grouped by protocol and each
shows the share of training data and the number of labelled events the detector used; the random,
PCA and IsolationForest floors stand in every group (they read no label, so their figures are the
same in both). Datasets that share a ``group`` (the same system under other generator seeds) get
their mean and a t-interval across seeds. Writes ``metrics/summary.json`` and ``metrics/summary.md``.
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

from stages.core.bootstrap import mean_interval
from stages.core.cli import run_stage
from stages.core.errors import InputError
from stages.core.evaluation import clean_for_json, write_metrics_json
from stages.core.io import read_json, write_text
from stages.core.params import PARAMS_FILE, build, load_datasets, load_raw
from stages.core.protocol import PROTOCOLS, ProtocolParams

log = logging.getLogger("stages.report")

FLOORS = ("random", "pca", "iforest")
# (metrics key, column title, decimals, interval key or None); the order is the table's column order
COLUMNS: list[tuple[str, str, int, str | None]] = [
    ("auc_pr", "AUC-PR", 3, "auc_pr"),
    ("vus_pr", "VUS-PR", 3, "vus_pr"),
    ("auc_roc", "AUC-ROC", 3, "auc_roc"),
    ("vus_roc", "VUS-ROC", 3, None),
    ("f1", "F1", 3, None),
    ("event_precision", "event P", 3, None),
    ("event_recall", "event R", 3, None),
    ("event_f1", "event F1", 3, "event_f1"),
    ("mean_delay_s", "delay s", 0, None),
    ("pa_f1", "PA-F1 (legacy)", 3, None),
    ("best_f1_oracle", "best-F1 (oracle)", 3, None),
    ("train_seconds", "train s", 1, None),
    ("score_windows_per_s", "score win/s", 0, None),
]
KEY_METRICS = [c[0] for c in COLUMNS] + [
    "auc_roc", "precision", "recall", "best_f1_oracle_pa", "peak_memory_mb", "threshold", "n_events", "n_steps",
    "n_anomalous", "n_alarms", "n_test_windows", "data_share", "labelled_events"]
TEXT_KEYS = ["device", "protocol", "threshold_method", "normal_only"]
SEED_METRICS = ("auc_pr", "vus_pr", "event_f1", "f1", "auc_roc")

THRESHOLD_READS = {
    "dspot": "validation scores, then the test span's own non-alarming scores as they stream in (DSPOT) — no label",
    "pot": "validation scores only (POT) — no label",
    "val_quantile": "validation scores only (a quantile) — no label",
    "val_max": "validation scores only (their maximum) — no label",
    "contamination": "validation scores and the labels of the first k faults of the few-shot training span "
                     "(their anomalous share sets the quantile)",
}


def pipeline_lists(raw: dict) -> tuple[list[str], list[str]]:
    node = raw.get("pipeline")
    if not isinstance(node, dict):
        raise InputError(PARAMS_FILE, "pipeline", "a mapping with datasets and detectors lists", node)
    out = []
    for key in ("datasets", "detectors"):
        items = node.get(key)
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise InputError(PARAMS_FILE, f"pipeline.{key}", "a list of names", items)
        out.append(items)
    return out[0], out[1]


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _row(path: Path, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InputError(path, None, "a JSON object of metrics", type(data).__name__)
    row = {k: data.get(k) for k in KEY_METRICS + TEXT_KEYS}
    for k in KEY_METRICS:
        if row[k] is not None and _number(row[k]) is None:
            raise InputError(path, k, "a finite number or null", row[k])
    row["ci"] = data.get("ci") or {}
    row["by_kind"] = data.get("by_kind") or {}
    row["by_severity"] = data.get("by_severity") or {}
    return row


def collect(eval_root: Path, datasets: list[str], detectors: list[str]
            ) -> tuple[dict[str, dict[str, dict[str, Any]]], list[str]]:
    """{dataset: {detector: key metrics}} of the files that exist, and "ds/detector" of those missing."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    missing: list[str] = []
    for ds in datasets:
        for det in detectors:
            path = Path(eval_root) / ds / f"{det}.json"
            if not path.exists():
                missing.append(f"{ds}/{det}")
                continue
            table.setdefault(ds, {})[det] = _row(path, read_json(path))
    return table, missing


def protocol_of(det: str, row: dict | None, protocol: ProtocolParams) -> str:
    if row and row.get("protocol") in PROTOCOLS:
        return row["protocol"]
    return protocol.by_detector.get(det, protocol.default)


def detector_means(table: dict[str, dict[str, dict[str, Any]]], detectors: list[str]) -> dict[str, dict]:
    """Mean of each numeric key metric over the datasets where it is defined (with the count)."""
    means: dict[str, dict] = {}
    for det in detectors:
        rows = [by_det[det] for by_det in table.values() if det in by_det]
        if not rows:
            continue
        entry: dict[str, Any] = {"n_datasets": len(rows)}
        for k in KEY_METRICS:
            vals = [v for v in (_number(r.get(k)) for r in rows) if v is not None]
            entry[k] = sum(vals) / len(vals) if vals else None
        means[det] = entry
    return means


def seed_groups(datasets: list[str], raw: dict) -> dict[str, list[str]]:
    """group → member datasets, for groups with more than one member in this run."""
    entries = load_datasets(raw) if raw.get("datasets") else {}
    groups: dict[str, list[str]] = {}
    for ds in datasets:
        g = entries[ds].group if ds in entries and entries[ds].group else ds
        groups.setdefault(g, []).append(ds)
    return {g: members for g, members in groups.items() if len(members) > 1}


def across_seeds(table: dict, groups: dict[str, list[str]], detectors: list[str]) -> dict[str, dict]:
    """group → detector → metric → {mean, lo, hi, n} (Student t over the group's datasets)."""
    out: dict[str, dict] = {}
    for g, members in groups.items():
        for det in detectors:
            per = {}
            for k in SEED_METRICS:
                vals = [_number(table.get(ds, {}).get(det, {}).get(k)) for ds in members]
                vals = [v for v in vals if v is not None]
                if vals:
                    m, lo, hi = mean_interval(vals)
                    per[k] = {"mean": m, "lo": lo, "hi": hi, "n": len(vals)}
            if per:
                out.setdefault(g, {})[det] = per
    return out


def per_group_table(table: dict, detectors: list[str], key: str) -> dict[str, dict[str, dict]]:
    """``by_kind`` / ``by_severity``: group value → detector → {auc_pr, event_recall (means), n_events (sum)}."""
    out: dict[str, dict[str, dict]] = {}
    for by_det in table.values():
        for det in detectors:
            for g, m in (by_det.get(det, {}).get(key) or {}).items():
                cell = out.setdefault(g, {}).setdefault(det, {"auc_pr": [], "event_recall": [], "n_events": 0})
                for k in ("auc_pr", "event_recall"):
                    v = _number(m.get(k))
                    if v is not None:
                        cell[k].append(v)
                cell["n_events"] += int(m.get("n_events") or 0)  # summed over datasets
    for g in out.values():
        for cell in g.values():
            for k in ("auc_pr", "event_recall"):
                cell[k] = sum(cell[k]) / len(cell[k]) if cell[k] else None
    return out


# ------------------------------------------------------------------ markdown


def _cell(v: Any, decimals: int, ci: list | None = None) -> str:
    n = _number(v)
    if n is None:
        return "—"
    text = f"{n:.{decimals}f}"
    if ci and len(ci) == 2 and _number(ci[0]) is not None and _number(ci[1]) is not None:
        text += f" [{ci[0]:.{decimals}f}, {ci[1]:.{decimals}f}]"
    return text


def _line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def detector_rows(by_det: dict, detectors: list[str], proto: str, protocol: ProtocolParams) -> list[list[str]]:
    members = [d for d in detectors if d in FLOORS] + [
        d for d in detectors if d not in FLOORS and protocol_of(d, by_det.get(d), protocol) == proto]
    rows = []
    best = max((_number(by_det[d].get("auc_pr")) or -1 for d in members if d in by_det), default=None)
    for det in members:
        r = by_det.get(det)
        name = f"{det} (floor)" if det in FLOORS else det
        if r is None:
            rows.append([name, "—", "—"] + ["missing"] + ["—"] * (len(COLUMNS) - 1))
            continue
        share = _number(r.get("data_share"))
        cells = [_cell(r.get(k), d, r["ci"].get(ci) if ci else None) for k, _, d, ci in COLUMNS]
        if best is not None and _number(r.get("auc_pr")) == best and best >= 0:
            cells[0] = f"**{cells[0]}**"
        labelled = str(r.get("labelled_events") or 0)
        if r.get("normal_only"):
            labelled += " (+ normal-only windows: reads few-shot labels)"
        rows.append([name, "—" if share is None else f"{100 * share:.0f}%", labelled] + cells)
    return rows


def markdown(raw: dict, table: dict, datasets: list[str], detectors: list[str], data_info: dict,
             seeds: dict, kinds: dict, severities: dict, missing: list[str]) -> str:
    protocol = build(ProtocolParams, raw.get("protocol"), where="protocol")
    method = ((raw.get("evaluate") or {}).get("threshold") or {}).get("method", "dspot")
    header = ["detector", "data", "labelled events"] + [c[1] for c in COLUMNS]
    align = ["---", "---:", "---:"] + ["---:"] * len(COLUMNS)
    out = [
        "# Evaluation summary", "",
        f"- **Threshold** `{method}`: reads {THRESHOLD_READS.get(method, 'see params.yaml')}.",
        "- **Protocols.** `unsupervised`: every detector learns from the same few-shot data subset "
        "(`data` = its share of the training span, spread blocks over the daily cycle) and no label. "
        f"`fewshot_labels`: the same data plus the labels of its first {protocol.labelled_events} fault events "
        "(`labelled events` = how many that subset held). Floors read no label and appear in both groups.",
        "- Brackets: 95% block-bootstrap intervals over test events. `best-F1 (oracle)` and the best single "
        "column read test labels: comparison with published numbers and a difficulty diagnostic only. "
        "`PA-F1` is the legacy point-adjusted F1. Best AUC-PR per group in bold.", "",
    ]
    for ds in datasets:
        info = data_info.get(ds) or {}
        test = (info.get("splits") or {}).get("test") or {}
        oracle = info.get("oracle_best_single_column") or {}
        first = next(iter(table.get(ds, {}).values()), {})
        out.append(f"## {ds}")
        out.append("")
        facts = []
        if test:
            facts.append(f"test span {test.get('steps')} steps, {test.get('anomalous_steps')} anomalous "
                         f"({100 * test.get('anomalous_steps', 0) / max(1, test.get('steps', 1)):.1f}%)")
        if first.get("n_events") is not None:
            facts.append(f"{first['n_events']} fault events")
        if oracle.get("column"):
            facts.append(f"best single column (oracle): `{oracle['column']}` AUC-PR {oracle['auc_pr']:.3f}")
        if facts:
            out += ["; ".join(facts) + ".", ""]
        for proto in PROTOCOLS:
            rows = detector_rows(table.get(ds, {}), detectors, proto, protocol)
            if proto != "unsupervised" and all(r[0].endswith("(floor)") for r in rows):
                continue  # a group of floors alone says nothing the first group did not
            out += [f"**protocol `{proto}`**", "", _line(header), _line(align), *map(_line, rows), ""]
    if seeds:
        out += ["## Across generator seeds (mean [95% t-interval], n seeds)", "",
                _line(["group", "detector"] + [k for k in SEED_METRICS]),
                _line(["---", "---"] + ["---:"] * len(SEED_METRICS))]
        for g, by_det in seeds.items():
            for det, per in by_det.items():
                cells = []
                for k in SEED_METRICS:
                    c = per.get(k)
                    cells.append("—" if not c else _cell(c["mean"], 3, [c["lo"], c["hi"]]) + f" (n={c['n']})")
                out.append(_line([g, det] + cells))
        out.append("")
    for title, groups in (("fault kind", kinds), ("fault severity", severities)):
        if not groups:
            continue
        out += [f"## Per {title}: AUC-PR / event recall (normal steps + that {title.split()[-1]}'s steps; "
                "mean over datasets)", "",
                _line([title.split()[-1], "events"] + detectors), _line(["---", "---:"] + ["---:"] * len(detectors))]
        for g in sorted(groups):
            by_det = groups[g]
            n_events = max((c["n_events"] for c in by_det.values()), default=0)
            cells = [f"{_cell(by_det[d]['auc_pr'], 3)} / {_cell(by_det[d]['event_recall'], 2)}" if d in by_det
                     else "—" for d in detectors]
            out.append(_line([g, str(n_events)] + cells))
        out.append("")
    if missing:
        out += ["Missing (not evaluated yet): " + ", ".join(missing), ""]
    return "\n".join(out)


def run(raw: dict | None = None, metrics_root: Path = Path("metrics")) -> dict:
    raw = load_raw() if raw is None else raw
    datasets, detectors = pipeline_lists(raw)
    metrics_root = Path(metrics_root)
    table, missing = collect(metrics_root / "eval", datasets, detectors)
    data_info = {ds: read_json(p) for ds in datasets if (p := metrics_root / "data" / f"{ds}.json").exists()}
    groups = seed_groups(datasets, raw)
    seeds = across_seeds(table, groups, detectors)
    kinds = per_group_table(table, detectors, "by_kind")
    severities = per_group_table(table, detectors, "by_severity")
    protocol = build(ProtocolParams, raw.get("protocol"), where="protocol")
    summary = {
        "threshold_method": ((raw.get("evaluate") or {}).get("threshold") or {}).get("method", "dspot"),
        "by_dataset": {ds: {det: {k: v for k, v in r.items() if k not in ("by_kind", "by_severity")}
                            for det, r in by_det.items()} for ds, by_det in table.items()},
        "protocol_of": {det: "floor" if det in FLOORS else protocol_of(det, None, protocol) for det in detectors},
        "mean_by_detector": detector_means(table, detectors),
        "oracle_best_single_column": {ds: (data_info.get(ds) or {}).get("oracle_best_single_column")
                                      for ds in datasets},
        "across_seeds": seeds, "by_kind": kinds, "by_severity": severities, "missing": missing,
    }
    md = markdown(raw, table, datasets, detectors, data_info, seeds, kinds, severities, missing)
    clean_for_json(summary)  # fail on anything unserialisable before writing either file
    write_metrics_json(metrics_root / "summary.json", summary)
    write_text(md, metrics_root / "summary.md")
    if missing:
        log.warning("report: %d of %d evaluations missing: %s", len(missing), len(datasets) * len(detectors),
                    ", ".join(missing))
    log.info("evaluation summary written to %s\n%s", metrics_root / "summary.md", md)
    return summary


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m stages.report", description=__doc__).parse_args(argv)
    return run_stage(run)


if __name__ == "__main__":
    raise SystemExit(main())
