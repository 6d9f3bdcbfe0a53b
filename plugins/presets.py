"""Built-in presets: ``{mlp,resnet,dcgan}-{vae,avb,ali,asvae}``.

Siblings share networks, data, batch size, step budget and the encoder/decoder optimiser, and
differ in the divergence, so comparing them compares the estimators.  The ``*-asvae`` presets add
the recipe found by the comparison study (``RECIPES``; docs/study.md says what was tried and
measured).  All default to the offline ``digits`` data; every one trains on 8x8, 28x28, 32x32 and
64x64 images (override ``data``).
"""

from __future__ import annotations

from typing import Any

import asvae_kit

__all__ = ["preset_config", "ARCHITECTURES", "DIVERGENCES", "RECIPES"]

DIVERGENCES = {"vae": "elbo", "avb": "avb", "ali": "ali", "asvae": "asvae"}

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "mlp": {
        "encoder": {"name": "mlp", "hidden": [512, 512]},
        "decoder": {"name": "mlp", "hidden": [512, 512], "likelihood": "bernoulli"},
        "discriminator": {"name": "joint-mlp", "hidden": [512, 512]},
        "latent_dim": 16,
        "steps": 3000,
    },
    "resnet": {
        "encoder": {"name": "resnet", "width": 32},
        "decoder": {"name": "resnet", "width": 32, "likelihood": "bernoulli"},
        "discriminator": {"name": "joint-resnet", "width": 32, "hidden": [256, 256]},
        "latent_dim": 8,
        "steps": 2000,
    },
    # The papers' convolutional networks (DCGAN's strided convolutions, ALI's joint discriminator),
    # widths 32/64 at 28x28.  The discriminator's trunk is [256, 256]: its first layer reads the
    # 64*7*7 convolution features, and at [512, 512] a 28x28 step cost ~3.4x an mlp-* step on
    # 2 CPU cores, against ~2.7-3.1x at [256, 256] (bench/test_dcgan_step.py; the target is 4x).
    "dcgan": {
        "encoder": {"name": "dcgan", "width": 32},
        "decoder": {"name": "dcgan", "width": 32, "likelihood": "bernoulli"},
        "discriminator": {"name": "joint-dcgan", "width": 32, "hidden": [256, 256]},
        "latent_dim": 16,
        "steps": 2000,
    },
}

#: How each architecture's description names its networks.
_NETS = {"mlp": "fully connected", "resnet": "convolutional residual", "dcgan": "DCGAN-style strided-convolution"}


#: Per-variant departures from the shared settings, each measured in docs/study.md.
RECIPES: dict[str, dict[str, Any]] = {
    # The discriminator learns at a quarter of the encoder/decoder's rate (at lr it wins outright,
    # d_loss ~0.07, and its gradients darken and speckle the samples), and the decoder-joint term
    # l_z weighs 0.3: together they bring ASVAE's FD on Fashion-MNIST below the VAE's at an equal
    # budget, with reconstructions at least as good (docs/study.md, "The recipe").
    "asvae": {"optim": {"disc_lr": 5e-5}, "divergence": {"lambda_z": 0.3}},
}


def preset_config(architecture: str, variant: str) -> dict[str, Any]:
    """The complete config of preset ``{architecture}-{variant}``."""
    arch = ARCHITECTURES[architecture]
    recipe = RECIPES.get(variant, {})
    return {
        "encoder": dict(arch["encoder"]),
        "decoder": dict(arch["decoder"]),
        "discriminator": dict(arch["discriminator"]),
        "divergence": {"name": DIVERGENCES[variant], **recipe.get("divergence", {})},
        "data": {"name": "digits"},
        "latent_dim": arch["latent_dim"],
        "batch_size": 64,
        "steps": arch["steps"],
        "optim": {"lr": 2e-4, "betas": [0.5, 0.999], "n_critic": 1, **recipe.get("optim", {})},
        "seed": 0,
    }


_WHAT = {
    "vae": "plain VAE (analytic-KL ELBO, no discriminator)",
    "avb": "Adversarial Variational Bayes (one-head discriminator estimating the KL)",
    "ali": "ALI/BiGAN (one-head discriminator between the two joints, no reconstruction)",
    "asvae": "Adversarial Symmetric VAE (two-head discriminator, symmetric KL of the joints)",
}


@asvae_kit.hookimpl
def register_presets(register):
    for architecture in ARCHITECTURES:
        nets = _NETS[architecture]
        for variant in DIVERGENCES:
            register(
                f"{architecture}-{variant}",
                lambda a=architecture, v=variant: preset_config(a, v),
                description=f"{_WHAT[variant]} with {nets} networks, on the bundled 8x8 digits by default.",
            )
