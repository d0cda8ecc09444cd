"""Shared fixtures: the real public samples (skipped when absent) and offline settings."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# the suite's torch passes claim core slots of their own: they never wait for a run beside them (core/cores.py)
if "AIOPS_CORE_SLOTS_DIR" not in os.environ:
    os.environ["AIOPS_CORE_SLOTS_DIR"] = tempfile.mkdtemp(prefix="aiops-test-core-slots-")
    atexit.register(shutil.rmtree, os.environ["AIOPS_CORE_SLOTS_DIR"], True)  # a run leaves no folder behind

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real telemetry samples (``../shared/data``); skip when this clone has none."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real samples not found at {SHARED_DATA} (a user's clone has no ../shared; CI has it)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core box: one intra-op thread is ~10x faster than two contending."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def thread_counts_of_scoring(monkeypatch):
    """``f(module, det, windows)`` → (thread counts the module's scoring asked for, scores with a
    stage-wide count of 1, scores with none set): records what reaches ``limited_threads``."""
    from stages.core.device import set_scoring_threads

    def run(module, det, windows):
        seen, real = [], module.limited_threads
        monkeypatch.setattr(module, "limited_threads", lambda n, dev: seen.append(n) or real(n, dev))
        set_scoring_threads(1)
        try:
            one = det.score(windows)
        finally:
            set_scoring_threads(None)
        return seen, one, det.score(windows)

    return run
