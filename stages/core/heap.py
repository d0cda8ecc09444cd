"""Freed tensor memory stays in the process for the next batch instead of going back to the system.

glibc's malloc serves blocks above its mmap threshold (128 KiB at start, raised on the fly up to
32 MiB) with fresh ``mmap`` pages and returns them with ``munmap`` when freed, and it trims the
top of its heap once more than twice that threshold is free there. Torch's CPU tensors of one batch
(tens of MB) are freed at the batch's end and allocated again at the next: every batch
first-touches fresh pages. Scoring FuseGuard's synth_gaia test span took ~950k page faults and
1.5 s of system time per pass; with these two thresholds fixed, a few thousand and 0.01 s, and the
same bits (docs/benchmarks.md, Scoring speed). Values set here are the documented ``mallopt`` parameters; a
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` the user exported wins.

The cost is resident memory: up to ``trim_threshold`` of freed heap may stay mapped until the
process ends, and the stages that call this are short-lived processes.
"""
from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's largest accepted mmap threshold on 64-bit (HEAP_MAX_SIZE / 2)


def keep_freed_memory(mmap_threshold: int = MMAP_THRESHOLD_MAX, trim_threshold: int = 2**30) -> dict[str, object]:
    """Fix glibc's mmap and trim thresholds for this process; what was set, for logs and metrics.

    A no-op (reported as such) off glibc, or where the user set the thresholds in the environment."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return {"malloc": "unchanged (not glibc)"}
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return {"malloc": "unchanged (MALLOC_*_THRESHOLD_ set by the user)"}
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return {"malloc": "unchanged (no mallopt)"}
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)) == 1 and mallopt(M_TRIM_THRESHOLD, int(trim_threshold)) == 1
    if not ok:
        log.info("mallopt refused the thresholds: freed memory is returned to the system as before")
        return {"malloc": "unchanged (mallopt refused)"}
    return {"malloc": f"mmap_threshold={mmap_threshold}, trim_threshold={trim_threshold}"}
