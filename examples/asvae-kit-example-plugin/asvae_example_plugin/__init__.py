"""An example third-party asvae-kit plugin.

It registers one encoder (``wide-mlp``: a Gaussian MLP encoder with a configurable width and
depth) and one preset (``wide-asvae``) that uses it.  Install it with ``pip install .`` and it
shows up in ``asvae-kit list encoder`` and ``asvae-kit plugins``; nothing is imported by hand.
"""

from __future__ import annotations

from torch import nn

import asvae_kit
from asvae_kit.distributions import GaussianPosterior


class WideMLPEncoder(nn.Module):
    """q(z|x) = N(mean(x), diag(exp(logvar(x)))) from a ReLU MLP of ``depth`` layers of ``width``."""

    def __init__(self, *, data_shape, latent_dim, width: int = 128, depth: int = 2):
        super().__init__()
        c, h, w = data_shape
        layers, size = [nn.Flatten()], c * h * w
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        layers.append(nn.Linear(size, 2 * latent_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        mean, logvar = self.net(x).chunk(2, dim=-1)
        return GaussianPosterior(mean, logvar.clamp(-12, 8))


@asvae_kit.hookimpl
def register_encoders(register):
    register("wide-mlp", WideMLPEncoder, description="Gaussian MLP encoder with configurable width and depth (example plugin).")


@asvae_kit.hookimpl
def register_presets(register):
    register(
        "wide-asvae",
        lambda: {
            "encoder": {"name": "wide-mlp", "width": 64},
            "decoder": {"name": "mlp", "hidden": [64]},
            "discriminator": {"name": "joint-mlp", "hidden": [64, 32]},
            "divergence": "asvae",
            "data": "digits",
            "latent_dim": 8,
            "steps": 500,
        },
        description="ASVAE with the example plugin's wide-mlp encoder.",
    )
