"""What a divergence estimator is, and the discriminator-head statistics its losses read.

A divergence (the ``register_divergences`` hook; built-ins in ``plugins/divergences.py``) turns
one step's samples, an ``asvae_kit.joint_batch.JointBatch``, into the discriminator's and the
encoder/decoder's losses.  ``Divergence`` is that contract, and ``check_divergence`` holds every
built one to it, so a plugin that misses a part fails when the trainer is built, naming it.

``head_statistics`` is the one place the discriminator's head meets the losses: it stacks the
(x, z) pairs of several segments, runs ``features`` once and hands the head to
``asvae_kit.kernels.fused_disc_head``; ``MEAN``, ``SOFTPLUS`` and ``SOFTPLUS_NEG`` index its
last axis.  ``check_head_count`` checks that a discriminator has the heads a divergence needs.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from .errors import ConfigError, PluginError
from .joint_batch import JointBatch
from .kernels import fused_disc_head

__all__ = ["Divergence", "check_divergence", "head_statistics", "check_head_count", "MEAN", "SOFTPLUS", "SOFTPLUS_NEG"]

#: Indices into the last axis of ``head_statistics``' output.
MEAN, SOFTPLUS, SOFTPLUS_NEG = 0, 1, 2


@runtime_checkable
class Divergence(Protocol):
    """What the trainer needs of a divergence estimator (docs/design.md §2).

    ``num_heads`` is the discriminator's head count (0: no discriminator).  Both losses return
    ``(loss, diagnostics)``: a scalar to minimise and a dict of detached scalar tensors the
    trainer logs (e.g. ``skl``, ``l_x``, ``l_z``), with the same keys on every call (and, under
    data parallelism, on every process: they ride in the gradients' all-reduce).  Optionally ``decodes_both = True`` when the
    losses use both ``batch.log_px`` and ``batch.x_p`` (one decoder call then serves both).
    """

    num_heads: int

    def discriminator_loss(self, discriminator: nn.Module, batch: JointBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def generator_loss(self, discriminator: nn.Module | None, batch: JointBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


def check_divergence(divergence: Any, name: str) -> int:
    """Return the head count of ``divergence`` (built from the registry entry ``name``), or raise
    ``PluginError`` naming what it lacks of the ``Divergence`` protocol."""
    if not isinstance(divergence, Divergence):
        missing = [m for m in ("num_heads", "discriminator_loss", "generator_loss") if not hasattr(divergence, m)]
        raise PluginError(
            f"divergence {name!r} built a {type(divergence).__name__}, which has no {', '.join(missing)}; a "
            "divergence needs num_heads, discriminator_loss(discriminator, batch) and generator_loss(discriminator, "
            "batch) (asvae_kit.divergence.Divergence, docs/design.md §2)"
        )
    heads = divergence.num_heads
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 0:
        raise PluginError(
            f"divergence {name!r}: num_heads must be an int >= 0 (the discriminator's head count, 0 for none), got {heads!r}"
        )
    return heads


def check_head_count(discriminator: nn.Module | None, num_heads: int, divergence: str) -> None:
    """Raise ``ConfigError`` unless the discriminator's head has ``num_heads`` outputs."""
    if num_heads == 0:
        return
    if discriminator is None:
        raise ConfigError(f"divergence {divergence!r} needs a discriminator with {num_heads} head(s), but none was given")
    head = getattr(discriminator, "head", None)
    if not isinstance(head, nn.Linear):
        raise ConfigError(f"discriminator {type(discriminator).__name__} has no `head` nn.Linear (docs/design.md §2)")
    if head.out_features != num_heads:
        raise ConfigError(
            f"divergence {divergence!r} needs a discriminator with {num_heads} head(s), but its head has "
            f"{head.out_features} output(s); build it with num_heads={num_heads}"
        )


def head_statistics(
    discriminator: nn.Module, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    """``[S, K, 3]`` statistics (mean l, mean softplus(l), mean softplus(-l)) of each (x, z) segment."""
    x = torch.cat([p[0] for p in pairs]) if len(pairs) > 1 else pairs[0][0]
    z = torch.cat([p[1] for p in pairs]) if len(pairs) > 1 else pairs[0][1]
    h = discriminator.features(x, z)
    head = discriminator.head
    return fused_disc_head(h, head.weight, head.bias, [p[0].shape[0] for p in pairs])
