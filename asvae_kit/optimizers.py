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

__all__ = ["make_optimizers", "load_optimizer_state", "set_learning_rates", "lr_factor", "is_scheduled", "clip_gradients"]


def make_optimizers(optim: dict[str, Any], encoder: nn.Module, decoder: nn.Module, discriminator: nn.Module | None) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
    """``(encoder/decoder optimizer, discriminator optimizer or None)`` for the resolved ``optim`` config."""
    betas = tuple(optim["betas"])
    gen = _adam([*encoder.parameters(), *decoder.parameters()], lr=optim["lr"], betas=betas, weight_decay=optim["weight_decay"])
    disc = None
    if discriminator is not None:
        disc = _adam(list(discriminator.parameters()), lr=optim["disc_lr"] or optim["lr"], betas=betas, weight_decay=optim["weight_decay"])
    return gen, disc


def _adam(params: list[torch.nn.Parameter], **options: Any) -> torch.optim.Adam:
    """Adam with the fused implementation (one kernel per update) where this torch has it for the
    parameters' device, the default (for-each) one elsewhere."""
    try:
        return torch.optim.Adam(params, fused=True, **options)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, **options)


#: Adam options that choose an implementation, not a state: this run's choice outlives a checkpoint's.
IMPLEMENTATION_OPTIONS = ("fused", "foreach", "capturable", "differentiable")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, keeping this optimizer's implementation (``fused``,
    ``foreach``, ``capturable``): a checkpoint written by another build or mode still resumes on
    the implementation this run chose."""
    chosen = [{key: group[key] for key in IMPLEMENTATION_OPTIONS if key in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, options in zip(optimizer.param_groups, chosen):
        group.update(options)


def set_learning_rates(optim: dict[str, Any], gen: torch.optim.Optimizer, disc: torch.optim.Optimizer | None, factor: float = 1.0) -> None:
    """Give both optimizers the learning rates of ``optim`` times ``factor`` (the schedule's)."""
    for group in gen.param_groups:
        group["lr"] = optim["lr"] * factor
    for group in disc.param_groups if disc is not None else ():
        group["lr"] = (optim["disc_lr"] or optim["lr"]) * factor


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


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float | None) -> None:
    """Clip the gradients of ``optimizer``'s parameters to ``max_norm`` (no-op for ``None``)."""
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], max_norm)
