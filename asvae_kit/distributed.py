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

import atexit
import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import nn

from .errors import ConfigError, PeerLostError

__all__ = [
    "DistContext", "context_from_env", "average_gradients", "all_reduce_flat", "broadcast_parameters", "resolve_device",
    "seed_replica_noise", "timeout_seconds", "TIMEOUT_ENV", "peers_reported", "finish_together",
]

#: Seconds a collective may wait for a peer before it fails (``$ASVAE_KIT_DIST_TIMEOUT``): a rank
#: whose peer vanished stops with an error instead of waiting forever.
TIMEOUT_ENV, DEFAULT_TIMEOUT_S = "ASVAE_KIT_DIST_TIMEOUT", 600.0


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
        backend, timeout = "nccl" if on_gpu else "gloo", timedelta(seconds=timeout_seconds())
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if attempt is None:
            dist.init_process_group(backend, timeout=timeout)
        else:
            # under torchrun: the group's keys go under this attempt's own prefix.  After an elastic
            # restart (--max-restarts) the agent's store still holds the failed attempt's addresses,
            # and a relaunched rank that read them would connect to a process that is gone
            store, rank, size = next(dist.rendezvous("env://", timeout=timeout))
            store = dist.PrefixStore(f"asvae-kit/attempt-{attempt}", store)
            dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timeout)
        # leave the group before the interpreter's teardown: gloo's threads, still running when a
        # process exits without this, end it with SIGABRT ("terminate called without an active
        # exception"), which torchrun reports as the run's failure
        atexit.register(_leave_process_group)
    return DistContext(world_size=dist.get_world_size(), rank=dist.get_rank(), local_rank=int(os.environ.get("LOCAL_RANK", "0") or 0))


def timeout_seconds() -> float:
    """``$ASVAE_KIT_DIST_TIMEOUT`` (seconds, > 0), else 600."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds > 0; unset it for {DEFAULT_TIMEOUT_S:g} s or set e.g. {TIMEOUT_ENV}=300")
    return value


def _leave_process_group() -> None:
    """At exit: wait (briefly) for the peers, then leave the group.  A rank that tears gloo down
    while a peer's group is still up can end in SIGABRT ("terminate called without an active
    exception"), which torchrun counts as a failed worker: seen when a non-writing rank exited
    while rank 0 was still saving.  On a failure path the peers may be gone: the wait is short."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=timedelta(seconds=10))
    except Exception:  # a peer failed or left: nothing to wait for
        pass
    try:
        dist.destroy_process_group()
    except Exception:  # already torn down by a failed peer: nothing left to leave
        pass


def finish_together(ctx: DistContext) -> None:
    """The end of a ``fit`` under data parallelism: every rank waits until all are there, so ``fit``
    returns on every rank once rank 0 has written the run's last checkpoint."""
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_flat(tensors: list[torch.Tensor], extras: torch.Tensor | None = None, *, average_over: int | None = None) -> torch.Tensor | None:
    """Sum ``tensors`` (and the 1-D ``extras``) across processes in one ``all_reduce`` call,
    through a flat buffer of torch's public API; with ``average_over``, the tensors come back
    divided by it (``extras`` always come back as sums).  Returns the reduced ``extras``.

    One call per optimizer: the gradients of a step's update travel together, and so do the
    values every rank must agree on (the update's loss, a stop request; ``algorithm.py``), so
    agreement costs no collective of its own.  Tensors of several dtypes go in one call per dtype.
    """
    import torch.distributed as dist

    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    if extras is not None:
        groups.setdefault(extras.dtype, [])
    reduced = None
    for dtype, members in groups.items():
        parts = [t.reshape(-1) for t in members]
        carries = extras is not None and extras.dtype == dtype
        if carries:
            parts.append(extras.reshape(-1))
        flat = torch.cat(parts) if len(parts) > 1 else parts[0].clone()
        dist.all_reduce(flat)
        offset = 0
        for t in members:
            n = t.numel()
            chunk = flat[offset : offset + n].view_as(t)
            t.copy_(chunk / average_over if average_over else chunk)
            offset += n
        if carries:
            reduced = flat[offset:]
    return reduced


def average_gradients(parameters: Iterable[nn.Parameter], ctx: DistContext, extras: torch.Tensor | None = None) -> torch.Tensor | None:
    """Average ``.grad`` across processes, and sum ``extras`` (a 1-D tensor) in the same call;
    returns the summed ``extras``.  Every replica runs the same graph, so the same parameters
    have gradients everywhere; those without one (unused this step) are left alone, as a single
    process would leave them."""
    if not ctx.enabled:
        return extras
    return all_reduce_flat([p.grad for p in parameters if p.grad is not None], extras, average_over=ctx.world_size)


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
    order), reseeded from (seed, rank, step) before every step: a checkpoint holds rank 0's RNG
    state only, so a resumed run draws what an unbroken one draws only because no step's noise
    depends on the steps before it."""
    if ctx.enabled:
        torch.manual_seed((int(seed) * 7919 + ctx.rank) * 1_000_003 + step)


def _is_collective_failure(exc: BaseException) -> bool:
    """Whether ``exc`` came from a collective whose peer failed (torch's ``DistError`` family, or
    a backend's plain ``RuntimeError`` saying so)."""
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(s in text for s in ("gloo", "nccl", "connection closed by peer", "connection reset by peer"))


@contextlib.contextmanager
def peers_reported(step: int, saved: tuple[Path, int] | None, ctx: DistContext, run_dir: Path | None = None) -> Iterator[None]:
    """Around a step under data parallelism: a collective that fails because a peer left or
    stopped answering becomes a ``PeerLostError`` that says so (instead of the backend's own
    message), with what is safe on disk: ``saved`` (run directory, step) on rank 0, which
    writes the checkpoints; another rank cannot know whether rank 0 finished its last one, so
    it names only ``run_dir``."""
    try:
        yield
    except Exception as exc:
        if not _is_collective_failure(exc):
            raise
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        if ctx.is_main:
            kept = f"the last checkpoint in {saved[0]} (step {saved[1]}) is intact" if saved is not None else "no checkpoint of this run was written"
        else:
            kept = f"the newest checkpoint rank 0 completed in {run_dir} is intact" if run_dir is not None else "this process wrote nothing"
        raise PeerLostError(
            f"process {ctx.rank} of {ctx.world_size}: another process left or stopped answering during step {step}'s "
            f"all-reduce ({reason}); its own output says why. Training stopped here and {kept}; run the same command "
            f"with --resume-if-exists to go on (or raise {TIMEOUT_ENV} if a peer is only slow)."
        ) from exc

