"""A plugin of deliberately broken components, one or more per conformance clause
(``asvae_kit.testing``): tests/test_conformance.py installs it as an entry point of the
distribution ``asvae-kit-conformance-broken`` and shows each clause failing on its component.

Every component here breaks one clause the way plugin authors do (a hard-coded input size, a
``squeeze()`` that drops the batch of one, a tensor kept as a plain attribute, numpy's RNG, batch
statistics in a discriminator, pixels in 0..255, ...) and, where it matters, honours the others.
``BROKEN`` maps (kind, name) to the clause it breaks and a phrase of the failure message.
"""

from __future__ import annotations

import copy
import math
import random
import urllib.request

import numpy as np
import torch
from torch import nn

import asvae_kit
from asvae_kit.distributions import GaussianLikelihood, GaussianPosterior, BernoulliLikelihood
from asvae_kit.divergence import MEAN, SOFTPLUS, SOFTPLUS_NEG, head_statistics
from asvae_kit.errors import UnsupportedShapeError

DISTRIBUTION = "asvae-kit-conformance-broken"
MODULE = "conformance_broken"

#: (kind, name) -> (the clause it breaks, a phrase its failure message holds)
BROKEN: dict[tuple[str, str], tuple[str, str]] = {}


def broken(kind: str, name: str, clause: str, phrase: str):
    def mark(factory):
        BROKEN[(kind, name)] = (clause, phrase)
        factory.conformance_name = name
        return factory

    return mark


def _numel(data_shape) -> int:
    c, h, w = data_shape
    return int(c) * int(h) * int(w)


class GoodEncoder(nn.Module):
    """A correct Gaussian MLP encoder: the base the broken ones change one thing of."""

    def __init__(self, *, data_shape, latent_dim, hidden: int = 16):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(_numel(data_shape), hidden), nn.LeakyReLU(0.2))
        self.head = nn.Linear(hidden, 2 * latent_dim)

    def forward(self, x):
        mean, logvar = self.head(self.body(x)).chunk(2, dim=-1)
        return GaussianPosterior(mean, logvar.clamp(-8, 8))


class GoodDecoder(nn.Module):
    """A correct Bernoulli MLP decoder."""

    def __init__(self, *, data_shape, latent_dim, hidden: int = 16):
        super().__init__()
        self.data_shape = tuple(int(v) for v in data_shape)
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, _numel(data_shape)))

    def forward(self, z):
        return BernoulliLikelihood(self.net(z).view(z.shape[0], *self.data_shape))


class GoodDiscriminator(nn.Module):
    """A correct joint MLP discriminator."""

    def __init__(self, *, data_shape, latent_dim, num_heads, hidden: int = 16):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(_numel(data_shape) + latent_dim, hidden), nn.LeakyReLU(0.2))
        self.head = nn.Linear(hidden, num_heads)

    def features(self, x, z):
        return self.trunk(torch.cat([x.flatten(1), z], dim=1))

    def forward(self, x, z):
        return self.head(self.features(x, z))


# -- shapes ----------------------------------------------------------------------------------


@broken("encoder", "fixed-size", "shapes", "at data_shape (3, 8, 8)")
class FixedSizeEncoder(GoodEncoder):
    """Builds for any shape, but its first layer is sized for 1x8x8 images (a hard-coded 64)."""

    def __init__(self, *, data_shape, latent_dim, hidden: int = 16):
        super().__init__(data_shape=(1, 8, 8), latent_dim=latent_dim, hidden=hidden)


@broken("encoder", "value-error-shape", "shapes", "raised ValueError")
class ValueErrorEncoder(GoodEncoder):
    """Refuses shapes other than 1x8x8 with a ValueError, not UnsupportedShapeError."""

    def __init__(self, *, data_shape, latent_dim, hidden: int = 16):
        if tuple(data_shape) != (1, 8, 8):
            raise ValueError(f"only 1x8x8, got {data_shape}")
        super().__init__(data_shape=data_shape, latent_dim=latent_dim, hidden=hidden)


@broken("decoder", "no-shape", "shapes", "serves none of the shapes")
class NoShapeDecoder(GoodDecoder):
    """Serves only 128x128 images, which the standard sizes do not include."""

    def __init__(self, *, data_shape, latent_dim, hidden: int = 16):
        if tuple(data_shape)[1:] != (128, 128):
            raise UnsupportedShapeError(f"decoder 'no-shape' serves 128x128 images only, got {data_shape}")
        super().__init__(data_shape=data_shape, latent_dim=latent_dim, hidden=hidden)


# -- outputs ---------------------------------------------------------------------------------


@broken("encoder", "squeeze", "outputs", "posterior.mean has shape [4], expected [1, 4]")
class SqueezeEncoder(GoodEncoder):
    """``squeeze()`` drops the batch dimension of a batch of one."""

    def forward(self, x):
        mean, logvar = self.head(self.body(x)).squeeze().chunk(2, dim=-1)
        return GaussianPosterior(mean, logvar.clamp(-8, 8))


@broken("encoder", "tensor-out", "outputs", "without .rsample")
class TensorEncoder(GoodEncoder):
    """Returns the code itself instead of a posterior."""

    def forward(self, x):
        return super().forward(x).mean


@broken("decoder", "unbounded-mean", "outputs", "not in [0, 1]")
class UnboundedDecoder(GoodDecoder):
    """A Gaussian likelihood whose mean is the raw linear output (no sigmoid)."""

    def forward(self, z):
        out = self.net(z).view(z.shape[0], *self.data_shape) * 10
        return GaussianLikelihood(out, torch.zeros_like(out))


@broken("discriminator", "one-head", "outputs", "its head has 1 output(s)")
class OneHeadDiscriminator(GoodDiscriminator):
    """Ignores ``num_heads``: always one logit."""

    def __init__(self, *, data_shape, latent_dim, num_heads, hidden: int = 16):
        super().__init__(data_shape=data_shape, latent_dim=latent_dim, num_heads=1, hidden=hidden)


# -- densities -------------------------------------------------------------------------------


class _LogitNormal:
    """A logit-normal pixel density: infinite at pixel values 0 and 1."""

    has_rsample = False

    def __init__(self, loc):
        self.loc = loc

    @property
    def mean(self):
        return torch.sigmoid(self.loc)

    def log_prob(self, x):
        y = torch.logit(x)
        return (-0.5 * (y - self.loc) ** 2 - torch.log(x) - torch.log1p(-x)).flatten(1).sum(1)


@broken("decoder", "logit-normal", "densities", "log p(x|z) is not finite at pixel values 0")
class LogitNormalDecoder(GoodDecoder):
    def forward(self, z):
        return _LogitNormal(self.net(z).view(z.shape[0], *self.data_shape))


# -- gradients -------------------------------------------------------------------------------


@broken("encoder", "unused-layer", "gradients", "parameter 'spare.weight' gets no gradient")
class UnusedLayerEncoder(GoodEncoder):
    def __init__(self, *, data_shape, latent_dim, hidden: int = 16):
        super().__init__(data_shape=data_shape, latent_dim=latent_dim, hidden=hidden)
        self.spare = nn.Linear(hidden, hidden)


@broken("decoder", "detached-codes", "gradients", "no finite gradient reaches its input z")
class DetachedDecoder(GoodDecoder):
    def forward(self, z):
        return super().forward(z.detach())


@broken("encoder", "detached-sample", "gradients", "through posterior.rsample()")
class DetachedSampleEncoder(GoodEncoder):
    """Its posterior's sample is drawn without the reparameterisation trick."""

    def forward(self, x):
        posterior = super().forward(x)
        posterior.rsample = lambda: (posterior.mean + posterior.stddev * torch.randn_like(posterior.mean)).detach()
        return posterior


# -- state dict, deep copy, same seed --------------------------------------------------------


@broken("encoder", "plain-attr", "state-dict round trip", "a tensor kept as a plain attribute (self.scale)")
class PlainAttributeEncoder(GoodEncoder):
    def __init__(self, *, data_shape, latent_dim, hidden: int = 16):
        super().__init__(data_shape=data_shape, latent_dim=latent_dim, hidden=hidden)
        self.scale = torch.rand(latent_dim) + 0.5

    def forward(self, x):
        posterior = super().forward(x)
        return GaussianPosterior(posterior.mean * self.scale, posterior.logvar)


@broken("encoder", "plain-list", "state-dict round trip", "self.extra[0]")
class PlainListEncoder(GoodEncoder):
    """Parameters in a plain Python list: not registered, not in state_dict."""

    def __init__(self, *, data_shape, latent_dim, hidden: int = 16):
        super().__init__(data_shape=data_shape, latent_dim=latent_dim, hidden=hidden)
        self.extra = [nn.Parameter(torch.randn(latent_dim))]

    def forward(self, x):
        posterior = super().forward(x)
        return GaussianPosterior(posterior.mean + self.extra[0], posterior.logvar)


@broken("encoder", "fresh-copy", "deep copy", "gives other outputs than the original")
class FreshCopyEncoder(GoodEncoder):
    """Its ``__deepcopy__`` builds a new network (new random weights) instead of copying."""

    def __init__(self, *, data_shape, latent_dim, hidden: int = 16):
        super().__init__(data_shape=data_shape, latent_dim=latent_dim, hidden=hidden)
        self._args = dict(data_shape=data_shape, latent_dim=latent_dim, hidden=hidden)

    def __deepcopy__(self, memo):
        return type(self)(**copy.deepcopy(self._args, memo))


@broken("encoder", "shared-copy", "deep copy", "they share tensors")
class SharedCopyEncoder(GoodEncoder):
    """Its ``__deepcopy__`` returns a shallow copy: the copy's weights are the original's."""

    def __deepcopy__(self, memo):
        return copy.copy(self)


@broken("encoder", "numpy-init", "same seed", "draw random numbers from torch only")
class NumpyInitEncoder(GoodEncoder):
    """Initialises a weight from numpy's global RNG, which the run's seed does not seed."""

    def __init__(self, *, data_shape, latent_dim, hidden: int = 16):
        super().__init__(data_shape=data_shape, latent_dim=latent_dim, hidden=hidden)
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(np.random.randn(*self.head.weight.shape)).float() * 0.1)


# -- rows independent ------------------------------------------------------------------------


@broken("discriminator", "batch-centred", "rows independent", "a row depends on the other rows")
class BatchCentredDiscriminator(GoodDiscriminator):
    """Centres its features over the batch (minibatch statistics)."""

    def features(self, x, z):
        h = super().features(x, z)
        return h - h.mean(dim=0, keepdim=True)


@broken("discriminator", "batch-norm", "rows independent", "it has BatchNorm (norm)")
class BatchNormDiscriminator(GoodDiscriminator):
    def __init__(self, *, data_shape, latent_dim, num_heads, hidden: int = 16):
        super().__init__(data_shape=data_shape, latent_dim=latent_dim, num_heads=num_heads, hidden=hidden)
        self.norm = nn.BatchNorm1d(hidden)

    def features(self, x, z):
        return self.norm(super().features(x, z))


# -- torch.compile and bf16 ------------------------------------------------------------------


@broken("encoder", "compile-differs", "torch.compile", "compiled, it gives other outputs than eager")
class CompileDiffersEncoder(GoodEncoder):
    """Takes another path while torch.compile traces it."""

    def forward(self, x):
        posterior = super().forward(x)
        if torch.compiler.is_compiling():
            return GaussianPosterior(posterior.mean + 1.0, posterior.logvar)
        return posterior


class _HalfGaussian:
    """A Gaussian density summed in whatever precision the network gave (bf16 under autocast)."""

    has_rsample = False

    def __init__(self, mean):
        self.mean = mean

    def log_prob(self, x):
        return (-0.5 * (x.to(self.mean.dtype) - self.mean) ** 2).flatten(1).sum(1)


@broken("decoder", "bf16-density", "bf16", "log_prob is torch.bfloat16")
class HalfDensityDecoder(GoodDecoder):
    def forward(self, z):
        return _HalfGaussian(torch.sigmoid(self.net(z).view(z.shape[0], *self.data_shape)))


# -- divergences -----------------------------------------------------------------------------


class _AVBLike:
    """AVB's losses, the base the broken divergences change one thing of."""

    num_heads = 1

    def discriminator_loss(self, discriminator, batch):
        s = head_statistics(discriminator, [(batch.x, batch.z_q.detach()), (batch.x, batch.z_m)])
        loss = s[0, 0, SOFTPLUS_NEG] + s[1, 0, SOFTPLUS]
        return loss, {"d_loss": loss.detach()}

    def generator_loss(self, discriminator, batch):
        s = head_statistics(discriminator, [(batch.x, batch.z_q)])
        loss = -(batch.log_px.mean() - s[0, 0, MEAN])
        return loss, {"g_loss": loss.detach()}


@broken("divergence", "nan-diagnostic", "two training steps", "logged non-finite ratio")
class NaNDiagnosticDivergence(_AVBLike):
    def generator_loss(self, discriminator, batch):
        loss, diagnostics = super().generator_loss(discriminator, batch)
        return loss, {**diagnostics, "ratio": (loss * 0 / 0).detach()}


@broken("divergence", "no-skl", "skl", "its description claims an skl")
class NoSklDivergence(_AVBLike):
    """Says it reports the skl (see its description) but puts none in its diagnostics."""


@broken("divergence", "float32-only", "bf16", "float32 only")
class Float32OnlyDivergence(_AVBLike):
    def generator_loss(self, discriminator, batch):
        if batch.posterior.mean.dtype != torch.float32:
            raise TypeError(f"float32 only, got {batch.posterior.mean.dtype}")
        return super().generator_loss(discriminator, batch)


# -- datasets --------------------------------------------------------------------------------


class _Images(torch.utils.data.Dataset):
    def __init__(self, images, labels=None, data_shape=None):
        self.images, self.labels = images, labels
        self.data_shape = tuple(images.shape[1:]) if data_shape is None else data_shape

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i] if self.labels is None else (self.images[i], self.labels[i])


def _pixels(limit: int = 16) -> torch.Tensor:
    return torch.rand(limit, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@broken("dataset", "bytes", "images", "not in [0, 1]")
def bytes_dataset(limit: int = 16):
    """Pixels 0..255: the division by 255 forgotten."""
    return _Images((_pixels(limit) * 255).round())


@broken("dataset", "wrong-shape", "images", "its data_shape says [3, 8, 8]")
def wrong_shape_dataset(limit: int = 16):
    return _Images(_pixels(limit), data_shape=(3, 8, 8))


@broken("dataset", "float-labels", "images", "items are images or (image, integer label) pairs")
def float_labels_dataset(limit: int = 16):
    return _Images(_pixels(limit), labels=torch.rand(limit))


@broken("dataset", "silent-download", "images", "tried to reach the network")
def silent_download_dataset(data_dir: str | None = None, download: bool = False, limit: int = 16):
    """Fetches its files whether or not ``download=True`` was given."""
    try:
        urllib.request.urlopen("http://example.com/images.npy", timeout=5)
    except OSError:
        pass
    return _Images(_pixels(limit))


# -- metrics ---------------------------------------------------------------------------------


@broken("metric", "nan-metric", "metric values", "non-finite values")
def nan_metric(trainer, data):
    return {"nan_metric": math.nan}


@broken("metric", "python-random", "metric values", "evaluated twice it gives other numbers")
def python_random_metric(trainer, data):
    """Draws from Python's ``random``, which ``evaluate`` does not seed."""
    return {"python_random": random.random()}


@broken("metric", "list-metric", "metric values", "evaluate raised")
def list_metric(trainer, data):
    return [float(data.mean())]


# -- loggers ---------------------------------------------------------------------------------


@broken("logger", "no-close", "logger lifecycle", "it has no close")
class NoCloseLogger:
    def start(self, run_dir, config, step, run_id):
        pass

    def log_row(self, row):
        pass

    def log_images(self, name, images, step):
        pass


@broken("logger", "closed-file", "logger lifecycle", "a resumed run")
class ClosedFileLogger:
    """Opens its file when built, not in ``start``: after the first ``close`` it cannot log."""

    def __init__(self):
        self._file = None

    def start(self, run_dir, config, step, run_id):
        if self._file is None:
            self._file = open(run_dir / "rows.txt", "a", encoding="utf-8")

    def log_row(self, row):
        self._file.write(f"{row}\n")

    def log_images(self, name, images, step):
        pass

    def close(self):
        self._file.close()


# -- presets ---------------------------------------------------------------------------------


class RunningShiftDecoder(GoodDecoder):
    """Keeps a running mean of its codes as a plain attribute, updated while training: the state
    dict misses it, so a loaded run samples other images."""

    def __init__(self, *, data_shape, latent_dim, hidden: int = 16):
        super().__init__(data_shape=data_shape, latent_dim=latent_dim, hidden=hidden)
        self.running = torch.zeros(latent_dim)

    def forward(self, z):
        if self.training:
            self.running = 0.5 * self.running + 0.5 * (z.detach().mean(0) + 1.0)
        return super().forward(z - self.running)


_TINY = {"encoder": {"name": "mlp", "hidden": [16]}, "decoder": {"name": "mlp", "hidden": [16]}, "discriminator": {"name": "joint-mlp", "hidden": [16]},
         "divergence": "avb", "latent_dim": 4}

PRESETS = {
    "diverging-preset": ("fit two steps", "logged non-finite ratio", lambda: {**_TINY, "divergence": "nan-diagnostic"}),
    "unsaved-state-preset": ("save and load", "the loaded run samples other images", lambda: {**_TINY, "decoder": "running-shift"}),
    "numpy-preset": ("deterministic", "trained again under seed 0", lambda: {**_TINY, "encoder": "numpy-init"}),
}
for _name, (_clause, _phrase, _factory) in PRESETS.items():
    BROKEN[("preset", _name)] = (_clause, _phrase)


# -- registration ----------------------------------------------------------------------------


def _registered(kind: str):
    """(name, factory) of every broken component of ``kind`` defined above."""
    return [(f.conformance_name, f) for f in list(globals().values()) if (kind, getattr(f, "conformance_name", None)) in BROKEN]


def _register(register, kind: str) -> None:
    for name, factory in _registered(kind):
        register(name, factory, description=f"broken on purpose: {BROKEN[(kind, name)][0]}")


@asvae_kit.hookimpl
def register_encoders(register):
    _register(register, "encoder")


@asvae_kit.hookimpl
def register_decoders(register):
    _register(register, "decoder")
    register("running-shift", RunningShiftDecoder, description="a running mean kept as a plain attribute (for the preset)")


@asvae_kit.hookimpl
def register_discriminators(register):
    _register(register, "discriminator")


@asvae_kit.hookimpl
def register_divergences(register):
    for name, factory in _registered("divergence"):
        description = "reports skl, the symmetric KL" if name == "no-skl" else f"broken on purpose: {BROKEN[('divergence', name)][0]}"
        register(name, factory, description=description)


@asvae_kit.hookimpl
def register_datasets(register):
    _register(register, "dataset")


@asvae_kit.hookimpl
def register_metrics(register):
    _register(register, "metric")


@asvae_kit.hookimpl
def register_loggers(register):
    _register(register, "logger")


@asvae_kit.hookimpl
def register_presets(register):
    for name, (_, _, factory) in PRESETS.items():
        register(name, factory, description="broken on purpose")
