"""Data-parallel training under ``torchrun`` (docs/design.md §6).

With ``WORLD_SIZE > 1`` in the environment every process builds the same model (same seed), the
parameters are broadcast from rank 0 once, each process trains on its own shard of every global
batch (``world_size x batch_size`` images, split as ``DistributedSampler`` splits an epoch), and
after each backward pass the gradients are averaged across processes before the optimizer steps,
so all replicas stay identical.  Only rank 0 writes files.

Why not ``nn.parallel.DistributedDataParallel`` itself: DDP synchronises gradients for work done
inside its wrapper's ``forward``, while one ASVAE step calls the networks in several ways (the
encoder on x and on x_p, the discriminator's ``features`` and ``head`` through the fused op, the
discriminator frozen in the encoder/decoder step).  Averaging the gradients explicitly, in one
flattened all-reduce per optimizer, is what DDP does for a single forward, without its
constraints on how the modules are called.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from .errors import ConfigError

__all__ = ["DistContext", "context_from_env", "average_gradients", "broadcast_parameters", "resolve_device", "seed_replica_noise"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``world_size`` processes, this one is ``rank``."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context_from_env(device: str = "auto") -> DistContext:
    """A ``DistContext`` from torchrun's variables, initialising the process group if needed:
    NCCL when the run's ``device`` (config) is a GPU one and CUDA is available, else gloo."""
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size <= 1:
        return DistContext()
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    if not dist.is_initialized():
        on_gpu = torch.cuda.is_available() and not str(device).startswith("cpu")
        dist.init_process_group("nccl" if on_gpu else "gloo")
    return DistContext(world_size=dist.get_world_size(), rank=dist.get_rank(), local_rank=int(os.environ.get("LOCAL_RANK", "0") or 0))


def _flat_all_reduce(tensors: list[torch.Tensor], average_over: int | None) -> None:
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    if not tensors:
        return
    flat = _flatten_dense_tensors(tensors)
    dist.all_reduce(flat)
    if average_over:
        flat /= average_over
    for t, synced in zip(tensors, _unflatten_dense_tensors(flat, tensors)):
        t.copy_(synced)


def average_gradients(parameters: Iterable[nn.Parameter], ctx: DistContext) -> None:
    """Average ``.grad`` across processes.  Every replica runs the same graph, so the same
    parameters have gradients everywhere; those without one (unused this step) are left alone,
    as a single process would leave them."""
    if not ctx.enabled:
        return
    _flat_all_reduce([p.grad for p in parameters if p.grad is not None], ctx.world_size)


@torch.no_grad()
def broadcast_parameters(modules: Iterable[nn.Module | None], ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every process."""
    if not ctx.enabled:
        return
    import torch.distributed as dist

    for module in modules:
        if module is None:
            continue
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def resolve_device(name: str, ctx: DistContext | None = None) -> torch.device:
    """The torch device for config ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``); under data
    parallelism on GPUs, each process takes the GPU of its local rank."""
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"device {name!r} is not a torch device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but this torch build sees no CUDA GPU; use device='cpu' or 'auto'")
    if ctx is not None and ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    return device


def seed_replica_noise(ctx: DistContext, seed: int, step: int) -> None:
    """Under data parallelism, give each replica its own noise stream (they share weights and data
    order); a function of (seed, rank, step), so a resumed run reseeds consistently."""
    if ctx.enabled:
        torch.manual_seed((int(seed) * 7919 + ctx.rank) * 1_000_003 + step)
