"""Machine-wide core slots: parallel experiments never run more torch threads than the machine has cores.

Every torch detector pins its thread count (``cpu_threads``), because summed gradients depend on it.
``dvc queue start -j N`` runs N experiments at once, each stage in its own process, so N fits of
2 threads each would share 2 cores and wait on one another at every parallel region (measured in
an earlier stop: 2.6-3.3x slower). Lowering the thread count would change the numbers.

Instead, a fit or scoring pass on the CPU first claims one slot per thread it will run. A slot is
an exclusive ``flock`` on a file in a folder every process of the machine shares. The kernel
drops the lock when the process ends, crash or kill included, so nothing is left to clean up.

On a 2-core machine with the default 2 threads, two queued experiments therefore take turns in
their torch passes. Their other stages (readers, windows, baselines, metrics) still overlap. The
thread counts, and so the results, are those of a lone run.

The rules:
- Claims go through one gate file, one claimer at a time. Only the gate holder waits for slots,
  and a slot holder never waits for the gate (a nested claim uses the slots already held), so
  no two processes can wait on each other.
- ``$AIOPS_CORE_SLOTS``: ``off`` (or ``0``) claims nothing; a number sets the pool size, which is
  otherwise the number of cores this process may use.
- ``$AIOPS_CORE_SLOTS_DIR`` moves the folder, which is otherwise ``<tmp>/aiops-core-slots-<uid>``.
- Windows has no ``flock``: claims are off there.
- Ranks of a ``torchrun`` job claim nothing: the launcher already chose how they share the machine,
  and a rank waiting for a slot that its sibling holds would stall both at the first collective.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

try:
    import fcntl
except ImportError:  # Windows: no flock, so no slots (claims are off)
    fcntl = None

log = logging.getLogger(__name__)
SLOTS_ENV = "AIOPS_CORE_SLOTS"
DIR_ENV = "AIOPS_CORE_SLOTS_DIR"
_POLL_S = (0.02, 0.5)  # first and longest pause between sweeps over the slots
_FIRST_REPORT_S = 2.0  # a wait is logged once it lasts this long (turns between passes take ~1 s)
_REPORT_EVERY_S = 60.0  # and again after each further minute, with the holders' pids

_held: list[int] = []  # this process's slot file descriptors


def pool_size() -> int:
    """Slots on this machine: ``$AIOPS_CORE_SLOTS`` when it is a number, else this process's usable cores;
    0 = claims are off."""
    value = os.environ.get(SLOTS_ENV, "").strip().lower()
    if value in ("off", "0") or fcntl is None or int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return 0
    if value:
        if not value.isdigit():
            from stages.core.errors import InputError

            raise InputError(f"${SLOTS_ENV}", None, "a positive number of core slots, or off", value)
        return int(value)
    from stages.core.device import available_cores

    return available_cores()


def slots_dir() -> Path:
    path = os.environ.get(DIR_ENV, "").strip()
    return Path(path) if path else Path(tempfile.gettempdir()) / f"aiops-core-slots-{os.getuid()}"


def held() -> int:
    """Slots this process holds now."""
    return len(_held)


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holders(folder: Path, size: int) -> str:
    """What the other holders wrote in their slot files (pid and pass), for a wait message."""
    mine, out = f"pid {os.getpid()} ", {}
    for i in range(size):
        try:
            text = (folder / f"core-{i}").read_text(encoding="ascii").strip()
        except OSError:
            continue
        if text and not text.startswith(mine):
            out[text] = out.get(text, 0) + 1
    return "; ".join(f"{text}, {n} slot(s)" for text, n in out.items())


def _poll(done: Callable[[], bool], report: Callable[[], None]) -> None:
    """Call ``done`` until it is true, with growing pauses; ``report`` once the wait lasts
    ``_FIRST_REPORT_S`` and again after each further ``_REPORT_EVERY_S``."""
    pause, next_report = _POLL_S[0], time.monotonic() + _FIRST_REPORT_S
    while not done():
        if time.monotonic() >= next_report:
            report()
            next_report = time.monotonic() + _REPORT_EVERY_S
        time.sleep(pause)
        pause = min(_POLL_S[1], pause * 2)


def _acquire(want: int, size: int, folder: Path, label: str) -> list[int]:
    folder.mkdir(parents=True, exist_ok=True)
    gate = _open(folder / "gate")
    t0 = time.monotonic()
    got: dict[int, int] = {}  # slot index → its locked file descriptor

    def sweep() -> bool:
        for i in range(size):
            if len(got) == want:
                break
            if i in got:
                continue
            fd = _open(folder / f"core-{i}")
            if not _try_lock(fd):
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} ({label})\n".encode("ascii", "replace"))
            got[i] = fd
        return len(got) == want

    try:
        # another process may hold the gate while it waits for slots: only the gate holder waits for them
        _poll(lambda: _try_lock(gate),
              lambda: log.info("%s: waiting for another process to finish claiming core slots", label))
        _poll(sweep, lambda: log.info("%s: waiting for %d of %d core slot(s); held by: %s", label,
                                      want - len(got), size, _holders(folder, size) or "unknown"))
    except BaseException:
        for fd in got.values():
            os.close(fd)
        raise
    finally:
        os.close(gate)  # closing drops the gate lock
    waited = time.monotonic() - t0
    if waited >= _FIRST_REPORT_S:
        log.info("%s: got %d core slot(s) after %.1f s", label, want, waited)
    return list(got.values())


@contextlib.contextmanager
def claim_cores(n: int, label: str = "torch pass") -> Iterator[int]:
    """Hold ``min(n, pool)`` core slots for the block; yields the number held (0 = claims are off).

    Re-entrant: inside a block that holds slots, a nested claim takes nothing more."""
    size = pool_size() if n > 0 else 0
    if size == 0 or _held:
        yield len(_held)
        return
    want = min(n, size)
    if n > size:
        log.warning("%s: %d threads on a machine with %d core slot(s): the threads of this pass alone "
                    "oversubscribe the cores", label, n, size)
    fds = _acquire(want, size, slots_dir(), label)
    _held.extend(fds)
    try:
        yield want
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)
        del _held[:]
