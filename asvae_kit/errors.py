"""Exception types raised by asvae-kit.

Each one subclasses the built-in exception a caller would expect (``KeyError`` for unknown names,
``ValueError`` for bad values), so ``except KeyError`` keeps working for code that predates them.
"""

from __future__ import annotations

from typing import Sequence

from .names import article, suggestion_text

__all__ = [
    "AsvaeKitError",
    "UnknownComponentError",
    "PluginError",
    "ConfigError",
    "UnsupportedShapeError",
    "DataError",
    "NotHeldOutError",
    "CheckpointError",
    "RunDirectoryError",
    "TrainingDivergedError",
    "GraphCaptureError",
    "PeerLostError",
]


class AsvaeKitError(Exception):
    """Base class of every error asvae-kit raises on purpose."""


class UnknownComponentError(AsvaeKitError, KeyError):
    """A component name that no loaded plugin registered.

    Attributes:
        kind: the kind that was asked for (``None`` when any kind was searched).
        name: the name that was asked for.
        suggestions: registered names of that kind close to ``name`` (edit distance ≤ 2 always).
        other_kinds: kinds under which ``name`` *is* registered.
        failed_plugins: plugins that failed to load (the name may have come from one of them).
    """

    def __init__(
        self,
        kind: str | None,
        name: str,
        *,
        suggestions: Sequence[str] = (),
        other_kinds: Sequence[str] = (),
        failed_plugins: Sequence[str] = (),
    ) -> None:
        self.kind = kind
        self.name = name
        self.suggestions = list(suggestions)
        self.other_kinds = list(other_kinds)
        self.failed_plugins = list(failed_plugins)
        what = f"{kind} {name!r}" if kind else f"component {name!r}"
        parts = [f"unknown {what}.{suggestion_text(self.suggestions)}"]
        if self.other_kinds:
            kinds = " and ".join(article(k) for k in self.other_kinds)
            parts.append(f"{name!r} is registered as {kinds}, not {article(kind or 'component')}.")
        if self.failed_plugins:
            parts.append(
                "These plugins failed to load and may provide it: "
                + ", ".join(self.failed_plugins)
                + " (see `asvae-kit plugins`)."
            )
        if not self.suggestions and not self.other_kinds:
            parts.append(f"List what is installed with `asvae-kit list {kind or ''}`.".replace(" `.", "`."))
        self.message = " ".join(parts)
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


class PluginError(AsvaeKitError, ValueError):
    """A plugin misbehaved: bad component name, duplicate registration, failing hook."""


class ConfigError(AsvaeKitError, ValueError):
    """A config key or value that cannot be used (unknown key, wrong type)."""


class UnsupportedShapeError(AsvaeKitError, ValueError):
    """A network was asked to serve an image shape it was not built for."""


class DataError(AsvaeKitError, ValueError):
    """Data that cannot be used: missing files, bad checksums, wrong range, NaN."""


class NotHeldOutError(DataError):
    """Evaluation on a split that is not known to be held out from what the model trained on: after
    ``fit(data=...)``, the configured data set's ``val`` and ``test`` splits (pass ``data=``)."""


class CheckpointError(AsvaeKitError, ValueError):
    """A run directory that cannot be loaded (missing or corrupt files)."""


class RunDirectoryError(AsvaeKitError, ValueError):
    """A run directory that cannot be written: not a run, a file, or locked by another writer."""


class TrainingDivergedError(AsvaeKitError, FloatingPointError):
    """A loss became NaN or infinite, or grew past ``diverge_factor`` times its running median;
    nothing is saved after that step, so the last checkpoint on disk is the last good state."""


class GraphCaptureError(AsvaeKitError, RuntimeError):
    """Recording the training step in a CUDA graph failed (``cuda_graphs``) after its rehearsal
    found nothing that could not be recorded; the process's CUDA state may not be usable."""


class PeerLostError(AsvaeKitError, RuntimeError):
    """Under data parallelism, another process left or stopped answering in the middle of a step's
    all-reduce (it failed, was killed, or passed ``$ASVAE_KIT_DIST_TIMEOUT``); its own output says
    why.  Nothing is saved after that step."""
