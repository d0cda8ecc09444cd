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
from dataclasses import dataclass, field
from pathlib import Path

import torch

from stages.core.cli import run_stage
from stages.core.errors import InputError
from stages.core.io import atomic_dir, dumps_json, write_text
from stages.core.params import LLMParams, build, load_raw
from stages.core.windowset import load_split, windows_dir
from stages.embed_pca import load_word_pca
from stages.nets.registry import detector_class

log = logging.getLogger("stages.train")


@dataclass(frozen=True)
class TrainStageParams:
    """Which split trains the detectors: the few-shot subset (default) or the whole training span.

    Label-supervised log methods (MetaLog, the xLSTM detector) are few-shot in *labels*, not in
    data: the papers give them the target's training span with few labelled anomalies, so they
    may name another split here.
    """

    split: str = "fewshot"
    split_by_detector: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        for key, value in {"train.split": self.split, **{f"train.split_by_detector.{k}": v
                                                       for k, v in self.split_by_detector.items()}}.items():
            if value not in ("fewshot", "train"):
                raise InputError("params.yaml", key, "'fewshot' or 'train'", value)

    def split_for(self, detector: str) -> str:
        return self.split_by_detector.get(detector, self.split)


def peak_memory_mb(device: torch.device | None = None) -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    if device is not None and device.type == "cuda":
        return max(rss, torch.cuda.max_memory_allocated(device) / 2**20)
    return rss


def curve_csv(history: dict[str, list[float]]) -> str:
    # wall-clock columns would make the git-tracked plot file differ on every run
    keys = [k for k in history if k not in ("epoch", "seconds") and len(history[k]) == len(history.get("epoch", []))]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["epoch", *keys])
    for i, ep in enumerate(history.get("epoch", [])):
        w.writerow([ep, *(f"{history[k][i]:.6g}" for k in keys)])
    return buf.getvalue()


def run(ds: str, detector: str, raw: dict | None = None, windows_root: Path = Path("data/windows"),
        models_root: Path = Path("models"), metrics_root: Path = Path("metrics"),
        word_pca_root: Path = Path("models/word_pca")) -> dict:
    raw = load_raw() if raw is None else raw
    seed = int(raw.get("seed", 0))
    tp = build(TrainStageParams, raw.get("train"), where="train")
    llm = build(LLMParams, raw.get("llm"), where="llm")
    cls = detector_class(detector)
    wdir = windows_dir(ds, windows_root)
    word_pca = load_word_pca(word_pca_root)
    split = tp.split_for(detector)
    train = load_split(wdir, split, word_pca)
    val = load_split(wdir, "val", word_pca)
    det = cls.from_params(raw.get(detector), train.schema, llm, seed)
    available = list(raw.get("pipeline", {}).get("datasets", []))
    sources = {s: load_split(windows_dir(s, windows_root), "train", word_pca)
               for s in det.source_datasets(ds, available) if s != ds}

    fingerprint = hashlib.sha256(json.dumps(
        {"ds": ds, "det": detector, "cfg": raw.get(detector), "llm": raw.get("llm"), "seed": seed,
         "split": split, "grid": (wdir / "splits.json").read_text()}, sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
    ckpt_root = models_root / ".checkpoints" / ds / detector / fingerprint
    if hasattr(det, "checkpoint_dir"):
        det.checkpoint_dir = ckpt_root
    device = getattr(det, "device", torch.device("cpu"))
    log.info("%s/%s: training on %d %s windows (val %d, sources %s) on %s", ds, detector, len(train), split,
             len(val), sorted(sources) or "none", device)
    t0 = time.perf_counter()
    history = det.fit(train, val, sources or None)
    seconds = time.perf_counter() - t0
    info = {
        "dataset": ds, "detector": detector, "train_seconds": seconds, "device": str(device),
        "peak_memory_mb": peak_memory_mb(device), "n_train_windows": len(train), "n_val_windows": len(val),
        "train_split": split, "train_windows_per_s": len(train) * max(1, len(history.get("epoch", [1]))) / seconds
        if seconds > 0 else None, "sources": sorted(sources), "history": history,
    }
    out = models_root / ds / detector
    with atomic_dir(out) as tmp:
        det.save(tmp / "detector")
        (tmp / "train.json").write_text(dumps_json(info))
    write_text(curve_csv(history), metrics_root / "train" / ds / f"{detector}.csv")
    shutil.rmtree(ckpt_root, ignore_errors=True)
    log.info("%s/%s: trained in %.1f s", ds, detector, seconds)
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.train", description=__doc__)
    ap.add_argument("dataset")
    ap.add_argument("detector")
    args = ap.parse_args(argv)
    return run_stage(lambda: run(args.dataset, args.detector))


if __name__ == "__main__":
    raise SystemExit(main())
