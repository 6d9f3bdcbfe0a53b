"""Where names become objects: ``build`` (preset + overrides -> Trainer), ``load`` (run directory
-> Trainer) and ``build_entry`` (one config entry -> its component).

The config is resolved and checked first (``asvae_kit.config``); then the data set (when the
image shape must be read from it), the divergence, the networks (on their device, replicas
synchronised), the optimizers and the data splits are built here and handed to the ``Trainer``,
which only runs them.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from .algorithm import AlgorithmStep
from .config import parse_spec, resolve_config
from .divergence import check_divergence
from .distributed import broadcast_parameters, context_from_env, resolve_device
from .ema import EMA
from .errors import CheckpointError, ConfigError
from .guard import DivergenceGuard
from .optimizers import make_optimizers, set_learning_rates
from .plugin_manager import get_registry
from .rundir import CONFIG_FILE, is_asvae_config, read_config
from .schema import legacy_defaults, load_overrides
from .splits import ConfiguredData
from .step_graph import GraphCaptureWarning, StepGraph, capture_blocker
from .trainer import Trainer

__all__ = ["build", "build_from_config", "build_entry", "load", "LOAD_OVERRIDES", "DEFAULT_PRESET"]

#: The preset ``build()`` and ``asvae-kit train`` use when none is named.
DEFAULT_PRESET = "resnet-asvae"


def build_entry(kind: str, entry: dict[str, Any], **context: Any) -> Any:
    """The component of a resolved config ``entry`` (``{"name": ..., **config}``, its keys already
    checked by ``validate_config``), its factory given the builder's ``context`` too."""
    factory = get_registry().get(kind, entry["name"]).factory
    return factory(**context, **{k: v for k, v in entry.items() if k != "name"})


def build_from_config(config: dict[str, Any], *, dataset: Any = None) -> Trainer:
    """Build every component of a resolved ``config`` and hand them to a ``Trainer``.

    The dataset is built first when ``config['data_shape']`` is unset, since the networks need
    the image shape; ``data_shape`` is then recorded in the config.  Otherwise it is built when
    the trainer first asks for it.
    """
    if config["data_shape"] is None:
        if dataset is None:
            dataset = build_entry("dataset", config["data"])
        shape = getattr(dataset, "data_shape", None)
        if shape is None:
            raise ConfigError(f"dataset {config['data']['name']!r} has no data_shape attribute (docs/design.md §2)")
        config["data_shape"] = [int(v) for v in shape]
    data_shape = tuple(config["data_shape"])
    context = {"data_shape": data_shape, "latent_dim": config["latent_dim"]}

    torch.manual_seed(config["seed"])
    divergence = build_entry("divergence", config["divergence"])
    num_heads = check_divergence(divergence, config["divergence"]["name"])
    encoder = build_entry("encoder", config["encoder"], **context)
    decoder = build_entry("decoder", config["decoder"], **context)
    discriminator = build_entry("discriminator", config["discriminator"], num_heads=num_heads, **context) if num_heads > 0 else None

    if config["threads"] is not None:
        torch.set_num_threads(config["threads"])
    dist = context_from_env(config["device"])
    device = resolve_device(config["device"], dist)
    networks = [m.to(device) for m in (encoder, decoder, discriminator) if m is not None]
    broadcast_parameters(networks, dist)
    # cuda_graphs: the one place that decides whether a CUDA graph wraps the step
    blocker = capture_blocker(config, device, dist) if config["cuda_graphs"] else None
    capturable = bool(config["cuda_graphs"]) and blocker is None
    gen_optimizer, disc_optimizer = make_optimizers(config["optim"], encoder, decoder, discriminator, capturable=capturable)
    data = None
    if config["data"].get("name") is not None:
        entry = config["data"]
        component = get_registry().get("dataset", entry["name"])
        data = ConfiguredData(
            entry, config["holdout"], lambda e: build_entry("dataset", e), component, full=dataset,
            val_fraction=config["val_fraction"], val_max=config["val_max"],
        )
    algorithm = AlgorithmStep(
        encoder=encoder, decoder=decoder, discriminator=discriminator, divergence=divergence, gen_optimizer=gen_optimizer,
        disc_optimizer=disc_optimizer, config=config, dist=dist, guard=DivergenceGuard(config["diverge_factor"]),
        ema=EMA({"encoder": encoder, "decoder": decoder}, config["ema"]) if config["ema"] else None, device=device,
    )
    if capturable:
        algorithm = StepGraph(algorithm)  # type: ignore[assignment]  # the step's interface, replayed from a graph
    elif config["cuda_graphs"]:
        warnings.warn(f"cuda_graphs=true, but {blocker}: every step runs eagerly", GraphCaptureWarning, stacklevel=3)
    loggers = [build_entry("logger", parse_spec(spec, "logger")) for spec in config["loggers"]]  # on every rank: a missing package fails everywhere
    return Trainer(config, algorithm=algorithm, data_shape=data_shape, device=device, dist=dist, data=data, loggers=loggers)


def build(preset: str | Mapping[str, Any] = DEFAULT_PRESET, /, **overrides: Any) -> Trainer:
    """A ready-to-train ``Trainer`` from a preset (name or config mapping) and config overrides.

    Overrides are config keys; dotted keys reach inside entries (``**{"encoder.width": 64}``), a
    bare name replaces a component (``data="fashion-mnist"``)::

        trainer = asvae_kit.build("mlp-asvae", steps=500, **{"optim.lr": 1e-4})
        trainer.fit()
    """
    return build_from_config(resolve_config(preset, overrides))


#: Keys ``load`` lets a caller change: where and how long to go on, never what the model is
#: (``Key.on_load`` in ``asvae_kit.schema``).
LOAD_OVERRIDES = load_overrides()


def load(run_dir: str | os.PathLike, /, **overrides: Any) -> Trainer:
    """The ``Trainer`` saved in ``run_dir`` (config, weights, optimizer and RNG state).

    ``overrides`` may change the run's schedule and placement (``steps``, ``device``, ...; see
    ``LOAD_OVERRIDES``), its learning rates (``"optim.lr"``, to go on after a divergence) and the
    dataset's file options (``"data.data_dir"``...), validated like ``build``'s.  A run saved on a GPU loads on a CPU-only machine (with a warning).
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)  # a JSON object, or one line naming config.json and the fix
    if not is_asvae_config(config):
        raise CheckpointError(
            f"{run_dir / CONFIG_FILE} is not a config asvae-kit wrote (it lacks the encoder, decoder, divergence and latent_dim "
            "of one); pass the folder of an asvae-kit run"
        )
    for key, value in legacy_defaults().items():  # keys a run saved before they existed lacks (``Key.legacy``)
        config.setdefault(key, value)
    for key in overrides:
        if key not in LOAD_OVERRIDES and not key.startswith("data."):
            allowed = ", ".join(LOAD_OVERRIDES)
            raise ConfigError(f"load() keeps the run's model; {key!r} cannot change (allowed: {allowed}, and data.* file options)")
    device = overrides.get("device", config.get("device", "auto"))
    if isinstance(device, str) and device.startswith("cuda") and not torch.cuda.is_available():
        warnings.warn(f"{run_dir} was trained on device {device!r}, which this machine lacks; loading it on the CPU", stacklevel=2)
        overrides = {**overrides, "device": "cpu"}
    trainer = build_from_config(resolve_config(config, overrides))
    trainer.load_state(run_dir)
    if "optim.lr" in overrides or "optim.disc_lr" in overrides:
        set_learning_rates(trainer.config["optim"], trainer.gen_optimizer, trainer.disc_optimizer)  # the checkpoint carries the old rates
    return trainer
