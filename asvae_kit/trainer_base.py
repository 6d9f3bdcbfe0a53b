"""The ``Trainer``'s base class: using the trained networks (samples, interpolations, posterior
means, reconstructions, and the weights and modes they are used in).

``TrainerBase`` is the part of ``Trainer``'s public API that only reads the networks; it needs
``encoder``, ``decoder``, ``latent_dim``, ``data_shape`` and ``device`` from the class it is mixed
into, and uses the weight average (``ema``) when there is one.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, ContextManager, Iterator

import torch
from torch import nn

from .checks import check_int
from .errors import ConfigError
from .images import slerp
from .memory import check_memory

__all__ = ["TrainerBase", "NETWORKS"]

#: The networks of a run, in the order their weights are saved (prefix ``encoder.`` ...).
NETWORKS = ("encoder", "decoder", "discriminator")


class TrainerBase:
    encoder: nn.Module
    decoder: nn.Module
    discriminator: nn.Module | None
    latent_dim: int
    data_shape: tuple[int, int, int]
    device: torch.device
    ema: Any = None  # an ``asvae_kit.ema.EMA`` when the run averages its weights
    _raw_weights = False  # inside ``weights("raw")``: ``averaged()`` keeps the training weights

    def averaged(self) -> ContextManager[None]:
        """The weights inference uses for the duration: the EMA average when the run keeps one
        (and the raw training weights inside ``weights("raw")``)."""
        if self.ema is None or self._raw_weights:
            return contextlib.nullcontext()
        return self.ema.applied()

    @contextlib.contextmanager
    def weights(self, which: str = "average") -> Iterator[None]:
        """``"average"``: the same as ``averaged()``.  ``"raw"``: the training weights for the
        duration, for the encoder and decoder called directly and through ``sample``/``encode``/
        ``reconstruct`` alike (what a discriminator-based metric needs: the weights the
        discriminator was trained against)."""
        if which == "average":
            with self.averaged():
                yield
            return
        if which != "raw":
            raise ValueError(f"weights(which) is 'average' or 'raw', got {which!r}")
        if self.ema is not None and self.ema.swapped:
            raise RuntimeError("weights('raw') inside trainer.averaged(): the modules hold the average; leave averaged() first")
        previous, self._raw_weights = self._raw_weights, True
        try:
            yield
        finally:
            self._raw_weights = previous

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Every network in eval mode for the duration; after it, each module (submodules
        included) is back in the mode it was in, so inference in the middle of training changes
        nothing of it (dropout, instance noise, batch statistics)."""
        modes = [(m, m.training) for _, network in self.networks() for m in network.modules()]
        self.eval_mode()
        try:
            yield
        finally:
            for module, mode in modes:
                module.training = mode

    def networks(self) -> Iterator[tuple[str, nn.Module]]:
        """``(name, module)`` for each network present (the discriminator only when trained)."""
        for name in NETWORKS:
            module = getattr(self, name)
            if module is not None:
                yield name, module

    def eval_mode(self) -> None:
        """Put every network in eval mode (``fit`` switches them back to train mode each step;
        ``evaluating()`` restores the modes it found)."""
        for _, module in self.networks():
            module.eval()

    def _check_sample_memory(self, n: int, what: str, *, code_copies: int = 1) -> None:
        """Refuse ``n`` samples whose codes and images cannot fit in memory (``ConfigError``, a
        ``ValueError``, in one line with both figures): ``code_copies`` float32 ``[n, latent_dim]``
        codes on the host and ``[n, C, H, W]`` images on the trainer's device, checked before
        either is drawn (``asvae_kit.memory``), so ``asvae-kit sample -n 10000000`` fails at once
        instead of in swap."""
        codes = 4 * n * self.latent_dim * code_copies
        images = 4 * n * math.prod(self.data_shape)
        fix = "ask for fewer images (and write several files if you need more)"
        if self.device.type == "cuda":
            check_memory(codes, what, fix, error=ConfigError)
            check_memory(images, what, fix, error=ConfigError, device=self.device)
        else:
            check_memory(codes + images, what, fix, error=ConfigError)

    @torch.no_grad()
    def sample(self, n: int, *, seed: int | None = None, z: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` images ``[n, C, H, W]`` (the decoder's mean at z ~ p(z)); ``seed`` makes them repeatable.
        ``n`` whose codes and images cannot fit in memory is refused before any is drawn."""
        check_int(n, "sample(n): n", error=ValueError)
        self._check_sample_memory(n, f"sample(n={n}) of {'x'.join(map(str, self.data_shape))} images", code_copies=int(z is None))
        with self.evaluating(), self.averaged():
            return self._decode(n, seed, z)

    def _decode(self, n: int, seed: int | None, z: torch.Tensor | None) -> torch.Tensor:
        if z is None:
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            z = torch.randn(n, self.latent_dim, generator=generator)
        elif tuple(z.shape) != (n, self.latent_dim):
            raise ValueError(f"sample(n={n}, z=...): z must have shape [{n}, {self.latent_dim}], got {list(z.shape)}")
        out: torch.Tensor | None = None  # filled chunk by chunk: the images are held once, not twice as by torch.cat
        start = 0
        for chunk in z.split(512):
            mean = self.decoder(chunk.to(self.device)).mean
            if out is None:
                out = mean.new_empty((n, *mean.shape[1:]))
            out[start : start + len(mean)] = mean
            start += len(mean)
        return out if out is not None else torch.empty((0, *self.data_shape), device=self.device)

    @torch.no_grad()
    def interpolate(self, rows: int = 8, steps: int = 10, *, seed: int | None = None) -> torch.Tensor:
        """``rows * steps`` images: each row decodes a spherical path between two prior draws."""
        check_int(rows, "interpolate(rows=...)", error=ValueError)
        check_int(steps, "interpolate(steps=...)", minimum=2, error=ValueError)
        # the ends, slerp's temporaries and the path: about four code-sized tensors, then the images
        self._check_sample_memory(rows * steps, f"interpolate(rows={rows}, steps={steps})", code_copies=4)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        ends = torch.randn(2, rows, self.latent_dim, generator=generator)
        return self.sample(rows * steps, z=slerp(ends[0], ends[1], steps))

    def _as_input(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected an image tensor [B, C, H, W], got {type(x).__name__}")
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"images have shape {list(x.shape)}, expected [B, {', '.join(map(str, self.data_shape))}]")
        return x.to(self.device, dtype=torch.float32)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean E[z|x], ``[B, latent_dim]``."""
        with self.evaluating(), self.averaged():
            return self.encoder(self._as_input(x)).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """decoder(encode(x)).mean, ``[B, C, H, W]``."""
        with self.evaluating(), self.averaged():
            return self.decoder(self.encoder(self._as_input(x)).mean).mean
