"""Image data: the in-memory dataset type, input checks, and the batch stream the trainer reads.

Every image the trainer sees is a float tensor ``[C, H, W]`` in [0, 1] (docs/design.md §2).  Users may
hand ``Trainer.fit`` a ``Dataset`` (items are images or ``(image, label)`` pairs), a
``DataLoader``, or an image tensor ``[N, C, H, W]``; ``BatchStream`` turns any of them into an
endless stream of batches.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from .errors import DataError

__all__ = ["ImageDataset", "check_images", "BatchStream", "first_images", "images_and_labels"]


def check_images(images: torch.Tensor, what: str, data_shape: Sequence[int] | None = None) -> torch.Tensor:
    """Validate a ``[N, C, H, W]`` image tensor in [0, 1]; return it as float32.

    Raises ``DataError`` naming the problem: wrong rank or shape, integer values outside what
    ``/255`` fixes, NaN/inf, or values outside [0, 1].
    """
    if not isinstance(images, torch.Tensor):
        raise DataError(f"{what}: expected a torch.Tensor of images [N, C, H, W], got {type(images).__name__}")
    if images.dim() != 4:
        raise DataError(f"{what}: expected images of shape [N, C, H, W], got shape {list(images.shape)}")
    if data_shape is not None and tuple(images.shape[1:]) != tuple(data_shape):
        raise DataError(
            f"{what}: images have shape (C, H, W) = {tuple(images.shape[1:])}, but the model was built for "
            f"{tuple(data_shape)}; build it for this data (data_shape=...) or resize the images"
        )
    if not images.is_floating_point():
        raise DataError(f"{what}: images must be float in [0, 1], got dtype {images.dtype}; divide uint8 pixels by 255")
    if images.numel() == 0:
        raise DataError(f"{what}: no images (shape {list(images.shape)})")
    if not torch.isfinite(images).all():
        raise DataError(f"{what}: images contain NaN or infinite values; clean the data before training")
    lo, hi = images.min().item(), images.max().item()
    if lo < 0.0 or hi > 1.0:
        raise DataError(f"{what}: pixel values must lie in [0, 1], found [{lo:.4g}, {hi:.4g}]; rescale them (e.g. x / 255)")
    return images.float()


class ImageDataset(Dataset):
    """Images held in memory, ``[N, C, H, W]`` float32 in [0, 1], with optional integer labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None, *, name: str = "images") -> None:
        self.images = check_images(images, name)
        if labels is not None and len(labels) != len(self.images):
            raise DataError(f"{name}: {len(labels)} labels for {len(self.images)} images")
        self.labels = labels
        self.name = name

    @property
    def data_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return (int(c), int(h), int(w))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Any:
        if self.labels is None:
            return self.images[index]
        return self.images[index], self.labels[index]

    def __repr__(self) -> str:
        return f"ImageDataset({self.name!r}, n={len(self)}, data_shape={self.data_shape})"


def _images_of(batch: Any) -> torch.Tensor:
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    elif isinstance(batch, dict):
        for key in ("image", "images", "x"):
            if key in batch:
                return batch[key]
        raise DataError(f"a dict batch needs an 'image', 'images' or 'x' key, got keys {sorted(batch)}")
    return batch


class BatchStream:
    """An endless stream of ``[B, C, H, W]`` image batches on ``device``.

    In-memory sources (tensors, ``ImageDataset``) are reshuffled each epoch with ``generator``
    (whose state the trainer checkpoints); other datasets go through a shuffling ``DataLoader``;
    a user's ``DataLoader`` is cycled as given.  Every batch is checked for shape; the first one
    of a streamed source also for range and NaN.

    Under data-parallel training (``world_size > 1``) every process shuffles identically and
    takes its ``rank``-th share of each global batch of ``world_size * batch_size`` images
    (datasets go through a ``DistributedSampler``); a user's ``DataLoader`` is used as given.
    """

    def __init__(
        self,
        source: Any,
        batch_size: int,
        data_shape: Sequence[int],
        device: torch.device,
        generator: torch.Generator,
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.data_shape = tuple(data_shape)
        self.device = device
        self.generator = generator
        self._images: torch.Tensor | None = None
        self._loader: DataLoader | None = None
        self._sampler: Any = None  # a DistributedSampler, reshuffled per epoch
        if isinstance(source, torch.Tensor):
            self._images = check_images(source, "fit(data=...)", self.data_shape)
        elif isinstance(source, ImageDataset):
            self._images = check_images(source.images, source.name, self.data_shape)
        elif isinstance(source, DataLoader):
            self._loader = source
        elif isinstance(source, IterableDataset):
            self._loader = DataLoader(source, batch_size=batch_size)  # streamed in its own order
        elif isinstance(source, Dataset):
            if len(source) == 0:  # type: ignore[arg-type]
                raise DataError("the dataset is empty")
            if world_size > 1:
                from torch.utils.data.distributed import DistributedSampler

                seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
                self._sampler = DistributedSampler(source, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
                self._loader = DataLoader(source, batch_size=batch_size, sampler=self._sampler, drop_last=len(self._sampler) >= batch_size)
            else:
                self._loader = DataLoader(
                    source,
                    batch_size=batch_size,
                    shuffle=True,
                    drop_last=len(source) >= batch_size,  # type: ignore[arg-type]
                    generator=generator,
                )
        else:
            raise DataError(
                f"cannot train on a {type(source).__name__}; pass a Dataset, a DataLoader or an image tensor [N, C, H, W]"
            )
        if self._images is not None:
            self._images = self._images.to(device)
        self._checked_values = self._images is not None
        self._iter: Iterator[torch.Tensor] = iter(())
        self._perm: torch.Tensor | None = None
        self._pos = 0
        self._epoch = 0

    def state_dict(self) -> dict[str, Any]:
        """Where an in-memory stream is in its current epoch (empty for loader-backed streams)."""
        if self._images is None or self._perm is None:
            return {}
        return {"perm": self._perm.cpu(), "pos": self._pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._images is not None and state.get("perm") is not None and len(state["perm"]) == len(self._images):
            self._perm = state["perm"].to(self.device)
            self._pos = int(state["pos"])

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> torch.Tensor:
        if self._images is not None:
            return self._next_in_memory()
        for _attempt in range(2):
            try:
                batch = next(self._iter)
                break
            except StopIteration:
                if self._sampler is not None:
                    self._sampler.set_epoch(self._epoch)
                self._epoch += 1
                self._iter = iter(self._loader)  # type: ignore[arg-type]
        else:
            raise DataError("the data loader yields no batches")
        images = _images_of(batch)
        if not self._checked_values:
            check_images(images, "training data", self.data_shape)
            self._checked_values = True
        elif images.dim() != 4 or tuple(images.shape[1:]) != self.data_shape:
            raise DataError(f"training data: a batch has shape {list(images.shape)}, expected [B, {', '.join(map(str, self.data_shape))}]")
        return images.to(self.device, dtype=torch.float32, non_blocking=True)

    def _next_in_memory(self) -> torch.Tensor:
        n = len(self._images)  # type: ignore[arg-type]
        b = min(self.batch_size * self.world_size, n)
        if self._perm is None or self._pos + b > n:
            self._perm = torch.randperm(n, generator=self.generator).to(self.device)
            self._pos = 0
        idx = self._perm[self._pos : self._pos + b]
        self._pos += b
        if self.world_size > 1:
            idx = idx[self.rank :: self.world_size]
        return self._images[idx]  # type: ignore[index]


def first_images(source: Any, n: int) -> torch.Tensor:
    """The first ``n`` images of a dataset / loader / tensor, for fixed reconstruction grids."""
    if isinstance(source, (DataLoader, IterableDataset)):
        out, got = [], 0
        for batch in source if isinstance(source, DataLoader) else DataLoader(source, batch_size=n):
            images = _images_of(batch)
            out.append(images)
            got += len(images)
            if got >= n:
                break
        if not out:
            raise DataError("the data yields no images")
        return torch.cat(out)[:n].float()
    return images_and_labels(source, n)[0]


def images_and_labels(dataset: Any, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first ``n`` images (all when ``None``) of a data set, with their labels when it has any."""
    if isinstance(dataset, torch.Tensor):
        return dataset[:n].float(), None
    if isinstance(dataset, ImageDataset):
        labels = dataset.labels[:n] if dataset.labels is not None else None
        return dataset.images[:n], labels
    count = len(dataset) if n is None else min(n, len(dataset))
    if count == 0:
        raise DataError("the data set is empty")
    items = [dataset[i] for i in range(count)]
    images = torch.stack([_images_of(item) for item in items]).float()
    labelled = all(isinstance(item, (tuple, list)) and len(item) > 1 for item in items)
    labels = torch.as_tensor([int(item[1]) for item in items]) if labelled else None
    return images, labels
