"""Built-in joint discriminators T(x, z): ``joint-mlp`` and ``joint-resnet``.

Both have an x branch, a z branch and a joint trunk giving ``features(x, z) -> [B, D]``, and a
``head = nn.Linear(D, num_heads)``; the divergence reads the head through the fused op.
Regularisers (all off by default): ``dropout`` in the trunk, ``input_noise`` (instance noise:
Gaussian noise of that standard deviation added to x while training) and ``spectral_norm``.  Neither
uses batch statistics (no BatchNorm): the divergences stack several batches into one call, and
each row's logit must depend on its own (x, z) alone.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

import asvae_kit
from asvae_kit.shapes import check_data_shape, check_latent_dim

from asvae_kit.errors import ConfigError

from .blocks import ConvDownStack, check_fraction, check_hidden, check_input, check_positive_int, mlp

__all__ = ["JointMLPDiscriminator", "JointResNetDiscriminator"]


class _JointDiscriminator(nn.Module):
    """features(x, z) = trunk([x_branch(x), z_branch(z)]); forward = head(features)."""

    name = "joint"

    def _check_shapes(self, data_shape: Sequence[int], latent_dim: int, hidden: Sequence[int]) -> list[int]:
        """Validate and store ``data_shape``/``latent_dim``; return the checked ``hidden`` widths."""
        component = f"discriminator {self.name!r}"
        self.data_shape = check_data_shape(data_shape, component)
        self.latent_dim = check_latent_dim(latent_dim, component)
        return check_hidden(hidden, component)

    def _init_joint(
        self, x_branch: nn.Module, x_features: int, latent_dim: int, hidden: list[int], num_heads: int, regularisation: dict
    ) -> None:
        component = f"discriminator {self.name!r}"
        dropout, input_noise = (check_fraction(regularisation[k], k, component) for k in ("dropout", "input_noise"))
        self.input_noise = input_noise
        self.x_branch = x_branch
        self.z_branch = mlp([latent_dim, hidden[0]], final_activation=True)
        self.trunk = mlp([x_features + hidden[0], *hidden], final_activation=True, dropout=dropout)
        self.num_heads = check_positive_int(num_heads, "num_heads", component)
        self.head = nn.Linear(hidden[-1], num_heads)
        if not isinstance(regularisation["spectral_norm"], bool):
            raise ConfigError(f"{component}: spectral_norm must be true or false, got {regularisation['spectral_norm']!r}")
        if regularisation["spectral_norm"]:
            for module in list(self.modules()):
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    nn.utils.parametrizations.spectral_norm(module)

    def features(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        component = f"discriminator {self.name!r}"
        check_input(x, self.data_shape, "images", component)
        check_input(z, (self.latent_dim,), "codes", component)
        if self.training and self.input_noise > 0:  # instance noise: blurs the two image sets' supports together
            x = x + self.input_noise * torch.randn_like(x)
        return self.trunk(torch.cat([self.x_branch(x), self.z_branch(z)], dim=1))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x, z))


class JointMLPDiscriminator(_JointDiscriminator):
    """Fully connected x branch, z branch and trunk."""

    name = "joint-mlp"

    def __init__(
        self,
        *,
        data_shape: Sequence[int],
        latent_dim: int,
        num_heads: int,
        hidden: Sequence[int] = (512, 256),
        dropout: float = 0.0,
        input_noise: float = 0.0,
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        hidden = self._check_shapes(data_shape, latent_dim, hidden)
        c, h, w = self.data_shape
        x_branch = nn.Sequential(nn.Flatten(), mlp([c * h * w, hidden[0]], final_activation=True))
        self._init_joint(x_branch, hidden[0], latent_dim, hidden, num_heads, dict(dropout=dropout, input_noise=input_noise, spectral_norm=spectral_norm))


class JointResNetDiscriminator(_JointDiscriminator):
    """Convolutional residual x branch (down to 4x4), fully connected z branch and trunk."""

    name = "joint-resnet"

    def __init__(
        self,
        *,
        data_shape: Sequence[int],
        latent_dim: int,
        num_heads: int,
        width: int = 32,
        hidden: Sequence[int] = (512, 256),
        dropout: float = 0.0,
        input_noise: float = 0.0,
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        hidden = self._check_shapes(data_shape, latent_dim, hidden)
        width = check_positive_int(width, "width", f"discriminator {self.name!r}")
        c, size, _ = self.data_shape
        x_branch = ConvDownStack(c, size, width)
        self._init_joint(
            x_branch, x_branch.out_features, latent_dim, hidden, num_heads, dict(dropout=dropout, input_noise=input_noise, spectral_norm=spectral_norm)
        )


@asvae_kit.hookimpl
def register_discriminators(register):
    register("joint-mlp", JointMLPDiscriminator, description="T(x, z): fully connected x branch, z branch and joint trunk; one logit per head.")
    register(
        "joint-resnet",
        JointResNetDiscriminator,
        description="T(x, z): convolutional residual x branch, fully connected z branch and joint trunk; one logit per head.",
    )
