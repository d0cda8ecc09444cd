"""Data-parallel training under ``torchrun`` (DistributedDataParallel; gloo on CPU, NCCL on CUDA).

``torchrun --nproc_per_node=N -m stages.train DS DET`` starts N copies of the train stage; torchrun
sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``. Every copy builds the same model from
the same seed, takes its share of each global batch, and DDP averages the gradients, so one
optimiser step sees the same global batch as a single process would. Validation and early
stopping run on every rank over the same windows (identical decisions, no broadcast needed); only
rank 0 writes checkpoints and outputs. Without torchrun (``WORLD_SIZE`` unset or 1) every function
here is a no-op — and imports no torch: a process group exists only once :func:`init_from_env`
(which imports torch) ran, so while torch is not imported there is none to ask about.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def _group() -> Any:
    """``torch.distributed`` while a process group is up, else None (torch not imported: no group)."""
    if "torch" not in sys.modules:
        return None
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def world_size() -> int:
    dist = _group()
    return dist.get_world_size() if dist is not None else 1


def rank() -> int:
    dist = _group()
    return dist.get_rank() if dist is not None else 0


def is_main() -> bool:
    """True on the process that writes outputs (rank 0, or the only process)."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env() -> torch.device | None:
    """Join the process group torchrun described; returns this rank's CUDA device (None on CPU)."""
    if not launched_by_torchrun():
        return None
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return None
    cuda = torch.cuda.is_available()
    device = None
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    log.info("distributed: rank %d of %d (%s)", rank(), world_size(), "nccl" if cuda else "gloo")
    return device


def shutdown() -> None:
    dist = _group()
    if dist is not None:
        dist.barrier()
        dist.destroy_process_group()


def shard(starts: np.ndarray) -> np.ndarray:
    """This rank's part of a global batch (every rank gets a part while the batch allows)."""
    n = world_size()
    if n == 1:
        return starts
    part = starts[rank()::n]
    return part if len(part) else starts[-1:]  # a short last batch: repeat a window rather than hang


@functools.cache
def _data_parallel() -> type:
    from torch.nn.parallel import DistributedDataParallel

    class DataParallel(DistributedDataParallel):
        """DDP whose attributes fall through to the wrapped module, so detector code that calls
        ``self.module.some_method`` keeps working while the forward passes synchronise gradients."""

        def __getattr__(self, name: str):
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.module, name)

    DataParallel.__module__, DataParallel.__qualname__ = __name__, "DataParallel"
    return DataParallel


def __getattr__(name: str) -> Any:
    """``distributed.DataParallel``: the class is built on first use (it subclasses torch's DDP)."""
    if name == "DataParallel":
        return _data_parallel()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` wrapped for data-parallel training, or itself outside torchrun."""
    if world_size() == 1:
        return module
    ids = [device.index] if device.type == "cuda" else None
    # find_unused_parameters: ablations and switched-off branches leave parameters without gradient
    return _data_parallel()(module, device_ids=ids, find_unused_parameters=True)


def mean_over_ranks(value: float) -> float:
    """A float averaged over every rank (the training loss each rank saw on its share)."""
    if world_size() == 1:
        return value
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def sync_parameters(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank: after a data-dependent initialisation
    in the first forward pass (FuseGuard seeds its fusion prototypes from the first batch, which
    differs per rank), so all ranks continue from one model."""
    if world_size() == 1:
        return
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, 0)
