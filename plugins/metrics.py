"""Built-in metrics: ``reconstruction-mse``, ``elbo-bound`` and ``objective``.

A metric is ``fn(trainer, data) -> dict[str, float]`` with ``data`` an image tensor on the
trainer's device; it runs under ``torch.no_grad`` with the networks in eval mode.
"""

from __future__ import annotations

import torch

import asvae_kit
from asvae_kit.divergence import JointBatch

__all__ = ["reconstruction_mse", "elbo_bound", "objective"]


def _chunks(data: torch.Tensor, size: int = 256):
    return data.split(size)


def reconstruction_mse(trainer, data: torch.Tensor) -> dict[str, float]:
    """Per-pixel MSE of ``reconstruct(x)`` (posterior mean through the decoder's mean), next to the
    MSE of predicting the mean image for every x: a model that learned anything beats the latter."""
    total = 0.0
    for x in _chunks(data):
        total += (trainer.reconstruct(x) - x).pow(2).sum().item()
    mse = total / data.numel()
    baseline = (data - data.mean(dim=0, keepdim=True)).pow(2).mean().item()
    return {"recon_mse": mse, "mean_image_mse": baseline}


def elbo_bound(trainer, data: torch.Tensor) -> dict[str, float]:
    """The single-sample ELBO E_q[log p(x|z)] - KL(q(z|x)||p(z)) in nats per image; only for
    encoders with a closed-form KL (empty for implicit encoders)."""
    total_ll, total_kl = 0.0, 0.0
    for x in _chunks(data):
        posterior = trainer.encoder(x)
        if not hasattr(posterior, "kl_standard_normal"):
            return {}
        total_ll += trainer.decoder(posterior.rsample()).log_prob(x).sum().item()
        total_kl += posterior.kl_standard_normal().sum().item()
    n = len(data)
    return {"elbo": (total_ll - total_kl) / n, "log_px": total_ll / n, "kl": total_kl / n}


def objective(trainer, data: torch.Tensor) -> dict[str, float]:
    """The divergence's encoder/decoder objective terms (``g_loss``, ``l_x``, ``l_z``, ``skl``...)
    averaged over ``data``, with the current discriminator."""
    sums: dict[str, float] = {}
    n = 0
    for x in _chunks(data):
        batch = JointBatch(x, trainer.encoder, trainer.decoder, trainer.latent_dim, sample_x=trainer.config.get("sample_x", False))
        _, diagnostics = trainer.divergence.generator_loss(trainer.discriminator, batch)
        for k, v in diagnostics.items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(x)
        n += len(x)
    return {f"objective_{k}": v / n for k, v in sums.items()}


@asvae_kit.hookimpl
def register_metrics(register):
    register("reconstruction-mse", reconstruction_mse, description="Per-pixel reconstruction MSE, with the mean-image MSE as a baseline.")
    register("elbo-bound", elbo_bound, description="Single-sample ELBO, log p(x|z) and KL in nats per image (Gaussian encoders only).")
    register("objective", objective, description="The divergence's encoder/decoder objective terms (l_x, l_z, skl...) on the evaluation data.")
