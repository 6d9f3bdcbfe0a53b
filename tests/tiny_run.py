"""A tiny, fast training run through the command line, shared by the tests that need a run directory."""

from __future__ import annotations

from pathlib import Path

from asvae_kit.cli import main

#: ``--set`` flags that shrink every network of a preset to a few units.
TINY = ["--set", "encoder.hidden=[32]", "--set", "decoder.hidden=[32]", "--set", "discriminator.hidden=[32]", "--set", "latent_dim=4"]


def train_tiny(out: Path, *extra: str) -> int:
    """``asvae-kit train`` of a tiny mlp-vae for 3 steps into ``out``; returns the exit code."""
    return main(["train", "--preset", "mlp-vae", "--steps", "3", "--batch-size", "8", "--no-progress", *TINY, "--out", str(out), *extra])
