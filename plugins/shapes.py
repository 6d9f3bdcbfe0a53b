"""Shape checks shared by the built-in networks."""

from __future__ import annotations

from typing import Sequence

from asvae_kit.checks import check_int
from asvae_kit.errors import UnsupportedShapeError

__all__ = ["SUPPORTED_SIZES", "SUPPORTED_CHANNELS", "check_data_shape", "check_latent_dim", "downsample_sizes"]

SUPPORTED_SIZES = (8, 28, 32, 64)
SUPPORTED_CHANNELS = (1, 3)


def check_data_shape(data_shape: Sequence[int], component: str) -> tuple[int, int, int]:
    """Return ``(C, H, W)`` or raise ``UnsupportedShapeError`` naming what ``component`` serves."""
    try:
        c, h, w = (int(v) for v in data_shape)
    except (TypeError, ValueError):
        raise UnsupportedShapeError(f"{component}: data_shape must be (C, H, W), got {data_shape!r}") from None
    if c not in SUPPORTED_CHANNELS or h != w or h not in SUPPORTED_SIZES:
        sizes = ", ".join(f"{s}x{s}" for s in SUPPORTED_SIZES)
        raise UnsupportedShapeError(
            f"{component} cannot serve images of shape (C, H, W) = ({c}, {h}, {w}); it serves "
            f"{' or '.join(map(str, SUPPORTED_CHANNELS))} channels at {sizes}. Resize the data "
            "(e.g. the image-folder dataset's size option) or register a network for this shape."
        )
    return c, h, w


def check_latent_dim(latent_dim: int, component: str) -> int:
    return check_int(latent_dim, f"{component}: latent_dim", error=UnsupportedShapeError)


def downsample_sizes(size: int, smallest: int = 4) -> list[int]:
    """Spatial sizes from ``size`` halving (rounding up) until ``smallest``: 28 -> [28, 14, 7, 4]."""
    sizes = [size]
    while sizes[-1] > smallest:
        sizes.append((sizes[-1] + 1) // 2)
    return sizes
