"""Freed tensor memory is kept for the next batch (stages/core/heap.py): served from the heap, not
fresh ``mmap`` pages, kept after a free, and the same numbers."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt thresholds are a glibc feature")

# glibc's own account (mallinfo2, glibc >= 2.33): bytes in mmapped blocks, and the free top of the heap
_PROBE = textwrap.dedent("""
    import ctypes, json, sys
    from stages.core.heap import keep_freed_memory
    set_ = keep_freed_memory() if sys.argv[1] == "keep" else {"malloc": "default"}

    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Info
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    mb = 2**20
    one = libc.malloc(16 * mb)  # one batch's tensor
    mapped = libc.mallinfo2().hblkhd
    libc.free(one)
    blocks = [libc.malloc(20 * mb) for _ in range(5)]  # a batch's worth, then all freed
    for b in reversed(blocks):
        libc.free(b)
    kept = libc.mallinfo2().keepcost

    import torch
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(2048, 256, generator=g), torch.randn(256, 1536, generator=g)
    sums = [float(torch.nn.functional.gelu(x @ w).pow(2).sum()) for _ in range(3)]
    print(json.dumps({"set": set_, "mapped_mb": mapped / mb, "kept_mb": kept / mb, "sums": sums}))
""")


def _probe(mode: str, env: dict | None = None) -> dict:
    proc = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True,
                          env={**os.environ, **(env or {})})
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_batches_come_from_the_heap_and_stay_there_with_the_same_numbers():
    kept, default = _probe("keep"), _probe("default")
    assert kept["set"]["malloc"].startswith("mmap_threshold=")
    assert default["mapped_mb"] >= 16 and kept["mapped_mb"] < 1  # 16 MB: a fresh mmap by default, the heap here
    assert default["kept_mb"] < 50 <= kept["kept_mb"]  # 100 MB freed: trimmed back to the system by default
    assert kept["sums"] == default["sums"]  # where memory comes from changes no bit


def test_the_users_malloc_settings_win():
    seen = _probe("keep", {"MALLOC_TRIM_THRESHOLD_": "131072"})
    assert "set by the user" in seen["set"]["malloc"]
