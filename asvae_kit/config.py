"""Configs: resolving a preset plus overrides into the complete, JSON-serialisable mapping a
``Trainer`` is built from (DESIGN.md §3).

Component entries (``encoder``, ``decoder``, ``discriminator``, ``divergence``, ``data``) are
stored as ``{"name": ..., **config}``.  Overrides address keys with dots (``"encoder.width": 64``,
``"optim.lr": 1e-4``); a bare name replaces a component entry (``data="fashion-mnist"``); a
mapping without ``name`` is merged into the entry.  Unknown keys are a ``ConfigError`` with
did-you-mean; component keys are checked against the factory's signature.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any, Mapping

from .errors import ConfigError
from .names import article, close_matches

__all__ = ["COMPONENT_KINDS", "DEFAULTS", "OPTIM_DEFAULTS", "resolve_config", "apply_overrides", "parse_value", "validate_config"]

#: config key -> component kind
COMPONENT_KINDS = {
    "encoder": "encoder",
    "decoder": "decoder",
    "discriminator": "discriminator",
    "divergence": "divergence",
    "data": "dataset",
}

OPTIM_DEFAULTS: dict[str, Any] = {"lr": 2e-4, "betas": [0.5, 0.999], "n_critic": 1, "disc_lr": None, "weight_decay": 0.0}

#: Every top-level key with its default (component entries come from the preset).
DEFAULTS: dict[str, Any] = {
    "encoder": {"name": "mlp"},
    "decoder": {"name": "mlp"},
    "discriminator": {"name": "joint-mlp"},
    "divergence": {"name": "asvae"},
    "data": {"name": "digits"},
    "data_shape": None,
    "latent_dim": 32,
    "batch_size": 64,
    "steps": 2000,
    "optim": OPTIM_DEFAULTS,
    "seed": 0,
    "sample_x": False,
    "log_every": 50,
    "sample_every": 500,
    "checkpoint_every": 1000,
    "device": "auto",
    "metrics": ["recon", "nll", "fd", "skl", "probe"],
    "eval_size": 1000,
    "holdout": 0.1,
    "diverge_factor": 1000.0,
    "keep_checkpoints": 2,
}


def _entry(value: Any, key: str) -> dict[str, Any]:
    """Normalise a component entry to ``{"name": ..., **config}``."""
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, Mapping):
        if "name" not in value or not isinstance(value["name"], str):
            raise ConfigError(f"config entry {key!r} needs a 'name' ({article(COMPONENT_KINDS[key])} registered name), got {dict(value)!r}")
        return copy.deepcopy(dict(value))
    if value is None and key == "data":
        return {"name": None}  # type: ignore[dict-item]
    raise ConfigError(f"config entry {key!r} must be {article(COMPONENT_KINDS[key])} name or a mapping with 'name', got {value!r}")


def _unknown_key(key: str, known: Any, where: str) -> ConfigError:
    hint = close_matches(key, known)
    extra = f" Did you mean {hint[0]!r}?" if hint else ""
    return ConfigError(f"unknown config key {key!r}{where}.{extra} Known keys: {', '.join(sorted(known))}.")


def apply_overrides(config: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Apply ``overrides`` (see the module docstring) to a copy of ``config``.

    Top-level keys are applied before dotted ones, so ``{"encoder.width": 8, "encoder": "resnet"}``
    sets the width of the new resnet encoder whatever the order the keys came in.
    """
    config = copy.deepcopy(config)
    ordered = sorted(overrides.items(), key=lambda item: "." in item[0])  # stable: keeps order within each group
    for raw_key, value in ordered:
        parts = raw_key.split(".")
        top = parts[0]
        if top not in DEFAULTS:
            raise _unknown_key(top, DEFAULTS, "")
        if len(parts) == 1:
            if top in COMPONENT_KINDS:
                if isinstance(value, Mapping) and "name" not in value:
                    config[top] = {**config[top], **copy.deepcopy(dict(value))}
                else:
                    config[top] = _entry(value, top)
            elif top == "optim" and isinstance(value, Mapping):
                config[top] = {**config[top], **copy.deepcopy(dict(value))}
            else:
                config[top] = copy.deepcopy(value)
            continue
        if top not in COMPONENT_KINDS and top != "optim":
            raise ConfigError(f"config key {top!r} has no sub-keys, so {raw_key!r} cannot be set; set {top!r} itself")
        target = config[top]
        for part in parts[1:-1]:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        target[parts[-1]] = copy.deepcopy(value)
    return config


def parse_value(text: str) -> Any:
    """A command-line value: JSON when it parses (``3``, ``1e-4``, ``true``, ``[1, 2]``), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _positive_int(config: dict[str, Any], key: str, allow_zero: bool = False) -> None:
    v = config[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < (0 if allow_zero else 1):
        raise ConfigError(f"config {key!r} must be a {'non-negative' if allow_zero else 'positive'} integer, got {v!r}")


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Check types and component keys; return ``config`` (raises ``ConfigError``)."""
    from .registry import check_config_keys, get_registry

    for key in config:
        if key not in DEFAULTS:
            raise _unknown_key(key, DEFAULTS, "")
    for key in ("latent_dim", "batch_size", "keep_checkpoints"):
        _positive_int(config, key)
    for key in ("steps", "log_every", "sample_every", "checkpoint_every", "seed"):
        _positive_int(config, key, allow_zero=True)
    if config["eval_size"] is not None:
        _positive_int(config, "eval_size")
    if not isinstance(config["sample_x"], bool):
        raise ConfigError(f"config 'sample_x' must be true or false, got {config['sample_x']!r}")
    if not isinstance(config["device"], str):
        raise ConfigError(f"config 'device' must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {config['device']!r}")
    if config["data_shape"] is not None:
        ds = config["data_shape"]
        if not isinstance(ds, (list, tuple)) or len(ds) != 3 or not all(isinstance(v, int) and v > 0 for v in ds):
            raise ConfigError(f"config 'data_shape' must be [C, H, W] of positive integers or null, got {ds!r}")
        config["data_shape"] = list(ds)
    if config["data"].get("name") is None and config["data_shape"] is None:
        raise ConfigError("config has no data (data=None) and no data_shape; give one of them so the networks know the image shape")
    metrics = config["metrics"]
    if not isinstance(metrics, list) or not all(isinstance(m, (str, dict)) for m in metrics):
        raise ConfigError(f"config 'metrics' must be a list of metric names (or {{'name': ..., **options}}), got {metrics!r}")
    factor = config["diverge_factor"]
    if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float)) or not (factor == 0 or factor > 1) or not math.isfinite(factor)):
        raise ConfigError(f"config 'diverge_factor' must be 0 (off) or a number > 1 (stop when a loss grows past that many times its running median), got {factor!r}")
    holdout = config["holdout"]
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 <= holdout < 1:
        raise ConfigError(
            f"config 'holdout' is the fraction of a data set without a test split kept out of training for "
            f"evaluation, a number in [0, 1); got {holdout!r}"
        )

    optim = config["optim"]
    if not isinstance(optim, dict):
        raise ConfigError(f"config 'optim' must be a mapping, got {optim!r}")
    for key in optim:
        if key not in OPTIM_DEFAULTS:
            raise _unknown_key(key, OPTIM_DEFAULTS, " in 'optim'")
    optim = config["optim"] = {**OPTIM_DEFAULTS, **optim}
    for key in ("lr", "disc_lr"):
        v = optim[key]
        if v is None and key == "disc_lr":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 and math.isfinite(v)):
            raise ConfigError(f"config 'optim.{key}' must be a positive number, got {v!r}")
    betas = optim["betas"]
    if not isinstance(betas, (list, tuple)) or len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        raise ConfigError(f"config 'optim.betas' must be two numbers in [0, 1), got {betas!r}")
    optim["betas"] = [float(b) for b in betas]
    n_critic = optim["n_critic"]
    if isinstance(n_critic, bool) or not isinstance(n_critic, int) or n_critic < 1:
        raise ConfigError(f"config 'optim.n_critic' must be a positive integer, got {n_critic!r}")

    registry = get_registry()
    for key, kind in COMPONENT_KINDS.items():
        entry = config[key]
        if key == "data" and entry.get("name") is None:
            continue
        component = registry.get(kind, entry["name"])
        entry["name"] = component.name  # aliases resolve to the registered name
        check_config_keys(component, {k: v for k, v in entry.items() if k != "name"}, allow_context=False)
    from .evaluation import parse_metric

    for spec in metrics:
        registry.get("metric", parse_metric(spec)["name"])
    try:
        json.dumps(config, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"the config must be JSON-serialisable (it is saved as config.json): {exc}") from None
    return config


def resolve_config(preset: str | Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Preset (a name or a mapping) + builder defaults + overrides, validated."""
    from .registry import get_registry

    if isinstance(preset, str):
        base = get_registry().get("preset", preset).factory()
        if not isinstance(base, Mapping):
            raise ConfigError(f"preset {preset!r} returned {type(base).__name__}, not a config mapping")
    elif isinstance(preset, Mapping):
        base = preset
    else:
        raise ConfigError(f"preset must be a preset name or a config mapping, got {type(preset).__name__}")
    for key in base:
        if key not in DEFAULTS:
            raise _unknown_key(key, DEFAULTS, f" in preset {preset if isinstance(preset, str) else '(mapping)'!r}")
    config = copy.deepcopy(DEFAULTS)
    for key, value in copy.deepcopy(dict(base)).items():
        if key in COMPONENT_KINDS:
            config[key] = _entry(value, key)
        elif key == "optim":
            if not isinstance(value, Mapping):
                raise ConfigError(f"config 'optim' must be a mapping, got {value!r}")
            config[key] = {**OPTIM_DEFAULTS, **value}
        else:
            config[key] = value
    config = apply_overrides(config, overrides or {})
    return validate_config(config)
