"""Loading the windows of one dataset the way the train and evaluate stages do, at full size.

    python -m stages.bench splits [--steps 120958] [--channels 650] [--repeat 3] [--workdir DIR]

writes a synthetic ``data/windows/<ds>/`` in the windows stage's layout (``grid.npz`` stored
uncompressed, the metric array in column order as ``align`` builds it, the default split and
eight spread few-shot blocks), then in fresh processes loads the splits each stage loads, reads
every metric value once, and reports wall seconds and memory:

* ``project``: :func:`stages.core.windowset.load_split`, which reads only each split's rows of
  ``grid.npz`` (``GridArrays.rows``);
* ``reference``: plain numpy, ``np.load`` of each member once per split, sliced to the split's
  blocks (``load_split`` before ``GridArrays``, except that it read the members once per few-shot
  block: eight whole reads of the grid for the few-shot split).

Two scenarios: the train stage (``train`` + ``val``; few-shot detectors load ``fewshot`` instead of
``train``) and the evaluate stage (``val`` + ``test`` + ``fewshot``). Memory is the child's
``VmHWM`` and, at the end, its anonymous and file-backed resident memory (``RssAnon``/``RssFile``
of ``/proc/self/status``). The default size is the metrics stage's 10 s grid over GAIA's two
weeks (120,958 steps) at a tenth of its 6,500 metric series; ``--channels 6500`` is the full size
(a 3.2 GB grid).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from stages.bench_ingest import peak_rss_mb, run_child

SCENARIOS = {"train": ("train", "val"), "evaluate": ("val", "test", "fewshot")}
GAIA_STEPS = 120_958  # two weeks of 10 s steps: the windows stage's grid of `--scale gaia`


def write_windows(out: Path, steps: int, channels: int, edges: int = 40, log_columns: int = 200,
                  seed: int = 0) -> Path:
    """A windows folder in the windows stage's layout, filled with random values."""
    from stages.core.params import SplitParams
    from stages.core.windowset import FeatureSchema
    from stages.windowing.align import WindowParams, fewshot_blocks, split_ranges

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    wp, split = WindowParams(), SplitParams()
    ranges = split_ranges(steps, wp.length, split)
    blocks = fewshot_blocks(ranges["train"][1] - ranges["train"][0], wp.length, split)
    services = [f"svc{i}" for i in range(10)]
    labels = (rng.random(steps) < 0.02).astype(np.int8)
    times = np.sort(rng.integers(0, steps, 4 * steps))
    with open(out / "grid.npz", "wb") as fh:
        np.savez(fh, ts=np.arange(steps, dtype=np.int64) * 10_000_000,
                 metric=np.asfortranarray(rng.standard_normal((steps, channels), dtype=np.float32)),
                 trace=rng.standard_normal((steps, edges, 3), dtype=np.float32),
                 log=rng.random((steps, log_columns), dtype=np.float32), labels=labels,
                 kinds=np.where(labels > 0, "cpu_hog", "").astype("U64"),
                 severity=np.where(labels > 0, "high", "").astype("U16"),
                 log_events=np.stack([times, times % 10, times % log_columns], axis=1))
    schema = FeatureSchema(
        dataset="bench", step_s=10.0, metric_channels=[f"{services[i % 10]}/m{i}" for i in range(channels)],
        metric_entities=[services[i % 10] for i in range(channels)],
        edges=[(services[i % 10], services[(i + 1) % 10]) for i in range(edges)],
        edge_features=["latency", "count", "error_rate"], services=services,
        log_columns=[(services[i % 10], i) for i in range(log_columns)],
        templates=[f"template {i} <*>" for i in range(log_columns)])
    (out / "schema.json").write_text(json.dumps(schema.to_json()))
    (out / "splits.json").write_text(json.dumps({"ranges": ranges, "fewshot_blocks": blocks, "window": wp.length,
                                                 "stride": wp.stride}))
    return out


def _memory_mib() -> dict[str, float]:
    """VmHWM, RssAnon and RssFile of this process; only the peak (``ru_maxrss``) where /proc is absent."""
    try:
        with open("/proc/self/status") as fh:
            fields = dict(line.split(":", 1) for line in fh if ":" in line)
        return {key: int(fields[key].split()[0]) / 1024.0 for key in ("VmHWM", "RssAnon", "RssFile")}
    except (OSError, KeyError):
        return {"VmHWM": peak_rss_mb(), "RssAnon": float("nan"), "RssFile": float("nan")}


def _reference_split(wdir: Path, split: str) -> dict[str, np.ndarray]:
    meta = json.loads((wdir / "splits.json").read_text())
    blocks = meta["fewshot_blocks"] if split == "fewshot" else [meta["ranges"][split]]
    out = {}
    with np.load(wdir / "grid.npz", allow_pickle=False) as z:
        for key in ("ts", "metric", "trace", "log", "labels", "kinds", "severity"):
            whole = z[key]
            out[key] = whole[blocks[0][0]:blocks[0][1]] if len(blocks) == 1 else np.concatenate(
                [whole[a:b] for a, b in blocks])
    return out


def child(spec: dict) -> dict:
    """One measurement in this (fresh) process."""
    from stages.core.windowset import load_split  # imported by both, outside the timed part

    wdir = Path(spec["windows"])
    t0 = time.perf_counter()
    if spec["how"] == "project":
        metrics = [load_split(wdir, split).metric for split in spec["splits"]]
    else:
        metrics = [_reference_split(wdir, split)["metric"] for split in spec["splits"]]
    loaded = time.perf_counter() - t0
    total = sum(float(m.sum(dtype=np.float64)) for m in metrics)  # every value read once
    return {"load_s": loaded, "load_and_read_s": time.perf_counter() - t0, "checksum": total, **_memory_mib()}


def _spawn(spec: dict) -> dict:
    return run_child("stages.bench_splits", spec, f"{spec['how']} {', '.join(spec['splits'])}")


def bench_splits(steps: int, channels: int, repeat: int, workdir: str | None = None) -> dict:
    """Both loaders for both scenarios, alternating; the fastest run's time, the highest memory."""
    with tempfile.TemporaryDirectory(prefix="bench-splits-", dir=workdir) as tmp:
        wdir = write_windows(Path(tmp) / "bench", steps, channels)
        grid_mb = (wdir / "grid.npz").stat().st_size / 1e6
        rows = []
        for scenario, splits in SCENARIOS.items():
            runs: dict[str, list[dict]] = {"project": [], "reference": []}
            for _ in range(repeat):
                for how, done in runs.items():
                    done.append(_spawn({"windows": str(wdir), "how": how, "splits": list(splits)}))
            if len({round(r["checksum"], 3) for done in runs.values() for r in done}) != 1:
                raise RuntimeError(f"{scenario}: the two loaders read different values")
            best = {how: {"load_and_read_s": min(r["load_and_read_s"] for r in done),
                          "load_s": min(r["load_s"] for r in done),
                          **{k: max(r[k] for r in done) for k in ("VmHWM", "RssAnon", "RssFile")}}
                    for how, done in runs.items()}
            rows.append({"scenario": scenario, "splits": list(splits), **best,
                         "time_ratio": best["project"]["load_and_read_s"] / best["reference"]["load_and_read_s"]})
    table = ["| stage (splits) | project: s, VmHWM, RssAnon/RssFile at end | reference: s, VmHWM | ratio |",
             "|---|---|---|---:|"]
    for r in rows:
        p, q = r["project"], r["reference"]
        table.append(f"| {r['scenario']} ({', '.join(r['splits'])}) | {p['load_and_read_s']:.2f} s, "
                     f"{p['VmHWM']:,.0f} MiB, {p['RssAnon']:,.0f}/{p['RssFile']:,.0f} MiB | "
                     f"{q['load_and_read_s']:.2f} s, {q['VmHWM']:,.0f} MiB | {r['time_ratio']:.2f}× |")
    return {"steps": steps, "channels": channels, "grid_mb": round(grid_mb, 1), "repeat": repeat, "rows": rows,
            "table": "\n".join(table)}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--steps", type=int, default=GAIA_STEPS)
    ap.add_argument("--channels", type=int, default=650)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="where the grid is written (a temporary folder in it)")


if __name__ == "__main__" and sys.argv[1:] == ["child"]:
    print(json.dumps(child(json.loads(sys.stdin.read()))))
