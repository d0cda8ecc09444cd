"""Typed views of ``params.yaml``.

Every stage reads only the sections it declares in ``dvc.yaml``; each section is a frozen
dataclass, so a misspelt key is an error naming the key instead of a silently ignored knob.
Detector configs live next to their detector (``stages/nets``) and use :func:`build`.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from stages.core.errors import InputError

T = TypeVar("T")
PARAMS_FILE = Path("params.yaml")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (first on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_raw(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except FileNotFoundError:
        raise InputError(path, None, "a params.yaml in the working directory") from None
    except UnicodeDecodeError as exc:
        raise InputError(path, f"byte {exc.start}", "UTF-8 text") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark is not None else None
        raise InputError(path, where, f"valid YAML ({exc.problem})") from None
    except yaml.YAMLError as exc:
        raise InputError(path, None, f"valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(path, None, "a mapping at top level", type(data).__name__)
    return data


def _coerce(tp: Any, value: Any, where: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where, source)
            except InputError as exc:
                errors.append(exc)
        raise errors[0] if errors else InputError(source, where, str(tp), value)
    if origin is typing.Literal:
        if value not in args:
            raise InputError(source, where, "one of " + ", ".join(map(repr, args)), value)
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where=where, source=source)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise InputError(source, where, "a list", value)
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{where}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(source, where, "a mapping", value)
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(vt, v, f"{where}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(source, where, "true or false", value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(source, where, "an integer", value)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(source, where, "a number", value)
        if not math.isfinite(value):  # YAML's .nan / .inf would pass every later `<` check
            raise InputError(source, where, "a finite number", value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise InputError(source, where, "a string", value)
        return value
    return value


def build(cls: type[T], raw: Any, where: str = "", source: str | Path = PARAMS_FILE) -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(source, where or None, f"a mapping for {cls.__name__}", raw)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names, key=str)
    if unknown:
        raise unknown_key(source, where, unknown[0], names)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            kwargs[f.name] = _coerce(hints[f.name], raw[f.name], f"{where}.{f.name}".lstrip("."), str(source))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise InputError(source, f"{where}.{f.name}".lstrip("."), "this key to be set")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def section(cls: type[T], key: str, raw: dict[str, Any] | None = None, path: str | Path = PARAMS_FILE) -> T:
    """Typed view of one top-level (dotted) section of params.yaml."""
    raw = load_raw(path) if raw is None else raw
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            near = closest(part, node) if isinstance(node, dict) else None
            hint = f" (closest present: '{near}')" if near else ""
            raise InputError(path, key, f"section '{key}' to exist{hint}")
        node = node[part]
    return build(cls, node, where=key, source=path)


def closest(name: Any, known: Any) -> str | None:
    """The known name nearest to a misspelt one (difflib ratio ≥ 0.6), else None."""
    hits = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return hits[0] if hits else None


def unknown_key(source: str | Path, where: str, key: Any, known: Any, what: str = "key") -> InputError:
    """One-line error for a key that is not known, naming the closest valid one."""
    near = closest(key, known)
    scope = f" of '{where}'" if where else ""
    hint = f" — did you mean '{near}'?" if near else f" (known: {', '.join(sorted(map(str, known)))})"
    return InputError(source, f"{where}.{key}".lstrip("."), f"a known {what}{scope}{hint}", key)


# ---------------------------------------------------------------- the whole file, checked up front
#
# Every top-level section and the dataclass that types it ("module:Class", imported lazily). The
# one list of known sections: `check_pipeline` rejects any other. None: typed by its consumer
# (scalars and sections checked below). Detector sections are typed by their detector's Config.
SECTIONS: dict[str, str | None] = {
    "seed": None, "pipeline": None, "datasets": None,
    "split": "stages.core.params:SplitParams",
    "windows": "stages.windowing.align:WindowParams",
    "llm": "stages.core.params:LLMParams",
    "protocol": "stages.core.protocol:ProtocolParams",
    "train": None,  # legacy section, read by no stage today
    "evaluate": "stages.evaluate:EvaluateParams",
    "metrics": "stages.features.params:MetricsParams",
    "traces": "stages.features.params:TracesParams",
    "logs": "stages.features.params:LogsParams",
    "labels": "stages.features.params:LabelsParams",
    "synth": "stages.simulate.params:SynthParams",
    "random": "detector", "iforest": "detector", "pca": "detector", "fuseguard": "detector",
    "kad_disformer": "detector", "interfusion": "detector", "metalog": "detector", "xlstm_logad": "detector",
}
PIPELINE_KEYS = ("datasets", "synthetic", "detectors")
# Sections whose dataclass module imports torch or the detectors (seconds each): built by
# check_pipeline(deep=True) only, so a data stage stays fast.
_HEAVY = {"evaluate"}


def _import(spec: str) -> Any:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _names(raw: dict[str, Any], key: str, allowed: Any, source: str | Path, what: str) -> list[str]:
    value = raw.get(key)
    where = f"pipeline.{key}"
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(source, where, "a list of names", value)
    for i, name in enumerate(value):
        if name not in allowed:
            raise InputError(source, f"{where}[{i}]", f"a {what}{_hint(name, allowed)}", name)
        if name in value[:i]:
            raise InputError(source, f"{where}[{i}]", "each name once", name)
    return value


def _hint(name: str, allowed: Any) -> str:
    near = closest(name, allowed)
    return f" — did you mean '{near}'?" if near else f" (one of {', '.join(sorted(allowed))})"


def load_checked(path: str | Path = PARAMS_FILE, *, deep: bool = False) -> dict[str, Any]:
    """:func:`load_raw` followed by :func:`check_pipeline`: what a stage's entry point reads."""
    raw = load_raw(path)
    check_pipeline(raw, deep=deep, source=path)
    return raw


def check_pipeline(raw: dict[str, Any], *, deep: bool = False, source: str | Path = PARAMS_FILE) -> None:
    """Validate the whole params.yaml before a stage does any work; the first error is raised.

    Checks: every top-level section is known (:data:`SECTIONS`, else the closest name is
    suggested); ``seed`` is an integer; ``pipeline`` holds only :data:`PIPELINE_KEYS`;
    ``pipeline.detectors`` names registered detectors (``stages.nets.registry.DETECTORS``);
    ``pipeline.datasets`` / ``pipeline.synthetic`` name entries of ``datasets:``; every dataset
    entry (with its ``split`` / ``windows`` overrides) and every light section builds into its
    dataclass, so wrong types, non-finite numbers and unknown keys fail here. ``deep`` also builds
    the detector and ``evaluate`` sections (their modules import torch: seconds, so only one
    early stage should pay for it).
    """
    from stages.nets.registry import DETECTORS  # a plain dict: importing it loads no detector

    if not isinstance(raw, dict):
        raise InputError(source, None, "a mapping at top level", type(raw).__name__)
    for key in raw:
        if key not in SECTIONS:
            raise unknown_key(source, "", key, SECTIONS, "section")
    if "seed" in raw:
        _coerce(int, raw["seed"], "seed", str(source))
    pipeline = raw.get("pipeline") or {}
    if not isinstance(pipeline, dict):
        raise InputError(source, "pipeline", "a mapping", pipeline)
    for key in pipeline:
        if key not in PIPELINE_KEYS:
            raise unknown_key(source, "pipeline", key, PIPELINE_KEYS)
    datasets = raw.get("datasets") or {}
    if not isinstance(datasets, dict):
        raise InputError(source, "datasets", "a mapping of dataset name → entry", datasets)
    _names(pipeline, "detectors", DETECTORS, source, "registered detector")
    _names(pipeline, "datasets", datasets, source, "dataset defined under datasets:")
    _names(pipeline, "synthetic", datasets, source, "dataset defined under datasets:")
    entries = {name: build(_import("stages.core.params:DatasetParams"), entry, where=f"datasets.{name}",
                           source=source) for name, entry in datasets.items()}
    for key, spec in SECTIONS.items():
        if spec is None or (not deep and (spec == "detector" or key in _HEAVY)):
            continue
        overrides = {name: getattr(e, key) for name, e in entries.items() if isinstance(getattr(e, key, None), dict)}
        if key not in raw and not overrides:
            continue
        cls = _import(DETECTORS[key]).Config if spec == "detector" else _import(spec)
        build(cls, raw.get(key), where=key, source=source)
        base = raw.get(key) if isinstance(raw.get(key), dict) else {}
        for name, override in overrides.items():  # datasets.<name>.<section> overrides the section
            build(cls, {**base, **override}, where=f"datasets.{name}.{key}", source=source)


# ---------------------------------------------------------------- shared sections


@dataclass(frozen=True)
class ClockOffsets:
    """Seconds added to each modality's raw timestamps to bring it to UTC metric time."""

    metrics: float = 0.0
    traces: float = 0.0
    logs: float = 0.0
    faults: float = 0.0


@dataclass(frozen=True)
class DatasetParams:
    """One dataset: its raw format, where its raw dump lives, and how to read it.

    ``split``, ``windows`` and ``metrics`` override the global sections for this dataset only, so a
    real dump can use another split, window length or metric selection (``metrics.include`` for a
    dump of thousands of series) without retraining the synthetic datasets. ``sources`` names
    the other datasets whose training data cross-system detectors (KAD-Disformer pre-training,
    MetaLog's source system) learn from — an explicit list, so adding a dataset never changes
    another dataset's results. ``group`` ties datasets that differ only by generator seed together
    (the report gives their mean and interval).
    """

    format: typing.Literal["msds", "gaia", "eadro"]
    raw: str
    synthetic: bool = False
    offsets: ClockOffsets | None = None  # None: the format's defaults (fit the public data)
    step_s: float = 10.0  # grid step of every feature table of this dataset
    group: str | None = None  # None: the dataset is its own group
    sources: list[str] = field(default_factory=list)
    split: dict[str, Any] | None = None  # keys of the `split:` section overridden for this dataset
    windows: dict[str, Any] | None = None  # keys of the `windows:` section overridden for this dataset
    metrics: dict[str, Any] | None = None  # keys of the `metrics:` section overridden for this dataset
    # learn only from few-shot windows whose steps are all labelled normal — for dumps where faults cover
    # most of the time (the real TT chunk: 84%). It reads the few-shot span's labels; the report says so.
    train_normal_only: bool = False

    def validate(self) -> None:
        if not math.isfinite(self.step_s) or self.step_s <= 0:
            raise InputError(PARAMS_FILE, "datasets.<name>.step_s", "a positive number of seconds", self.step_s)


@dataclass(frozen=True)
class SplitParams:
    """Chronological split of the common grid (fractions of its length) and the few-shot subset.

    The few-shot subset is what every detector learns from: ``fewshot_percent`` of the training
    span, laid out as ``fewshot_blocks`` evenly spread blocks (``spread``: every part of the daily
    cycle is in it) or as the head of the training span (``head``).
    """

    train: float = 0.45
    val: float = 0.15
    test: float = 0.40
    purge_windows: int = 1  # gap between splits, in windows (at least one)
    fewshot_percent: float = 10.0
    fewshot_layout: typing.Literal["spread", "head"] = "spread"
    fewshot_blocks: int = 8

    def validate(self) -> None:
        for key in ("train", "val", "test", "fewshot_percent"):
            if not math.isfinite(getattr(self, key)):
                raise InputError(PARAMS_FILE, f"split.{key}", "a finite number", getattr(self, key))
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6 or min(self.train, self.val, self.test) <= 0:
            raise InputError(PARAMS_FILE, "split", "positive train/val/test fractions summing to 1", total)
        if self.purge_windows < 1:
            raise InputError(PARAMS_FILE, "split.purge_windows", "at least 1", self.purge_windows)
        if not 0 < self.fewshot_percent <= 100:
            raise InputError(PARAMS_FILE, "split.fewshot_percent", "a percentage in (0, 100]", self.fewshot_percent)
        if self.fewshot_blocks < 1:
            raise InputError(PARAMS_FILE, "split.fewshot_blocks", "at least 1", self.fewshot_blocks)


@dataclass(frozen=True)
class LLMParams:
    """The language-model backbone shared by FuseGuard, MetaLog and the xLSTM detector."""

    backbone: str = "minilm"  # 'minilm' (packaged, offline), 'gpt2', or a local HF directory
    layers: int = 2  # first N transformer blocks used by FuseGuard's alignment
    pca_components: int = 64
    max_tokens: int = 64  # tokens per template text when embedding
    batch_size: int = 64


def load_datasets(raw: dict[str, Any] | None = None) -> dict[str, DatasetParams]:
    raw = load_raw() if raw is None else raw
    node = raw.get("datasets")
    if not isinstance(node, dict) or not node:
        raise InputError(PARAMS_FILE, "datasets", "a non-empty mapping of dataset name → entry")
    return {name: build(DatasetParams, entry, where=f"datasets.{name}") for name, entry in node.items()}


def dataset(name: str, raw: dict[str, Any] | None = None) -> DatasetParams:
    all_ = load_datasets(raw)
    if name not in all_:
        raise InputError(PARAMS_FILE, f"datasets.{name}", f"one of the configured datasets {sorted(all_)}")
    return all_[name]


def effective_section(cls: type[T], key: str, ds: str, raw: dict[str, Any] | None = None) -> T:
    """Section ``key`` (``split``, ``windows`` or ``metrics``) with ``datasets.<ds>.<key>`` overrides applied."""
    raw = load_raw() if raw is None else raw
    return overridden_section(cls, key, ds, raw.get(key), dataset(ds, raw).__dict__.get(key))


def overridden_section(cls: type[T], key: str, ds: str, base: Any, override: Any,
                       source: str | Path = PARAMS_FILE) -> T:
    """``cls`` built from the global mapping ``base`` of section ``key`` with the mapping ``override``
    (``datasets.<ds>.<key>``) on top; errors name ``source`` and the key at fault."""
    for where, node in ((key, base), (f"datasets.{ds}.{key}", override)):
        if node and not isinstance(node, dict):
            raise InputError(source, where, "a mapping", node)
    override = override or {}
    return build(cls, {**(base or {}), **override}, source=source,
                 where=key if not override else f"{key} (with datasets.{ds}.{key})")


def effective_split(ds: str, raw: dict[str, Any] | None = None) -> SplitParams:
    return effective_section(SplitParams, "split", ds, raw)
