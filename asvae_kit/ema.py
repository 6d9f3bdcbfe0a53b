"""An exponential moving average (EMA) of the encoder's and decoder's weights.

With ``ema = decay`` in the config, every encoder/decoder update is followed by
``average = decay * average + (1 - decay) * weights``.  Samples, reconstructions, evaluation and
the weights a run exposes (``model.safetensors``'s ``encoder.*``/``decoder.*``) use the average;
training goes on from the raw weights, which the checkpoint keeps too (``train.encoder.*``...), so
resuming is exact.  Averaged weights are a standard lever for adversarial sample quality.
"""

from __future__ import annotations

import contextlib
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
        self._depth = 0

    @property
    def swapped(self) -> bool:
        """The modules hold the average right now (inside ``applied()``)."""
        return self._depth > 0

    @torch.no_grad()
    def update(self, weight: torch.Tensor | None = None) -> None:
        """Move the average towards the current weights (integer buffers are copied).  ``weight``:
        the step's size as a device tensor (a CUDA graph's, which may be 0), else ``1 - decay``."""
        step = 1.0 - self.decay if weight is None else weight
        for name, module in self.modules.items():
            average = self.average[name]
            for k, v in module.state_dict().items():
                if v.is_floating_point():
                    average[k].lerp_(v, step)
                else:
                    average[k].copy_(v)

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
