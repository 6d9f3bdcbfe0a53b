"""The project classifier and the Fréchet distance in its features (the ``fd`` metric).

FID needs Inception weights that cannot be fetched everywhere, and Inception features of 28x28
grey digits say little.  Instead ``fd`` measures the Fréchet distance between real and generated
images in the penultimate layer of a small CNN that asvae-kit itself trains on the data set's
training split.  The classifier is a pure function of (training images, labels, seed, recipe):
it is cached on disk under a key made of the SHA-256 of the training tensors and those settings,
so every run on the same data shares one classifier, and a second machine reproduces it.

The number is "FD on the project classifier" and is comparable only between runs scored with
the same classifier (the same data set and split): it is *not* FID.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from asvae_kit.errors import DataError
from asvae_kit.fileio import atomic_path, atomic_write_text

__all__ = ["FeatureClassifier", "ClassifierInfo", "project_classifier", "frechet_distance", "gaussian_stats", "cache_dir", "RECIPE"]

#: Bumped whenever the architecture or training changes, so old cache entries are not reused.
RECIPE = {"version": 1, "steps": 1500, "batch_size": 128, "lr": 1e-3, "width": 32, "features": 128}


class FeatureClassifier(nn.Module):
    """Two conv blocks (3x3 conv, ReLU, 2x2 max-pool) and an average pool to 4x4, then a
    ``features``-wide ReLU layer (the FD feature space) and a linear classifier."""

    def __init__(self, data_shape: tuple[int, int, int], num_classes: int, width: int = 32, features: int = 128) -> None:
        super().__init__()
        c = data_shape[0]
        self.body = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
            nn.Flatten(), nn.Linear(2 * width * 16, features), nn.ReLU(),
        )
        self.out = nn.Linear(features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


@dataclass
class ClassifierInfo:
    """A trained project classifier and where it came from."""

    model: FeatureClassifier
    key: str
    path: Path | None
    train_accuracy: float
    cached: bool


def cache_dir() -> Path:
    """``$ASVAE_KIT_CACHE`` or ``~/.cache/asvae-kit``, with a ``classifiers`` folder inside."""
    root = os.environ.get("ASVAE_KIT_CACHE") or Path.home() / ".cache" / "asvae-kit"
    return Path(root).expanduser() / "classifiers"


def _data_key(images: torch.Tensor, labels: torch.Tensor, recipe: dict, seed: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({**recipe, "seed": seed, "shape": list(images.shape)}, sort_keys=True).encode())
    h.update(images.detach().cpu().float().contiguous().numpy().tobytes())
    h.update(labels.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in zip(images.split(1024), labels.split(1024)))
    return correct / max(len(labels), 1)


def _load_cached(model: FeatureClassifier, path: Path) -> float | None:
    """Load a cached classifier into ``model``; its training accuracy, or None when there is no
    usable entry (a missing or corrupt one is retrained and rewritten)."""
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    try:
        model.load_state_dict(load_file(str(path)))
        accuracy = float(json.loads(path.with_suffix(".json").read_text())["train_accuracy"])
    except Exception:
        return None
    model.eval()
    return accuracy


def project_classifier(
    images: torch.Tensor, labels: torch.Tensor, *, seed: int = 0, steps: int | None = None, cache: bool = True, progress=None
) -> ClassifierInfo:
    """The classifier for ``images`` ``[N, C, H, W]`` with integer ``labels`` ``[N]``, trained
    here (``RECIPE``: Adam, fixed step count, seeded) or read from the cache.

    ``steps`` overrides the recipe's step count (tests use fewer); ``progress``: a callable
    taking a message, told when training starts and ends.
    """
    recipe = {**RECIPE, "steps": steps or RECIPE["steps"]}
    if labels is None:
        raise DataError("the project classifier needs labelled training images; this data set has no labels")
    labels = labels.to(torch.int64)
    if len(images) != len(labels) or len(images) < 2:
        raise DataError(f"the project classifier needs >= 2 labelled images, got {len(images)} images and {len(labels)} labels")
    num_classes = int(labels.max()) + 1
    data_shape = tuple(int(v) for v in images.shape[1:])
    key = _data_key(images, labels, recipe, seed)
    path = cache_dir() / f"{key[:32]}.safetensors"
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(seed)
        model = FeatureClassifier(data_shape, num_classes, RECIPE["width"], RECIPE["features"])
        cached_accuracy = _load_cached(model, path) if cache else None
        if cached_accuracy is not None:
            return ClassifierInfo(model, key, path, cached_accuracy, cached=True)
        if progress:
            progress(f"training the project classifier on {len(images)} images ({recipe['steps']} steps; cached afterwards)")
        optimizer = torch.optim.Adam(model.parameters(), lr=RECIPE["lr"])
        model.train()
        x_all, y_all = images.float().cpu(), labels.cpu()
        for _ in range(recipe["steps"]):
            idx = torch.randint(0, len(x_all), (RECIPE["batch_size"],), generator=generator)
            loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    accuracy = _accuracy(model, x_all, y_all)
    if cache:
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        atomic_write_text(path.with_suffix(".json"), json.dumps({"key": key, "recipe": recipe, "seed": seed, "n": len(images), "train_accuracy": accuracy}, indent=2))
    if progress:
        progress(f"project classifier trained (training accuracy {accuracy:.3f})")
    return ClassifierInfo(model, key, path if cache else None, accuracy, cached=False)


@torch.no_grad()
def classifier_features(model: FeatureClassifier, images: torch.Tensor) -> torch.Tensor:
    """Penultimate-layer features ``[N, features]`` (computed on the CPU in chunks)."""
    model.eval()
    return torch.cat([model.features(x.float().cpu()) for x in images.split(1024)])


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) covariance of ``features`` ``[N, D]`` in float64."""
    f = features.double()
    if len(f) < 2:
        raise DataError(f"the Fréchet distance needs at least 2 images per set, got {len(f)}")
    mean = f.mean(0)
    centred = f - mean
    return mean, centred.T @ centred / (len(f) - 1)


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2) of two feature sets ``[N, D]``.

    The matrix square root goes through the symmetric form S_a^1/2 S_b S_a^1/2, whose trace root
    equals tr((S_a S_b)^1/2) and is computed with ``eigh`` in float64 (no complex parts to drop).
    """
    mu_a, s_a = gaussian_stats(a)
    mu_b, s_b = gaussian_stats(b)
    root_a = _sqrt_psd(s_a)
    cross = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp(min=0).sqrt().sum()
    value = (mu_a - mu_b).pow(2).sum() + torch.trace(s_a) + torch.trace(s_b) - 2 * cross
    return max(float(value), 0.0)
