"""An exponential moving average (EMA) of the encoder's and decoder's weights.

With ``ema = decay`` in the config, every encoder/decoder update is followed by
``average = d_t * average + (1 - d_t) * weights`` with a warm-up: the decay at update ``t``
(``t`` = the number of updates so far, 0 for the first) is ``d_t = min(decay, (1 + t) / (10 + t))``.
The first update moves the average 90% of the way to the weights, and the decay reaches
``decay`` after about ``(10 * decay - 1) / (1 - decay)`` updates (8991 for 0.999), so the average
forgets its random initialisation instead of carrying it for thousands of steps.  The update count
is checkpointed with the run (``AlgorithmStep.state_dict``), so a resumed run warms up exactly
as an unbroken one.

Samples, reconstructions, evaluation (but for metrics that read the discriminator; see
``asvae_kit.evaluation``) and the weights a run exposes (``model.safetensors``'s
``encoder.*``/``decoder.*``) use the average; training goes on from the raw weights, which the
checkpoint keeps too (``train.encoder.*``...), so resuming is exact.  Averaged weights are a
standard lever for adversarial sample quality.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import nn

__all__ = ["EMA", "RAW_PREFIX"]

#: Prefix of the raw (training) weights in a checkpoint of a run with EMA.
RAW_PREFIX = "train."


class EMA:
    """The averaged copy of ``modules`` (name -> module); ``applied()`` swaps it in for a while."""

    def __init__(self, modules: dict[str, nn.Module], decay: float) -> None:
        self.modules, self.decay = modules, float(decay)
        self.average = {name: {k: v.detach().clone() for k, v in m.state_dict().items()} for name, m in modules.items()}
        #: updates made so far (t); ``update()`` counts its own, a CUDA graph's caller counts its replays
        self.updates = 0
        self._depth = 0
        # (average, the module's own tensor, floating?) for every entry, paired once: an update then
        # walks no module.  The modules' tensors keep their identity through training, load_state_dict
        # and applied(); a network moved to another device afterwards needs a new EMA.
        self._pairs = [
            (self.average[name][k], v, v.is_floating_point())
            for name, m in modules.items() for k, v in m.state_dict(keep_vars=True).items()
        ]

    def decay_at(self, t: int) -> float:
        """The decay of update number ``t`` (0 for the first): ``min(decay, (1 + t) / (10 + t))``."""
        return min(self.decay, (1.0 + t) / (10.0 + t))

    def next_weight(self) -> float:
        """How far the next update moves the average towards the weights: ``1 - decay_at(updates)``."""
        return 1.0 - self.decay_at(self.updates)

    @property
    def warm_count(self) -> int:
        """The first update count at which the decay is ``decay`` itself (the warm-up is over)."""
        t = max(0, math.ceil((10.0 * self.decay - 1.0) / (1.0 - self.decay) - 1e-6))
        while self.decay_at(t) < self.decay:
            t += 1
        return t

    @property
    def swapped(self) -> bool:
        """The modules hold the average right now (inside ``applied()``)."""
        return self._depth > 0

    @torch.no_grad()
    def update(self, weight: torch.Tensor | None = None) -> None:
        """Move the average towards the current weights (integer buffers are copied).

        Without ``weight`` the step is ``next_weight()`` (the warmed-up ``1 - d_t``) and the update
        is counted.  ``weight`` is the step as a device tensor that a CUDA graph reads (it may be
        0, for a skipped step); the graph's owner writes ``next_weight()`` into it on the host
        before each replay and counts the replays (``StepGraph``), since a replay runs no Python."""
        step = self.next_weight() if weight is None else weight
        for average, v, floating in self._pairs:
            if floating:
                average.lerp_(v, step)
            else:
                average.copy_(v)
        if weight is None:
            self.updates += 1

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the modules for the duration (re-entrant); the raw ones after."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        raw = {name: {k: v.detach().clone() for k, v in m.state_dict().items()} for name, m in self.modules.items()}
        self._depth = 1
        try:
            for name, module in self.modules.items():
                module.load_state_dict(self.average[name])
            yield
        finally:
            self._depth = 0
            for name, module in self.modules.items():
                module.load_state_dict(raw[name])

    def tensors(self) -> dict[str, torch.Tensor]:
        """The averaged weights, flat, prefixed by module name (as a checkpoint stores them)."""
        return {f"{name}.{k}": v.detach().cpu().contiguous() for name, avg in self.average.items() for k, v in avg.items()}

    @torch.no_grad()
    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, average in self.average.items():
            for k, v in average.items():
                v.copy_(tensors[f"{name}.{k}"])
