"""Built-in encoders q(z|x): ``mlp`` (Gaussian), ``mlp-implicit`` (noise in), ``resnet`` and ``dcgan`` (Gaussian)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

import asvae_kit
from asvae_kit.checks import check_bool
from asvae_kit.distributions import GaussianPosterior, ImplicitPosterior

from .blocks import ConvDownStack, DCGANDownStack, Network, check_hidden, check_input, check_positive_int, mlp

__all__ = ["MLPEncoder", "ImplicitMLPEncoder", "ResNetEncoder", "DCGANEncoder"]

LOGVAR_MIN, LOGVAR_MAX = -12.0, 8.0


class _GaussianHead(nn.Module):
    """Features -> (mean, logvar) of a diagonal Gaussian, logvar clamped to a sane range."""

    def __init__(self, in_features: int, latent_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 2 * latent_dim)

    def forward(self, h: torch.Tensor) -> GaussianPosterior:
        mean, logvar = self.linear(h).chunk(2, dim=-1)
        return GaussianPosterior(mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX))


class MLPEncoder(Network):
    """Fully connected Gaussian encoder: flatten, LeakyReLU MLP, (mean, logvar)."""

    label = "encoder 'mlp'"  # names this network in its error messages

    def __init__(self, *, data_shape: Sequence[int], latent_dim: int, hidden: Sequence[int] = (512, 256)) -> None:
        super().__init__(data_shape, latent_dim)
        hidden = check_hidden(hidden, self.label)
        c, h, w = self.data_shape
        self.body = mlp([c * h * w, *hidden], final_activation=True)
        self.head = _GaussianHead(hidden[-1], latent_dim)

    def forward(self, x: torch.Tensor) -> GaussianPosterior:
        check_input(x, self.data_shape, "images", self.label)
        return self.head(self.body(x.flatten(1)))


class ImplicitMLPEncoder(Network):
    """Implicit encoder: z = net(x, eps), eps ~ N(0, I); no closed-form density.

    ``log q(z|x)`` is taken as a Gaussian around ``mean = net(x, 0)`` with a learned diagonal
    standard deviation (``ImplicitPosterior``), which is what the ``asvae`` objective's ℓ_z uses.
    """

    label = "encoder 'mlp-implicit'"  # names this network in its error messages

    def __init__(
        self, *, data_shape: Sequence[int], latent_dim: int,  # from the builder
        hidden: Sequence[int] = (512, 256),
        noise_dim: int = 16,
        init_log_scale: float = 0.0,
    ) -> None:
        super().__init__(data_shape, latent_dim)
        self.noise_dim = check_positive_int(noise_dim, "noise_dim", self.label)
        hidden = check_hidden(hidden, self.label)
        c, h, w = self.data_shape
        self.net = mlp([c * h * w + noise_dim, *hidden, latent_dim])
        self.log_scale = nn.Parameter(torch.full((latent_dim,), float(init_log_scale)))

    def forward(self, x: torch.Tensor) -> ImplicitPosterior:
        check_input(x, self.data_shape, "images", self.label)
        flat = x.flatten(1)
        eps = torch.randn(flat.shape[0], self.noise_dim, device=x.device, dtype=x.dtype)
        both = self.net(torch.cat([flat.repeat(2, 1), torch.cat([eps, torch.zeros_like(eps)])], dim=1))
        z, mean = both.chunk(2, dim=0)
        return ImplicitPosterior(z, mean, self.log_scale)


class ResNetEncoder(Network):
    """Convolutional residual Gaussian encoder: strided residual blocks down to 4x4, then (mean, logvar)."""

    label = "encoder 'resnet'"  # names this network in its error messages

    def __init__(self, *, data_shape: Sequence[int], latent_dim: int, width: int = 32) -> None:
        super().__init__(data_shape, latent_dim)
        width = check_positive_int(width, "width", self.label)
        c, size, _ = self.data_shape
        self.body = ConvDownStack(c, size, width)
        self.head = _GaussianHead(self.body.out_features, latent_dim)

    def forward(self, x: torch.Tensor) -> GaussianPosterior:
        check_input(x, self.data_shape, "images", self.label)
        return self.head(self.body(x))


class DCGANEncoder(Network):
    """DCGAN-style Gaussian encoder: 4x4 stride-2 convolutions (LeakyReLU 0.2) halving the image
    while its size is even and above 4 (28 -> 14 -> 7; 32 -> 16 -> 8 -> 4; 64 -> ... -> 4;
    8 -> 4), channels doubling from ``width`` (32, 64, ...), then a linear (mean, logvar).

    No normalisation by default (``batch_norm=False``).  BatchNorm is allowed in an encoder, but
    with it a code depends on the other images of the call, training and eval mode encode the
    same image differently (running statistics lag an encoder that the adversarial terms keep
    moving), and a batch of one image cannot be normalised; at these depths (2 to 4 layers) the
    unnormalised network trains without it and its step is cheaper.  ``batch_norm=True`` puts
    BatchNorm after every convolution but the first, as DCGAN does.
    """

    label = "encoder 'dcgan'"  # names this network in its error messages

    def __init__(self, *, data_shape: Sequence[int], latent_dim: int, width: int = 32, batch_norm: bool = False) -> None:
        super().__init__(data_shape, latent_dim)
        width = check_positive_int(width, "width", self.label)
        batch_norm = check_bool(batch_norm, f"{self.label}: batch_norm")
        c, size, _ = self.data_shape
        self.body = DCGANDownStack(c, size, width, batch_norm=batch_norm)
        self.head = _GaussianHead(self.body.out_features, latent_dim)

    def forward(self, x: torch.Tensor) -> GaussianPosterior:
        check_input(x, self.data_shape, "images", self.label)
        return self.head(self.body(x))


@asvae_kit.hookimpl
def register_encoders(register):
    register("mlp", MLPEncoder, description="Gaussian q(z|x): fully connected LeakyReLU network giving mean and log-variance.")
    register(
        "mlp-implicit",
        ImplicitMLPEncoder,
        description="Implicit q(z|x): z = net(x, noise). log q(z|x) is a Gaussian around net(x, 0) "
        "with a learned diagonal scale. No closed-form KL, so it pairs with avb/ali/asvae, not elbo.",
    )
    register("resnet", ResNetEncoder, description="Gaussian q(z|x): convolutional residual network down to 4x4.")
    register(
        "dcgan",
        DCGANEncoder,
        description="Gaussian q(z|x): DCGAN-style 4x4 stride-2 convolutions (LeakyReLU, channels doubling "
        "from width) down to 7x7 or 4x4, then a linear mean and log-variance; optional batch_norm.",
    )
