"""The two optimizers of a run: one for the encoder and decoder, one for the discriminator.

Both are Adam with ``config['optim']``'s betas and weight decay; the discriminator's learning rate
is ``optim.disc_lr`` when set, else ``optim.lr``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["make_optimizers", "set_learning_rates"]


def make_optimizers(optim: dict[str, Any], encoder: nn.Module, decoder: nn.Module, discriminator: nn.Module | None) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
    """``(encoder/decoder optimizer, discriminator optimizer or None)`` for the resolved ``optim`` config."""
    betas = tuple(optim["betas"])
    gen = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=optim["lr"], betas=betas, weight_decay=optim["weight_decay"])
    disc = None
    if discriminator is not None:
        disc = torch.optim.Adam(discriminator.parameters(), lr=optim["disc_lr"] or optim["lr"], betas=betas, weight_decay=optim["weight_decay"])
    return gen, disc


def set_learning_rates(optim: dict[str, Any], gen: torch.optim.Optimizer, disc: torch.optim.Optimizer | None) -> None:
    """Give both optimizers the learning rates of ``optim`` (e.g. after loading older state)."""
    for group in gen.param_groups:
        group["lr"] = optim["lr"]
    for group in disc.param_groups if disc is not None else ():
        group["lr"] = optim["disc_lr"] or optim["lr"]
