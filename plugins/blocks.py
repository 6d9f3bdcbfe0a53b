"""Network building blocks shared by the built-in encoders, decoders and discriminators."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from asvae_kit.checks import check_int, check_number
from asvae_kit.errors import ConfigError, UnsupportedShapeError
from asvae_kit.plugins.shapes import check_data_shape, check_latent_dim, downsample_sizes

__all__ = ["mlp", "ResBlock", "ConvDownStack", "ConvUpStack", "DCGANDownStack", "DCGANUpStack", "dcgan_sizes", "dcgan_widths", "check_input", "channel_widths", "check_positive_int", "check_hidden"]


def mlp(sizes: Sequence[int], *, final_activation: bool = False, slope: float = 0.2, dropout: float = 0.0) -> nn.Sequential:
    """Linear layers of the given sizes with LeakyReLU between them."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or final_activation:
            layers.append(nn.LeakyReLU(slope))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def check_fraction(value: object, key: str, component: str) -> float:
    """A number in [0, 1) (dropout rates, noise levels); ``ConfigError`` otherwise."""
    return float(check_number(value, f"{component}: {key}", low=0, high=1))


def check_input(t: torch.Tensor, expected: Sequence[int], what: str, component: str) -> None:
    """Raise ``UnsupportedShapeError`` unless ``t`` is ``[B, *expected]``."""
    if t.dim() != len(expected) + 1 or tuple(t.shape[1:]) != tuple(expected):
        raise UnsupportedShapeError(
            f"{component} expects {what} of shape [B, {', '.join(map(str, expected))}], got {list(t.shape)}"
        )


def channel_widths(width: int, steps: int, max_mult: int = 4) -> list[int]:
    """Channel count before each of ``steps`` downsamplings and after the last: w, 2w, 4w, 4w..."""
    return [width * min(2**i, max_mult) for i in range(steps + 1)]


class ResBlock(nn.Module):
    """Pre-activation residual block: (LeakyReLU, conv3x3) x 2 plus a (1x1 conv) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = (
            nn.Identity() if (c_in == c_out and stride == 1) else nn.Conv2d(c_in, c_out, 1, stride=stride)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.leaky_relu(x, 0.2))
        h = self.conv2(F.leaky_relu(h, 0.2))
        return self.shortcut(x) + h


class ConvDownStack(nn.Module):
    """Images [B, C, S, S] -> flat features [B, c_last * 4 * 4] through strided residual blocks."""

    def __init__(self, channels: int, size: int, width: int) -> None:
        super().__init__()
        sizes = downsample_sizes(size)
        widths = channel_widths(width, len(sizes) - 1)
        self.stem = nn.Conv2d(channels, widths[0], 3, padding=1)
        self.blocks = nn.Sequential(*(ResBlock(widths[i], widths[i + 1], stride=2) for i in range(len(sizes) - 1)))
        self.out_features = widths[-1] * sizes[-1] * sizes[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.blocks(self.stem(x)), 0.2).flatten(1)


class ConvUpStack(nn.Module):
    """Flat codes [B, in_features] -> [B, out_channels, S, S] via 4x4 and nearest upsampling."""

    def __init__(self, in_features: int, out_channels: int, size: int, width: int) -> None:
        super().__init__()
        sizes = downsample_sizes(size)[::-1]  # e.g. [4, 7, 14, 28]
        widths = channel_widths(width, len(sizes) - 1)[::-1]
        self.sizes = sizes
        self.top = widths[0]
        self.fc = nn.Linear(in_features, widths[0] * sizes[0] * sizes[0])
        self.blocks = nn.ModuleList(ResBlock(widths[i], widths[i + 1]) for i in range(len(sizes) - 1))
        self.out = nn.Conv2d(widths[-1], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], self.top, self.sizes[0], self.sizes[0])
        for block, size in zip(self.blocks, self.sizes[1:]):
            h = block(F.interpolate(h, size=(size, size), mode="nearest"))
        return self.out(F.leaky_relu(h, 0.2))


class Network(nn.Module):
    """Base of the built-in networks: checks and keeps the image shape and latent size, naming
    the network (``label``, e.g. ``"encoder 'mlp'"``) in every error."""

    label = "network"

    def __init__(self, data_shape: Sequence[int], latent_dim: int) -> None:
        super().__init__()
        self.data_shape = check_data_shape(data_shape, self.label)
        self.latent_dim = check_latent_dim(latent_dim, self.label)


def check_positive_int(value: object, key: str, component: str) -> int:
    return check_int(value, f"{component}: {key}")


def check_hidden(hidden: object, component: str) -> list[int]:
    """A non-empty list of positive layer widths."""
    if isinstance(hidden, int):
        hidden = [hidden]
    if not isinstance(hidden, (list, tuple)) or not hidden:
        raise ConfigError(f"{component}: hidden must be a non-empty list of layer widths, got {hidden!r}")
    return [check_positive_int(h, "hidden", component) for h in hidden]


def dcgan_sizes(size: int) -> list[int]:
    """Spatial sizes of the DCGAN stacks: ``size`` halved while it is even and above 4.

    28 -> [28, 14, 7], 32 -> [32, 16, 8, 4], 64 -> [64, 32, 16, 8, 4], 8 -> [8, 4].  A 4x4
    stride-2 convolution with padding 1 halves an even size exactly (and the transposed one
    doubles it), so no layer needs odd padding or cropping; 7 is odd, so 28x28 stops at 7x7.
    """
    sizes = [size]
    while sizes[-1] > 4 and sizes[-1] % 2 == 0:
        sizes.append(sizes[-1] // 2)
    return sizes


def dcgan_widths(width: int, convs: int) -> list[int]:
    """Output channels of each strided convolution: ``width`` doubling per layer (32, 64, 128, 256)."""
    return [width * 2**i for i in range(convs)]


class DCGANDownStack(nn.Module):
    """Images [B, C, S, S] -> flat features [B, out_features]: 4x4 stride-2 convolutions, each
    followed by (BatchNorm when ``batch_norm``, except on the first as in DCGAN,) LeakyReLU(0.2)
    and (Dropout when ``dropout`` > 0), down the sizes of ``dcgan_sizes``, with the channel
    width doubling from ``width``."""

    def __init__(self, channels: int, size: int, width: int, *, batch_norm: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        sizes = dcgan_sizes(size)
        widths = dcgan_widths(width, len(sizes) - 1)
        layers: list[nn.Module] = []
        c_in = channels
        for i, c_out in enumerate(widths):
            norm = batch_norm and i > 0
            layers.append(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=not norm))  # BatchNorm has its own shift
            if norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            c_in = c_out
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.sizes, self.widths = sizes, widths
        self.out_features = widths[-1] * sizes[-1] * sizes[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


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
