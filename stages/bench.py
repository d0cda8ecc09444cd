"""Benchmarks, one command each (speed is measured here, never asserted in tests).

    python -m stages.bench ingest [--format eadro] [--hours 24] [--requests-per-s 2] [--scale gaia|msds|eadro]
        generate a synthetic dump, then run each modality's reader (and its feature step) and a plain
        reference reader of the same files, each in a fresh process: rows/s, MB/s, peak RSS and the
        project/reference ratios as a markdown table (see stages/bench_ingest.py).
    python -m stages.bench train [--detector fuseguard] [--profile default|paper] [--windows 512]
                                 [--random-backbone]
        training and scoring windows/s on synthetic windows, on CUDA when present (bf16 and fp32)
        else on the CPU; peak memory. ``--random-backbone``: the profile's backbone architecture
        from its default config with random weights, for a machine without the weights (a GPU
        machine with no network: GPT-2's 548 MB cannot be carried there). The compute and memory
        are the real model's; the detection is not, and the output says so.

    python -m stages.bench splits [--steps 120958] [--channels 650] [--repeat 3]
        the train and evaluate stages' split loads from a synthetic full-length grid.npz, reading
        each split's rows (``load_split``) against plain ``np.load`` + slicing, in fresh processes:
        seconds, peak and resident memory, ratio (see stages/bench_splits.py).

    python -m stages.bench pipeline [--scale gaia] [--format gaia --root DUMP] [--detectors random,pca]
        every stage's command on one dump (generated, or yours) in a scratch workspace, in turn and
        each in its own process: wall seconds and peak RSS per stage, the grid's size and each
        detector's AUC-PR beside the floors (see stages/bench_pipeline.py).

    python -m stages.bench dvc [--repeat 3] [--root .]
        dvc's reads of dvc.yaml/dvc.lock with the C YAML parser against the pure-Python one, side by
        side: one parse of each file, and ``dvc status`` in fresh processes (see stages/bench_dvc.py).

    python -m stages.bench score MODEL_DIR [--hours 24] [--workdir DIR]
        generate a new dump of the model's system (synth --variant), score it whole with
        ``stages.score`` (cold: includes the threshold calibration on validation scores), then as two
        halves with --resume (the streaming steady state); wall seconds per phase and steps/s.

Results are printed as JSON and written to ``bench/<name>.json``.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from stages import bench_dvc, bench_ingest, bench_pipeline, bench_splits
from stages.core.cli import run_stage
from stages.core.io import write_json

log = logging.getLogger("stages.bench")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _synthetic_windows(n_windows: int, window: int, stride: int, channels: int, edges: int, log_cols: int,
                       hidden: int, seed: int = 0):
    from stages.core.windowset import FeatureSchema, WindowSet

    T = n_windows * stride + window
    rng = np.random.default_rng(seed)
    services = [f"svc{i}" for i in range(max(2, edges))]
    schema = FeatureSchema(
        dataset="bench", step_s=10.0, metric_channels=[f"svc{i % len(services)}/m{i}" for i in range(channels)],
        metric_entities=[f"svc{i % len(services)}" for i in range(channels)],
        edges=[(services[i], services[(i + 1) % len(services)]) for i in range(edges)],
        edge_features=["latency", "count", "error_rate"], services=services,
        log_columns=[(services[i % len(services)], i) for i in range(log_cols)],
        templates=[f"template {i} <*>" for i in range(log_cols)],
        template_embeddings=rng.normal(size=(log_cols, hidden)).astype(np.float32),
        word_pca=rng.normal(size=(64, hidden)).astype(np.float32))
    labels = np.zeros(T, np.int8)
    return WindowSet(schema=schema, ts=np.arange(T, dtype=np.int64) * 10_000_000,
                     metric=rng.normal(size=(T, channels)).astype(np.float32),
                     trace=rng.normal(size=(T, edges, 3)).astype(np.float32),
                     log=np.log1p(rng.poisson(1.0, size=(T, log_cols))).astype(np.float32),
                     labels=labels, kinds=np.full(T, "", dtype="U1"),
                     log_events=np.zeros((0, 3), np.int64), window=window, stride=stride)


PROFILES = {
    # CPU-friendly default (what `dvc repro` runs) and the published setting for a GPU.
    "default": {"llm": {"backbone": "minilm", "layers": 2}, "window": 32, "config": {}},
    "paper": {"llm": {"backbone": "gpt2", "layers": 6}, "window": 96,
              "config": {"d_model": 768, "heads": 8, "lora_r": 8, "lora_alpha": 32}},
}


def random_backbone(name: str, folder: Path, **config_overrides) -> str:
    """A local Hugging Face directory holding ``name``'s architecture with seeded random weights and
    a minimal word-piece tokenizer: what loads in :func:`stages.core.llm.load_backbone` with nothing
    downloaded. The architecture is a model type's default config (``gpt2``: GPT-2 small, 12 blocks
    of 768), or the config of ``minilm`` / a local model directory. For throughput and memory only."""
    import torch
    from transformers import AutoConfig, AutoModel, BertTokenizer

    from stages.core.errors import InputError
    from stages.core.llm import PACKAGED, resolve_backbone

    try:
        if name == PACKAGED or Path(name).is_dir():
            config = AutoConfig.from_pretrained(resolve_backbone(name), **config_overrides)
        else:
            config = AutoConfig.for_model(name, **config_overrides)
    except (OSError, ValueError):
        raise InputError("--random-backbone", "llm.backbone", "a model type transformers knows (gpt2, bert, …), "
                         "'minilm' or a local model directory", name) from None
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(str(folder))
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) + "\n")
    BertTokenizer(vocab_file=str(vocab)).save_pretrained(str(folder))
    return str(folder)


def bench_train(args: argparse.Namespace) -> dict:
    import torch

    from stages.core.heap import keep_freed_memory
    from stages.core.llm import hidden_size, load_backbone
    from stages.core.params import LLMParams, build
    from stages.nets.registry import detector_class
    from stages.train import training_throughput

    prof = PROFILES[args.profile]
    keep_freed_memory()  # as the train and evaluate stages do
    llm_raw = dict(prof["llm"])
    scratch = None
    if getattr(args, "random_backbone", False) and args.detector == "fuseguard":
        scratch = tempfile.TemporaryDirectory(prefix="bench-backbone-")
        llm_raw["backbone"] = random_backbone(llm_raw["backbone"], Path(scratch.name))
    llm = build(LLMParams, llm_raw, where="llm")
    hidden = hidden_size(load_backbone(llm.backbone)[1]) if args.detector == "fuseguard" else 8
    ws = _synthetic_windows(args.windows, prof["window"], args.stride, args.channels, args.edges, args.log_columns,
                            hidden)
    cls = detector_class(args.detector)
    amp_modes = [True, False] if torch.cuda.is_available() else [False]
    runs = []
    for amp in amp_modes:
        raw = dict(prof["config"]) if args.detector == "fuseguard" else {}
        if hasattr(cls.Config, "__dataclass_fields__") and "train" in cls.Config.__dataclass_fields__:
            raw["train"] = {"epochs": args.epochs, "batch_size": args.batch_size, "amp": amp, "patience": 99}
        det = cls.from_params(raw, ws.schema, llm, seed=0)
        device = getattr(det, "device", torch.device("cpu"))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        history = det.fit(ws, ws)
        fit_s = time.perf_counter() - t0
        epochs = len(history.get("epoch", [])) or 1
        t1 = time.perf_counter()
        det.score(copy.copy(ws))  # another object: FuseGuard keeps the pass over the windows it calibrated on
        score_s = time.perf_counter() - t1
        thr = training_throughput(history, len(ws), fit_s)  # optimisation passes only
        run = {"device": str(device), "amp_bf16": amp and device.type == "cuda", "epochs": epochs,
               "train_windows_per_s": round(thr["train_windows_per_s"], 1),
               "validation_calibration_s": round(thr["other_fit_seconds"], 2)
               if thr["other_fit_seconds"] is not None else None,
               "score_windows_per_s": round(len(ws) / score_s, 1), "peak_rss_mb": round(_rss_mb(), 1)}
        if device.type == "cuda":
            run["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        runs.append(run)
        log.info("%s", run)
    if scratch is not None:
        scratch.cleanup()
    return {"detector": args.detector, "profile": args.profile, "windows": len(ws), "window": prof["window"],
            "channels": args.channels, "edges": args.edges, "log_columns": args.log_columns,
            "backbone": f"{prof['llm']['backbone']}, random weights (throughput and memory only)" if scratch
            else prof["llm"]["backbone"], "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "runs": runs}


def bench_score(args: argparse.Namespace) -> dict:
    from stages.core.params import build, dataset, load_raw
    from stages.score import ScoreArgs, run as score_run
    from stages.scoring.frozen import Paths, load_frozen
    from stages.simulate.generate import generate
    from stages.simulate.params import SynthParams

    root = Path(args.root)
    frozen = load_frozen(args.model_dir, Paths(root))
    raw = load_raw(root / "params.yaml")
    ds = dataset(frozen.dataset, raw)
    with np.load(frozen.paths.windows / "grid.npz") as z:  # start the new dump an hour after the training data
        last_s = int(z["ts"][-1]) // 1_000_000
    start = np.datetime64((last_s // 3600 + 1) * 3600, "s")
    synth = dict(raw.get("synth") or {})
    synth.update(hours=args.hours, start_utc={**(synth.get("start_utc") or {}), ds.format: str(start)})
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-score-"))
    dump = work / f"{frozen.dataset}_new_{args.hours:g}h"
    t0 = time.perf_counter()
    summary = generate(frozen.dataset, ds.format, dump, build(SynthParams, synth, where="synth"),
                       int(raw.get("seed", 0)), variant="bench")
    gen_s = time.perf_counter() - t0

    def timed(out: str, *extra: str) -> tuple[float, dict]:
        a = ScoreArgs(Path(args.model_dir), dump, out=work / out, paths=Paths(root))
        for flag, value in zip(extra[::2], extra[1::2]):
            setattr(a, flag, value)
        t = time.perf_counter()
        s = score_run(a)
        return time.perf_counter() - t, s

    whole_s, whole = timed("whole")
    mid = str(start + np.timedelta64(int(args.hours * 1800), "s"))
    first_s, _ = timed("half1", "to_ts", mid)
    second_s, second = timed("half2", "resume", work / "half1")
    steps = whole["steps_output"]
    return {"model_dir": str(args.model_dir), "dataset": frozen.dataset, "detector": frozen.detector,
            "hours": args.hours, "dump": str(dump), "generate_s": round(gen_s, 1),
            "dump_mb": round(sum(p.stat().st_size for p in dump.rglob("*") if p.is_file()) / 2**20, 1),
            "spans": summary["n_spans"], "log_lines": summary["n_log_lines"], "steps": steps,
            "cold_whole": {"wall_s": round(whole_s, 2), "steps_per_s": round(steps / whole_s, 1),
                           "phases_s": {k: round(v, 2) for k, v in whole["timing_s"].items()},
                           "alarms": whole["alarms"]},
            "resumed_second_half": {"wall_s": round(second_s, 2), "steps": second["steps_output"],
                                    "steps_per_s": round(second["steps_output"] / second_s, 1),
                                    "phases_s": {k: round(v, 2) for k, v in second["timing_s"].items()}},
            "cold_first_half_wall_s": round(first_s, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("ingest", description=bench_ingest.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_ingest.add_arguments(a)
    t = sub.add_parser("train")
    t.add_argument("--detector", default="fuseguard")
    t.add_argument("--profile", default="default", choices=sorted(PROFILES))
    t.add_argument("--windows", type=int, default=256)
    t.add_argument("--stride", type=int, default=4)
    t.add_argument("--channels", type=int, default=50)
    t.add_argument("--edges", type=int, default=20)
    t.add_argument("--log-columns", type=int, default=100)
    t.add_argument("--epochs", type=int, default=2)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--random-backbone", action="store_true",
                   help="the profile's backbone architecture with random weights (no weights needed; "
                        "throughput and memory only)")
    sp = sub.add_parser("splits", description=bench_splits.__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_splits.add_arguments(sp)
    pp = sub.add_parser("pipeline", description=bench_pipeline.__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_pipeline.add_arguments(pp)
    dv = sub.add_parser("dvc", description=bench_dvc.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    dv.add_argument("--repeat", type=int, default=3)
    dv.add_argument("--root", default=".", help="repository root holding dvc.yaml and dvc.lock")
    sc = sub.add_parser("score")
    sc.add_argument("model_dir", help="models/<dataset>/<detector> of a pipeline run")
    sc.add_argument("--hours", type=float, default=24.0)
    sc.add_argument("--root", default=".", help="repository root holding params.yaml, data/ and models/")
    sc.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)

    def run() -> None:
        if args.what == "score":
            result = bench_score(args)
            write_json(result, Path("bench") / f"score_{result['dataset']}_{result['detector']}.json")
            print(json.dumps(result, indent=2, default=str))
            return
        if args.what == "splits":
            result = bench_splits.bench_splits(args.steps, args.channels, max(1, args.repeat), args.workdir)
            write_json(result, Path("bench") / "splits.json")
            print(result["table"])
            return
        if args.what == "pipeline":
            result = bench_pipeline.bench_pipeline(args)
            write_json(result, Path("bench") / f"pipeline_{result['format']}.json")
            print(result["table"])
            return
        if args.what == "dvc":
            result = bench_dvc.bench_dvc(Path(args.root), max(1, args.repeat))
            write_json(result, Path("bench") / "dvc.json")
            print(result["table"])
            return
        if args.what == "ingest":
            result = bench_ingest.bench_ingest(args)
            name = f"ingest_{result['format']}" + ("_scale" if args.scale else "")
            print(result["table"])
        else:
            result = bench_train(args)
            name = f"train_{args.detector}_{args.profile}"
        write_json(result, Path("bench") / f"{name}.json")
        print(json.dumps(result, indent=2, default=str))

    return run_stage(run)


if __name__ == "__main__":
    raise SystemExit(main())
