"""Built-in joint discriminators T(x, z): ``joint-mlp``, ``joint-resnet`` and ``joint-dcgan``.

Each has an x branch, a z branch and a joint trunk giving ``features(x, z) -> [B, D]``, and a
``head = nn.Linear(D, num_heads)``; the divergence reads the head through the fused op.
Regularisers (all off by default): ``dropout`` in the trunk (in ``joint-dcgan`` also after every
convolution), ``input_noise`` (instance noise: Gaussian noise of that standard deviation added to
x while training) and ``spectral_norm``.  None uses batch statistics (no BatchNorm): the
divergences stack several batches into one call, and each row's logit must depend on its own
(x, z) alone.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

import asvae_kit
from asvae_kit.checks import check_bool

from .blocks import ConvDownStack, DCGANDownStack, Network, check_fraction, check_hidden, check_input, check_positive_int, mlp

__all__ = ["JointMLPDiscriminator", "JointResNetDiscriminator", "JointDCGANDiscriminator"]


class _JointDiscriminator(Network):
    """features(x, z) = trunk([x_branch(x), z_branch(z)]); forward = head(features).

    Subclasses give the x branch: ``make_x_branch(data_shape, hidden) -> (module, out_features)``.
    """

    name = "joint"

    @property
    def label(self) -> str:  # type: ignore[override]
        """Names this network in its error messages."""
        return f"discriminator {self.name!r}"

    def __init__(
        self, data_shape: Sequence[int], latent_dim: int, num_heads: int, hidden: Sequence[int], regularisation: dict[str, Any],
        make_x_branch: Callable[[tuple[int, int, int], list[int]], tuple[nn.Module, int]],
    ) -> None:
        super().__init__(data_shape, latent_dim)
        hidden = check_hidden(hidden, self.label)
        dropout, input_noise = (check_fraction(regularisation[k], k, self.label) for k in ("dropout", "input_noise"))
        self.input_noise = input_noise
        self.x_branch, x_features = make_x_branch(self.data_shape, hidden)
        self.z_branch = mlp([latent_dim, hidden[0]], final_activation=True)
        self.trunk = mlp([x_features + hidden[0], *hidden], final_activation=True, dropout=dropout)
        self.num_heads = check_positive_int(num_heads, "num_heads", self.label)
        self.head = nn.Linear(hidden[-1], num_heads)
        if check_bool(regularisation["spectral_norm"], f"{self.label}: spectral_norm"):
            for module in list(self.modules()):
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    nn.utils.parametrizations.spectral_norm(module)

    def features(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        check_input(x, self.data_shape, "images", self.label)
        check_input(z, (self.latent_dim,), "codes", self.label)
        if self.training and self.input_noise > 0:  # instance noise: blurs the two image sets' supports together
            x = x + self.input_noise * torch.randn_like(x)
        return self.trunk(torch.cat([self.x_branch(x), self.z_branch(z)], dim=1))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x, z))


class JointMLPDiscriminator(_JointDiscriminator):
    """Fully connected x branch, z branch and trunk."""

    name = "joint-mlp"

    def __init__(
        self, *, data_shape: Sequence[int], latent_dim: int, num_heads: int,  # from the builder
        hidden: Sequence[int] = (512, 256),
        dropout: float = 0.0, input_noise: float = 0.0, spectral_norm: bool = False,
    ) -> None:
        def x_branch(shape: tuple[int, int, int], widths: list[int]) -> tuple[nn.Module, int]:
            c, h, w = shape
            return nn.Sequential(nn.Flatten(), mlp([c * h * w, widths[0]], final_activation=True)), widths[0]

        regularisation = dict(dropout=dropout, input_noise=input_noise, spectral_norm=spectral_norm)
        super().__init__(data_shape, latent_dim, num_heads, hidden, regularisation, x_branch)


class JointResNetDiscriminator(_JointDiscriminator):
    """Convolutional residual x branch (down to 4x4), fully connected z branch and trunk."""

    name = "joint-resnet"

    def __init__(
        self, *, data_shape: Sequence[int], latent_dim: int, num_heads: int,  # from the builder
        width: int = 32,
        hidden: Sequence[int] = (512, 256),
        dropout: float = 0.0, input_noise: float = 0.0, spectral_norm: bool = False,
    ) -> None:
        width = check_positive_int(width, "width", self.label)

        def x_branch(shape: tuple[int, int, int], widths: list[int]) -> tuple[nn.Module, int]:
            stack = ConvDownStack(shape[0], shape[1], width)
            return stack, stack.out_features

        regularisation = dict(dropout=dropout, input_noise=input_noise, spectral_norm=spectral_norm)
        super().__init__(data_shape, latent_dim, num_heads, hidden, regularisation, x_branch)


class JointDCGANDiscriminator(_JointDiscriminator):
    """ALI-style joint discriminator: a DCGAN x path (the ``dcgan`` encoder's 4x4 stride-2
    convolutions with LeakyReLU(0.2), channels doubling from ``width``; ``dropout`` after each, as
    ALI puts dropout on every layer), a fully connected z path, and the two concatenated into a
    fully connected joint trunk (``hidden``).  Never BatchNorm: the divergences stack several
    segments into one call, and a row's logit must depend on its own (x, z) only."""

    name = "joint-dcgan"

    def __init__(
        self, *, data_shape: Sequence[int], latent_dim: int, num_heads: int,  # from the builder
        width: int = 32,
        hidden: Sequence[int] = (512, 256),
        dropout: float = 0.0, input_noise: float = 0.0, spectral_norm: bool = False,
    ) -> None:
        width = check_positive_int(width, "width", self.label)
        x_dropout = check_fraction(dropout, "dropout", self.label)

        def x_branch(shape: tuple[int, int, int], widths: list[int]) -> tuple[nn.Module, int]:
            stack = DCGANDownStack(shape[0], shape[1], width, dropout=x_dropout)
            return stack, stack.out_features

        regularisation = dict(dropout=dropout, input_noise=input_noise, spectral_norm=spectral_norm)
        super().__init__(data_shape, latent_dim, num_heads, hidden, regularisation, x_branch)


@asvae_kit.hookimpl
def register_discriminators(register):
    register("joint-mlp", JointMLPDiscriminator, description="T(x, z): fully connected x branch, z branch and joint trunk; one logit per head.")
    register("joint-resnet", JointResNetDiscriminator, description="T(x, z): convolutional residual x branch, fully connected z branch and joint trunk; one logit per head.")
    register(
        "joint-dcgan",
        JointDCGANDiscriminator,
        description="T(x, z) as in ALI: DCGAN strided-convolution x branch, fully connected z branch, "
        "concatenated into a joint trunk; one logit per head.",
    )
