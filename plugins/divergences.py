"""Built-in divergence estimators: ``elbo`` (VAE), ``avb``, ``ali`` and ``asvae``.

Notation (docs/design.md §1; docs/divergences.md): segments q = (x, z_q) from the encoder joint,
p = (x_p, z_p) from the decoder joint, m = (x, z_m) from the product of marginals q(x)p(z).
Every adversarial loss below is a linear combination of the ``[S, K, 3]`` statistics
``(mean l, mean softplus(l), mean softplus(-l))`` that ``head_statistics`` returns through the
fused op, so the Triton kernel serves the whole family.
"""

from __future__ import annotations

import torch
from torch import nn

import asvae_kit
from asvae_kit.checks import check_bool, check_choice, check_number
from asvae_kit.errors import ConfigError
from asvae_kit.divergence import MEAN, SOFTPLUS, SOFTPLUS_NEG, head_statistics
from asvae_kit.joint_batch import JointBatch

__all__ = ["ELBO", "AVB", "ALI", "ASVAE", "ASVAE_CRITICS"]

#: ASVAE's two critics (docs/divergences.md): ``two-head`` (g and f against q(x)p(z)) and ``joint``
#: (one ALI-style head T on the encoder joint against the decoder joint).
ASVAE_CRITICS = ("two-head", "joint")

Diagnostics = dict[str, torch.Tensor]


def _check_weight(value: object, key: str, divergence: str) -> float:
    return float(check_number(value, f"divergence {divergence!r}: {key}", low=0, expected="a non-negative number"))


def _detached(**terms: torch.Tensor) -> Diagnostics:
    return {k: v.detach() for k, v in terms.items()}


class ELBO:
    """Plain VAE: maximise L_x = E_q[log p(x|z)] - KL(q(z|x) || p(z)) with the analytic KL."""

    num_heads = 0

    def __init__(self, beta: float = 1.0) -> None:
        self.beta = _check_weight(beta, "beta", "elbo")

    def discriminator_loss(self, discriminator: nn.Module, batch: JointBatch) -> tuple[torch.Tensor, Diagnostics]:
        raise ConfigError("divergence 'elbo' has no discriminator to train (num_heads = 0)")

    def generator_loss(self, discriminator: nn.Module | None, batch: JointBatch) -> tuple[torch.Tensor, Diagnostics]:
        log_px = batch.log_px.mean()
        kl = batch.kl.mean()
        l_x = log_px - kl
        loss = -(log_px - self.beta * kl)
        return loss, _detached(g_loss=loss, l_x=l_x, log_px=log_px, kl=kl)


class AVB:
    """Adversarial Variational Bayes: head g separates q(x)q(z|x) from q(x)p(z); maximise
    ℓ_x = E_q[log p(x|z) - g(x, z)], where g estimates log q(z|x) - log p(z)."""

    num_heads = 1

    def discriminator_loss(self, discriminator: nn.Module, batch: JointBatch) -> tuple[torch.Tensor, Diagnostics]:
        s = head_statistics(discriminator, [(batch.x, batch.z_q.detach()), (batch.x, batch.z_m)])
        loss = s[0, 0, SOFTPLUS_NEG] + s[1, 0, SOFTPLUS]
        return loss, _detached(d_loss=loss)

    def generator_loss(self, discriminator: nn.Module | None, batch: JointBatch) -> tuple[torch.Tensor, Diagnostics]:
        s = head_statistics(discriminator, [(batch.x, batch.z_q)])
        kl_est = s[0, 0, MEAN]
        log_px = batch.log_px.mean()
        l_x = log_px - kl_est
        loss = -l_x
        return loss, _detached(g_loss=loss, l_x=l_x, log_px=log_px, kl=kl_est)


class ALI:
    """ALI / BiGAN: one head separates the encoder joint q(x)q(z|x) (label 1) from the decoder
    joint p(z)p(x|z) (label 0); encoder and decoder minimise the non-saturating loss, swapping
    the labels. No reconstruction term."""

    num_heads = 1

    def discriminator_loss(self, discriminator: nn.Module, batch: JointBatch) -> tuple[torch.Tensor, Diagnostics]:
        s = head_statistics(discriminator, [(batch.x, batch.z_q.detach()), (batch.x_p.detach(), batch.z_p)])
        loss = s[0, 0, SOFTPLUS_NEG] + s[1, 0, SOFTPLUS]
        return loss, _detached(d_loss=loss)

    def generator_loss(self, discriminator: nn.Module | None, batch: JointBatch) -> tuple[torch.Tensor, Diagnostics]:
        s = head_statistics(discriminator, [(batch.x, batch.z_q), (batch.x_p, batch.z_p)])
        loss = s[0, 0, SOFTPLUS] + s[1, 0, SOFTPLUS_NEG]
        # At the optimal discriminator l = log q(x,z)/p(x,z), so mean_q l - mean_p l estimates the SKL.
        skl = s[0, 0, MEAN] - s[1, 0, MEAN]
        return loss, _detached(g_loss=loss, skl=skl)


class ASVAE:
    """Adversarial Symmetric VAE, with one of two critics (docs/divergences.md).

    ``critic="two-head"`` (Pu et al. 2017): heads g (encoder joint vs q(x)p(z)) and f (decoder
    joint vs q(x)p(z)); maximise λ_x ℓ_x + λ_z ℓ_z with ℓ_x = E_q[log p(x|z) - g] and
    ℓ_z = E_p[log q(z|x) - f]; report SKL ≈ mean_q(g-f) + mean_p(f-g).

    ``critic="joint"`` (the symmetric VAE's reading): one head T separates the encoder joint
    (label 1) from the decoder joint (label 0), so T* = log q(x,z) - log p(x,z); minimise
    (mean_q T - mean_p T) - λ_x E_q[log p(x|z_q)] - λ_z E_p[log q(z_p|x_p)], the adversarial
    symmetric-KL estimate plus both reconstruction terms.
    """

    decodes_both = True  # both critics use log p(x|z_q) and x_p: the batch decodes z_q and z_p in one call

    def __init__(self, lambda_x: float = 1.0, lambda_z: float = 1.0, analytic_kl: bool = False, critic: str = "two-head") -> None:
        self.lambda_x = _check_weight(lambda_x, "lambda_x", "asvae")
        self.lambda_z = _check_weight(lambda_z, "lambda_z", "asvae")
        self.analytic_kl = check_bool(analytic_kl, "divergence 'asvae': analytic_kl")
        check_choice(critic, ASVAE_CRITICS, "divergence 'asvae': critic")
        self.critic = critic
        if critic == "joint" and self.analytic_kl:
            raise ConfigError(
                "divergence 'asvae': analytic_kl=true needs critic='two-head'. It replaces head g's estimate of "
                "KL(q(z|x) || p(z)), and the joint critic has no such term: its one head estimates "
                "log q(x,z) - log p(x,z) as a whole (docs/divergences.md)."
            )
        # The head count depends on the critic, so it is set per instance: the builder reads it from
        # the built divergence (asvae_kit.builder), never from the class.
        self.num_heads = 1 if critic == "joint" else 2

    def discriminator_loss(self, discriminator: nn.Module, batch: JointBatch) -> tuple[torch.Tensor, Diagnostics]:
        if self.critic == "joint":
            # T: encoder joint (label 1) against decoder joint (label 0), as ALI's discriminator.
            q, p, t = 0, 1, 0
            s = head_statistics(discriminator, [(batch.x, batch.z_q.detach()), (batch.x_p.detach(), batch.z_p)])
            loss = s[q, t, SOFTPLUS_NEG] + s[p, t, SOFTPLUS]
            return loss, _detached(d_loss=loss)
        q, p, m = 0, 1, 2
        g, f = 0, 1
        s = head_statistics(
            discriminator,
            [(batch.x, batch.z_q.detach()), (batch.x_p.detach(), batch.z_p), (batch.x, batch.z_m)],
        )
        loss = s[q, g, SOFTPLUS_NEG] + s[m, g, SOFTPLUS] + s[p, f, SOFTPLUS_NEG] + s[m, f, SOFTPLUS]
        return loss, _detached(d_loss=loss)

    def generator_loss(self, discriminator: nn.Module | None, batch: JointBatch) -> tuple[torch.Tensor, Diagnostics]:
        if self.critic == "joint":
            return self._joint_generator_loss(discriminator, batch)
        q, p = 0, 1
        g, f = 0, 1
        s = head_statistics(discriminator, [(batch.x, batch.z_q), (batch.x_p, batch.z_p)])
        log_px = batch.log_px.mean()
        log_qz = batch.log_qz.mean()
        # g estimates log q(z|x) - log p(z), whose mean over q is KL(q(z|x) || p(z)); with an
        # explicit Gaussian encoder and analytic_kl that mean is used exactly (g is still trained,
        # and still enters the reported skl).
        kl_x = batch.kl.mean() if self.analytic_kl else s[q, g, MEAN]
        l_x = log_px - kl_x
        l_z = log_qz - s[p, f, MEAN]
        loss = -(self.lambda_x * l_x + self.lambda_z * l_z)
        skl = (s[q, g, MEAN] - s[q, f, MEAN]) + (s[p, f, MEAN] - s[p, g, MEAN])
        return loss, _detached(g_loss=loss, l_x=l_x, l_z=l_z, log_px=log_px, log_qz=log_qz, skl=skl)

    def _joint_generator_loss(self, discriminator: nn.Module | None, batch: JointBatch) -> tuple[torch.Tensor, Diagnostics]:
        q, p, t = 0, 1, 0
        s = head_statistics(discriminator, [(batch.x, batch.z_q), (batch.x_p, batch.z_p)])
        # At T* = log q(x,z) - log p(x,z): mean_q T estimates KL(q||p) and -mean_p T estimates
        # KL(p||q); their sum, the adversarial term, estimates the symmetric KL of the joints.
        kl_qp = s[q, t, MEAN]
        kl_pq = -s[p, t, MEAN]
        skl = kl_qp + kl_pq
        log_px = batch.log_px.mean()
        log_qz = batch.log_qz.mean()
        # Through z_q and x_p the adversarial term gives φ the gradient of KL(q||p) and θ that of
        # KL(p||q); the reconstruction terms' density gradients supply the other directions
        # (docs/divergences.md, "The joint critic").
        loss = skl - self.lambda_x * log_px - self.lambda_z * log_qz
        return loss, _detached(g_loss=loss, skl=skl, kl_qp=kl_qp, kl_pq=kl_pq, log_px=log_px, log_qz=log_qz)


@asvae_kit.hookimpl
def register_divergences(register):
    register(
        "elbo",
        ELBO,
        aliases=("vae",),
        description="Plain VAE: maximise L_x = E_q[log p(x|z)] - beta * KL(q(z|x)||p(z)) with the analytic "
        "Gaussian KL (beta = 1 is the ELBO). No discriminator (0 heads); needs an explicit Gaussian encoder.",
    )
    register(
        "avb",
        AVB,
        description="Adversarial Variational Bayes (Mescheder et al. 2017): 1 head g telling q(x)q(z|x) from "
        "q(x)p(z), so g estimates log q(z|x) - log p(z); maximise l_x = E_q[log p(x|z) - g]. Works with implicit encoders.",
    )
    register(
        "ali",
        ALI,
        aliases=("bigan",),
        description="ALI / BiGAN (Dumoulin et al. 2017): 1 head telling the encoder joint q(x)q(z|x) from the "
        "decoder joint p(z)p(x|z); encoder and decoder minimise the non-saturating GAN loss; no reconstruction term.",
    )
    register(
        "asvae",
        ASVAE,
        description="Adversarial Symmetric VAE (Pu et al. 2017). critic='two-head' (default): 2 heads, g (encoder "
        "joint vs q(x)p(z)) and f (decoder joint vs q(x)p(z)); maximise lambda_x*l_x + lambda_z*l_z, "
        "l_x = E_q[log p(x|z) - g], l_z = E_p[log q(z|x) - f]. critic='joint': 1 ALI-style head T telling the "
        "encoder joint from the decoder joint (T ~ log q(x,z)/p(x,z)); minimise mean_q T - mean_p T "
        "- lambda_x*E_q[log p(x|z)] - lambda_z*E_p[log q(z|x)]. Both pull the two joints together (symmetric KL) "
        "and report skl.",
    )
