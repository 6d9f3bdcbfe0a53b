"""The two optimizers of a run, their learning-rate schedule and gradient clipping.

Both are Adam (fused where the device supports it) with ``config['optim']``'s betas and weight decay, one for the encoder and decoder,
one for the discriminator; the discriminator's learning rate is ``optim.disc_lr`` when set, else
``optim.lr``.  The schedule (``optim.schedule``, ``optim.warmup_steps``) is a function of the step
alone, so a resumed run follows it exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .schema import disc_lr

__all__ = [
    "make_optimizers", "load_optimizer_state", "set_learning_rates", "lr_factor", "is_scheduled", "clip_gradients", "optimizer_parameters",
]


def make_optimizers(
    optim: dict[str, Any], encoder: nn.Module, decoder: nn.Module, discriminator: nn.Module | None, *, capturable: bool = False
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
    """``(encoder/decoder optimizer, discriminator optimizer or None)`` for the resolved ``optim``
    config.  ``capturable``: the optimizers' steps will be recorded in a CUDA graph (``cuda_graphs``)."""
    betas = tuple(optim["betas"])
    gen = _adam([*encoder.parameters(), *decoder.parameters()], optim["lr"], capturable, betas=betas, weight_decay=optim["weight_decay"])
    disc = None
    if discriminator is not None:
        disc = _adam(list(discriminator.parameters()), disc_lr(optim), capturable, betas=betas, weight_decay=optim["weight_decay"])
    return gen, disc


def _adam(params: list[torch.nn.Parameter], lr: float, capturable: bool, **options: Any) -> torch.optim.Adam:
    """Adam with the fused implementation (one kernel per update) where this torch has it for the
    parameters' device, the default (for-each) one elsewhere.  A capturable one keeps its step
    counts and its learning rate in device tensors, so a replayed graph reads the current rate
    (``set_learning_rates`` writes into it)."""
    if capturable:
        options.update(capturable=True, lr=torch.tensor(float(lr), device=params[0].device))
    else:
        options["lr"] = lr
    try:
        adam = torch.optim.Adam(params, fused=True, **options)
    except (RuntimeError, ValueError):
        adam = torch.optim.Adam(params, **options)
    if capturable:  # its eager warm-up steps are expected: no "running without CUDA graph capture" warning
        adam._warned_capturable_if_run_uncaptured = True  # type: ignore[attr-defined]
    return adam


#: Adam options that choose an implementation, not a state: this run's choice outlives a checkpoint's.
IMPLEMENTATION_OPTIONS = ("fused", "foreach", "capturable", "differentiable")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, keeping this optimizer's implementation (``fused``,
    ``foreach``, ``capturable``) and the kind of its learning rate (float or tensor), with the saved
    rate: a checkpoint written by another build or mode resumes on what this run chose."""
    chosen = [{key: group[key] for key in (*IMPLEMENTATION_OPTIONS, "lr") if key in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, options in zip(optimizer.param_groups, chosen):
        saved_lr = float(group["lr"])  # a float, or a tensor where the saving run captured graphs
        group.update(options)
        _set_lr(group, saved_lr)
        if group.get("fused") or group.get("capturable"):  # these keep step counts on the device, in float32
            for p in group["params"]:
                state = optimizer.state.get(p, {})
                if torch.is_tensor(state.get("step")):
                    state["step"] = state["step"].to(device=p.device, dtype=torch.float32)


def set_learning_rates(optim: dict[str, Any], gen: torch.optim.Optimizer, disc: torch.optim.Optimizer | None, factor: float = 1.0) -> None:
    """Give both optimizers the learning rates of ``optim`` times ``factor`` (the schedule's)."""
    for group in gen.param_groups:
        _set_lr(group, optim["lr"] * factor)
    for group in disc.param_groups if disc is not None else ():
        _set_lr(group, disc_lr(optim) * factor)


def _set_lr(group: dict[str, Any], value: float) -> None:
    """A group's learning rate: written into its tensor where it has one (a graph reads that tensor)."""
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(value)
    else:
        group["lr"] = value


def lr_factor(optim: dict[str, Any], step: int, total: int) -> float:
    """The learning-rate multiplier at (0-based) ``step`` of a ``total``-step run: linear warm-up
    over ``optim.warmup_steps``, then ``constant`` (1) or ``cosine`` (1 down to 0 at the end)."""
    warmup = optim.get("warmup_steps", 0)
    if warmup and step < warmup:
        return (step + 1) / warmup
    if optim.get("schedule", "constant") == "cosine":
        span = max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))
    return 1.0


def is_scheduled(optim: dict[str, Any]) -> bool:
    """Whether the learning rates change during the run."""
    return bool(optim.get("warmup_steps")) or optim.get("schedule", "constant") != "constant"


def optimizer_parameters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """``optimizer``'s parameters, group after group."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float | None, params: list[torch.Tensor] | None = None) -> None:
    """Clip the gradients of ``optimizer``'s parameters (``params``, when the caller has listed
    them already: ``optimizer_parameters``) to ``max_norm`` (no-op for ``None``)."""
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(optimizer_parameters(optimizer) if params is None else params, max_norm)
