"""``build`` (preset + overrides -> Trainer) and ``load`` (run directory -> Trainer)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from .config import resolve_config
from .errors import CheckpointError, ConfigError
from .registry import build_component
from .trainer import CONFIG_FILE, Trainer

__all__ = ["build", "build_from_config", "load"]


def _component_config(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "name"}


def build_from_config(config: dict[str, Any], *, dataset: Any = None) -> Trainer:
    """Build every component of a resolved ``config`` and wrap them in a ``Trainer``.

    The dataset is built first when ``config['data_shape']`` is unset, since the networks need
    the image shape; ``data_shape`` is then recorded in the config.
    """
    if config["data_shape"] is None:
        if dataset is None:
            entry = config["data"]
            dataset = build_component("dataset", entry["name"], **_component_config(entry))
        shape = getattr(dataset, "data_shape", None)
        if shape is None:
            raise ConfigError(f"dataset {config['data']['name']!r} has no data_shape attribute (DESIGN.md §2)")
        config["data_shape"] = [int(v) for v in shape]
    data_shape = tuple(config["data_shape"])
    latent_dim = config["latent_dim"]

    torch.manual_seed(config["seed"])
    divergence = build_component("divergence", config["divergence"]["name"], **_component_config(config["divergence"]))
    num_heads = int(getattr(divergence, "num_heads", 0))
    context = {"data_shape": data_shape, "latent_dim": latent_dim}
    encoder = build_component("encoder", config["encoder"]["name"], **context, **_component_config(config["encoder"]))
    decoder = build_component("decoder", config["decoder"]["name"], **context, **_component_config(config["decoder"]))
    discriminator = None
    if num_heads > 0:
        discriminator = build_component(
            "discriminator", config["discriminator"]["name"], num_heads=num_heads, **context, **_component_config(config["discriminator"])
        )
    return Trainer(
        config,
        encoder=encoder,
        decoder=decoder,
        discriminator=discriminator,
        divergence=divergence,
        data_shape=data_shape,
        dataset=dataset,
    )


def build(preset: str | Mapping[str, Any] = "resnet-asvae", /, **overrides: Any) -> Trainer:
    """A ready-to-train ``Trainer`` from a preset (name or config mapping) and config overrides.

    Overrides are config keys; dotted keys reach inside entries (``**{"encoder.width": 64}``), a
    bare name replaces a component (``data="fashion-mnist"``)::

        trainer = asvae_kit.build("mlp-asvae", steps=500, **{"optim.lr": 1e-4})
        trainer.fit()
    """
    return build_from_config(resolve_config(preset, overrides))


def load(run_dir: str | os.PathLike) -> Trainer:
    """The ``Trainer`` saved in ``run_dir`` (config, weights, optimizer and RNG state)."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{config_path} not found; pass a run directory written by `asvae-kit train` or Trainer.save()")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path} is not valid JSON ({exc})") from None
    trainer = build_from_config(resolve_config(config))
    trainer.load_state(run_dir)
    return trainer
