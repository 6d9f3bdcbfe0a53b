"""One step of the training algorithm (docs/design.md §1, "One algorithm step").

``n_critic`` discriminator updates on the step's joint samples, the generator outputs detached;
then one encoder/decoder update on the divergence's objective with the discriminator frozen.
Under data parallelism the gradients are averaged across processes before each optimizer step;
then they are clipped (``optim.clip_grad_norm``), and after the encoder/decoder step the weight
average moves (``ema``).  The learning rates follow ``optim.schedule`` by step number.
The divergence estimator decides the losses; this module only orders the updates.

Checking a loss, stepping an optimizer and weighting the EMA go through ``StepHooks``
(``asvae_kit.step_hooks``): ``step`` runs the updates with ``EagerHooks``, and a CUDA graph that
wraps the step (``asvae_kit.step_graph.StepGraph``, chosen by the builder) runs them with its
device hooks.  This module knows nothing of graphs.

What does not change from step to step is set up once, not per step: the parameter lists whose
gradients are reset, averaged and clipped and that the encoder/decoder update freezes, and the
networks' train mode, which a step checks (one attribute per module) and sets again only when
something left a module in eval mode (inference restores the modes it changes:
``asvae_kit.trainer_base``).
"""

from __future__ import annotations

import contextlib
import types
from pathlib import Path
from typing import Any, ContextManager

import torch
from torch import nn

from .distributed import DistContext, average_gradients
from .ema import EMA
from .guard import DivergenceGuard
from .divergence import check_head_count
from .joint_batch import JointBatch
from .optimizers import clip_gradients, is_scheduled, load_optimizer_state, lr_factor, optimizer_parameters, set_learning_rates
from .schema import PRECISION_NAMES, disc_clip_grad_norm
from .step_hooks import EagerHooks, StepHooks

__all__ = ["AlgorithmStep", "PRECISIONS", "uses_batch_statistics"]

#: config ``precision`` -> the autocast dtype of the forward passes (``None``: float32 throughout).
#: "16-mixed" also scales each optimizer's loss with its own GradScaler, so an overflow skips only
#: that optimizer's step.
PRECISIONS: dict[str, torch.dtype | None] = dict(zip(PRECISION_NAMES, (None, torch.bfloat16, torch.float16)))


def uses_batch_statistics(module: nn.Module) -> bool:
    """True when ``module`` normalises with batch statistics (a BatchNorm), so its output for one
    row depends on the other rows of the call."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


#: How many of an update's logged terms ride in its all-reduce under data parallelism (for the
#: guard's message; the built-in divergences log at most 7).
AGREED_TERMS = 16


class AlgorithmStep:
    """``step(x, number=...)`` runs one algorithm step on the data batch ``x`` and returns the
    detached loss terms; a divergent loss raises ``TrainingDivergedError`` (``guard``).

    ``begin`` then ``updates(x, hooks)`` is the same step in two parts, for a runner with hooks of
    its own (``asvae_kit.step_graph.StepGraph``)."""

    def __init__(
        self,
        *,
        encoder: nn.Module,
        decoder: nn.Module,
        discriminator: nn.Module | None,
        divergence: Any,
        gen_optimizer: torch.optim.Optimizer,
        disc_optimizer: torch.optim.Optimizer | None,
        config: dict[str, Any],
        dist: DistContext,
        guard: DivergenceGuard,
        ema: EMA | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.num_heads = int(getattr(divergence, "num_heads", 0))
        check_head_count(discriminator, self.num_heads, config["divergence"]["name"])
        self.encoder, self.decoder, self.divergence = encoder, decoder, divergence
        self.discriminator = discriminator if self.num_heads > 0 else None
        self.gen_optimizer, self.disc_optimizer = gen_optimizer, disc_optimizer if self.discriminator is not None else None
        self.config, self.dist, self.guard, self.ema = config, dist, guard, ema
        #: the host's hooks, which ``step`` runs the updates with
        self.hooks: StepHooks = EagerHooks(guard)
        #: under data parallelism: this process asks to stop after the step (set by the trainer),
        #: and whether any process asked, agreed in the step's all-reduce (``_update``)
        self.stop_requested, self.agreed_stop = False, False
        self.device_type = (device or torch.device("cpu")).type
        self.amp_dtype = PRECISIONS[config["precision"]]
        fp16 = self.amp_dtype is torch.float16
        self.scalers = {"gen": torch.amp.GradScaler(self.device_type), "disc": torch.amp.GradScaler(self.device_type)} if fp16 else {}
        # one decoder call for z_q and z_p, unless the decoder's batch statistics would mix the two
        self.decode_together = bool(getattr(divergence, "decodes_both", False)) and not uses_batch_statistics(decoder)
        if config.get("compile"):
            self.compile_networks()
        # set up once for every step: the networks and all their modules (for train mode), each
        # optimizer's parameters (their gradients are reset and clipped), the parameters whose
        # gradients are averaged across processes, and the discriminator's, which the
        # encoder/decoder update freezes
        self._networks = [m for m in (encoder, decoder, self.discriminator) if m is not None]
        self._modules = [m for network in self._networks for m in network.modules()]
        self._disc_params = list(self.discriminator.parameters()) if self.discriminator is not None else []
        gen_params = optimizer_parameters(gen_optimizer)
        disc_params = optimizer_parameters(self.disc_optimizer) if self.disc_optimizer is not None else []
        self._optimized = {"gen": gen_params, "disc": disc_params}
        self._averaged = {"gen": gen_params, "disc": self._disc_params}

    def compile_networks(self, fullgraph: bool = False) -> None:
        """``torch.compile`` every network call of a step (config ``compile``): the encoder's and
        decoder's forward, with their likelihoods' densities, and the discriminator's ``features``.
        Each call stays its own autograd node, so the two updates share the step's samples as in
        eager mode; the losses' few remaining operations and the fused head op run as they are.
        The built-in networks trace without a graph break (``fullgraph=True`` is tested); a
        plugin's that break still run, in pieces.  Compiled code draws its random numbers from
        Inductor's generator, not eager's."""
        self.encoder.compile(fullgraph=fullgraph)
        self.decoder.compile(fullgraph=fullgraph)
        if self.discriminator is not None:
            # bound to the instance at call time, so a deep copy of the discriminator calls its own features
            features = torch.compile(type(self.discriminator).features, fullgraph=fullgraph)
            self.discriminator.features = types.MethodType(features, self.discriminator)

    def forward_precision(self, cache: bool = True) -> ContextManager[Any]:
        """Autocast for the forward passes (losses stay float32: the likelihoods and the fused head
        compute in float32); a no-op at precision "32".  ``cache``: autocast may cache the weights
        it casts (``StepHooks.autocast_cache``: not where a CUDA graph replays the step)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.amp_dtype, cache_enabled=cache)

    def state_dict(self) -> dict[str, Any]:
        """The optimizers' and loss scalers' state (scalers: empty unless precision is "16-mixed")
        and the weight average's update count (its warm-up; ``None`` without ``ema``)."""
        return {
            "gen_optimizer": self.gen_optimizer.state_dict(),
            "disc_optimizer": self.disc_optimizer.state_dict() if self.disc_optimizer is not None else None,
            "scalers": {name: scaler.state_dict() for name, scaler in self.scalers.items()},
            "ema_updates": self.ema.updates if self.ema is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved.  A checkpoint from before the EMA warm-up has no
        update count: its average was kept at the full decay, and goes on at it."""
        if self.ema is not None:
            updates = state.get("ema_updates")
            self.ema.updates = int(updates) if updates is not None else self.ema.warm_count
        load_optimizer_state(self.gen_optimizer, state["gen_optimizer"])
        if self.disc_optimizer is not None and state.get("disc_optimizer") is not None:
            load_optimizer_state(self.disc_optimizer, state["disc_optimizer"])
        for name, scaler in self.scalers.items():
            if name in (state.get("scalers") or {}):
                scaler.load_state_dict(state["scalers"][name])

    def _update(
        self, which: str, optimizer: torch.optim.Optimizer, loss: torch.Tensor, clip: float | None, hooks: StepHooks,
        term: str, terms: dict[str, torch.Tensor],
    ) -> None:
        """Backward, gradient averaging, the guard's check of the loss, (unscaling,) clipping and
        the optimizer step.

        Under data parallelism the loss, its diagnostics and this process's stop request travel with the
        gradients, in the same all-reduce: the guard then checks the loss of the global batch
        (the mean over processes), which every process holds to the bit, so all reach the same
        verdict with the same message at the same step, and a NaN on one process stops all of
        them before any optimizer steps.  ``agreed_stop`` says whether any process asked to stop."""
        scaler = self.scalers.get(which)
        params = self._optimized[which]
        for p in params:  # optimizer.zero_grad(set_to_none=True), without its profiler range
            p.grad = None
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if self.dist.enabled:
            # a fixed length whatever the terms: every rank sends a buffer of the same size, even
            # if a plugin's divergence logs other terms on another rank (their values would mix,
            # the collective would not break)
            names = sorted(terms)[:AGREED_TERMS]
            local = torch.full((2 + AGREED_TERMS,), float("nan"), device=loss.device)
            local[0], local[1] = loss.detach().float(), float(self.stop_requested)
            if names:
                local[2 : 2 + len(names)] = torch.stack([terms[k].detach().float().reshape(()) for k in names])
            agreed = average_gradients(self._averaged[which], self.dist, extras=local)
            assert agreed is not None
            loss, stop = agreed[0] / self.dist.world_size, agreed[1]
            terms = {k: v / self.dist.world_size for k, v in zip(names, agreed[2:])}  # for the guard's message
            self.agreed_stop = self.agreed_stop or bool(stop > 0)
        hooks.check_loss(term, loss, terms)
        if scaler is not None:
            scaler.unscale_(optimizer)
        if clip is not None:
            clip_gradients(optimizer, clip, params)
        if scaler is not None:
            scaler.step(optimizer)  # skipped when this optimizer's gradients overflowed
            scaler.update()
        else:
            hooks.optimizer_step(optimizer)

    def make_batch(self, x: torch.Tensor) -> JointBatch:
        """The step's joint samples for the data batch ``x`` (prior codes drawn here)."""
        return JointBatch(
            x, self.encoder, self.decoder, int(self.config["latent_dim"]), sample_x=self.config["sample_x"],
            decode_together=self.decode_together,
        )

    def discriminator_step(self, batch: JointBatch, hooks: StepHooks | None = None) -> dict[str, torch.Tensor]:
        """``n_critic`` discriminator updates on the batch's samples, generator outputs detached."""
        terms: dict[str, torch.Tensor] = {}
        if self.discriminator is None or self.disc_optimizer is None:
            return terms
        hooks = self.hooks if hooks is None else hooks
        optim = self.config["optim"]
        for _ in range(optim["n_critic"]):
            with self.forward_precision(hooks.autocast_cache):
                d_loss, terms = self.divergence.discriminator_loss(self.discriminator, batch)
            clip = disc_clip_grad_norm(optim)
            self._update("disc", self.disc_optimizer, d_loss, clip, hooks, "d_loss", terms)
        return terms

    def generator_step(self, batch: JointBatch, hooks: StepHooks | None = None) -> dict[str, torch.Tensor]:
        """One encoder/decoder update on the divergence's objective, the discriminator frozen."""
        hooks = self.hooks if hooks is None else hooks
        frozen = self._disc_params  # Module.requires_grad_, without walking the modules each step
        for p in frozen:
            p.requires_grad_(False)
        try:
            with self.forward_precision(hooks.autocast_cache):
                g_loss, terms = self.divergence.generator_loss(self.discriminator, batch)
            self._update("gen", self.gen_optimizer, g_loss, self.config["optim"]["clip_grad_norm"], hooks, "g_loss", terms)
            if self.ema is not None:
                self.ema.update(hooks.ema_weight())
        finally:
            for p in frozen:
                p.requires_grad_(True)
        return terms

    def step(self, x: torch.Tensor, *, number: int = 0, saved: tuple[Path, int] | None = None) -> dict[str, torch.Tensor]:
        """Discriminator update(s), then the encoder/decoder update, on the data batch ``x``.

        ``number`` (the step's number) and ``saved`` (the run directory and step of the last
        checkpoint) only go into the message of a divergence."""
        self.begin(number, saved)
        return self.updates(x, self.hooks)

    def begin(self, number: int, saved: tuple[Path, int] | None = None) -> None:
        """What comes before step ``number``'s updates: its learning rates (``optim.schedule``), the
        networks in train mode, and where the guard's message says it is."""
        self.guard.at(number, saved)
        self.agreed_stop = False
        optim = self.config["optim"]
        if is_scheduled(optim):
            set_learning_rates(optim, self.gen_optimizer, self.disc_optimizer, lr_factor(optim, number - 1, self.config["steps"]))
        self.train_mode()

    def train_mode(self) -> None:
        """Every network in train mode (``Module.train``): the networks are walked only when a
        module is in eval mode, which inference and evaluation never leave behind."""
        for module in self._modules:
            if not module.training:
                for network in self._networks:
                    network.train()
                return

    def updates(self, x: torch.Tensor, hooks: StepHooks | None = None) -> dict[str, torch.Tensor]:
        """The step's updates on ``x``, with ``hooks`` (default: the host's, ``self.hooks``)."""
        batch = self.make_batch(x)
        terms = self.discriminator_step(batch, hooks)
        terms.update(self.generator_step(batch, hooks))
        return terms
