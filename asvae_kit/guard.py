"""Catching a run that diverges before it overwrites a good checkpoint.

Besides NaN and infinity, a loss whose magnitude grows past ``factor`` times its typical level
counts as divergence: at ``--lr 1.0`` the losses jump from about 50 to 1e13 within a few steps,
long before they overflow.  The typical level is the lowest running median (over ``window``
steps, floored at 1) the loss has had since its first ``warmup`` steps, so a loss that climbs
slowly cannot drag its own yardstick up with it.  ``factor = 0`` switches the check off.

The guard runs on every loss of every step, so its yardstick is kept sorted as values come and go
(no sort per step), and the step number and last checkpoint for its message are set once per step
(``at``).
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from pathlib import Path

import torch

from .errors import TrainingDivergedError

__all__ = ["DivergenceGuard"]

_WHAT = {"d_loss": "discriminator loss", "g_loss": "encoder/decoder loss"}


class _RunningMedian:
    """The median of the last ``size`` values, kept sorted as they come and go."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.values: deque[float] = deque()
        self.ordered: list[float] = []

    def __len__(self) -> int:
        return len(self.values)

    def add(self, value: float) -> None:
        if len(self.values) == self.size:
            del self.ordered[bisect_left(self.ordered, self.values.popleft())]
        self.values.append(value)
        insort(self.ordered, value)

    def median(self) -> float:
        """As ``statistics.median``: the middle value, or the mean of the two middle ones."""
        n, data = len(self.ordered), self.ordered
        return data[n // 2] if n % 2 == 1 else (data[n // 2 - 1] + data[n // 2]) / 2


class DivergenceGuard:
    """Per-loss yardsticks; ``check`` returns why a value is divergent, or ``None``."""

    def __init__(self, factor: float | None, window: int = 200, warmup: int = 1) -> None:
        self.factor = float(factor or 0.0)
        self.window, self.warmup = window, warmup
        self._recent: dict[str, _RunningMedian] = {}
        self._typical: dict[str, float] = {}
        #: (step number, (run directory, step) of the last checkpoint or None) for the message
        self.where: tuple[int, tuple[Path, int] | None] = (0, None)

    def at(self, step: int, saved: tuple[Path, int] | None = None) -> None:
        """The losses checked from now on are step ``step``'s; ``saved``: the run directory and
        step of the last checkpoint (both only go into the message of a divergence)."""
        self.where = (step, saved)

    def check(self, name: str, value: float) -> str | None:
        if not math.isfinite(value):
            return f"became {value}"
        if not self.factor:
            return None
        recent = self._recent.get(name)
        if recent is None:
            recent = self._recent[name] = _RunningMedian(self.window)
        typical = self._typical.get(name)
        if typical is not None and abs(value) > self.factor * typical:
            return f"reached {value:.4g}, over {self.factor:g} times its typical magnitude {typical:.4g}"
        recent.add(abs(value))
        if len(recent) >= self.warmup:
            level = max(recent.median(), 1.0)
            self._typical[name] = level if typical is None else min(typical, level)
        return None

    def limit(self, name: str) -> float:
        """The magnitude above which ``name``'s next value counts as divergent (inf while the
        growth check is off or has no typical level yet); NaN and inf always count."""
        typical = self._typical.get(name)
        return self.factor * typical if self.factor and typical is not None else math.inf

    def check_loss(
        self, term: str, loss: torch.Tensor, terms: dict[str, torch.Tensor], step: int | None = None, saved: tuple[Path, int] | None = None
    ) -> None:
        """Raise ``TrainingDivergedError`` when ``loss`` (``term`` is ``d_loss`` or ``g_loss``) of
        step ``step`` is divergent; the message says what is safe on disk (``saved``: the run
        directory and the step of its last checkpoint) and how to go on.  Without ``step``, both
        are what ``at`` set."""
        why = self.check(term, float(loss.detach()))
        if why is None:
            return
        if step is None:
            step, saved = self.where
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
