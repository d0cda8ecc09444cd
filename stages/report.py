"""DVC stage ``report``: one table of every (dataset, detector) evaluation.

Reads ``metrics/eval/<ds>/<detector>.json`` for ``pipeline.datasets`` × ``pipeline.detectors``;
a missing file is listed as missing (a partial ``dvc repro`` still gets a report). Writes
``metrics/summary.json`` (``by_dataset`` → detector → key metrics, ``mean_by_detector``,
``missing``) and ``metrics/summary.md``, and logs a plain-text copy of the table.
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

from stages.core.cli import run_stage
from stages.core.errors import InputError
from stages.core.evaluation import clean_for_json, write_metrics_json
from stages.core.io import read_json, write_text
from stages.core.params import PARAMS_FILE, load_raw

log = logging.getLogger("stages.report")

# (metrics key, column title, decimals); the order is the table's column order
COLUMNS: list[tuple[str, str, int]] = [
    ("auc_pr", "AUC-PR", 3),
    ("auc_roc", "AUC-ROC", 3),
    ("precision", "P", 3),
    ("recall", "R", 3),
    ("f1", "F1", 3),
    ("event_recall", "event recall", 3),
    ("mean_delay_s", "mean delay s", 1),
    ("pa_f1", "PA-F1", 3),
    ("best_f1_oracle", "best-F1 (oracle)", 3),
    ("train_seconds", "train s", 1),
    ("score_windows_per_s", "score win/s", 0),
]
KEY_METRICS = [k for k, _, _ in COLUMNS] + ["best_f1_oracle_pa", "peak_memory_mb", "threshold", "n_events",
                                             "n_test_windows", "device"]
NUMERIC = [k for k in KEY_METRICS if k != "device"]


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
            data = read_json(path)
            if not isinstance(data, dict):
                raise InputError(path, None, "a JSON object of metrics", type(data).__name__)
            row = {k: data.get(k) for k in KEY_METRICS}
            for k in NUMERIC:
                if row[k] is not None and _number(row[k]) is None:
                    raise InputError(path, k, "a finite number or null", row[k])
            table.setdefault(ds, {})[det] = row
    return table, missing


def detector_means(table: dict[str, dict[str, dict[str, Any]]], detectors: list[str]) -> dict[str, dict]:
    """Mean of each numeric key metric over the datasets where it is defined (with the count)."""
    means: dict[str, dict] = {}
    for det in detectors:
        rows = [by_det[det] for by_det in table.values() if det in by_det]
        if not rows:
            continue
        entry: dict[str, Any] = {"n_datasets": len(rows)}
        for k in NUMERIC:
            vals = [_number(r.get(k)) for r in rows]
            vals = [v for v in vals if v is not None]
            entry[k] = sum(vals) / len(vals) if vals else None
        means[det] = entry
    return means


def _cell(v: Any, decimals: int) -> str:
    n = _number(v)
    return "—" if n is None else f"{n:.{decimals}f}"


def table_rows(table: dict, missing: list[str], datasets: list[str], detectors: list[str]
               ) -> tuple[list[str], list[list[str]], list[tuple[int, int]]]:
    """Header, cell rows, and (row, column) cells to emphasise: the best AUC-PR of each dataset."""
    header = ["dataset", "detector"] + [title for _, title, _ in COLUMNS] + ["device"]
    rows: list[list[str]] = []
    bold: list[tuple[int, int]] = []
    for ds in datasets:
        by_det = table.get(ds, {})
        scored = [_number(by_det[d]["auc_pr"]) for d in by_det]
        best = max((v for v in scored if v is not None), default=None)
        for det in detectors:
            if f"{ds}/{det}" in missing:
                rows.append([ds, det] + ["—"] * len(COLUMNS) + ["missing"])
                continue
            r = by_det[det]
            rows.append([ds, det] + [_cell(r.get(k), d) for k, _, d in COLUMNS] + [str(r.get("device") or "—")])
            if best is not None and _number(r["auc_pr"]) == best:
                bold.append((len(rows) - 1, 2))
    return header, rows, bold


def markdown(header: list[str], rows: list[list[str]], bold: list[tuple[int, int]], means: dict,
             missing: list[str]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    marked = [list(r) for r in rows]
    for i, j in bold:
        marked[i][j] = f"**{marked[i][j]}**"
    align = ["---", "---"] + ["---:"] * len(COLUMNS) + ["---"]
    out = ["# Evaluation summary", "",
           "Threshold chosen on validation scores without labels; `best-F1 (oracle)` uses test labels and is",
           "shown for comparison with published numbers only. Best AUC-PR per dataset in bold.", "",
           line(header), line(align), *map(line, marked), ""]
    if means:
        out += ["## Mean over datasets", "",
                line(["detector", "datasets"] + [t for _, t, _ in COLUMNS]),
                line(["---", "---:"] + ["---:"] * len(COLUMNS))]
        for det, m in means.items():
            out.append(line([det, str(m["n_datasets"])] + [_cell(m.get(k), d) for k, _, d in COLUMNS]))
        out.append("")
    if missing:
        out += ["Missing (not evaluated yet): " + ", ".join(missing), ""]
    return "\n".join(out)


def plain_text(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]

    def fmt(cells: list[str]) -> str:  # names left-aligned, numbers right-aligned
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)])


def run(raw: dict | None = None, metrics_root: Path = Path("metrics")) -> dict:
    raw = load_raw() if raw is None else raw
    datasets, detectors = pipeline_lists(raw)
    metrics_root = Path(metrics_root)
    table, missing = collect(metrics_root / "eval", datasets, detectors)
    means = detector_means(table, detectors)
    summary = {"by_dataset": table, "mean_by_detector": means, "missing": missing}
    header, rows, bold = table_rows(table, missing, datasets, detectors)
    md = markdown(header, rows, bold, means, missing)
    clean_for_json(summary)  # fail on anything unserialisable before writing either file
    write_metrics_json(metrics_root / "summary.json", summary)
    write_text(md, metrics_root / "summary.md")
    if missing:
        log.warning("report: %d of %d evaluations missing: %s", len(missing), len(datasets) * len(detectors),
                    ", ".join(missing))
    log.info("evaluation summary\n%s", plain_text(header, rows))
    return summary


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m stages.report", description=__doc__).parse_args(argv)
    return run_stage(run)


if __name__ == "__main__":
    raise SystemExit(main())
