"""Training and held-out splits of the configured data: evaluation never sees training images.

A data set whose factory takes ``split`` and is configured with ``split="train"`` (``mnist``,
``fashion-mnist``, ``cifar10``) trains on its training split and is evaluated on its own test
split.  Every other data set (``digits``, ``image-folder``, ``tensor``, or a test split used for
training) is divided once: a fixed, seed-independent ``holdout`` fraction of it is set aside,
training never draws from it, and evaluation uses only it.  The held-out slice depends only on
the data set's size, so every run on the same data is scored on the same images.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils.data import Dataset, Subset

from .data import ImageDataset
from .errors import ConfigError, DataError

__all__ = ["SPLITS", "HOLDOUT_SEED", "DataSplit", "ConfiguredData", "has_test_split", "holdout_indices", "split_dataset"]

SPLITS = ("train", "test")

#: The held-out slice is a function of the data set's size alone (not of the run's seed).
HOLDOUT_SEED = 2017


@dataclass
class DataSplit:
    """One split of the configured data and a sentence saying what it is."""

    dataset: Any
    split: str
    source: str


def has_test_split(entry: dict[str, Any], factory: Callable[..., Any]) -> bool:
    """True when the data set ``entry`` (built by ``factory``) can be rebuilt with
    ``split="test"`` and trains on ``"train"``."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return "split" in params and entry.get("split", params["split"].default) == "train"


def holdout_indices(n: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, held_out)`` index tensors for ``n`` items, holding out ``fraction`` of them
    (at least one when ``fraction > 0`` and ``n >= 2``; training always keeps one)."""
    if not fraction or n < 2:
        return torch.arange(n), torch.arange(0)
    n_hold = min(n - 1, max(1, math.ceil(n * fraction)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(HOLDOUT_SEED))
    return perm[n_hold:].sort().values, perm[:n_hold].sort().values


def _subset(dataset: Any, indices: torch.Tensor, suffix: str) -> Any:
    if isinstance(dataset, ImageDataset):
        labels = dataset.labels[indices] if dataset.labels is not None else None
        return ImageDataset(dataset.images[indices], labels, name=f"{dataset.name}[{suffix}]")
    if isinstance(dataset, Dataset) and hasattr(dataset, "__len__"):
        return Subset(dataset, indices.tolist())
    raise DataError(f"cannot hold out evaluation images from a {type(dataset).__name__}; it needs __len__ and indexing")


def split_dataset(full: Any, entry: dict[str, Any], holdout: float, split: str, build: Callable[[dict[str, Any]], Any], factory: Callable[..., Any]) -> DataSplit:
    """The ``split`` (``"train"`` or ``"test"``) of the data set ``full`` built from ``entry``;
    ``build(entry)`` builds its test split where it has one (``factory`` is its registered factory)."""
    if split not in SPLITS:
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    name = entry["name"]
    if has_test_split(entry, factory):
        if split == "train":
            return DataSplit(full, "train", f"the training split of {name} ({len(full)} images)")
        test = build({**entry, "split": "test"})
        return DataSplit(test, "test", f"the test split of {name} ({len(test)} images, never trained on)")
    n = len(full)
    train_idx, held_idx = holdout_indices(n, holdout)
    where = f"split {entry['split']!r} of {name}" if "split" in entry else name
    if split == "train":
        if len(held_idx) == 0:
            return DataSplit(full, "train", f"all of {where} ({n} images; nothing held out)")
        return DataSplit(_subset(full, train_idx, "train"), "train", f"{where} less its held-out slice ({len(train_idx)} of {n} images)")
    if len(held_idx) == 0:
        why = "holdout is 0" if not holdout else f"it has only {n} image(s)"
        raise DataError(
            f"{name} has no test split and no held-out images ({why}); evaluate with split='train' "
            "(--split train), or train with holdout > 0 (--set holdout=0.1)"
        )
    why = f"training uses {name}'s test split" if "split" in entry else f"{name} has no test split"
    return DataSplit(
        _subset(full, held_idx, "held-out"), "test",
        f"a held-out {len(held_idx) / n:.0%} slice of {where} ({len(held_idx)} of {n} images, never trained on; {why})",
    )


class ConfiguredData:
    """The data set of a config entry and its two splits, each built once, on first use.

    ``build(entry)`` turns an entry into a data set and ``factory`` is the entry's registered
    factory (read for its ``split`` parameter); both come from ``asvae_kit.builder``, the one
    place where names become objects.  ``full`` is the data set when it is already built.
    """

    def __init__(self, entry: dict[str, Any], holdout: float, build: Callable[[dict[str, Any]], Any], factory: Callable[..., Any], full: Any = None) -> None:
        self.entry, self.holdout, self._build, self._factory = entry, holdout, build, factory
        self._full = full
        self._splits: dict[str, DataSplit] = {}

    def split(self, split: str) -> DataSplit:
        """The ``"train"`` or ``"test"`` split, with a sentence saying what it is."""
        if split not in self._splits:
            if self._full is None:
                self._full = self._build(self.entry)
            self._splits[split] = split_dataset(self._full, self.entry, self.holdout, split, self._build, self._factory)
        return self._splits[split]
