"""Posterior and likelihood objects returned by encoders and decoders (docs/design.md §2).

Plugin authors return these from their networks' ``forward``; divergences rely only on the
protocol (``rsample()``, ``mean``, ``log_prob``, ``kl_standard_normal``), so any object with the
same methods works too.  ``log_prob`` always returns one value per sample: ``[B]``, summed over
every other dimension.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "GaussianPosterior",
    "ImplicitPosterior",
    "BernoulliLikelihood",
    "GaussianLikelihood",
    "LaplaceLikelihood",
    "standard_normal_log_prob",
]

_LOG_2PI = math.log(2.0 * math.pi)


def _sum_per_sample(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(dim=1)


def _f32(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Half-precision tensors (from autocast) as float32, so densities summed over hundreds of
    pixels keep their precision; float32 and float64 stay as they are."""
    return tuple(t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in tensors)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) per sample, ``[B]``."""
    (z,) = _f32(z)
    return _sum_per_sample(-0.5 * (z.pow(2) + _LOG_2PI))


def _gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    x, mean, log_scale = _f32(x, mean, log_scale)
    return _sum_per_sample(-0.5 * ((x - mean) * torch.exp(-log_scale)).pow(2) - log_scale - 0.5 * _LOG_2PI)


class GaussianPosterior:
    """Diagonal Gaussian q(z|x) = N(mean, diag(exp(logvar)))."""

    has_rsample = True

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor) -> None:
        if mean.shape != logvar.shape:
            raise ValueError(f"GaussianPosterior: mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} differ in shape")
        self.mean = mean
        self.logvar = logvar

    @property
    def stddev(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def rsample(self) -> torch.Tensor:
        return self.mean + self.stddev * torch.randn_like(self.mean)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return _gaussian_log_prob(z, self.mean, 0.5 * self.logvar)

    def kl_standard_normal(self) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) in closed form, per sample."""
        mean, logvar = _f32(self.mean, self.logvar)
        return _sum_per_sample(0.5 * (torch.exp(logvar) + mean.pow(2) - 1.0 - logvar))


class ImplicitPosterior:
    """A posterior known only through a sample ``z`` (noise in, sample out).

    Its density is not available, so ``log_prob`` uses a Gaussian around ``mean`` (the network's
    output for zero noise) with standard deviation ``exp(log_scale)``, as docs/design.md §1 states.
    It has no closed-form KL: the ``elbo`` divergence refuses it.
    """

    has_rsample = True

    def __init__(self, z: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor | float = 0.0) -> None:
        if z.shape != mean.shape:
            raise ValueError(f"ImplicitPosterior: z {tuple(z.shape)} and mean {tuple(mean.shape)} differ in shape")
        self.z = z
        self.mean = mean
        # a float becomes a tensor by a fill on the device, not a host copy (which a CUDA graph cannot record)
        self.log_scale = log_scale.to(device=mean.device, dtype=mean.dtype) if torch.is_tensor(log_scale) else mean.new_full((), float(log_scale))

    def rsample(self) -> torch.Tensor:
        """The sample the network drew (reparameterised: a function of its input noise)."""
        return self.z

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return _gaussian_log_prob(z, self.mean, self.log_scale.expand_as(self.mean))


class BernoulliLikelihood:
    """Independent Bernoulli pixels p(x|z) from ``logits``; x may be any value in [0, 1]."""

    has_rsample = False

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits

    def rows(self, index: slice) -> "BernoulliLikelihood":
        """The likelihood of rows ``index`` alone (optional protocol: lets a stacked decoder call be
        scored one half at a time without scoring the other)."""
        return BernoulliLikelihood(self.logits[index])

    @property
    def mean(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        logits, x = _f32(self.logits, x)
        return -_sum_per_sample(F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), reduction="none"))

    def sample(self) -> torch.Tensor:
        return torch.bernoulli(self.mean)

    def rsample(self) -> torch.Tensor:
        raise NotImplementedError(
            "a Bernoulli likelihood has no reparameterised sample; use its mean (the default, "
            "sample_x=false) or a 'gaussian'/'laplace' decoder likelihood"
        )


class _LocationScaleLikelihood:
    """Independent pixels with location ``mean`` (in [0, 1]) and scale ``exp(log_scale)``."""

    has_rsample = True

    def __init__(self, mean: torch.Tensor, log_scale: torch.Tensor) -> None:
        self.mean = mean
        self.log_scale = log_scale.expand_as(mean)

    def rows(self, index: slice) -> "_LocationScaleLikelihood":
        """The likelihood of rows ``index`` alone (see ``BernoulliLikelihood.rows``)."""
        return type(self)(self.mean[index], self.log_scale[index])


class GaussianLikelihood(_LocationScaleLikelihood):
    """Independent Gaussian pixels N(mean, exp(log_scale)^2); ``mean`` is already in [0, 1]."""

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return _gaussian_log_prob(x, self.mean, self.log_scale)

    def rsample(self) -> torch.Tensor:
        return self.mean + torch.exp(self.log_scale) * torch.randn_like(self.mean)


class LaplaceLikelihood(_LocationScaleLikelihood):
    """Independent Laplace pixels with location ``mean`` (in [0, 1]) and scale exp(log_scale)."""

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        x, mean, log_scale = _f32(x, self.mean, self.log_scale)
        return _sum_per_sample(-(x - mean).abs() * torch.exp(-log_scale) - log_scale - math.log(2.0))

    def rsample(self) -> torch.Tensor:
        u = torch.rand_like(self.mean).clamp(1e-6, 1 - 1e-6) - 0.5
        return self.mean - torch.exp(self.log_scale) * torch.sign(u) * torch.log1p(-2.0 * u.abs())
