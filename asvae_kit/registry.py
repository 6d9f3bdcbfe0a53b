"""The component table: entries by (kind, name), the plugin records, lookup and listing, and
what config keys each factory takes.

A factory's options (its config keys with their defaults, whether it takes ``**kwargs``, which of
the builder's keys it takes, a metric's ``weights``) are read from its signature once, when its
entry is made at registration (``read_options``), and kept on the entry as ``entry.options``;
``describe``, the config checks, evaluation and the splits read them there.

A ``Registry`` is filled by ``asvae_kit.plugin_manager.load_plugins``, which also holds the
process-wide one (``get_registry``); this module imports nothing of the plugin machinery.
"""

from __future__ import annotations

import copy
import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .errors import ConfigError, UnknownComponentError
from .names import KINDS, article, close_matches, did_you_mean, normalize_kind

__all__ = [
    "ComponentEntry",
    "ComponentOptions",
    "read_options",
    "PluginRecord",
    "Registry",
    "check_config_keys",
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
class ComponentOptions:
    """What a component's factory takes, read from its signature once (``read_options``)."""

    #: its config keys (a metric: its options) with their defaults; ``None`` for a required one
    keys: Mapping[str, Any]
    #: it takes ``**kwargs``, so keys it does not name cannot be checked
    accepts_any: bool
    #: the builder's keyword arguments it takes (of ``CONTEXT_KEYS``: data_shape, latent_dim, num_heads)
    context: tuple[str, ...] = ()
    #: a metric: the arguments evaluation supplies that it takes by keyword (of ``METRIC_SUPPLIED``)
    supplied: tuple[str, ...] = ()
    #: a metric: the weights it is evaluated with, ``"average"`` or ``"raw"`` (``METRIC_WEIGHTS``)
    weights: str | None = None

    def defaults(self) -> dict[str, Any]:
        """A copy of ``keys`` (lists and mappings in it too), safe to hand out."""
        return copy.deepcopy(dict(self.keys))


@dataclass(frozen=True)
class ComponentEntry:
    """One registered component; ``options`` is read from the factory when the entry is made
    (``dataclasses.replace(entry, factory=...)`` reads the new factory's)."""

    kind: str
    name: str
    factory: Callable[..., Any]
    description: str
    aliases: tuple[str, ...]
    plugin: str
    distribution: str | None
    version: str | None
    options: ComponentOptions = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", read_options(self.factory, self.kind, self.name))


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


def _signature_options(factory: Callable[..., Any], metric: bool) -> ComponentOptions:
    """``factory``'s options without ``weights``: the one reading of a factory's signature.

    A network, divergence, dataset or logger factory: its keyword parameters, less the builder's
    ``CONTEXT_KEYS`` (tuple defaults as lists, as JSON has them).  A metric ``fn(trainer, data,
    ...)``: its keyword parameters after ``trainer, data``, less ``METRIC_SUPPLIED``.  A factory
    without a readable signature takes anything."""
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return ComponentOptions({}, True)
    keys: dict[str, Any] = {}
    accepts_any = False
    if metric:
        for p in params[2:]:
            if p.kind is p.VAR_KEYWORD:
                accepts_any = True
            elif p.kind is not p.VAR_POSITIONAL and p.name not in METRIC_SUPPLIED:
                keys[p.name] = None if p.default is p.empty else p.default
        names = {p.name for p in params}
        return ComponentOptions(keys, accepts_any, supplied=tuple(k for k in METRIC_SUPPLIED if k in names or accepts_any))
    context = []
    for p in params:
        if p.kind is p.VAR_KEYWORD:
            accepts_any = True
            continue
        if p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY) or p.name == "self":
            continue
        if p.name in CONTEXT_KEYS:
            context.append(p.name)
            continue
        value = None if p.default is p.empty else p.default
        keys[p.name] = list(value) if isinstance(value, tuple) else value
    return ComponentOptions(keys, accepts_any, context=tuple(context))


def read_options(factory: Callable[..., Any], kind: str, name: str | None = None) -> ComponentOptions:
    """The options of the ``kind`` component ``name`` built by ``factory`` (``ComponentEntry``
    reads them once, at registration).  A metric's ``weights`` attribute is checked here too
    (``ConfigError`` for a bad one)."""
    options = _signature_options(factory, kind == "metric")
    if kind == "metric":
        options = ComponentOptions(options.keys, options.accepts_any, options.context, options.supplied, metric_weights(factory, name))
    return options


def check_metric_options(entry: ComponentEntry, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` when the metric of ``entry`` takes every one of them; ``ConfigError`` with a
    did-you-mean otherwise.  A ``seed`` option must be a non-negative integer.  The one check
    for metric options, run when a config is validated and again when ``evaluate`` is called."""
    known, accepts_any = entry.options.keys, entry.options.accepts_any
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
        info: dict[str, Any] = {
            "kind": entry.kind,
            "name": entry.name,
            "aliases": list(entry.aliases),
            "description": entry.description,
            "provider": entry.plugin,
            "distribution": entry.distribution,
            "version": entry.version,
            "config": entry.factory() if entry.kind == "preset" else entry.options.defaults(),
            "accepts_extra_config": entry.options.accepts_any,
        }
        if entry.kind == "metric":
            info["weights"] = entry.options.weights
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
    defaults, accepts_any = entry.options.keys, entry.options.accepts_any
    if accepts_any:
        return
    allowed = set(defaults) | set(CONTEXT_KEYS)
    for key in config:
        if key not in allowed:
            keys = ", ".join(sorted(defaults)) or "none"
            raise ConfigError(f"{entry.kind} {entry.name!r} has no config key {key!r}.{did_you_mean(key, defaults)} Its keys: {keys}.")
