"""DVC stage ``train@<ds>-<detector>``: fit one detector on one dataset's windows.

Writes ``models/<ds>/<detector>/`` (``detector/`` as saved by the detector, ``train.json`` with
time, device, peak memory and curves) and ``metrics/train/<ds>/<detector>.csv`` (DVC plot).
A killed run resumes from its last epoch: the checkpoint lives outside DVC's outputs, keyed
by a hash of everything that shapes training, and is removed after success.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from stages.core import distributed
from stages.core.cli import run_stage
from stages.core.errors import InputError
from stages.core.device import deterministic_threads
from stages.core.heap import keep_freed_memory
from stages.core.io import dumps_json, read_json, staged_targets
from stages.core.params import LLMParams, build, dataset as dataset_params, load_checked
from stages.core.protocol import ProtocolParams, visible_labels, windows_digest
from stages.core.windowset import load_split, windows_dir
from stages.embed_pca import load_word_pca
from stages.nets.registry import detector_class

log = logging.getLogger("stages.train")


def peak_memory_mb(device: Any = None) -> float:
    """Peak RSS of this process, or CUDA max allocated when ``device`` (a torch device) is a GPU."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    if getattr(device, "type", None) == "cuda":
        import torch

        return max(rss, torch.cuda.max_memory_allocated(device) / 2**20)
    return rss


def curve_csv(history: dict[str, list[float]]) -> str:
    # wall-clock columns would make the git-tracked plot file differ on every run
    keys = [k for k in history if k != "epoch" and not k.endswith(("seconds", "_windows"))
            and len(history[k]) == len(history.get("epoch", []))]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["epoch", *keys])
    for i, ep in enumerate(history.get("epoch", [])):
        w.writerow([ep, *(f"{history[k][i]:.6g}" for k in keys)])
    return buf.getvalue()


def training_throughput(history: dict[str, list[float]], n_windows: int, seconds: float) -> dict[str, float | None]:
    """Windows/s of the optimisation passes alone, and the seconds spent around them (validation,
    calibration, pre-training): the torch loop records both per epoch; other detectors count whole."""
    opt_s, opt_w = sum(history.get("optimise_seconds", [])), sum(history.get("optimise_windows", []))
    if opt_s > 0:
        return {"train_windows_per_s": opt_w / opt_s, "other_fit_seconds": max(0.0, seconds - opt_s)}
    epochs = max(1, len(history.get("epoch", [1])))
    return {"train_windows_per_s": n_windows * epochs / seconds if seconds > 0 else None,
            "other_fit_seconds": None}


def run(ds: str, detector: str, raw: dict | None = None, windows_root: Path = Path("data/windows"),
        models_root: Path = Path("models"), metrics_root: Path = Path("metrics"),
        word_pca_root: Path = Path("models/word_pca")) -> dict:
    raw = load_checked() if raw is None else raw
    distributed.init_from_env()  # under torchrun: join the process group (README, "Scale out")
    # the detector's module first: it imports torch (torch detectors only), whose threads
    # deterministic_threads then sets; the baselines' stages never import torch
    cls = detector_class(detector)
    threads = deterministic_threads()  # same bits on any machine of this kind (README, "Repeatability")
    keep_freed_memory()  # one batch's freed tensors serve the next (heap.py)
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError("params.yaml", "seed", "an integer", seed)
    protocol = build(ProtocolParams, raw.get("protocol"), where="protocol")
    llm = build(LLMParams, raw.get("llm"), where="llm")
    dsp = dataset_params(ds, raw)
    wdir = windows_dir(ds, windows_root)
    word_pca = load_word_pca(word_pca_root)
    split = "fewshot"  # every detector of every protocol learns from the same few-shot data subset
    train = load_split(wdir, split, word_pca)
    train_range = read_json(wdir / "splits.json")["ranges"]["train"]
    full_train_steps = int(train_range[1] - train_range[0])
    proto = protocol.protocol_for(detector)
    if dsp.train_normal_only:
        keep = train.window_labels() == 0
        if not keep.any():
            raise InputError("params.yaml", f"datasets.{ds}.train_normal_only",
                             "few-shot windows without any anomalous step (none has: raise split.fewshot_percent "
                             "or shorten windows.length for this dataset)", f"0 of {len(train.starts)}")
        log.info("%s: training on the %d of %d few-shot windows labelled normal (datasets.%s.train_normal_only)",
                 ds, int(keep.sum()), len(keep), ds)
        train.starts = train.starts[keep]
    train.labels, n_labelled = visible_labels(train.labels, proto, protocol.labelled_events)
    val = load_split(wdir, "val", word_pca)
    val.labels = np.zeros_like(val.labels)  # validation only early-stops and calibrates: never its labels
    det = cls.from_params(raw.get(detector), train.schema, llm, seed)
    sources = {s: load_split(windows_dir(s, windows_root), "train", word_pca)
               for s in det.source_datasets(ds, list(dsp.sources)) if s != ds}

    fingerprint = hashlib.sha256(json.dumps(
        {"ds": ds, "det": detector, "cfg": raw.get(detector), "llm": raw.get("llm"), "seed": seed,
         "split": split, "protocol": [proto, protocol.labelled_events], "sources": sorted(sources),
         "grid": (wdir / "splits.json").read_text()}, sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
    ckpt_root = models_root / ".checkpoints" / ds / detector / fingerprint
    if hasattr(det, "checkpoint_dir"):
        det.checkpoint_dir = ckpt_root
    device = getattr(det, "device", "cpu")  # torch detectors: their torch.device
    log.info("%s/%s: training on %d %s windows (val %d, sources %s) on %s", ds, detector, len(train), split,
             len(val), sorted(sources) or "none", device)
    t0 = time.perf_counter()
    history = det.fit(train, val, sources or None)
    seconds = time.perf_counter() - t0
    info = {
        "dataset": ds, "detector": detector, "train_seconds": seconds, "device": str(device),
        "peak_memory_mb": peak_memory_mb(device), "n_train_windows": len(train), "n_val_windows": len(val),
        "train_split": split, "protocol": proto, "labelled_events": n_labelled,
        "normal_only": dsp.train_normal_only,
        "data_share": train.n_steps / max(1, full_train_steps),
        "windows_digest": windows_digest(train.ts, train.starts),
        **training_throughput(history, len(train), seconds), "sources": sorted(sources), "history": history,
    }
    info["threads"] = threads
    info["world_size"] = distributed.world_size()
    if not distributed.is_main():  # rank 0 writes; the others only helped to train
        log.info("%s/%s: rank %d done", ds, detector, distributed.rank())
        return info
    # the model folder and its training curve are published together, all-or-nothing
    with staged_targets(models_root / ds / detector, metrics_root / "train" / ds / f"{detector}.csv") as (tmp, curve):
        tmp.mkdir()
        det.save(tmp / "detector")
        (tmp / "train.json").write_text(dumps_json(info))
        curve.write_text(curve_csv(history))
    shutil.rmtree(ckpt_root, ignore_errors=True)
    log.info("%s/%s: trained in %.1f s", ds, detector, seconds)
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.train", description=__doc__)
    ap.add_argument("dataset")
    ap.add_argument("detector")
    args = ap.parse_args(argv)
    try:
        return run_stage(lambda: run(args.dataset, args.detector))
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
