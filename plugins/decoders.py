"""Built-in decoders p(x|z): ``mlp``, ``resnet`` and ``dcgan``, each with a Bernoulli, Gaussian or Laplace likelihood."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

import asvae_kit
from asvae_kit.checks import check_bool, check_number
from asvae_kit.distributions import BernoulliLikelihood, GaussianLikelihood, LaplaceLikelihood
from asvae_kit.errors import ConfigError
from asvae_kit.names import did_you_mean

from .blocks import ConvUpStack, Network, check_hidden, check_input, check_positive_int, mlp
from .encoders import dcgan_sizes, dcgan_widths

__all__ = ["MLPDecoder", "ResNetDecoder", "DCGANDecoder", "DCGANUpStack", "LIKELIHOODS"]

LIKELIHOODS = ("bernoulli", "gaussian", "laplace")


class _LikelihoodHead(nn.Module):
    """Network output [B, C, H, W] -> likelihood object; owns the learned per-channel scale."""

    def __init__(self, likelihood: str, channels: int, init_scale: float, component: str) -> None:
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ConfigError(f"{component}: likelihood {likelihood!r} is not one of {', '.join(LIKELIHOODS)}.{did_you_mean(str(likelihood), LIKELIHOODS)}")
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


class DCGANUpStack(nn.Module):
    """Flat codes [B, in_features] -> [B, out_channels, S, S], the mirror of ``DCGANDownStack``:
    a linear layer to the smallest map (64 x 7 x 7 at 28x28 with width 32), then 4x4 stride-2
    transposed convolutions doubling it back up (7 -> 14 -> 28), channels halving down to
    ``width`` and the last one giving ``out_channels`` (the likelihood's parameter, unactivated).
    Each hidden layer is followed by (BatchNorm when ``batch_norm``,) LeakyReLU(0.2)."""

    def __init__(self, in_features: int, out_channels: int, size: int, width: int, *, batch_norm: bool = False) -> None:
        super().__init__()
        sizes = dcgan_sizes(size)[::-1]  # e.g. [7, 14, 28]
        widths = dcgan_widths(width, len(sizes) - 1)[::-1]  # e.g. [64, 32]
        self.shape0 = (widths[0], sizes[0], sizes[0])
        self.fc = nn.Linear(in_features, widths[0] * sizes[0] * sizes[0], bias=not batch_norm)
        layers: list[nn.Module] = []
        outs = [*widths[1:], out_channels]
        for i, (c_in, c_out) in enumerate(zip(widths, outs)):
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_in))
            hidden = i < len(outs) - 1  # a BatchNorm follows it, which has its own shift
            layers += [nn.LeakyReLU(0.2), nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=not (batch_norm and hidden))]
        self.net = nn.Sequential(*layers)
        self.sizes, self.widths = sizes, widths

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(z.shape[0], *self.shape0))


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
