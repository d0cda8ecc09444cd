"""Fingerprints of a training run, step by step, to find where two runs that should match part.

Two runs that end in other weights usually part at one step and one operation. A :class:`StepTrace`
records, for every optimiser step, a hash of each module's forward input and output (in call order), of the
generator state at the step's first forward, of every gradient and of every parameter before and
after the step. :func:`first_divergence` names the first thing that differs. That is how the MKL
code-branch race (README, Repeatability) was found: two synth_gaia runs parted at step 0 in the
first ``exp`` after the encoder.

Hashing copies every module input and output to bytes, so a traced run is slower (synth_gaia's
InterFusion: 14 s against 12 s) and its timing differs: a race may hide under it. Use it to diagnose.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.optim.optimizer as optimizer_hooks
from torch import nn


def fingerprint(t: Any) -> str | None:
    """A short hash of a tensor's bits (None for anything else)."""
    if not isinstance(t, torch.Tensor):
        return None
    data = t.detach().contiguous().cpu()
    return hashlib.blake2b(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"",
                           digest_size=8).hexdigest() + f":{tuple(data.shape)}"


def _tensors(out: Any) -> list[torch.Tensor]:
    items = out if isinstance(out, (tuple, list)) else (out,)
    return [o for o in items if isinstance(o, torch.Tensor)]


class StepTrace:
    """Context manager: while open, every module forward under autograd and every optimiser step in
    this process is fingerprinted into :attr:`steps` (forwards of validation or scoring, which run
    without gradients, are left out)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self._current: dict[str, Any] = {"forward": []}
        self._handles: list[Any] = []

    def _forward_pre(self, module: nn.Module, inputs: Any) -> None:
        if torch.is_grad_enabled() and "rng" not in self._current:
            self._current["rng"] = fingerprint(torch.get_rng_state())

    def _forward(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if torch.is_grad_enabled():
            self._current["forward"].append([type(module).__name__, [fingerprint(t) for t in _tensors(inputs)],
                                             [fingerprint(t) for t in _tensors(output)]])

    @staticmethod
    def _params(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
        return [p for group in opt.param_groups for p in group["params"]]

    def _before_step(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._current["grad"] = [fingerprint(p.grad) for p in self._params(opt)]
        self._current["params_before"] = [fingerprint(p) for p in self._params(opt)]

    def _after_step(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._current["params_after"] = [fingerprint(p) for p in self._params(opt)]
        self.steps.append(self._current)
        self._current = {"forward": []}

    def __enter__(self) -> "StepTrace":
        self._handles = [nn.modules.module.register_module_forward_pre_hook(self._forward_pre),
                         nn.modules.module.register_module_forward_hook(self._forward),
                         optimizer_hooks.register_optimizer_step_pre_hook(self._before_step),
                         optimizer_hooks.register_optimizer_step_post_hook(self._after_step)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"steps": self.steps}))


def load_steps(path: str | Path) -> list[dict[str, Any]]:
    return json.loads(Path(path).read_text())["steps"]


def first_divergence(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> str | None:
    """Where run ``b`` first parts from run ``a``, in words; None when every step matches."""
    for k, (x, y) in enumerate(zip(a, b)):
        if x.get("params_before") != y.get("params_before"):
            return f"step {k}: the parameters before the step differ (initialisation or a step before the trace)"
        if x.get("rng") != y.get("rng"):
            return f"step {k}: the torch generator's state at the first forward differs"
        for j, (fx, fy) in enumerate(zip(x["forward"], y["forward"])):
            if fx != fy:
                what = "its input differs (an operation outside a module)" if fx[1] != fy[1] else \
                    "same input, other output"
                return f"step {k}: forward call {j} ({fx[0]}): {what}"
        if len(x["forward"]) != len(y["forward"]):
            return f"step {k}: {len(x['forward'])} against {len(y['forward'])} forward calls"
        if x.get("grad") != y.get("grad"):
            bad = [i for i, (g, h) in enumerate(zip(x["grad"], y["grad"])) if g != h]
            return f"step {k}: same forward, other gradients (parameters {bad[:8]} of the optimiser's order)"
        if x.get("params_after") != y.get("params_after"):
            return f"step {k}: same gradients, other parameters after the optimiser step"
    if len(a) != len(b):
        return f"the runs took {len(a)} against {len(b)} steps"
    return None
