"""The eight built-in presets (``plugins/presets.py``): registered, and each trains with finite losses."""

from __future__ import annotations

import math

import pytest

import asvae_kit

PRESETS = ["mlp-vae", "mlp-avb", "mlp-ali", "mlp-asvae", "resnet-vae", "resnet-avb", "resnet-ali", "resnet-asvae"]
PRESET_DIVERGENCE = {"vae": "elbo", "avb": "avb", "ali": "ali", "asvae": "asvae"}
# What each divergence's description must say it estimates / optimises.
DESCRIBES = {
    "elbo": ("KL", "L_x"),
    "avb": ("log q(z|x) - log p(z)",),
    "ali": ("joint",),
    "asvae": ("symmetric KL", "skl"),
}
EXPECTED_TERMS = {
    "elbo": {"g_loss", "l_x", "kl"},
    "avb": {"d_loss", "g_loss", "l_x", "kl"},
    "ali": {"d_loss", "g_loss", "skl"},
    "asvae": {"d_loss", "g_loss", "l_x", "l_z", "skl"},
}


def test_the_eight_presets_are_registered():
    assert set(PRESETS) <= set(asvae_kit.list_components("preset"))


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_trains_with_finite_losses(preset):
    divergence = PRESET_DIVERGENCE[preset.split("-")[1]]
    trainer = asvae_kit.build(preset, steps=3, batch_size=16, log_every=1)
    assert trainer.config["divergence"]["name"] == divergence
    trainer.fit()
    assert trainer.step == 3 and len(trainer.history) == 3
    for row in trainer.history:
        assert EXPECTED_TERMS[divergence] <= set(row), f"{preset} logs {sorted(row)}"
        bad = {k: v for k, v in row.items() if not math.isfinite(v) and k != "steps_per_s"}
        assert not bad, f"{preset}: non-finite {bad}"
    info = asvae_kit.describe(divergence, "divergence")
    assert info["kind"] == "divergence" and info["description"].strip()
    for phrase in DESCRIBES[divergence]:
        assert phrase in info["description"], f"{divergence!r} description does not mention {phrase!r}"
