"""The component table: entries by (kind, name), the plugin records, lookup and listing, and
what config keys each factory takes.

A ``Registry`` is filled by ``asvae_kit.plugin_manager.load_plugins``, which also holds the
process-wide one (``get_registry``); this module imports nothing of the plugin machinery.
"""

from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import ConfigError, UnknownComponentError
from .names import KINDS, article, close_matches, did_you_mean, normalize_kind

__all__ = [
    "ComponentEntry",
    "PluginRecord",
    "Registry",
    "check_config_keys",
    "factory_config_defaults",
    "metric_options",
    "check_metric_options",
    "metric_weights",
    "CONTEXT_KEYS",
    "METRIC_SUPPLIED",
    "METRIC_WEIGHTS",
]

#: Keyword arguments the builder supplies to factories; not config keys a user sets.
CONTEXT_KEYS = ("data_shape", "latent_dim", "num_heads")
#: Keyword arguments evaluation supplies to a metric besides ``(trainer, data)``; never its options.
METRIC_SUPPLIED = ("labels", "split")
#: The weights a metric may ask to be evaluated with (its factory's ``weights`` attribute):
#: ``"average"`` (the default: the EMA average when the run keeps one) or ``"raw"`` (the
#: training weights, which the discriminator was trained against).
METRIC_WEIGHTS = ("average", "raw")


@dataclass(frozen=True)
class ComponentEntry:
    """One registered component."""

    kind: str
    name: str
    factory: Callable[..., Any]
    description: str
    aliases: tuple[str, ...]
    plugin: str
    distribution: str | None
    version: str | None


@dataclass
class PluginRecord:
    """What ``asvae-kit plugins`` shows for one plugin (built-in or entry point)."""

    name: str
    distribution: str | None = None
    version: str | None = None
    path: str | None = None
    builtin: bool = False
    hooks: list[str] = field(default_factory=list)
    components: dict[str, list[str]] = field(default_factory=dict)
    status: str = "ok"
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "path": self.path,
            "builtin": self.builtin,
            "hooks": list(self.hooks),
            "components": {k: list(v) for k, v in self.components.items()},
            "status": self.status,
            "reason": self.reason,
        }


def factory_config_defaults(factory: Callable[..., Any]) -> tuple[dict[str, Any], bool]:
    """Config keys with their defaults, read from the factory's signature.

    Returns ``(defaults, accepts_any)``; required keys map to ``None``; ``accepts_any`` is true
    when the factory takes ``**kwargs`` (then unknown keys cannot be checked).
    """
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return {}, True
    defaults: dict[str, Any] = {}
    accepts_any = False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            accepts_any = True
            continue
        if p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY) or p.name in CONTEXT_KEYS or p.name == "self":
            continue
        value = None if p.default is p.empty else p.default
        defaults[p.name] = list(value) if isinstance(value, tuple) else value
    return defaults, accepts_any


def metric_options(fn: Callable[..., Any]) -> tuple[dict[str, Any], bool]:
    """A metric's own options with their defaults (its keyword parameters after ``trainer, data``),
    and whether it takes ``**kwargs``."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return {}, True
    options: dict[str, Any] = {}
    accepts_any = False
    for p in params[2:]:
        if p.kind is p.VAR_KEYWORD:
            accepts_any = True
        elif p.kind is not p.VAR_POSITIONAL and p.name not in METRIC_SUPPLIED:
            options[p.name] = None if p.default is p.empty else p.default
    return options, accepts_any


def check_metric_options(entry: ComponentEntry, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` when the metric of ``entry`` takes every one of them; ``ConfigError`` with a
    did-you-mean otherwise.  A ``seed`` option must be a non-negative integer.  The one check
    for metric options, run when a config is validated and again when ``evaluate`` is called."""
    known, accepts_any = metric_options(entry.factory)
    for key in options:
        if key not in known and not accepts_any:
            raise ConfigError(
                f"metric {entry.name!r} has no option {key!r}.{did_you_mean(key, known)} Its options: {', '.join(known) or 'none'}."
            )
    if "seed" in options:
        from .checks import check_int

        check_int(options["seed"], f"metric {entry.name!r}: seed", minimum=0)
    return options


def metric_weights(fn: Callable[..., Any], name: str | None = None) -> str:
    """``"average"`` or ``"raw"``: the weights the metric ``fn`` is evaluated with, read from its
    ``weights`` attribute (``"average"`` when it has none); ``ConfigError`` for any other value."""
    weights = getattr(fn, "weights", "average")
    if weights not in METRIC_WEIGHTS:
        what = f"metric {name!r}" if name else f"metric {getattr(fn, '__name__', fn)!r}"
        raise ConfigError(
            f"{what} sets weights = {weights!r}; it must be 'average' (the EMA average, the default) or 'raw' "
            "(the training weights the discriminator was trained against)"
        )
    return weights


class Registry:
    """Components by (kind, name), plus the record of every plugin that was tried."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, ComponentEntry]] = {k: {} for k in KINDS}
        self._aliases: dict[str, dict[str, str]] = {k: {} for k in KINDS}
        self.plugins: list[PluginRecord] = []

    # -- filling -------------------------------------------------------------------------------
    def provider_of(self, kind: str, name: str) -> ComponentEntry | None:
        """The entry that already owns ``name`` (as a name or an alias) in ``kind``, if any."""
        key = self._aliases[kind].get(name, name)
        return self._entries[kind].get(key)

    def add(self, entry: ComponentEntry) -> None:
        """Add an entry whose names were checked to be free (see ``provider_of``)."""
        self._entries[entry.kind][entry.name] = entry
        for alias in entry.aliases:
            self._aliases[entry.kind][alias] = entry.name

    # -- lookup --------------------------------------------------------------------------------
    @property
    def failed_plugins(self) -> list[str]:
        return [p.name for p in self.plugins if p.status != "ok"]

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def get(self, kind: str, name: str) -> ComponentEntry:
        """The entry for ``name`` (or one of its aliases); ``UnknownComponentError`` otherwise."""
        kind = normalize_kind(kind)
        if not isinstance(name, str):
            raise ConfigError(f"{article(kind)} name must be a string, got {name!r} ({type(name).__name__})")
        entry = self.provider_of(kind, name)
        if entry is not None:
            return entry
        known = list(self._entries[kind]) + list(self._aliases[kind])
        other_kinds = [k for k in KINDS if k != kind and self.provider_of(k, name) is not None]
        raise UnknownComponentError(
            kind,
            name,
            suggestions=close_matches(name, known),
            other_kinds=other_kinds,
            failed_plugins=self.failed_plugins,
        )

    def find(self, name: str, kind: str | None = None) -> ComponentEntry:
        """Look ``name`` up in ``kind``, or in every kind when ``kind`` is ``None``."""
        if kind is not None:
            return self.get(kind, name)
        hits = [self.provider_of(k, name) for k in KINDS]
        hits = [h for h in hits if h is not None]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            kinds = ", ".join(h.kind for h in hits)
            raise ConfigError(f"{name!r} names a component of several kinds ({kinds}); pass the kind, e.g. kind={hits[0].kind!r}")
        known = [n for k in KINDS for n in list(self._entries[k]) + list(self._aliases[k])]
        raise UnknownComponentError(None, name, suggestions=close_matches(name, known), failed_plugins=self.failed_plugins)

    def list(self, kind: str | None = None, pattern: str = "*") -> list[str]:
        kinds = KINDS if kind is None else (normalize_kind(kind),)
        names = {n for k in kinds for n in self._entries[k]}
        return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))

    def describe(self, name: str, kind: str | None = None) -> dict[str, Any]:
        entry = self.find(name, kind)
        config, accepts_any = factory_config_defaults(entry.factory)
        info: dict[str, Any] = {
            "kind": entry.kind,
            "name": entry.name,
            "aliases": list(entry.aliases),
            "description": entry.description,
            "provider": entry.plugin,
            "distribution": entry.distribution,
            "version": entry.version,
            "config": config,
            "accepts_extra_config": accepts_any,
        }
        if entry.kind == "preset":
            info["config"] = entry.factory()
        elif entry.kind == "metric":
            info["config"], info["accepts_extra_config"] = metric_options(entry.factory)
            info["weights"] = metric_weights(entry.factory, entry.name)
        return info

    def build(self, kind: str, name: str, **config: Any) -> Any:
        """Call the factory of ``name`` with ``config``, its keys checked first."""
        entry = self.get(kind, name)
        check_config_keys(entry, config)
        return entry.factory(**config)


_CONTEXT_SOURCE = {
    "data_shape": "the top-level 'data_shape' key (or the dataset)",
    "latent_dim": "the top-level 'latent_dim' key",
    "num_heads": "the divergence (each divergence declares its head count)",
}


def check_config_keys(entry: ComponentEntry, config: dict[str, Any], *, allow_context: bool = True) -> None:
    """Raise ``ConfigError`` (with did-you-mean) for keys the factory does not take.

    With ``allow_context=False`` (config entries) the keys the builder supplies itself
    (``data_shape``, ``latent_dim``, ``num_heads``) are refused, naming where they come from.
    """
    if not allow_context:
        for key in config:
            if key in CONTEXT_KEYS:
                raise ConfigError(
                    f"{entry.kind} {entry.name!r}: {key!r} is not set per component; it comes from {_CONTEXT_SOURCE[key]}"
                )
    defaults, accepts_any = factory_config_defaults(entry.factory)
    if accepts_any:
        return
    allowed = set(defaults) | set(CONTEXT_KEYS)
    for key in config:
        if key not in allowed:
            keys = ", ".join(sorted(defaults)) or "none"
            raise ConfigError(f"{entry.kind} {entry.name!r} has no config key {key!r}.{did_you_mean(key, defaults)} Its keys: {keys}.")
