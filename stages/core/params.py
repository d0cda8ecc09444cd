"""Typed views of ``params.yaml``.

Every stage reads only the sections it declares in ``dvc.yaml``; each section is a frozen
dataclass, so a misspelt key is an error naming the key instead of a silently ignored knob.
Detector configs live next to their detector (``stages/nets``) and use :func:`build`.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from stages.core.errors import InputError

T = TypeVar("T")
PARAMS_FILE = Path("params.yaml")


def load_raw(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, None, "a params.yaml in the working directory") from None
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
    unknown = sorted(set(raw) - names)
    if unknown:
        raise InputError(source, f"{where}.{unknown[0]}".lstrip("."),
                         f"one of the known keys {sorted(names)}", unknown[0])
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
            raise InputError(path, key, f"section '{key}' to exist")
        node = node[part]
    return build(cls, node, where=key, source=path)


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
    """One dataset: its raw format, where its raw dump lives, and how to read it."""

    format: typing.Literal["msds", "gaia", "eadro"]
    raw: str
    synthetic: bool = False
    offsets: ClockOffsets | None = None  # None: the format's defaults (fit the public data)
    step_s: float = 10.0  # grid step of every feature table of this dataset

    def validate(self) -> None:
        if self.step_s <= 0:
            raise InputError(PARAMS_FILE, "datasets.<name>.step_s", "a positive number of seconds", self.step_s)


@dataclass(frozen=True)
class SplitParams:
    """Chronological split of the common grid (fractions of its length)."""

    train: float = 0.6
    val: float = 0.2
    test: float = 0.2
    purge_windows: int = 1  # gap between splits, in windows (at least one)
    fewshot_percent: float = 10.0

    def validate(self) -> None:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6 or min(self.train, self.val, self.test) <= 0:
            raise InputError(PARAMS_FILE, "split", "positive train/val/test fractions summing to 1", total)
        if self.purge_windows < 1:
            raise InputError(PARAMS_FILE, "split.purge_windows", "at least 1", self.purge_windows)
        if not 0 < self.fewshot_percent <= 100:
            raise InputError(PARAMS_FILE, "split.fewshot_percent", "a percentage in (0, 100]", self.fewshot_percent)


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
