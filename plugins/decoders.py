"""Built-in decoders p(x|z): ``mlp`` and ``resnet``, each with a Bernoulli, Gaussian or Laplace likelihood."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

import asvae_kit
from asvae_kit.distributions import BernoulliLikelihood, GaussianLikelihood, LaplaceLikelihood
from asvae_kit.errors import ConfigError
from asvae_kit.names import close_matches
from asvae_kit.shapes import check_data_shape, check_latent_dim

from .blocks import ConvUpStack, check_hidden, check_input, check_positive_int, mlp

__all__ = ["MLPDecoder", "ResNetDecoder", "LIKELIHOODS"]

LIKELIHOODS = ("bernoulli", "gaussian", "laplace")


class _LikelihoodHead(nn.Module):
    """Network output [B, C, H, W] -> likelihood object; owns the learned per-channel scale."""

    def __init__(self, likelihood: str, channels: int, init_scale: float, component: str) -> None:
        super().__init__()
        if likelihood not in LIKELIHOODS:
            hint = close_matches(str(likelihood), LIKELIHOODS)
            extra = f" Did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"{component}: likelihood {likelihood!r} is not one of {', '.join(LIKELIHOODS)}.{extra}")
        if not init_scale > 0:
            raise ConfigError(f"{component}: init_scale must be positive, got {init_scale!r}")
        self.likelihood = likelihood
        if likelihood != "bernoulli":
            self.log_scale = nn.Parameter(torch.full((channels, 1, 1), math.log(init_scale)))

    def forward(self, out: torch.Tensor):
        if self.likelihood == "bernoulli":
            return BernoulliLikelihood(out)
        # Floor the scale at exp(-6) so that a perfect fit cannot send the log-likelihood to infinity.
        log_scale = self.log_scale.clamp(min=-6.0).unsqueeze(0).expand_as(out)
        cls = GaussianLikelihood if self.likelihood == "gaussian" else LaplaceLikelihood
        return cls(torch.sigmoid(out), log_scale)


class MLPDecoder(nn.Module):
    """Fully connected decoder: LeakyReLU MLP from z to every pixel's likelihood parameter."""

    def __init__(
        self,
        *,
        data_shape: Sequence[int],
        latent_dim: int,
        hidden: Sequence[int] = (256, 512),
        likelihood: str = "bernoulli",
        init_scale: float = 0.1,
    ) -> None:
        super().__init__()
        self.data_shape = check_data_shape(data_shape, "decoder 'mlp'")
        self.latent_dim = check_latent_dim(latent_dim, "decoder 'mlp'")
        hidden = check_hidden(hidden, "decoder 'mlp'")
        c, h, w = self.data_shape
        self.net = mlp([latent_dim, *hidden, c * h * w])
        self.likelihood = _LikelihoodHead(likelihood, c, init_scale, "decoder 'mlp'")

    def forward(self, z: torch.Tensor):
        check_input(z, (self.latent_dim,), "codes", "decoder 'mlp'")
        return self.likelihood(self.net(z).view(z.shape[0], *self.data_shape))


class ResNetDecoder(nn.Module):
    """Convolutional residual decoder: 4x4 map from z, nearest upsampling + residual blocks to full size."""

    def __init__(
        self,
        *,
        data_shape: Sequence[int],
        latent_dim: int,
        width: int = 32,
        likelihood: str = "bernoulli",
        init_scale: float = 0.1,
    ) -> None:
        super().__init__()
        self.data_shape = check_data_shape(data_shape, "decoder 'resnet'")
        self.latent_dim = check_latent_dim(latent_dim, "decoder 'resnet'")
        width = check_positive_int(width, "width", "decoder 'resnet'")
        c, size, _ = self.data_shape
        self.net = ConvUpStack(latent_dim, c, size, width)
        self.likelihood = _LikelihoodHead(likelihood, c, init_scale, "decoder 'resnet'")

    def forward(self, z: torch.Tensor):
        check_input(z, (self.latent_dim,), "codes", "decoder 'resnet'")
        return self.likelihood(self.net(z))


@asvae_kit.hookimpl
def register_decoders(register):
    register(
        "mlp",
        MLPDecoder,
        description="Fully connected p(x|z); likelihood 'bernoulli' (default), 'gaussian' or 'laplace' "
        "(the last two with a learned per-channel scale).",
    )
    register(
        "resnet",
        ResNetDecoder,
        description="Convolutional residual p(x|z) from a 4x4 map with nearest upsampling; likelihood "
        "'bernoulli' (default), 'gaussian' or 'laplace'.",
    )
