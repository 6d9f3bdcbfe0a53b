"""The hooks a plugin implements to add components to asvae-kit (docs/design.md §3).

Every hook receives one argument, ``register``, a callable::

    register(name, factory, *, description="", aliases=())

``name`` (and every alias) must be lowercase kebab-case, ``[a-z0-9][a-z0-9-]*``; a bad name, or a
(kind, name) pair another plugin already registered, makes the whole plugin fail to load (it is
skipped with one warning and listed as failed by ``asvae-kit plugins``).

A plugin is any module with ``@asvae_kit.hookimpl`` functions, made known through the entry-point
group ``asvae_kit`` in its ``pyproject.toml``::

    [project.entry-points.asvae_kit]
    my_plugin = "my_package.asvae_plugin"

The built-in components in ``asvae_kit.plugins`` register through these very hooks.

Factories are called with keyword arguments only: the context the builder supplies (documented
per hook below) plus the component's own config keys.  The keys and defaults in the factory's
signature are what ``asvae-kit describe`` shows and what config overrides are checked against, so
give every config key a default.
"""

from __future__ import annotations

from typing import Callable

import pluggy

__all__ = ["hookspec", "hookimpl", "RegisterFn", "HOOK_KINDS"]

hookspec = pluggy.HookspecMarker("asvae_kit")
hookimpl = pluggy.HookimplMarker("asvae_kit")

#: ``register(name, factory, *, description="", aliases=())``
RegisterFn = Callable[..., None]

#: hook name -> the (singular) component kind it registers.
HOOK_KINDS = {
    "register_encoders": "encoder",
    "register_decoders": "decoder",
    "register_discriminators": "discriminator",
    "register_divergences": "divergence",
    "register_presets": "preset",
    "register_datasets": "dataset",
    "register_metrics": "metric",
    "register_loggers": "logger",
}


@hookspec
def register_encoders(register: RegisterFn) -> None:
    """Register encoders q(z|x).

    Factory: ``factory(*, data_shape: tuple[int, int, int], latent_dim: int, **config) -> nn.Module``
    whose ``forward(x [B, C, H, W]) -> Posterior`` returns an object with ``.rsample()``, ``.mean``
    and, for an explicit density, ``.log_prob(z) -> [B]`` and ``.kl_standard_normal() -> [B]``
    (``asvae_kit.distributions.GaussianPosterior`` and ``ImplicitPosterior`` are ready-made).
    Raise ``asvae_kit.errors.UnsupportedShapeError`` for shapes it cannot serve.

    Example: ``register("my-encoder", MyEncoder, description="two-layer Gaussian MLP")``.
    """


@hookspec
def register_decoders(register: RegisterFn) -> None:
    """Register decoders p(x|z).

    Factory: ``factory(*, data_shape, latent_dim, **config) -> nn.Module`` whose
    ``forward(z [B, latent_dim]) -> Likelihood`` returns an object with ``.mean`` (an image in
    [0, 1]), ``.log_prob(x) -> [B]`` (summed over pixels) and ``.rsample()`` where it exists
    (``BernoulliLikelihood``, ``GaussianLikelihood``, ``LaplaceLikelihood`` in
    ``asvae_kit.distributions``).

    Example: ``register("my-decoder", MyDecoder, aliases=("mine",))``.
    """


@hookspec
def register_discriminators(register: RegisterFn) -> None:
    """Register joint discriminators over (x, z).

    Factory: ``factory(*, data_shape, latent_dim, num_heads, **config) -> nn.Module`` with
    ``features(x, z) -> h [B, D]``, ``head: nn.Linear(D, num_heads)`` and
    ``forward(x, z) = head(features(x, z))``.  ``num_heads`` comes from the divergence.

    Example: ``register("my-critic", MyCritic, description="x-branch CNN, z-branch MLP")``.
    """


@hookspec
def register_divergences(register: RegisterFn) -> None:
    """Register divergence estimators (what turns the networks into a VAE, AVB, ALI or ASVAE).

    Factory: ``factory(**config) -> Divergence`` with ``num_heads: int`` (and optionally
    ``decodes_both = True`` when its losses use both ``batch.log_px`` and ``batch.x_p``: the
    batch then decodes z_q and z_p in one decoder call, unless the decoder has BatchNorm),
    ``discriminator_loss(discriminator, batch) -> (loss, diagnostics)`` and
    ``generator_loss(discriminator, batch) -> (loss, diagnostics)``; ``batch`` is an
    ``asvae_kit.joint_batch.JointBatch``.  The trainer checks the built object against
    ``asvae_kit.divergence.Divergence``; head statistics go through
    ``asvae_kit.divergence.head_statistics`` (``asvae_kit.kernels.fused_disc_head``).

    Example: ``register("my-gan", MyGanDivergence, description="hinge loss on the joints")``.
    """


@hookspec
def register_presets(register: RegisterFn) -> None:
    """Register named, complete configs.

    Factory: ``factory() -> dict`` returning a config mapping (docs/design.md §3): component entries
    (a name or ``{"name": ..., **config}``) for ``encoder``, ``decoder``, ``discriminator``,
    ``divergence`` and ``data``, plus hyper-parameters (``latent_dim``, ``batch_size``, ``steps``,
    ``optim``, ``seed``...).  Keys it leaves out take the builder's defaults.

    Example: ``register("tiny-asvae", lambda: {"encoder": "mlp", "decoder": "mlp", "discriminator": "joint-mlp", "divergence": "asvae", "latent_dim": 8})``.
    """


@hookspec
def register_datasets(register: RegisterFn) -> None:
    """Register image datasets.

    Factory: ``factory(**config) -> torch.utils.data.Dataset`` of images ``[C, H, W]`` in [0, 1]
    (items may be ``(image, label)`` pairs) with a ``data_shape`` attribute ``(C, H, W)``.  It must
    never download silently: downloading happens only when the user passes ``download=True``.

    Example: ``register("my-faces", MyFaces, description="64x64 RGB faces from data_dir")``.
    """


@hookspec
def register_metrics(register: RegisterFn) -> None:
    """Register evaluation metrics.

    Factory: ``fn(trainer, data, **options) -> dict[str, float]`` where ``data`` is an image
    tensor ``[N, C, H, W]`` on the trainer's device.  It may also take, by keyword, ``labels``
    (the images' integer labels, or ``None``) and ``split`` (``"train"``, ``"val"`` or
    ``"test"``); its other keyword parameters, with defaults, are options (``"nll:k=100"``),
    checked against the signature when the config is validated and again by ``evaluate``.  A
    metric that does not apply to a model raises ``asvae_kit.evaluation.MetricNotApplicable``.
    ``Trainer.evaluate`` merges the dicts.

    It runs under ``torch.no_grad``, with every network in eval mode, and under its own fork of
    torch's global RNG (CPU, and the trainer's CUDA device), seeded with its ``seed`` option, or
    with 0 when it has none.  So a metric that draws random numbers should take ``seed: int = 0``
    (users then vary it as ``"my-metric:seed=1"``) and may draw from the global RNG
    (``torch.randn``, ``.rsample()``): it gives the same numbers every time, and evaluating in the
    middle of training leaves training's random numbers as they were.

    Weights: by default a metric sees the EMA average of the encoder and decoder (config ``ema``)
    when the run keeps one.  A metric that reads the discriminator must see the raw training
    weights it was trained against instead; it says so with an attribute on the function, read
    when the plugin registers it (any other value makes the plugin fail to load)::

        def my_critic_metric(trainer, data, *, seed=0): ...
        my_critic_metric.weights = "raw"   # "average" (the default) or "raw"

    Inside it, ``trainer.encoder``/``trainer.decoder`` and ``trainer.sample``/``encode``/
    ``reconstruct`` all use the raw weights.  The built-in ``skl`` and ``objective`` do this.

    Example: ``register("pixel-mean", lambda trainer, data: {"pixel_mean": data.mean().item()})``.
    """


@hookspec
def register_loggers(register: RegisterFn) -> None:
    """Register experiment loggers (where a run's numbers and pictures go besides the run directory).

    Factory: ``factory(**options) -> Logger``, called when the trainer is built (so a missing
    package fails there, in one line: raise ``asvae_kit.errors.ConfigError`` naming the ``pip
    install``).  A ``Logger`` has ``start(run_dir: Path, config: dict, step: int, run_id: str)``
    (each ``fit`` that writes a run directory; ``step`` is where training goes on from, so rows
    past it, logged by an interrupted run after its last checkpoint, should be dropped; ``run_id``
    is the same for every resume of one run), ``log_row(row: dict[str, float])`` (every logged
    row: ``step``, the averaged loss terms, ``time_s``, ``steps_per_s``), ``log_images(name: str,
    images: Tensor [N, C, H, W] in [0, 1], step: int)`` (``"samples"`` and ``"reconstructions"`` at
    every sample step) and ``close()`` (end of ``fit``).  Only the main process logs.
    Example: ``register("my-logger", MyLogger, description="rows to my tracking server")``.
    """
