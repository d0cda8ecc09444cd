"""Core slots: concurrent torch passes never hold more threads than the pool has cores, and a crash frees them."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stages.core import cores
from stages.core.errors import InputError

REPO = Path(__file__).resolve().parents[1]
HOLDER = """
import logging, sys, time
logging.basicConfig(level=logging.INFO)
from stages.core.cores import claim_cores
n, hold, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
with claim_cores(n, label="test") as got:
    t0 = time.time()
    open(out + ".started", "w").close()
    time.sleep(hold)
    t1 = time.time()
with open(out, "w") as fh:
    fh.write(f"{got} {t0} {t1}")
"""


def _env(tmp_path: Path, slots: str) -> dict[str, str]:
    env = dict(os.environ, AIOPS_CORE_SLOTS=slots, AIOPS_CORE_SLOTS_DIR=str(tmp_path / "slots"),
               PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    return env


def _run_pair(tmp_path: Path, slots: str, n: int, hold: float = 1.0) -> list[tuple[int, float, float]]:
    env = _env(tmp_path, slots)
    procs = [subprocess.Popen([sys.executable, "-c", HOLDER, str(n), str(hold), str(tmp_path / f"p{i}")], env=env)
             for i in range(2)]
    for p in procs:
        assert p.wait(timeout=60) == 0
    out = []
    for i in range(2):
        got, t0, t1 = (tmp_path / f"p{i}").read_text().split()
        out.append((int(got), float(t0), float(t1)))
    return out


def _overlap(a: tuple[int, float, float], b: tuple[int, float, float]) -> float:
    return min(a[2], b[2]) - max(a[1], b[1])


def test_two_passes_wanting_every_core_take_turns(tmp_path):
    (a, b) = _run_pair(tmp_path, "2", 2)
    assert a[0] == b[0] == 2
    assert _overlap(a, b) <= 0, "two 2-thread passes ran at once on 2 core slots"


def test_passes_that_fit_together_run_together(tmp_path):
    (a, b) = _run_pair(tmp_path, "2", 1, hold=1.5)
    assert a[0] == b[0] == 1
    assert _overlap(a, b) > 0.5, "two 1-thread passes on 2 slots were serialised"


def test_a_killed_holder_frees_its_slots(tmp_path):
    env = _env(tmp_path, "1")
    first = subprocess.Popen([sys.executable, "-c", HOLDER, "1", "600", str(tmp_path / "dead")], env=env)
    deadline = time.monotonic() + 60
    while not (tmp_path / "dead.started").exists():
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.05)
    second = subprocess.Popen([sys.executable, "-c", HOLDER, "1", "0", str(tmp_path / "next")], env=env,
                              stderr=subprocess.PIPE, text=True)
    time.sleep(3.0)  # past the 2 s after which a wait is logged
    assert second.poll() is None, "the second pass ran while the first held the only slot"
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    _, err = second.communicate(timeout=30)
    assert second.returncode == 0, err
    assert (tmp_path / "next").read_text().split()[0] == "1"
    assert f"held by: pid {first.pid} (test), 1 slot(s)" in err  # the wait names who holds the slot


def test_nested_claims_take_nothing_more(tmp_path, monkeypatch):
    monkeypatch.setenv("AIOPS_CORE_SLOTS", "2")
    monkeypatch.setenv("AIOPS_CORE_SLOTS_DIR", str(tmp_path))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with cores.claim_cores(1) as outer:
        assert outer == 1 and cores.held() == 1
        with cores.claim_cores(2) as inner:  # would wait for itself if it claimed again
            assert inner == 1
    assert cores.held() == 0


def test_more_threads_than_slots_claims_the_pool(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("AIOPS_CORE_SLOTS", "2")
    monkeypatch.setenv("AIOPS_CORE_SLOTS_DIR", str(tmp_path))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with caplog.at_level("WARNING"), cores.claim_cores(4) as got:
        assert got == 2
    assert "oversubscribe" in caplog.text


def test_limited_threads_holds_the_slots_of_its_threads(tmp_path, monkeypatch):
    import torch

    from stages.core.device import limited_threads

    monkeypatch.setenv("AIOPS_CORE_SLOTS", "4")
    monkeypatch.setenv("AIOPS_CORE_SLOTS_DIR", str(tmp_path))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with limited_threads(2, torch.device("cpu")):
        assert cores.held() == 2 and torch.get_num_threads() == 2
    assert cores.held() == 0


@pytest.mark.parametrize("env", [{"AIOPS_CORE_SLOTS": "off"}, {"AIOPS_CORE_SLOTS": "0"}, {"WORLD_SIZE": "2"}])
def test_claims_off(tmp_path, monkeypatch, env):
    monkeypatch.setenv("AIOPS_CORE_SLOTS_DIR", str(tmp_path))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with cores.claim_cores(2) as got:
        assert got == 0 and cores.held() == 0


def test_a_bad_pool_size_names_the_variable(monkeypatch):
    monkeypatch.setenv("AIOPS_CORE_SLOTS", "two")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(InputError, match="AIOPS_CORE_SLOTS"):
        cores.pool_size()
