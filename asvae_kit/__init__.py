"""asvae-kit: the Adversarial Symmetric VAE (Pu et al., NIPS 2017) and its relatives.

    import asvae_kit
    trainer = asvae_kit.build("mlp-asvae", steps=500)
    trainer.fit(run_dir="runs/digits")
    images = asvae_kit.load("runs/digits").sample(16)

Importing this package is cheap: the plugin registry, the networks and the data loaders load on
first use, and Triton never loads unless a Triton kernel runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import errors as _errors
from .errors import *  # noqa: F403  (every exception type, as listed in errors.__all__)
from .hookspecs import hookimpl

from ._version import __version__

__all__ = [
    "__version__",
    "hookimpl",
    "list_components",
    "describe",
    "build_component",
    "build",
    "load",
    "Trainer",
    *_errors.__all__,
]

_LAZY = {
    "list_components": ("plugin_manager", "list_components"),
    "describe": ("plugin_manager", "describe"),
    "build_component": ("plugin_manager", "build_component"),
    "build": ("builder", "build"),
    "load": ("builder", "load"),
    "Trainer": ("trainer", "Trainer"),
    "distributions": ("distributions", None),
}

if TYPE_CHECKING:  # pragma: no cover
    from . import distributions  # noqa: F401
    from .builder import build, load
    from .plugin_manager import build_component, describe, list_components
    from .trainer import Trainer


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        module = importlib.import_module(f".{module_name}", __name__)
        value = module if attr is None else getattr(module, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'asvae_kit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
