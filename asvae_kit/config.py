"""Configs: resolving a preset plus overrides into the complete, JSON-serialisable mapping a
``Trainer`` is built from (docs/design.md §3).

Every key, with its default, its check and its help, is declared once, in ``asvae_kit.schema``;
this module applies the layers (defaults, preset, overrides) and runs the schema's checks.
Component entries (``encoder``, ``decoder``, ``discriminator``, ``divergence``, ``data``) are
stored as ``{"name": ..., **config}``.  Overrides address keys with dots (``"encoder.width": 64``,
``"optim.lr": 1e-4``); a bare name replaces a component entry (``data="fashion-mnist"``); a
mapping without ``name`` is merged into the entry.  Unknown keys are a ``ConfigError`` with
did-you-mean; component keys are checked against the options the registry read from the factory.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

from .checks import check_choice
from .errors import ConfigError
from .names import article
from .plugin_manager import get_registry
from .registry import ComponentEntry, check_config_keys, check_metric_options
from .schema import COMPONENT_KINDS, GROUPS, PRECISION_NAMES, SCHEDULES, SCHEMA, check_group, check_known, defaults

__all__ = [
    "COMPONENT_KINDS", "DEFAULTS", "OPTIM_DEFAULTS", "PRECISION_NAMES", "SCHEDULES", "resolve_config", "apply_overrides", "parse_value",
    "parse_spec", "parse_metric", "check_metric_spec", "validate_config", "load_config_file",
]

#: Every key with its default (``asvae_kit.schema``; component entries are usually the preset's).
DEFAULTS: dict[str, Any] = defaults()
#: The ``optim`` keys with their defaults.
OPTIM_DEFAULTS: dict[str, Any] = DEFAULTS["optim"]


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


def _set(config: dict[str, Any], key: str, value: Any, *, merge_entries: bool) -> None:
    """Set the top-level ``key`` of ``config`` to ``value``, the one way every layer does it: a
    component entry is normalised (a mapping without ``name`` is merged into the current entry when
    ``merge_entries``), a group's mapping (``optim``) is merged over the group, the rest replaced."""
    if key in COMPONENT_KINDS:
        if merge_entries and isinstance(value, Mapping) and "name" not in value:
            config[key] = {**config[key], **copy.deepcopy(dict(value))}
        else:
            config[key] = _entry(value, key)
    elif key in GROUPS:
        config[key] = {**config[key], **copy.deepcopy(dict(check_group(value, key)))}
    else:
        config[key] = copy.deepcopy(value)


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
        check_known([top])
        if len(parts) == 1:
            _set(config, top, value, merge_entries=True)
            continue
        if top not in COMPONENT_KINDS and top not in GROUPS:
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


def check_metric_spec(
    spec: str | Mapping[str, Any], *, data_shape: Any = None, latent_dim: int | None = None
) -> tuple[str, ComponentEntry, dict[str, Any]]:
    """``(name, registry entry, options)`` of one metric in a list (``"nll:k=100"``), its name
    and options checked: the one check, run when a config is validated and again by ``evaluate``.

    The options are checked against the metric's signature (``registry.check_metric_options``),
    then by the metric's own ``check_options(options, data_shape=..., latent_dim=...)`` when its
    function has one: ``nll`` refuses a ``k`` whose importance weights cannot fit in memory here,
    before any metric runs.  ``data_shape`` ``[C, H, W]`` and ``latent_dim`` are the model's, when
    known (``None`` at config time for a shape read from the data)."""
    entry = parse_metric(spec)
    component = get_registry().get("metric", entry["name"])
    options = check_metric_options(component, {k: v for k, v in entry.items() if k != "name"})
    check = getattr(component.factory, "check_options", None)
    if callable(check):
        check(options, data_shape=tuple(data_shape) if data_shape is not None else None, latent_dim=latent_dim)
    return entry["name"], component, options


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Check a complete config (every key of ``asvae_kit.schema``) and its component entries;
    return it, its values normalised (raises ``ConfigError``)."""
    check_known(config)
    for group in GROUPS:
        check_known(check_group(config[group], group), group)
    for key in SCHEMA:
        if key.check is not None:
            holder = config[key.group] if key.group else config
            holder[key.sub] = key.check(holder[key.sub], key.what)
    if config["data"].get("name") is None and config["data_shape"] is None:
        raise ConfigError("config has no data (data=None) and no data_shape; give one of them so the networks know the image shape")

    registry = get_registry()
    for key, kind in COMPONENT_KINDS.items():
        entry = config[key]
        if key == "data" and entry.get("name") is None:
            continue
        component = registry.get(kind, entry["name"])
        entry["name"] = component.name  # aliases resolve to the registered name
        check_config_keys(component, {k: v for k, v in entry.items() if k != "name"}, allow_context=False)
    for spec in config["metrics"]:
        # without the image shape: a metric's memory estimate is then a lower bound, which refuses
        # an absurd option (nll:k=1e9) but never a run's ordinary metrics on a smaller machine
        # (load() validates the saved config, with its data_shape, before every resume); evaluate
        # checks them again with the shape, for the metrics it actually runs
        check_metric_spec(spec, data_shape=None, latent_dim=config["latent_dim"])
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


#: The largest config file read: a config is a few KB (a run's ``config.json`` about 2 KB); a
#: bigger file is a mistake (a data file passed as ``--config``) and is refused before it is read.
MAX_CONFIG_FILE_BYTES = 4 << 20
#: The most values a YAML config may expand to through its aliases (``*name``) beyond the values
#: written in it: aliases may repeat a mapping, but a few hundred bytes of nested aliases ("billion
#: laughs") would otherwise expand to billions of values, minutes and gigabytes.
MAX_YAML_EXPANDED_VALUES = 100_000

#: Numbers that YAML 1.1 (PyYAML) leaves as strings but everyone means as numbers: an exponent
#: without a dot or without a sign (``1e-4``, ``2.5e3``).  Only plain (unquoted) scalars are
#: resolved by it, so ``"1e-4"`` in quotes stays the string it says it is.
_YAML_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _YamlTooBig(Exception):
    """Raised by the config YAML loader when aliases expand past ``MAX_YAML_EXPANDED_VALUES``."""


def _expanded_size(node: Any) -> tuple[int, int]:
    """(values ``node`` expands to with every alias copied out, distinct nodes in it).

    Linear in the composed graph: a node an alias shares is sized once and its size reused, so a
    billion-laughs document is measured in microseconds without building any of it.  A recursive
    alias (``&a [*a]``) expands forever: ``_YamlTooBig``."""
    import yaml

    sizes: dict[int, int] = {}
    visiting: set[int] = set()

    def size(n: Any) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in visiting:
            raise _YamlTooBig("an alias refers to a node that contains it (a recursive alias), which expands forever")
        visiting.add(key)
        total = 1
        if isinstance(n, yaml.SequenceNode):
            total += sum(size(child) for child in n.value)
        elif isinstance(n, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in n.value)
        visiting.discard(key)
        sizes[key] = total
        return total

    return size(node), len(sizes)


@functools.lru_cache(maxsize=None)
def _yaml_loader() -> type:
    """PyYAML's ``SafeLoader`` (no Python objects) with two changes for config files: unquoted
    ``1e-4`` is a number (``_YAML_FLOAT``), and a document whose aliases expand past
    ``MAX_YAML_EXPANDED_VALUES`` values is refused after composing (which is linear in the
    file's size) and before anything is constructed."""
    import yaml

    class ConfigLoader(yaml.SafeLoader):
        def compose_document(self) -> Any:
            node = super().compose_document()
            if node is not None:
                expanded, distinct = _expanded_size(node)
                if expanded > max(MAX_YAML_EXPANDED_VALUES, distinct):
                    raise _YamlTooBig(f"its aliases (*name) expand to {expanded} values, more than the {MAX_YAML_EXPANDED_VALUES} allowed")
            return node

    ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML_FLOAT, list("-+0123456789."))
    return ConfigLoader


def _read_config_text(path: Path) -> str:
    """The text of the config file ``path``: at most ``MAX_CONFIG_FILE_BYTES``, UTF-8 (a BOM is
    dropped); ``ConfigError`` naming the file otherwise."""
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_FILE_BYTES:
            raise ConfigError(
                f"config file {path} is {size} bytes, more than a config's limit of {MAX_CONFIG_FILE_BYTES}; "
                "is it the right file? A config holds config keys (a run's config.json is about 2 KB)"
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror or type(exc).__name__}); check its permissions") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        ) from None


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A config mapping from a JSON, YAML or TOML file (a run's ``config.json`` included).

    It may name a ``preset`` to start from; its other keys are config keys, applied over that
    preset (``resolve_config``).  Hostile files are refused in one line naming the file, before
    they cost time or memory: larger than ``MAX_CONFIG_FILE_BYTES``, not UTF-8, empty, not a
    mapping, or YAML whose aliases expand past ``MAX_YAML_EXPANDED_VALUES`` values.  In YAML an
    unquoted ``1e-4`` is a number and a quoted ``"32"`` a string."""
    path = Path(path)
    suffix = path.suffix.lower()
    check_choice(suffix, CONFIG_FILE_FORMATS, f"config file {path}: the extension")
    if not path.is_file():
        raise ConfigError(f"config file {path} not found" + (" (it is a directory; a run's config is RUN/config.json)" if path.is_dir() else ""))
    text = _read_config_text(path)
    if not text.strip():
        raise ConfigError(f"config file {path} is empty; write config keys in it (e.g. steps: 500)")
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
            data = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 (a SafeLoader)
    except ConfigError:
        raise
    except _YamlTooBig as exc:
        raise ConfigError(f"config file {path}: {exc}; write the values out instead of nesting aliases") from None
    except RecursionError:
        raise ConfigError(f"config file {path} nests its values too deeply to be a config; a config is a few levels deep") from None
    except Exception as exc:  # each parser has its own error type; all mean the same here
        raise ConfigError(f"config file {path} is not valid {suffix[1:].upper()}: {' '.join(str(exc).split())}") from None
    if data is None:
        raise ConfigError(f"config file {path} holds only comments; write config keys in it (e.g. steps: 500)")
    if not isinstance(data, dict):
        kinds = {"list": "a list", "str": "a single string", "int": "a single number", "float": "a single number", "bool": "a single boolean"}
        raise ConfigError(
            f"config file {path} must hold a mapping of config keys at its top level (like steps: 500), "
            f"got {kinds.get(type(data).__name__, type(data).__name__)}"
        )
    return data


def resolve_config(preset: str | Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The schema's defaults + preset (a name or a mapping) + overrides, validated."""
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
    check_known(base, where=f" in preset {preset if isinstance(preset, str) else '(mapping)'!r}")
    config = defaults()
    for key, value in base.items():  # a preset (or a saved run's config) names its entries whole
        _set(config, key, value, merge_entries=False)
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
