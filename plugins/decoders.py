"""Built-in decoders p(x|z): ``mlp``, ``resnet`` and ``dcgan``, each with a Bernoulli, Gaussian or Laplace likelihood."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

import asvae_kit
from asvae_kit.checks import check_bool, check_choice, check_number
from asvae_kit.distributions import BernoulliLikelihood, GaussianLikelihood, LaplaceLikelihood

from .blocks import ConvUpStack, DCGANUpStack, Network, check_hidden, check_input, check_positive_int, mlp

__all__ = ["MLPDecoder", "ResNetDecoder", "DCGANDecoder", "LIKELIHOODS"]

LIKELIHOODS = ("bernoulli", "gaussian", "laplace")


class _LikelihoodHead(nn.Module):
    """Network output [B, C, H, W] -> likelihood object; owns the learned per-channel scale."""

    def __init__(self, likelihood: str, channels: int, init_scale: float, component: str) -> None:
        super().__init__()
        check_choice(likelihood, LIKELIHOODS, f"{component}: likelihood")
        check_number(init_scale, f"{component}: init_scale", low=0, low_inclusive=False)
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


class MLPDecoder(Network):
    """Fully connected decoder: LeakyReLU MLP from z to every pixel's likelihood parameter."""

    label = "decoder 'mlp'"  # names this network in its error messages

    def __init__(
        self, *, data_shape: Sequence[int], latent_dim: int,  # from the builder
        hidden: Sequence[int] = (256, 512),
        likelihood: str = "bernoulli",
        init_scale: float = 0.1,
    ) -> None:
        super().__init__(data_shape, latent_dim)
        hidden = check_hidden(hidden, self.label)
        c, h, w = self.data_shape
        self.net = mlp([latent_dim, *hidden, c * h * w])
        self.likelihood = _LikelihoodHead(likelihood, c, init_scale, self.label)

    def forward(self, z: torch.Tensor):
        check_input(z, (self.latent_dim,), "codes", self.label)
        return self.likelihood(self.net(z).view(z.shape[0], *self.data_shape))


class ResNetDecoder(Network):
    """Convolutional residual decoder: 4x4 map from z, nearest upsampling + residual blocks to full size."""

    label = "decoder 'resnet'"  # names this network in its error messages

    def __init__(
        self, *, data_shape: Sequence[int], latent_dim: int,  # from the builder
        width: int = 32,
        likelihood: str = "bernoulli",
        init_scale: float = 0.1,
    ) -> None:
        super().__init__(data_shape, latent_dim)
        width = check_positive_int(width, "width", self.label)
        c, size, _ = self.data_shape
        self.net = ConvUpStack(latent_dim, c, size, width)
        self.likelihood = _LikelihoodHead(likelihood, c, init_scale, self.label)

    def forward(self, z: torch.Tensor):
        check_input(z, (self.latent_dim,), "codes", self.label)
        return self.likelihood(self.net(z))


class DCGANDecoder(Network):
    """DCGAN-style decoder: a linear map from z to the smallest feature map (7x7 at 28x28, 4x4
    at 8, 32 and 64), then 4x4 stride-2 transposed convolutions (LeakyReLU 0.2) up to the image
    size, channels halving to ``width``: the mirror of encoder ``dcgan``.

    No normalisation by default (``batch_norm=False``).  Without batch statistics each image
    depends on its own code alone, so ASVAE decodes z_q and z_p in one call (a BatchNorm decoder
    is called once per half: a dearer step), sampling one image gives the same picture as
    sampling it among 64, and eval mode equals train mode.  ``batch_norm=True`` adds BatchNorm
    before every activation, as DCGAN's generator has.
    """

    label = "decoder 'dcgan'"  # names this network in its error messages

    def __init__(
        self, *, data_shape: Sequence[int], latent_dim: int,  # from the builder
        width: int = 32,
        likelihood: str = "bernoulli",
        init_scale: float = 0.1,
        batch_norm: bool = False,
    ) -> None:
        super().__init__(data_shape, latent_dim)
        width = check_positive_int(width, "width", self.label)
        batch_norm = check_bool(batch_norm, f"{self.label}: batch_norm")
        c, size, _ = self.data_shape
        self.net = DCGANUpStack(latent_dim, c, size, width, batch_norm=batch_norm)
        self.likelihood = _LikelihoodHead(likelihood, c, init_scale, self.label)

    def forward(self, z: torch.Tensor):
        check_input(z, (self.latent_dim,), "codes", self.label)
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
    register(
        "dcgan",
        DCGANDecoder,
        description="DCGAN-style p(x|z): linear to a 7x7 or 4x4 map, then 4x4 stride-2 transposed convolutions "
        "(LeakyReLU) to full size; optional batch_norm; likelihood 'bernoulli' (default), 'gaussian' or 'laplace'.",
    )
