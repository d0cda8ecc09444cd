"""Device choice and reproducibility switches shared by every torch detector.

What makes a CPU result differ between two machines with the same code, data and seed, and
what :func:`deterministic_threads` pins (each switch must act before the library's first use,
which is why the train/evaluate stages call it before any tensor work):

* the number of threads — a parallel reduction adds its partial sums in another order (torch
  intra-op threads, MKL/OpenBLAS threads behind numpy and scikit-learn);
* the CPU's vector width — ATen's kernels and MKL's BLAS pick AVX-512, AVX2 or SSE code at run
  time, and a wider accumulator sums in another order: ``ATEN_CPU_CAPABILITY`` and
  ``ONEDNN_MAX_CPU_ISA`` pin AVX2 (where the CPU has it), ``MKL_CBWR`` pins MKL's code branch
  (conditional numerical reproducibility; ``COMPATIBLE`` on a CPU without AVX2).

On CUDA :func:`seed_everything` turns on deterministic algorithms (cuBLAS workspace config,
cuDNN without autotuning, no TF32); ops without a deterministic kernel warn instead of failing.

Importing this module does not import torch (a second of start-up that the baselines' stages
never need): each function that uses torch imports it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
THREADS = 1  # default fixed thread count: the only one every machine can give without oversubscribing
SCORE_THREADS_ENV = "AIOPS_SCORE_THREADS"  # overrides `evaluate.score_threads: auto` (e.g. in a job queue)
_scoring_threads: int | None = None  # set per process by the evaluate/score stages


def pick_device(requested: str = "auto") -> torch.device:
    import torch

    if requested == "auto":
        if torch.cuda.is_available():  # under torchrun each process takes its own GPU
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    return torch.device(requested)


def _deterministic_kernels() -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` without its import of the Inductor
    compiler (1.5-2 s in every torch stage; it only sets Inductor's own flag, and nothing here compiles).
    The eager kernels get the same switch; where torch lacks the private call, the public one runs."""
    import torch

    if "torch._inductor.config" in sys.modules or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch._C._set_deterministic_algorithms(True, warn_only=True)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch (every device); with ``deterministic``, pick deterministic kernels."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS first starts
    if deterministic:
        _deterministic_kernels()
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def _cpu_flags() -> set[str]:
    """From /proc/cpuinfo (empty where absent): asking torch would fix its CPU capability before we may choose it."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def _cpu_has_avx2() -> bool:
    return "avx2" in _cpu_flags()


def cpu_has_native_bf16() -> bool:
    """bf16 matrix products in hardware (AVX512-BF16 or AMX); elsewhere oneDNN emulates them, slower than fp32."""
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def reproducible_cpu_env(pin_vectors: bool = True) -> dict[str, str]:
    """Environment pinning the CPU code paths (see the module docstring); existing values are kept.

    Effective when set before torch/MKL run their first operation; a user's own setting wins.
    ``pin_vectors=False`` leaves the vector width to the libraries: for bf16 scoring, whose bits
    differ between CPUs anyway, and which the AVX2 pin makes 6x slower (docs/benchmarks.md, Scoring speed)."""
    if not pin_vectors:
        return {k: os.environ.get(k, "unset") for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")}
    avx2 = _cpu_has_avx2()
    wanted = {"ATEN_CPU_CAPABILITY": "avx2" if avx2 else "default",
              "ONEDNN_MAX_CPU_ISA": "AVX2" if avx2 else "DEFAULT",
              "MKL_CBWR": "AVX2" if avx2 else "COMPATIBLE"}
    for key, value in wanted.items():
        os.environ.setdefault(key, value)
    return {k: os.environ[k] for k in wanted}


def deterministic_threads(n: int = THREADS, pin_vectors: bool = True) -> dict[str, object]:
    """Fix every thread pool a training or scoring run uses to ``n`` and pin the CPU code paths.

    Call it at the start of a stage, before any tensor work. Returns what was set (for logs/metrics).

    torch's pools are set only when torch is already imported (this function does not import it):
    a stage imports its detector's module (and so torch, for a torch detector) first, then calls
    this. A torch imported later still starts with ``n`` intra-op threads, from ``OMP_NUM_THREADS``
    set here.
    """
    env = reproducible_cpu_env(pin_vectors)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[key] = str(n)  # for pools created from now on (and child processes)
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        torch.set_num_threads(n)
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:  # fixed once any inter-op work ran; intra-op threads are what order sums
            pass
        settle_mkl_branch()
    blas = "unchanged"
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n)  # numpy / scipy / scikit-learn BLAS and OpenMP pools, process-wide
        blas = n
    except ImportError:
        log.info("threadpoolctl is not installed: numpy's BLAS threads are left as they are")
    return {"threads": n, "blas_threads": blas, **env}


_mkl_settled = False


def settle_mkl_branch() -> None:
    """Make MKL's first call in this process on this thread alone, so every thread uses the pinned branch.

    MKL reads its code branch (``MKL_CBWR``) on its first call. When that first call is ATen's
    elementwise ``exp``/``log`` (MKL VML) split over two OpenMP threads, the second thread sometimes ran
    before the branch was set and computed its half with the CPU's own AVX-512 kernels: one ULP off
    on ~100 of 3,840 values, on the first call only, in 4 of 30 fresh processes (2026-12-04). That was
    InterFusion's "two training outcomes" (README, Repeatability). One tiny call here, where no
    parallel region can run (a 64-value op runs inline), sets the branch before any thread races it.
    """
    global _mkl_settled
    torch = sys.modules.get("torch")
    if _mkl_settled or torch is None or not torch.backends.mkl.is_available():
        return
    torch.exp(torch.zeros(64))
    _mkl_settled = True


def cpu_score_autocast(dtype: str = "float32"):
    """Scoring passes' CPU precision: ``bfloat16`` runs matmuls and convolutions in bf16 (torch CPU
    autocast), ``float32`` changes nothing. It never reaches CUDA ops, which follow ``train.amp``."""
    if dtype == "bfloat16":
        import torch

        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; exact fp32 on the CPU (keeps CPU runs bit-stable)."""
    if enabled and device.type == "cuda":
        import torch

        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def limited_threads(n: int, device: torch.device):
    """Run a block with ``n`` torch intra-op threads on the CPU, holding ``n`` of the machine's core slots.

    Small recurrent nets spend their time in many tiny per-step kernels; on a busy machine extra
    threads only add scheduling waits (measured: BiGRU step 60x slower with 2 threads under load).
    """
    if n <= 0 or device.type != "cpu":
        yield
        return
    import torch

    from stages.core.cores import claim_cores

    settle_mkl_branch()  # before the first parallel region (deterministic_threads may have run before torch)
    with claim_cores(n):  # parallel experiments take turns instead of oversubscribing (core/cores.py)
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def in_dvc_queue(cwd: str | os.PathLike | None = None) -> bool:
    """True inside a workspace of ``dvc queue start``: DVC runs queued experiments in temporary copies
    under ``.dvc/tmp/exps/``, several at once with ``-j N``, so each should keep to one core."""
    path = os.fspath(cwd if cwd is not None else os.getcwd()).replace(os.sep, "/")
    return "/.dvc/tmp/exps/" in path + "/"


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def resolve_score_threads(setting: int | str, cwd: str | os.PathLike | None = None) -> tuple[int, str]:
    """Torch threads for scoring passes and why: a number as given; ``auto`` = ``$AIOPS_SCORE_THREADS``
    when set, 1 inside a ``dvc queue`` workspace, else every core this process may use that no other
    running thread holds (:func:`busy_elsewhere`).

    No torch detector's scores are the same bits at 1 and 2 threads (checked 2026-12-04 on the default
    models in fresh processes), so :func:`stage_scoring_threads` never applies ``auto`` to them; it
    picks threads for detectors whose scores do not depend on the count. For bit-identity across
    runs, leave ``auto`` or set a number. Training keeps its fixed ``cpu_threads``: summed gradients
    depend on it."""
    if setting != "auto":
        return int(setting), "evaluate.score_threads"
    env = os.environ.get(SCORE_THREADS_ENV, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            from stages.core.errors import InputError

            raise InputError(f"${SCORE_THREADS_ENV}", None, "a positive number of threads", env)
        return int(env), f"${SCORE_THREADS_ENV}"
    if in_dvc_queue(cwd):
        return 1, "dvc queue workspace"
    cores, busy = available_cores(), busy_elsewhere()
    if busy:
        return max(1, cores - busy), f"{cores} cores, {busy} busy with other work"
    return cores, "all available cores"


def stage_scoring_threads(setting: int | str, depends_on_threads: bool, cwd: str | os.PathLike | None = None
                          ) -> tuple[int | None, str]:
    """The stage-wide scoring thread count and why; None = each detector keeps its own ``cpu_threads``.

    ``auto`` may pick another count than the last run did (a queue workspace, a busy core), which is
    safe only for a detector whose scores are the same bits at any count it may pick; for one whose
    scores depend on it (``Detector.scores_depend_on_threads``) auto keeps the configured count, unless
    ``$AIOPS_SCORE_THREADS`` names one (an explicit choice, as a number in params is)."""
    if setting == "auto" and depends_on_threads and not os.environ.get(SCORE_THREADS_ENV, "").strip():
        return None, "auto keeps the detector's cpu_threads: its scores depend on the thread count"
    return resolve_score_threads(setting, cwd)


def busy_elsewhere(samples: int = 5, interval_s: float = 0.02, loadavg: str = "/proc/loadavg") -> int:
    """Threads of other processes running right now (median of a few reads of the kernel's runnable
    count, less this one): a scoring pass split over a core another job holds waits at every barrier
    (measured: FuseGuard's scoring 8x slower on 2 threads beside a niced job). 0 where unknown."""
    import time

    counts = []
    for i in range(samples):
        try:
            with open(loadavg, encoding="ascii") as fh:
                counts.append(int(fh.read().split()[3].split("/")[0]) - 1)
        except (OSError, ValueError, IndexError):
            return 0
        if i + 1 < samples:
            time.sleep(interval_s)
    counts.sort()
    return max(0, counts[len(counts) // 2])


def set_scoring_threads(n: int | None) -> None:
    """Make every later scoring pass of this process use ``n`` threads (None: each detector's own)."""
    global _scoring_threads
    _scoring_threads = n if n and n > 0 else None


def scoring_threads(configured: int) -> int:
    """Threads for a scoring pass: the stage-wide choice if one was made, else the detector's ``cpu_threads``."""
    return _scoring_threads if _scoring_threads is not None else configured
