"""Configs: resolving a preset plus overrides into the complete, JSON-serialisable mapping a
``Trainer`` is built from (docs/design.md §3).

Component entries (``encoder``, ``decoder``, ``discriminator``, ``divergence``, ``data``) are
stored as ``{"name": ..., **config}``.  Overrides address keys with dots (``"encoder.width": 64``,
``"optim.lr": 1e-4``); a bare name replaces a component entry (``data="fashion-mnist"``); a
mapping without ``name`` is merged into the entry.  Unknown keys are a ``ConfigError`` with
did-you-mean; component keys are checked against the factory's signature.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

from .checks import check_bool, check_int, check_number, is_int, is_number
from .errors import ConfigError
from .names import KINDS, article, did_you_mean
from .plugin_manager import get_registry
from .registry import check_config_keys, check_metric_options

__all__ = ["COMPONENT_KINDS", "DEFAULTS", "OPTIM_DEFAULTS", "resolve_config", "apply_overrides", "parse_value", "parse_spec", "parse_metric", "validate_config", "SCHEDULES", "load_config_file"]

#: config key -> component kind, for the kinds a config names one of (its data set under "data");
#: presets are not config entries, and metrics and loggers are lists of them.
COMPONENT_KINDS = {("data" if kind == "dataset" else kind): kind for kind in KINDS if kind not in ("preset", "metric", "logger")}

OPTIM_DEFAULTS: dict[str, Any] = {
    "lr": 2e-4,
    "betas": [0.5, 0.999],
    "n_critic": 1,
    "disc_lr": None,
    "weight_decay": 0.0,
    "schedule": "constant",  # or "cosine": the learning rates decay to 0 at the run's last step
    "warmup_steps": 0,  # linear warm-up from 0 over this many steps, before the schedule
    "clip_grad_norm": None,  # clip the encoder/decoder gradients to this norm (None: no clipping)
    "disc_clip_grad_norm": None,  # the same for the discriminator (None: clip_grad_norm)
}
#: Learning-rate schedules ``optim.schedule`` may name.
SCHEDULES = ("constant", "cosine")

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
    "val_fraction": 0.1,
    "val_max": 5000,
    "diverge_factor": 1000.0,
    "keep_checkpoints": 2,
    "loggers": ["csv"],
    "ema": None,
    "threads": None,
    "precision": "32",
    "compile": False,
    "cuda_graphs": False,
}
#: ``precision`` values: float32, bfloat16 autocast, float16 autocast with loss scaling.
PRECISION_NAMES = ("32", "bf16", "16-mixed")


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
    return ConfigError(f"unknown config key {key!r}{where}.{did_you_mean(key, known)} Known keys: {', '.join(sorted(known))}.")


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


def parse_spec(spec: str | Mapping[str, Any], kind: str = "metric") -> dict[str, Any]:
    """A metric or logger in a list: ``"nll"``, ``"nll:k=100:n=64"`` or ``{"name": "nll", "k": 100}``
    -> ``{"name": ..., **options}``."""
    if isinstance(spec, Mapping):
        if not isinstance(spec.get("name"), str):
            raise ConfigError(f"{article(kind)} entry needs a 'name', got {dict(spec)!r}")
        return dict(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"{article(kind)} is a name like 'fd' or 'nll:k=100', got {spec!r}")
    name, *pairs = spec.strip().split(":")
    entry: dict[str, Any] = {"name": name.strip()}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{kind} {spec!r}: options are KEY=VALUE after ':' (e.g. 'nll:k=100'), got {pair!r}")
        entry[key.strip()] = parse_value(value.strip())
    return entry


def parse_metric(spec: str | Mapping[str, Any]) -> dict[str, Any]:
    """``parse_spec`` for a metric."""
    return parse_spec(spec, "metric")


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Check types and component keys; return ``config`` (raises ``ConfigError``)."""
    for key in config:
        if key not in DEFAULTS:
            raise _unknown_key(key, DEFAULTS, "")
    for key in ("latent_dim", "batch_size", "keep_checkpoints"):
        check_int(config[key], f"config {key!r}")
    for key in ("steps", "log_every", "sample_every", "checkpoint_every", "seed"):
        check_int(config[key], f"config {key!r}", minimum=0)
    if config["eval_size"] is not None:
        check_int(config["eval_size"], "config 'eval_size'")
    check_bool(config["sample_x"], "config 'sample_x'")
    if not isinstance(config["device"], str):
        raise ConfigError(f"config 'device' must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {config['device']!r}")
    if config["data_shape"] is not None:
        ds = config["data_shape"]
        if not isinstance(ds, (list, tuple)) or len(ds) != 3 or not all(is_int(v) and v > 0 for v in ds):
            raise ConfigError(f"config 'data_shape' must be [C, H, W] of positive integers or null, got {ds!r}")
        config["data_shape"] = list(ds)
    if config["data"].get("name") is None and config["data_shape"] is None:
        raise ConfigError("config has no data (data=None) and no data_shape; give one of them so the networks know the image shape")
    for key in ("metrics", "loggers"):
        if not isinstance(config[key], list) or not all(isinstance(m, (str, dict)) for m in config[key]):
            raise ConfigError(f"config {key!r} must be a list of {key[:-1]} names (or {{'name': ..., **options}}), got {config[key]!r}")
    if config["ema"] is not None and config["ema"] != 0:
        check_number(config["ema"], "config 'ema'", low=0, high=1, low_inclusive=False, expected="null/0 (off) or a decay in (0, 1), e.g. 0.999")
    if config["threads"] is not None:
        check_int(config["threads"], "config 'threads'", hint=" (or null for torch's default)")
    check_bool(config["compile"], "config 'compile'")
    check_bool(config["cuda_graphs"], "config 'cuda_graphs'")
    config["precision"] = str(config["precision"])  # 32 and "32" alike
    if config["precision"] not in PRECISION_NAMES:
        raise ConfigError(
            f"config 'precision' must be one of {', '.join(PRECISION_NAMES)}, got {config['precision']!r}."
            f"{did_you_mean(config['precision'], PRECISION_NAMES)}"
        )
    factor = config["diverge_factor"]
    if factor is not None and factor != 0:
        check_number(
            factor, "config 'diverge_factor'", low=1, low_inclusive=False,
            expected="0 (off) or a number > 1 (stop when a loss grows past that many times its running median)",
        )
    check_number(
        config["holdout"], "config 'holdout'", low=0, high=1,
        expected="the fraction of a data set without a test split kept out of training for evaluation, a number in [0, 1)",
    )
    check_number(
        config["val_fraction"], "config 'val_fraction'", low=0, high=1,
        expected="the fraction of the training split kept out of training as the validation slice, a number in [0, 1) (e.g. 0.1; 0: none)",
    )
    if config["val_max"] is not None:
        check_int(config["val_max"], "config 'val_max'", hint=" (the most images of the validation slice, e.g. 5000; or null for no cap)")

    optim = config["optim"]
    if not isinstance(optim, dict):
        raise ConfigError(f"config 'optim' must be a mapping, got {optim!r}")
    for key in optim:
        if key not in OPTIM_DEFAULTS:
            raise _unknown_key(key, OPTIM_DEFAULTS, " in 'optim'")
    optim = config["optim"] = {**OPTIM_DEFAULTS, **optim}
    for key in ("lr", "disc_lr"):
        if optim[key] is not None or key == "lr":
            check_number(optim[key], f"config 'optim.{key}'", low=0, low_inclusive=False)
    betas = optim["betas"]
    if not isinstance(betas, (list, tuple)) or len(betas) != 2 or not all(is_number(b) and 0 <= b < 1 for b in betas):
        raise ConfigError(f"config 'optim.betas' must be two numbers in [0, 1), got {betas!r}")
    optim["betas"] = [float(b) for b in betas]
    check_int(optim["n_critic"], "config 'optim.n_critic'")
    check_number(optim["weight_decay"], "config 'optim.weight_decay'", low=0)
    if optim["schedule"] not in SCHEDULES:
        raise ConfigError(f"config 'optim.schedule' must be one of {', '.join(SCHEDULES)}, got {optim['schedule']!r}.{did_you_mean(str(optim['schedule']), SCHEDULES)}")
    check_int(optim["warmup_steps"], "config 'optim.warmup_steps'", minimum=0)
    for key in ("clip_grad_norm", "disc_clip_grad_norm"):
        if optim[key] is not None:
            check_number(optim[key], f"config 'optim.{key}'", low=0, low_inclusive=False, expected="a positive number or null (no clipping)")

    registry = get_registry()
    for key, kind in COMPONENT_KINDS.items():
        entry = config[key]
        if key == "data" and entry.get("name") is None:
            continue
        component = registry.get(kind, entry["name"])
        entry["name"] = component.name  # aliases resolve to the registered name
        check_config_keys(component, {k: v for k, v in entry.items() if k != "name"}, allow_context=False)
    for spec in config["metrics"]:
        entry = parse_metric(spec)
        check_metric_options(registry.get("metric", entry["name"]), {k: v for k, v in entry.items() if k != "name"})
    seen: set[str] = set()
    for i, spec in enumerate(config["loggers"]):
        entry = parse_spec(spec, "logger")
        logger = registry.get("logger", entry["name"])
        if logger.name in seen:
            raise ConfigError(f"config 'loggers' names {logger.name!r} twice; every row would be written twice")
        seen.add(logger.name)
        check_config_keys(logger, {k: v for k, v in entry.items() if k != "name"})
        config["loggers"][i] = spec if isinstance(spec, dict) or ":" in spec else logger.name
    try:
        json.dumps(config, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"the config must be JSON-serialisable (it is saved as config.json): {exc}") from None
    return config


#: Config file formats ``load_config_file`` reads, by extension.
CONFIG_FILE_FORMATS = (".json", ".yaml", ".yml", ".toml")


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _yaml_numbers(value: Any) -> Any:
    """YAML 1.1 (PyYAML) reads ``1e-4`` as a string; read it as the number everyone means."""
    if isinstance(value, dict):
        return {k: _yaml_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_yaml_numbers(v) for v in value]
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)
    return value


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A config mapping from a JSON, YAML or TOML file (a run's ``config.json`` included).

    It may name a ``preset`` to start from; its other keys are config keys, applied over that
    preset (``resolve_config``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CONFIG_FILE_FORMATS:
        raise ConfigError(f"config file {path}: the extension {suffix or '(none)'!r} is not one of {', '.join(CONFIG_FILE_FORMATS)}")
    if not path.is_file():
        raise ConfigError(f"config file {path} not found" + (" (it is a directory; a run's config is RUN/config.json)" if path.is_dir() else ""))
    text = path.read_text(encoding="utf-8")
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                raise ConfigError(f"config file {path}: reading TOML needs Python 3.11 (or use JSON or YAML)") from None
            data = tomllib.loads(text)
        else:
            try:
                import yaml
            except ImportError:
                raise ConfigError(f"config file {path}: reading YAML needs PyYAML: pip install pyyaml (or use JSON or TOML)") from None
            data = _yaml_numbers(yaml.safe_load(text))
    except ConfigError:
        raise
    except Exception as exc:  # each parser has its own error type; all mean the same here
        raise ConfigError(f"config file {path} is not valid {suffix[1:].upper()}: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of config keys, got {type(data).__name__}")
    return data


def resolve_config(preset: str | Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Preset (a name or a mapping) + builder defaults + overrides, validated."""
    if isinstance(preset, str):
        base = get_registry().get("preset", preset).factory()
        if not isinstance(base, Mapping):
            raise ConfigError(f"preset {preset!r} returned {type(base).__name__}, not a config mapping")
    elif isinstance(preset, Mapping) and "preset" in preset:  # a config file naming its starting preset
        named = preset["preset"]
        if not isinstance(named, str):
            raise ConfigError(f"a config's 'preset' must be a preset name, got {named!r}")
        rest = {k: v for k, v in preset.items() if k != "preset"}
        return resolve_config(named, {**rest, **(overrides or {})})
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
    try:
        return validate_config(config)
    except ConfigError as exc:
        renamed = [k for k in (overrides or {}) if k.endswith(".name") and k.split(".")[0] in COMPONENT_KINDS]
        if renamed and "has no config key" in str(exc):
            top = renamed[0].split(".")[0]
            raise ConfigError(
                f"{exc} Setting {renamed[0]!r} keeps the old {top} entry's other keys; to switch to another {top}, "
                f"replace the whole entry: --set {top}=NAME (Python: {top}='NAME'), then set its keys"
            ) from None
        raise
