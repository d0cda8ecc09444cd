"""Device choice and reproducibility switches shared by every torch detector."""
from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; exact fp32 on the CPU (keeps CPU runs bit-stable)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def limited_threads(n: int, device: torch.device):
    """Run a block with ``n`` torch intra-op threads on the CPU.

    Small recurrent nets spend their time in many tiny per-step kernels; on a busy machine extra
    threads only add scheduling waits (measured: BiGRU step 60x slower with 2 threads under load).
    """
    if n <= 0 or device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
