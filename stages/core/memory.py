"""What this machine can still allocate, so that a table too large fails with a clear error, not an OOM kill."""
from __future__ import annotations

from stages.core.errors import InputError
from stages.core.params import PARAMS_FILE

GIB = 2**30


def available_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` (what can be allocated without swapping), or None
    where the kernel does not say."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def require_memory(need_bytes: int, what: str, keys: str, remedy: str, have: int | None = None,
                   where: str = "memory") -> None:
    """Raises an :class:`InputError` on ``keys`` of ``params.yaml`` when ``need_bytes`` (a lower
    bound of what a step must allocate at once) exceeds the memory still available (``have``, by
    default this machine's ``MemAvailable``): the stage would otherwise be killed by the kernel
    part way, with no word of why."""
    have = available_bytes() if have is None else have
    if have is not None and need_bytes > have:
        raise InputError(PARAMS_FILE, keys, f"{what} that fits in {where} ({remedy})",
                         f"{need_bytes / GIB:.1f} GiB needed at least, {have / GIB:.1f} GiB available")


def require_disk(folder, need_bytes: int, what: str) -> None:
    """Raises an :class:`InputError` on ``folder`` when its file system has less than ``need_bytes``
    free: a spill that would fill the disk fails here, naming the folder, not part way through a
    write."""
    import shutil

    free = shutil.disk_usage(folder).free
    if need_bytes > free:
        raise InputError(folder, None, f"room for {what} ({need_bytes / GIB:.2f} GiB)",
                         f"{free / GIB:.2f} GiB free")
