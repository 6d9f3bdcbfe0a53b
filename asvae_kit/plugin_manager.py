"""Loading plugins into the process-wide registry: built-ins first, then the ``asvae_kit`` entry
points, one at a time.  ``get_registry`` loads them on first use; ``list_components``,
``describe`` and ``build_component`` are the public API over it.

Fault isolation (docs/design.md §3): a plugin that fails to import, implements a hook that does not
exist, raises in a hook, registers a bad name or a name another plugin owns, is skipped whole
(none of its components are kept) with one warning, and recorded as failed with a one-line
reason.  ``ASVAE_KIT_STRICT_PLUGINS=1`` re-raises instead; ``ASVAE_KIT_LOAD_PLUGINS=a,b`` loads
only those entry points (empty: none).  Built-ins always load, and a failure there is a bug that
is always raised.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
import threading
import warnings
from typing import Any, Callable

import pluggy

from . import hookspecs
from ._version import __version__
from .errors import ConfigError, PluginError
from .names import is_valid_name
from .registry import ComponentEntry, PluginRecord, Registry

__all__ = [
    "get_registry",
    "reset_registry",
    "list_components",
    "describe",
    "build_component",
    "load_plugins",
    "strict_mode",
    "BUILTIN_MODULES",
    "ENTRY_POINT_GROUP",
    "PluginLoadWarning",
]

ENTRY_POINT_GROUP = "asvae_kit"

#: The built-in plugins, registered through the same hooks as outside packages.
BUILTIN_MODULES = (
    "asvae_kit.plugins.encoders",
    "asvae_kit.plugins.decoders",
    "asvae_kit.plugins.discriminators",
    "asvae_kit.plugins.divergences",
    "asvae_kit.plugins.presets",
    "asvae_kit.plugins.datasets",
    "asvae_kit.plugins.metrics",
    "asvae_kit.plugins.loggers",
)


class PluginLoadWarning(UserWarning):
    """A plugin was skipped because it failed to load; see ``asvae-kit plugins``."""


def strict_mode() -> bool:
    return os.environ.get("ASVAE_KIT_STRICT_PLUGINS", "").strip().lower() in ("1", "true", "yes", "on")


def _allowed_entry_points() -> set[str] | None:
    raw = os.environ.get("ASVAE_KIT_LOAD_PLUGINS")
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text}"


def _package_version() -> str | None:
    try:
        return metadata.version("asvae-kit")
    except metadata.PackageNotFoundError:
        return __version__


def _collect(pm: pluggy.PluginManager, plugin_name: str, record: PluginRecord) -> list[ComponentEntry]:
    """Run the plugin's hooks, returning its registrations (validated, not yet added)."""
    staged: list[ComponentEntry] = []
    for hook_name, kind in hookspecs.HOOK_KINDS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if impl.plugin_name != plugin_name:
                continue
            record.hooks.append(hook_name)

            def register(
                name: str,
                factory: Callable[..., Any],
                *,
                description: str = "",
                aliases: tuple[str, ...] | list[str] = (),
                _kind: str = kind,
            ) -> None:
                for n in (name, *aliases):
                    if not is_valid_name(n):
                        raise PluginError(
                            f"plugin {plugin_name!r} registered the {_kind} name {n!r}, which is not "
                            "lowercase kebab-case ([a-z0-9][a-z0-9-]*)"
                        )
                if not callable(factory):
                    raise PluginError(f"plugin {plugin_name!r} registered {_kind} {name!r} with a factory that is not callable: {factory!r}")
                try:  # reads the factory's options once, and a metric's weights attribute
                    entry = ComponentEntry(
                        kind=_kind,
                        name=name,
                        factory=factory,
                        description=str(description or ""),
                        aliases=tuple(aliases),
                        plugin=plugin_name,
                        distribution=record.distribution,
                        version=record.version,
                    )
                except ConfigError as exc:
                    raise PluginError(f"plugin {plugin_name!r}: {exc}") from None
                staged.append(entry)

            impl.function(register=register)
    return staged


def _commit(registry: Registry, plugin_name: str, staged: list[ComponentEntry], record: PluginRecord) -> None:
    """Check every staged name is free, then add them all (all or nothing)."""
    seen: dict[tuple[str, str], str] = {}
    for entry in staged:
        for n in (entry.name, *entry.aliases):
            owner = registry.provider_of(entry.kind, n)
            if owner is not None:
                raise PluginError(
                    f"duplicate {entry.kind} {n!r}: registered by plugin {owner.plugin!r} "
                    f"({owner.distribution or 'unknown distribution'}) and by plugin {plugin_name!r} "
                    f"({record.distribution or 'unknown distribution'}); rename one of them"
                )
            if (entry.kind, n) in seen:
                raise PluginError(f"plugin {plugin_name!r} registered {entry.kind} {n!r} twice")
            seen[(entry.kind, n)] = entry.name
    for entry in staged:
        registry.add(entry)
        record.components.setdefault(entry.kind, []).append(entry.name)


def _load_one(
    registry: Registry,
    pm: pluggy.PluginManager,
    record: PluginRecord,
    import_module: Callable[[], Any],
    strict: bool = False,
) -> None:
    """Import, register and collect one plugin; on failure undo it and record why (and, for a
    built-in or in strict mode, raise)."""
    module = None
    try:
        module = import_module()
        record.path = getattr(module, "__file__", None)
        if record.name in pm.list_name_plugin() or pm.is_registered(module):
            raise PluginError(f"plugin {record.name!r} is already registered (module {getattr(module, '__name__', module)!r})")
        pm.register(module, name=record.name)
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {record.name!r} implements a hook asvae-kit does not have: {exc}") from exc
        staged = _collect(pm, record.name, record)
        _commit(registry, record.name, staged, record)
    except Exception as exc:
        if module is not None and pm.get_plugin(record.name) is not None:
            pm.unregister(name=record.name)
        record.status = "failed"
        record.reason = _one_line(exc)
        record.components = {}
        registry.plugins.append(record)
        if record.builtin:
            raise
        if strict:
            raise PluginError(
                f"plugin {record.name!r} ({record.distribution or 'unknown distribution'}) failed to load: {record.reason}. "
                "ASVAE_KIT_STRICT_PLUGINS=1 makes that an error; fix or uninstall the plugin, or unset the variable "
                "to skip it with a warning (`asvae-kit plugins` lists every plugin's status)"
            ) from exc
        warnings.warn(
            f"asvae-kit: skipped plugin {record.name!r} ({record.distribution or 'unknown distribution'}): "
            f"{record.reason}. Run `asvae-kit plugins` for details; set ASVAE_KIT_STRICT_PLUGINS=1 to raise.",
            PluginLoadWarning,
            stacklevel=4,
        )
        return
    registry.plugins.append(record)


def load_plugins(registry: Registry, *, strict: bool | None = None) -> pluggy.PluginManager:
    """Fill ``registry`` from the built-ins and the allowed entry points; return the manager.

    ``strict`` (default: ``ASVAE_KIT_STRICT_PLUGINS``) makes a failing plugin an error."""
    strict = strict_mode() if strict is None else strict
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    version = _package_version()
    for module_name in BUILTIN_MODULES:
        record = PluginRecord(name=module_name, distribution="asvae-kit", version=version, builtin=True)
        _load_one(registry, pm, record, lambda m=module_name: importlib.import_module(m))

    allowed = _allowed_entry_points()
    eps = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
    for ep in eps:
        if allowed is not None and ep.name not in allowed:
            continue
        dist = getattr(ep, "dist", None)
        record = PluginRecord(
            name=ep.name,
            distribution=getattr(dist, "name", None),
            version=getattr(dist, "version", None),
        )
        _load_one(registry, pm, record, ep.load, strict)
    if allowed:
        missing = allowed - {ep.name for ep in eps}
        if missing:
            warnings.warn(
                f"asvae-kit: ASVAE_KIT_LOAD_PLUGINS names {', '.join(sorted(missing))}, but no installed "
                f"package declares such an entry point in the {ENTRY_POINT_GROUP!r} group",
                PluginLoadWarning,
                stacklevel=3,
            )
    return pm


_registry: Registry | None = None
_lock = threading.RLock()


def get_registry() -> Registry:
    """The process-wide registry, loading built-ins and entry-point plugins on first call."""
    global _registry
    with _lock:
        if _registry is None:
            registry = Registry()
            load_plugins(registry)
            _registry = registry
        return _registry


def reset_registry() -> None:
    """Forget the loaded plugins; the next lookup reloads them (re-reading the environment)."""
    global _registry
    with _lock:
        _registry = None


def list_components(kind: str | None = None, pattern: str = "*") -> list[str]:
    """Registered names of ``kind`` (all kinds when ``None``) matching the fnmatch ``pattern``, sorted."""
    return get_registry().list(kind, pattern)


def describe(name: str, kind: str | None = None) -> dict[str, Any]:
    """Kind, description, providing plugin/distribution/version and config defaults of ``name``."""
    return get_registry().describe(name, kind)


def build_component(kind: str, name: str, **config: Any) -> Any:
    """Build the component ``name`` of ``kind`` by calling its factory with ``config`` (checked)."""
    return get_registry().build(kind, name, **config)
