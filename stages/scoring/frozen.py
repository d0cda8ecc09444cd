"""What training froze, loaded read-only: the new dump is described in the training dataset's terms.

A model folder ``models/<ds>/<detector>`` names its dataset in ``train.json``; the dataset's feature
statistics (``data/features/<ds>``), grid schema and window geometry (``data/windows/<ds>``) and the
backbone's word PCA (``models/word_pca``) are read from there and never written. Their digests go
into every score run's summary and state, so a resumed stream refuses a model or statistics that
changed under it.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stages.core.errors import InputError
from stages.core.evaluation import ThresholdParams
from stages.core.io import read_json
from stages.core.params import PARAMS_FILE, ClockOffsets, build, load_raw, overridden_section
from stages.core.windowset import FeatureSchema, GridArrays, load_schema
from stages.features.log_templates import SavedMiners, load_miners
from stages.features.params import MetricsParams
from stages.windowing.align import EDGE_FEATURES

log = logging.getLogger(__name__)


@dataclass
class Paths:
    """Where the frozen state lives (defaults: relative to the repository root / cwd)."""

    root: Path = Path(".")
    features: Path | None = None  # data/features/<ds>
    windows: Path | None = None  # data/windows/<ds>
    word_pca: Path | None = None  # models/word_pca
    params: Path | None = None  # params.yaml

    def resolve(self, ds: str) -> "Paths":
        r = Path(self.root)
        return Paths(root=r, features=self.features or r / "data" / "features" / ds,
                     windows=self.windows or r / "data" / "windows" / ds,
                     word_pca=self.word_pca or r / "models" / "word_pca", params=self.params or r / PARAMS_FILE)


@dataclass
class Scaling:
    """Frozen per-column centre / scale / clip of one feature table (from its stats file)."""

    centre: np.ndarray
    scale: np.ndarray
    clip: float

    def apply(self, x: np.ndarray) -> np.ndarray:
        from stages.features.normalise import apply_scaling

        return apply_scaling(x, self.centre, self.scale, self.clip)


@dataclass
class FrozenState:
    """Everything a new dump is scored against; nothing here changes while scoring."""

    dataset: str
    detector: str
    model_dir: Path
    paths: Paths
    schema: FeatureSchema  # with template embeddings and word PCA attached
    window: int
    stride: int
    format: str | None  # the training dataset's raw format (params.yaml), the default --format
    offsets: ClockOffsets | None  # the training dataset's clock offsets (None: the format's defaults)
    metric_scaling: Scaling
    max_gap_steps: int
    edge_scaling: dict[str, Scaling]  # edge feature → scaling over schema.edges
    log_fill: np.ndarray  # (L,) training median of each log column: a missing log modality's neutral value
    miners: SavedMiners | None
    threshold: ThresholdParams
    train_info: dict[str, Any]
    digests: dict[str, str] = field(default_factory=dict)  # frozen file → sha256

    @property
    def step_us(self) -> int:
        return int(round(self.schema.step_s * 1_000_000))

    @property
    def fingerprint(self) -> str:
        """One digest of the model and every frozen statistic (a resumed stream must see the same)."""
        return hashlib.sha256(json.dumps(self.digests, sort_keys=True).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def frozen_files(paths: Paths, model_dir: Path) -> dict[str, Path]:
    """The files whose bytes define the frozen state, by a name that does not depend on where they live
    (for the digests and the "never refitted" test)."""
    named = {"features/metrics_stats.json": paths.features / "metrics_stats.json",
             "features/trace_stats.json": paths.features / "trace_stats.json",
             "features/call_graph.json": paths.features / "call_graph.json",
             "windows/schema.json": paths.windows / "schema.json",
             "windows/splits.json": paths.windows / "splits.json",
             "windows/template_embeddings.npy": paths.windows / "template_embeddings.npy",
             "windows/grid.npz": paths.windows / "grid.npz",  # validation scores calibrate the threshold
             "word_pca/word_pca.npy": paths.word_pca / "word_pca.npy"}
    for folder, prefix in ((paths.features / "drain3", "features/drain3/"), (model_dir / "detector", "model/")):
        if folder.is_dir():
            named.update({prefix + p.name: p for p in sorted(folder.iterdir())})
    return {k: p for k, p in named.items() if p.is_file()}


def _columns(stats_path: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray, float]:
    stats = read_json(stats_path)
    cols = stats.get("columns") if isinstance(stats, dict) else None
    if not isinstance(cols, dict):
        raise InputError(stats_path, "columns", "the per-column statistics the feature stage writes")
    centre, scale = np.zeros(len(names)), np.ones(len(names))
    for j, name in enumerate(names):
        entry = cols.get(name)
        if not isinstance(entry, dict) or "centre" not in entry or "scale" not in entry:
            raise InputError(stats_path, f"columns.{name}", "centre and scale of a column the model was trained on")
        centre[j], scale[j] = float(entry["centre"]), float(entry["scale"])
    norm = stats.get("normalisation") or {}
    clip = float(norm.get("clip", 10.0)) if isinstance(norm, dict) else 10.0
    return centre, scale, clip


def _log_fill(windows: Path, n_log: int) -> np.ndarray:
    """Training-span median of each log feature column (log1p counts)."""
    if n_log == 0:
        return np.zeros(0, np.float32)
    ranges = read_json(windows / "splits.json")["ranges"]
    a, b = (int(v) for v in ranges["train"])
    with GridArrays(windows / "grid.npz") as z:
        return np.median(z.rows("log", a, b), axis=0).astype(np.float32)


def load_frozen(model_dir: str | Path, paths: Paths | None = None) -> FrozenState:
    """Load the frozen state of the dataset ``model_dir``'s detector was trained on."""
    model_dir = Path(model_dir)
    info_path = model_dir / "train.json"
    info = read_json(info_path)
    if not isinstance(info, dict) or not isinstance(info.get("dataset"), str):
        raise InputError(info_path, "dataset", "the train.json of `python -m stages.train` naming its dataset")
    ds = info["dataset"]
    det_cfg = model_dir / "detector" / "config.json"
    detector = info.get("detector") or (read_json(det_cfg).get("detector") if det_cfg.is_file() else None)
    if not isinstance(detector, str):
        raise InputError(info_path, "detector", "the detector's registry name")
    paths = (paths or Paths()).resolve(ds)
    for need in (paths.features / "metrics_stats.json", paths.windows / "schema.json",
                 paths.windows / "splits.json", paths.windows / "grid.npz"):
        if not need.is_file():
            raise InputError(need, None, f"the frozen state of dataset {ds!r} (run `dvc repro` for it, or pass "
                             "--root / --features / --windows)")
    schema = load_schema(paths.windows)
    splits = read_json(paths.windows / "splits.json")
    from stages.embed_pca import load_word_pca

    schema.word_pca = load_word_pca(paths.word_pca)
    raw = load_raw(paths.params) if paths.params.is_file() else {}
    ds_raw = (raw.get("datasets") or {}).get(ds) or {}
    # as the metrics stage reads it: the global section with datasets.<ds>.metrics overrides
    metrics_params = overridden_section(MetricsParams, "metrics", ds, raw.get("metrics"),
                                        ds_raw.get("metrics") if isinstance(ds_raw, dict) else None, paths.params)
    eval_raw = (raw.get("evaluate") or {}).get("threshold") if isinstance(raw.get("evaluate"), dict) else None
    threshold = build(ThresholdParams, eval_raw, where="evaluate.threshold", source=paths.params)
    fmt = ds_raw.get("format") if isinstance(ds_raw, dict) else None
    offsets = build(ClockOffsets, ds_raw["offsets"], where=f"datasets.{ds}.offsets", source=paths.params) \
        if isinstance(ds_raw, dict) and ds_raw.get("offsets") else None

    mc, ms, mclip = _columns(paths.features / "metrics_stats.json", schema.metric_channels)
    edges = [f"{a}->{b}" for a, b in schema.edges]
    edge_scaling = {}
    trace_stats = paths.features / "trace_stats.json"
    for feat in EDGE_FEATURES:
        if edges:
            c, s, clip = _columns(trace_stats, [f"{e}/{feat}" for e in edges])
        else:
            c, s, clip = np.zeros(0), np.ones(0), 10.0
        edge_scaling[feat] = Scaling(c, s, clip)
    drain = paths.features / "drain3"
    miners = load_miners(drain) if schema.n_log and drain.is_dir() else None
    frozen = FrozenState(
        dataset=ds, detector=detector, model_dir=model_dir, paths=paths, schema=schema,
        window=int(splits["window"]), stride=int(splits["stride"]), format=fmt, offsets=offsets,
        metric_scaling=Scaling(mc, ms, mclip), max_gap_steps=metrics_params.max_gap_steps,
        edge_scaling=edge_scaling, log_fill=_log_fill(paths.windows, schema.n_log), miners=miners,
        threshold=threshold, train_info=info)
    frozen.digests = {name: file_digest(p) for name, p in frozen_files(paths, model_dir).items()}
    log.info("frozen state of %s/%s: %d metric channels, %d edges, %d log columns, window %d stride %d, step %g s",
             ds, detector, schema.n_metric, schema.n_edges, schema.n_log, frozen.window, frozen.stride, schema.step_s)
    return frozen
