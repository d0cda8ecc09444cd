"""What every replay command shares: ``-S key=value`` overrides and the metrics JSON it writes."""
from __future__ import annotations

import sys
from typing import Any, Callable, Iterable

import yaml

from stages.core.errors import InputError

HEADLINE = ("auc_pr", "auc_roc", "precision", "recall", "f1", "threshold", "train_seconds")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` → ``{"a": {"b": 1}, "c": "x"}`` (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(None, "-S", "KEY=VALUE", pair)
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out.get(k, {}), v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def finish(metrics: dict[str, Any], out: str, keys: Iterable[str] = HEADLINE) -> None:
    """Write the pipeline's metrics JSON and print the headline numbers (the CLI's product)."""
    from stages.core.evaluation import write_metrics_json

    write_metrics_json(out, metrics)
    sys.stdout.write(" ".join(f"{k}={metrics[k]:.4f}" for k in keys if isinstance(metrics.get(k), float)) +
                     f"  → {out}\n")


def replay_main(run: Callable[[], dict[str, Any]], out: str, keys: Iterable[str] = HEADLINE) -> int:
    """Run a replay protocol; bad input ends with one line and exit 2, and no metrics file."""
    try:
        metrics = run()
    except InputError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    finish(metrics, out, keys)
    return 0
