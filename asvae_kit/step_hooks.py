"""What one algorithm step asks of whoever runs it: the three places where running the step
eagerly and recording it in a CUDA graph differ (docs/design.md §1, "One algorithm step").

``AlgorithmStep.updates(x, hooks)`` calls them; ``EagerHooks`` (here) answers on the host, and
``asvae_kit.step_graph.DeviceHooks`` on the device, while a graph records the step.  Neither
side imports the other: the step knows only ``StepHooks``.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .guard import DivergenceGuard

__all__ = ["StepHooks", "EagerHooks"]


class StepHooks(Protocol):
    """Checking a loss, stepping an optimizer and weighting the EMA, for one step's updates."""

    #: autocast may cache the weights it casts within one forward region (a CUDA graph replays
    #: the casts it recorded, so a recorded step must not cache them)
    autocast_cache: bool

    def check_loss(self, term: str, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """Before the optimizer steps on ``loss``'s gradients: act on a divergent ``loss`` (``term``
        is ``"d_loss"`` or ``"g_loss"``; ``terms`` are its diagnostics, for the message).  Under
        data parallelism ``loss`` is the mean over processes, the same on every one."""

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Step ``optimizer`` (its gradients are ready: averaged, unscaled, clipped)."""

    def ema_weight(self) -> torch.Tensor | None:
        """The weight of this step's EMA update as a device tensor, or ``None`` for the warmed-up
        ``EMA.next_weight()``, counted by ``EMA.update`` itself."""


class EagerHooks:
    """The host's hooks: the guard raises ``TrainingDivergedError`` at once, the optimizer steps,
    and the EMA update weighs and counts itself.  ``autocast_cache=False`` for the eager steps of
    a run whose other steps a CUDA graph replays, so that all its steps cast alike."""

    def __init__(self, guard: DivergenceGuard, *, autocast_cache: bool = True) -> None:
        self.guard, self.autocast_cache = guard, autocast_cache

    def check_loss(self, term: str, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        self.guard.check_loss(term, loss, terms)

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.step()

    def ema_weight(self) -> torch.Tensor | None:
        return None
