"""Catching a run that diverges before it overwrites a good checkpoint.

Besides NaN and infinity, a loss whose magnitude grows past ``factor`` times its typical level
counts as divergence: at ``--lr 1.0`` the losses jump from about 50 to 1e13 within a few steps,
long before they overflow.  The typical level is the lowest running median (over ``window``
steps, floored at 1) the loss has had since its first ``warmup`` steps, so a loss that climbs
slowly cannot drag its own yardstick up with it.  ``factor = 0`` switches the check off.
"""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path
from statistics import median

import torch

from .errors import TrainingDivergedError

__all__ = ["DivergenceGuard"]

_WHAT = {"d_loss": "discriminator loss", "g_loss": "encoder/decoder loss"}


class DivergenceGuard:
    """Per-loss yardsticks; ``check`` returns why a value is divergent, or ``None``."""

    def __init__(self, factor: float | None, window: int = 200, warmup: int = 1) -> None:
        self.factor = float(factor or 0.0)
        self.window, self.warmup = window, warmup
        self._recent: dict[str, deque[float]] = {}
        self._typical: dict[str, float] = {}

    def check(self, name: str, value: float) -> str | None:
        if not math.isfinite(value):
            return f"became {value}"
        if not self.factor:
            return None
        recent = self._recent.setdefault(name, deque(maxlen=self.window))
        typical = self._typical.get(name)
        if typical is not None and abs(value) > self.factor * typical:
            return f"reached {value:.4g}, over {self.factor:g} times its typical magnitude {typical:.4g}"
        recent.append(abs(value))
        if len(recent) >= self.warmup:
            level = max(median(recent), 1.0)
            self._typical[name] = level if typical is None else min(typical, level)
        return None

    def limit(self, name: str) -> float:
        """The magnitude above which ``name``'s next value counts as divergent (inf while the
        growth check is off or has no typical level yet); NaN and inf always count."""
        typical = self._typical.get(name)
        return self.factor * typical if self.factor and typical is not None else math.inf

    def check_loss(self, term: str, loss: torch.Tensor, terms: dict[str, torch.Tensor], step: int, saved: tuple[Path, int] | None) -> None:
        """Raise ``TrainingDivergedError`` when ``loss`` (``term`` is ``d_loss`` or ``g_loss``) of
        step ``step`` is divergent; the message says what is safe on disk (``saved``: the run
        directory and the step of its last checkpoint) and how to go on."""
        why = self.check(term, float(loss.detach()))
        if why is None:
            return
        detail = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
        if saved is not None:
            run_dir, saved_step = saved
            kept = f"the last checkpoint in {run_dir} (step {saved_step}) is intact"
            fix = f"resume it with a lower learning rate: asvae-kit train --resume --out {run_dir} --lr LR"
        else:
            kept = "no checkpoint of this run was written"
            fix = "train again with a lower optim.lr (--lr)"
        raise TrainingDivergedError(
            f"the {_WHAT.get(term, term)} ({term}) {why} at step {step} ({detail}); training stopped and {kept}. "
            f"To go on, {fix}, or check the data for extreme values (diverge_factor=0 turns the growth check off)."
        )
