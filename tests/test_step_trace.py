"""The step tracer names where two trainings part: not at all, at the start, or at one module's output."""
from __future__ import annotations

import torch

from stages.core.step_trace import StepTrace, first_divergence, load_steps
from stages.trace_steps import main as trace_steps_main
from tests.test_training_loop import TinyAutoencoder, TinyConfig, data
from stages.nets.base import TrainConfig


def fit_traced(seed: int = 3, nudge=None) -> list[dict]:
    det = TinyAutoencoder(TinyConfig(train=TrainConfig(epochs=2, batch_size=8, patience=10, device="cpu")),
                          data().schema, seed=seed)
    if nudge:  # the second Linear computes something else once, as a kernel on the wrong code path would
        layer = det.module[1]
        plain = layer.forward
        layer.forward = lambda x: nudge(plain(x))
    with StepTrace() as trace:
        det.fit(data(), data())
    return trace.steps


def test_same_run_twice_is_the_same_at_every_step():
    a, b = fit_traced(), fit_traced()
    assert len(a) == 2 * 7  # 2 epochs of 49 windows in batches of 8
    assert all(len(s["forward"]) == 3 for s in a)  # the two Linear layers and their Sequential
    assert first_divergence(a, b) is None


def test_another_seed_parts_before_the_first_step():
    assert first_divergence(fit_traced(3), fit_traced(4)).startswith("step 0: the parameters before the step")


def test_one_output_off_by_one_ulp_is_named_by_step_and_module():
    calls = {"n": 0}

    def nudge_fifth_training_call(output):
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 5:
                return torch.nextafter(output, torch.full_like(output, float("inf")))
        return output

    where = first_divergence(fit_traced(), fit_traced(nudge=nudge_fifth_training_call))
    assert where == "step 4: forward call 1 (Linear): same input, other output"


def test_hooks_are_gone_after_the_block():
    with StepTrace() as trace:
        pass
    torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1).step()
    torch.nn.Linear(1, 1)(torch.ones(1, 1))
    assert trace.steps == []


def test_compare_command_says_where_and_exits_1(tmp_path, capsys):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        with StepTrace() as trace:
            TinyAutoencoder(TinyConfig(train=TrainConfig(epochs=1, batch_size=8, device="cpu")),
                            data().schema, seed=seed).fit(data(), data())
        trace.save(tmp_path / f"{name}.json")
    assert len(load_steps(tmp_path / "a.json")) == 7
    assert trace_steps_main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    assert trace_steps_main(["compare", *(str(tmp_path / f"{n}.json") for n in "abc")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-2].endswith("same bits at every step (7)")
    assert "step 0: the parameters before the step differ" in out[-1]
