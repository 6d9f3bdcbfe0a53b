"""Training, validation and test splits of the configured data: evaluation never sees training images.

Every data set is divided into three disjoint splits (``SPLITS``):

- ``"train"``: what training draws from, and nothing else;
- ``"val"``: a fixed validation slice of the training split, ``val_fraction`` of it (default
  10%) and at most ``val_max`` images (default 5000).  Training never draws from it; tuning
  (choosing hyper-parameters, checkpoints, divergences) reads it;
- ``"test"``: the data set's own test split where it has one (a factory that takes ``split``,
  configured with ``split="train"``: ``mnist``, ``fashion-mnist``, ``cifar10``), else a second
  fixed slice, the ``holdout`` fraction (default 10%) of the whole data set (``digits``,
  ``image-folder``, ``tensor``, or a test split used for training).  Only final numbers read it.

For a data set without a test split the test slice is carved first and the validation slice
from what remains.  Both slices come from one permutation with a fixed seed (``HOLDOUT_SEED``),
so they depend only on the data set's size, never on the run's seed: every run on the same data
is tuned on the same images and scored on the same images.  This module is the one place for
the rule; the trainer, ``evaluate`` and the command line only ask it for a split by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .checks import check_choice
from .errors import DataError
from .registry import ComponentEntry, ComponentOptions, read_options

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "SPLITS", "HOLDOUT_SEED", "DataSplit", "ConfiguredData", "has_test_split", "holdout_indices", "split_indices",
    "split_dataset", "check_split",
]

#: The splits of every data set, in the order a workflow uses them: fit, tune, report.  (This module
#: imports torch only where it slices data, so the command line reads ``SPLITS`` without it.)
SPLITS = ("train", "val", "test")

#: The held-out slices are a function of the data set's size alone (not of the run's seed).
HOLDOUT_SEED = 2017


@dataclass
class DataSplit:
    """One split of the configured data and a sentence saying what it is (which images, how many)."""

    dataset: Any
    split: str
    source: str


def check_split(split: Any) -> str:
    """``split`` when it names one of ``SPLITS``; ``ConfigError`` naming the choices otherwise."""
    return check_choice(split, SPLITS, "split", note=" 'val' is for tuning, 'test' for final numbers, 'train' for the images trained on")


def _options(component: ComponentEntry | Callable[..., Any]) -> ComponentOptions:
    """The options of a registered data set (read when it registered), or of a bare factory."""
    return component.options if isinstance(component, ComponentEntry) else read_options(component, "dataset")


def has_test_split(entry: dict[str, Any], component: ComponentEntry | Callable[..., Any]) -> bool:
    """True when the data set ``entry`` (of the registered ``component``, or built by a bare
    factory) can be rebuilt with ``split="test"`` and trains on ``"train"``: its factory takes a
    ``split`` option, set (or defaulting) to ``"train"``."""
    keys = _options(component).keys
    return "split" in keys and entry.get("split", keys["split"]) == "train"


def _slice_size(n: int, fraction: float, cap: int | None = None) -> int:
    """How many of ``n`` items a slice of ``fraction`` takes: ceil(n * fraction), at least one
    when ``fraction > 0`` and ``n >= 2``, leaving at least one, and at most ``cap``."""
    if not fraction or n < 2:
        return 0
    size = min(n - 1, max(1, math.ceil(n * fraction)))
    return size if cap is None else min(size, cap)


def split_indices(n: int, holdout: float = 0.0, val_fraction: float = 0.0, val_max: int | None = None) -> dict[str, torch.Tensor]:
    """Sorted index tensors ``{"train", "val", "test"}`` that partition ``range(n)``.

    One permutation of ``range(n)`` seeded with ``HOLDOUT_SEED``: ``test`` is its first
    ``holdout`` fraction of ``n``, ``val`` the next ``val_fraction`` of the ``n - len(test)`` that
    remain (at most ``val_max``), ``train`` the rest.  Each slice takes at least one item when its
    fraction is positive and at least two are left, and training always keeps one."""
    n_test = _slice_size(n, holdout)
    n_val = _slice_size(n - n_test, val_fraction, val_max)
    import torch

    if n_test == 0 and n_val == 0:
        return {"train": torch.arange(n), "val": torch.arange(0), "test": torch.arange(0)}
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(HOLDOUT_SEED))
    return {
        "train": perm[n_test + n_val :].sort().values,
        "val": perm[n_test : n_test + n_val].sort().values,
        "test": perm[:n_test].sort().values,
    }


def holdout_indices(n: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kept, held_out)`` index tensors for ``n`` items, holding out ``fraction`` of them (the test
    slice of ``split_indices``: at least one when ``fraction > 0`` and ``n >= 2``; one is kept)."""
    parts = split_indices(n, fraction)
    return parts["train"], parts["test"]


def _subset(dataset: Any, indices: torch.Tensor, suffix: str) -> Any:
    from torch.utils.data import Dataset, Subset

    from .data import ImageDataset

    if isinstance(dataset, ImageDataset):
        labels = dataset.labels[indices] if dataset.labels is not None else None
        return ImageDataset(dataset.images[indices], labels, name=f"{dataset.name}[{suffix}]")
    if isinstance(dataset, Dataset) and hasattr(dataset, "__len__"):
        return Subset(dataset, indices.tolist())
    raise DataError(f"cannot hold out evaluation images from a {type(dataset).__name__}; it needs __len__ and indexing")


def split_dataset(
    full: Any,
    entry: dict[str, Any],
    holdout: float,
    split: str,
    build: Callable[[dict[str, Any]], Any],
    component: ComponentEntry | Callable[..., Any],
    *,
    val_fraction: float = 0.0,
    val_max: int | None = None,
) -> DataSplit:
    """The ``split`` (``"train"``, ``"val"`` or ``"test"``) of the data set ``full`` built from
    ``entry``; ``build(entry)`` builds its test split where it has one (``component`` is its
    registry entry).  ``holdout``, ``val_fraction`` and ``val_max`` are the config's keys."""
    check_split(split)
    name = entry["name"]
    own_test = has_test_split(entry, component)
    if own_test and split == "test":
        test = build({**entry, "split": "test"})
        return DataSplit(test, "test", f"the test split of {name} ({len(test)} images, never trained on)")
    n = len(full)
    parts = split_indices(n, 0.0 if own_test else holdout, val_fraction, val_max)
    if own_test:
        where = f"the training split of {name}"
    else:
        where = f"split {entry['split']!r} of {name}" if "split" in entry else name
    if split == "train":
        kept = parts["train"]
        if len(kept) == n:
            return DataSplit(full, "train", f"{where} ({n} images)" if own_test else f"all of {where} ({n} images; nothing held out)")
        slices = " and ".join(what for what, key in (("test", "test"), ("validation", "val")) if len(parts[key]))
        plural = "s" if len(parts["test"]) and len(parts["val"]) else ""
        return DataSplit(_subset(full, kept, "train"), "train", f"{where} less its held-out {slices} slice{plural} ({len(kept)} of {n} images)")
    if split == "val":
        held = parts["val"]
        if len(held) == 0:
            left = n - len(parts["test"])
            why = (
                "val_fraction is 0; a run saved before validation slices existed loads with val_fraction 0, since it trained on those images"
                if not val_fraction else f"only {left} image(s) are left for training"
            )
            raise DataError(
                f"{name} has no validation slice ({why}); evaluate on split='test' (--split test) for final numbers, "
                "or train a run with val_fraction > 0 (--set val_fraction=0.1) to tune on its validation slice"
            )
        return DataSplit(
            _subset(full, held, "val"), "val",
            f"a validation slice of {where} ({len(held)} of {n} images, never trained on; for tuning, not for final numbers)",
        )
    held = parts["test"]
    if len(held) == 0:
        why = "holdout is 0" if not holdout else f"it has only {n} image(s)"
        raise DataError(
            f"{name} has no test split and no held-out images ({why}); evaluate with split='train' "
            "(--split train), or train with holdout > 0 (--set holdout=0.1)"
        )
    why = f"training uses {name}'s test split" if "split" in entry else f"{name} has no test split"
    return DataSplit(
        _subset(full, held, "test"), "test",
        f"a held-out {len(held) / n:.0%} test slice of {where} ({len(held)} of {n} images, never trained on; {why})",
    )


class ConfiguredData:
    """The data set of a config entry and its three splits, each built once, on first use.

    ``build(entry)`` turns an entry into a data set and ``component`` is its registry entry (whose
    options say whether it has a ``split``); both come from ``asvae_kit.builder``, the one
    place where names become objects.  ``full`` is the data set when it is already built.
    ``holdout``, ``val_fraction`` and ``val_max`` are the config's keys (docs/design.md §5).
    """

    def __init__(
        self,
        entry: dict[str, Any],
        holdout: float,
        build: Callable[[dict[str, Any]], Any],
        component: ComponentEntry | Callable[..., Any],
        full: Any = None,
        *,
        val_fraction: float = 0.0,
        val_max: int | None = None,
    ) -> None:
        self.entry, self.holdout, self._build, self._component = entry, holdout, build, component
        self.val_fraction, self.val_max = val_fraction, val_max
        self._full = full
        self._splits: dict[str, DataSplit] = {}

    def split(self, split: str) -> DataSplit:
        """The ``"train"``, ``"val"`` or ``"test"`` split, with a sentence saying what it is."""
        check_split(split)
        if split not in self._splits:
            if self._full is None:
                self._full = self._build(self.entry)
            self._splits[split] = split_dataset(
                self._full, self.entry, self.holdout, split, self._build, self._component,
                val_fraction=self.val_fraction, val_max=self.val_max,
            )
        return self._splits[split]
