"""One step of the training algorithm (DESIGN.md §1, "One algorithm step").

``n_critic`` discriminator updates on the step's joint samples, the generator outputs detached;
then one encoder/decoder update on the divergence's objective with the discriminator frozen.
Under data parallelism the gradients are averaged across processes before each optimizer step.
The divergence estimator decides the losses; this module only orders the updates.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .distributed import DistContext, average_gradients
from .joint_batch import JointBatch

__all__ = ["AlgorithmStep", "LossCheck"]

#: ``check(term, loss, terms)``: raises when ``loss`` (``"d_loss"`` or ``"g_loss"``) is divergent.
LossCheck = Callable[[str, torch.Tensor, dict[str, torch.Tensor]], None]


class AlgorithmStep:
    """``step(x)`` runs one algorithm step on the data batch ``x`` and returns the detached terms."""

    def __init__(
        self,
        *,
        encoder: nn.Module,
        decoder: nn.Module,
        discriminator: nn.Module | None,
        divergence: Any,
        gen_optimizer: torch.optim.Optimizer,
        disc_optimizer: torch.optim.Optimizer | None,
        config: dict[str, Any],
        dist: DistContext,
        check_loss: LossCheck,
    ) -> None:
        self.encoder, self.decoder, self.discriminator, self.divergence = encoder, decoder, discriminator, divergence
        self.gen_optimizer, self.disc_optimizer = gen_optimizer, disc_optimizer
        self.config, self.dist, self.check_loss = config, dist, check_loss

    def make_batch(self, x: torch.Tensor) -> JointBatch:
        """The step's joint samples for the data batch ``x`` (prior codes drawn here)."""
        return JointBatch(x, self.encoder, self.decoder, int(self.config["latent_dim"]), sample_x=self.config["sample_x"])

    def discriminator_step(self, batch: JointBatch) -> dict[str, torch.Tensor]:
        """``n_critic`` discriminator updates on the batch's samples, generator outputs detached."""
        terms: dict[str, torch.Tensor] = {}
        if self.discriminator is None or self.disc_optimizer is None:
            return terms
        for _ in range(self.config["optim"]["n_critic"]):
            d_loss, terms = self.divergence.discriminator_loss(self.discriminator, batch)
            self.check_loss("d_loss", d_loss, terms)
            self.disc_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            average_gradients(self.discriminator.parameters(), self.dist)
            self.disc_optimizer.step()
        return terms

    def generator_step(self, batch: JointBatch) -> dict[str, torch.Tensor]:
        """One encoder/decoder update on the divergence's objective, the discriminator frozen."""
        if self.discriminator is not None:
            self.discriminator.requires_grad_(False)
        try:
            g_loss, terms = self.divergence.generator_loss(self.discriminator, batch)
            self.check_loss("g_loss", g_loss, terms)
            self.gen_optimizer.zero_grad(set_to_none=True)
            g_loss.backward()
            average_gradients((p for group in self.gen_optimizer.param_groups for p in group["params"]), self.dist)
            self.gen_optimizer.step()
        finally:
            if self.discriminator is not None:
                self.discriminator.requires_grad_(True)
        return terms

    def step(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Discriminator update(s), then the encoder/decoder update, on the data batch ``x``."""
        for module in (self.encoder, self.decoder, self.discriminator):
            if module is not None:
                module.train()
        batch = self.make_batch(x)
        terms = self.discriminator_step(batch)
        terms.update(self.generator_step(batch))
        return terms
