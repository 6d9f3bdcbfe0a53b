"""What a divergence estimator sees: one step's joint samples, computed lazily.

A ``JointBatch`` holds the data batch x and the prior draws z_p, z_m of one algorithm step
(docs/design.md §1, "One algorithm step") and computes, on first access only, what a divergence asks
for: z_q ~ q(z|x), x_p ~ p(x|z_p), log p(x|z_q), log q(z_p|x_p), the analytic KL.  A plain VAE
therefore never runs the decoder on prior codes, and ALI never reconstructs.

What a divergence does with these samples (its protocol, and the discriminator-head statistics
it reads) is ``asvae_kit.divergence``'s.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import ConfigError

__all__ = ["JointBatch"]


class computed_once:
    """``functools.cached_property`` without its lock (Python 3.11's takes one on every first
    access, which ``torch.compile`` cannot trace): the value is computed on first access and
    stored in the instance's ``__dict__``, which later accesses read directly."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.name, self.__doc__ = fn, fn.__name__, fn.__doc__

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is None:
            return self
        value = self.fn(instance)
        instance.__dict__[self.name] = value
        return value


class JointBatch:
    """One step's samples from q(x)q(z|x), p(z)p(x|z) and q(x)p(z), computed on demand."""

    def __init__(
        self,
        x: torch.Tensor,
        encoder: nn.Module,
        decoder: nn.Module,
        latent_dim: int,
        *,
        z_p: torch.Tensor | None = None,
        z_m: torch.Tensor | None = None,
        sample_x: bool = False,
        decode_together: bool = False,
    ) -> None:
        self.x = x
        self.encoder = encoder
        self.decoder = decoder
        self.sample_x = sample_x
        self.decode_together = decode_together  # one decoder call for z_q and z_p (see ``_decoded``)
        shape = (x.shape[0], latent_dim)
        self.z_p = torch.randn(shape, device=x.device, dtype=x.dtype) if z_p is None else z_p
        self.z_m = torch.randn(shape, device=x.device, dtype=x.dtype) if z_m is None else z_m

    @computed_once
    def posterior(self) -> Any:
        """q(z|x) for the data batch."""
        return self.encoder(self.x)

    @computed_once
    def z_q(self) -> torch.Tensor:
        """z_q ~ q(z|x), reparameterised."""
        return self.posterior.rsample()

    @computed_once
    def _decoded(self) -> Any:
        """decoder(cat(z_q, z_p)): p(x|z_q) and p(x|z_p) from one decoder call.  A divergence that
        uses both ``log_px`` and ``x_p`` (``decodes_both = True``, as ASVAE's) gets them this way:
        half the decoder launches on a GPU.  Networks without batch statistics (docs/design.md §2)
        give each row the same value either way."""
        return self.decoder(torch.cat([self.z_q, self.z_p]))

    @computed_once
    def prior_likelihood(self) -> Any:
        """p(x|z_p) for the prior codes."""
        if self.decode_together:
            return _Rows(self._decoded, self.x.shape[0], None)
        return self.decoder(self.z_p)

    @computed_once
    def x_p(self) -> torch.Tensor:
        """x_p ~ p(x|z_p): the likelihood's mean, or a reparameterised sample when sample_x."""
        lik = self.prior_likelihood
        if not self.sample_x:
            return lik.mean
        if not getattr(lik, "has_rsample", hasattr(lik, "rsample")):
            raise ConfigError(
                f"sample_x=true needs a decoder likelihood with a reparameterised sample; "
                f"{type(lik).__name__} has none. Use decoder.likelihood='gaussian' or 'laplace', or sample_x=false."
            )
        return lik.rsample()

    @computed_once
    def log_px(self) -> torch.Tensor:
        """log p(x|z_q) per sample, ``[B]``."""
        if self.decode_together:
            return _Rows(self._decoded, 0, self.x.shape[0]).log_prob(self.x)
        return self.decoder(self.z_q).log_prob(self.x)

    @computed_once
    def log_qz(self) -> torch.Tensor:
        """log q(z_p|x_p) per sample, ``[B]``."""
        return self.encoder(self.x_p).log_prob(self.z_p)

    @computed_once
    def kl(self) -> torch.Tensor:
        """KL(q(z|x) || p(z)) in closed form, per sample; needs an explicit (Gaussian) encoder."""
        post = self.posterior
        if not hasattr(post, "kl_standard_normal"):
            raise ConfigError(
                f"this divergence needs the closed-form KL of q(z|x), but the encoder returns a "
                f"{type(post).__name__}, which has none. Use a Gaussian encoder ('mlp', 'resnet') or an "
                "adversarial divergence ('avb', 'asvae')."
            )
        return post.kl_standard_normal()


class _Rows:
    """Rows ``start:stop`` of a likelihood over a stacked batch, itself a likelihood (``mean``,
    ``log_prob``, ``rsample``): what ``JointBatch._decoded`` splits into p(x|z_q) and p(x|z_p)."""

    def __init__(self, likelihood: Any, start: int, stop: int | None) -> None:
        self.likelihood, self.rows = likelihood, slice(start, stop)
        self.has_rsample = getattr(likelihood, "has_rsample", hasattr(likelihood, "rsample"))

    @property
    def mean(self) -> torch.Tensor:
        return self.likelihood.mean[self.rows]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self.likelihood, "rows"):  # the built-in likelihoods slice their parameters
            return self.likelihood.rows(self.rows).log_prob(x)
        # a plugin's likelihood: log_prob is per row, so the other rows are scored against copies of
        # x's (detached) rows and dropped: values it accepts (a Bernoulli's 0/1 pixels), in x's dtype
        total = self.likelihood.mean.shape[0]
        start, stop, _ = self.rows.indices(total)
        pad = x.detach()
        full = torch.cat([_tile_rows(pad, start), x, _tile_rows(pad, total - stop)])
        return self.likelihood.log_prob(full)[self.rows]

    def rsample(self) -> torch.Tensor:
        return self.likelihood.rsample()[self.rows]


def _tile_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` rows cut from ``x`` repeated along its first axis (``n`` may be 0)."""
    reps = -(-n // max(x.shape[0], 1))
    return x.repeat(reps, *([1] * (x.dim() - 1)))[:n]
