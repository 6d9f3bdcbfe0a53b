"""One step of the training algorithm (docs/design.md §1, "One algorithm step").

``n_critic`` discriminator updates on the step's joint samples, the generator outputs detached;
then one encoder/decoder update on the divergence's objective with the discriminator frozen.
Under data parallelism the gradients are averaged across processes before each optimizer step;
then they are clipped (``optim.clip_grad_norm``), and after the encoder/decoder step the weight
average moves (``ema``).  The learning rates follow ``optim.schedule`` by step number.
The divergence estimator decides the losses; this module only orders the updates.
"""

from __future__ import annotations

import contextlib
import types
import warnings
from pathlib import Path
from typing import Any, ContextManager, Iterable

import torch
from torch import nn

from .distributed import DistContext, average_gradients
from .ema import EMA
from .guard import DivergenceGuard
from .joint_batch import JointBatch, check_head_count
from .optimizers import clip_gradients, is_scheduled, load_optimizer_state, lr_factor, set_learning_rates
from .step_graph import GraphCaptureWarning, StepGraph, capture_blocker

__all__ = ["AlgorithmStep", "PRECISIONS", "uses_batch_statistics"]

#: config ``precision`` -> the autocast dtype of the forward passes (``None``: float32 throughout).
#: "16-mixed" also scales each optimizer's loss with its own GradScaler, so an overflow skips only
#: that optimizer's step.
PRECISIONS: dict[str, torch.dtype | None] = {"32": None, "bf16": torch.bfloat16, "16-mixed": torch.float16}


def uses_batch_statistics(module: nn.Module) -> bool:
    """True when ``module`` normalises with batch statistics (a BatchNorm), so its output for one
    row depends on the other rows of the call."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


class AlgorithmStep:
    """``step(x, number=...)`` runs one algorithm step on the data batch ``x`` and returns the
    detached loss terms; a divergent loss raises ``TrainingDivergedError`` (``guard``)."""

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
        #: (step number, (run directory, step) of the last checkpoint or None): for the guard's message
        self.where: tuple[int, tuple[Path, int] | None] = (0, None)
        #: while a CUDA graph records the step, the losses to check after its replay (see ``check_loss``)
        self.deferred_checks: list[tuple[str, torch.Tensor, dict[str, torch.Tensor]]] | None = None
        self.device_type = (device or torch.device("cpu")).type
        self.amp_dtype = PRECISIONS[str(config.get("precision", "32"))]
        fp16 = self.amp_dtype is torch.float16
        self.scalers = {"gen": torch.amp.GradScaler(self.device_type), "disc": torch.amp.GradScaler(self.device_type)} if fp16 else {}
        # one decoder call for z_q and z_p, unless the decoder's batch statistics would mix the two
        self.decode_together = bool(getattr(divergence, "decodes_both", False)) and not uses_batch_statistics(decoder)
        if config.get("compile"):
            self.compile_networks()
        self.graph: StepGraph | None = None
        if config.get("cuda_graphs"):
            blocker = capture_blocker(config, device or torch.device("cpu"), dist)
            if blocker is None:
                self.graph = StepGraph(self)
            else:
                warnings.warn(f"cuda_graphs=true, but {blocker}: every step runs eagerly", GraphCaptureWarning, stacklevel=3)

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

    def forward_precision(self) -> ContextManager[Any]:
        """Autocast for the forward passes (losses stay float32: the likelihoods and the fused head
        compute in float32); a no-op at precision "32"."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        # a graph replays the casts it recorded; autocast's cache of cast weights would go stale
        return torch.autocast(self.device_type, dtype=self.amp_dtype, cache_enabled=self.graph is None)

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
        """Restore what ``state_dict`` saved; a captured graph is dropped (the optimizers' state
        tensors are new) and captured again.  A checkpoint from before the EMA warm-up has no
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
        if self.graph is not None:
            self.graph.reset()

    def _update(self, which: str, optimizer: torch.optim.Optimizer, loss: torch.Tensor, params: Iterable[torch.Tensor], clip: float | None) -> None:
        """Backward, gradient averaging, (unscaling,) clipping and the optimizer step."""
        scaler = self.scalers.get(which)
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        average_gradients(params, self.dist)
        if scaler is not None:
            scaler.unscale_(optimizer)
        clip_gradients(optimizer, clip)
        if scaler is not None:
            scaler.step(optimizer)  # skipped when this optimizer's gradients overflowed
            scaler.update()
        elif self.recording:
            with self.graph.gated(optimizer):  # type: ignore[union-attr]
                optimizer.step()
        else:
            optimizer.step()

    @property
    def recording(self) -> bool:
        """The step is being rehearsed or recorded for a CUDA graph (see ``step_graph``)."""
        return self.deferred_checks is not None  # only a StepGraph sets it

    def check_loss(self, term: str, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """Raise ``TrainingDivergedError`` when ``loss`` (``"d_loss"`` or ``"g_loss"``) is divergent;
        while a graph records the step, note it for after the replay instead."""
        if self.recording:
            self.deferred_checks.append((term, loss, dict(terms)))  # type: ignore[union-attr]
            self.graph.flag(term, loss)  # type: ignore[union-attr]  # the graph's updates skip on the device
            return
        self.guard.check_loss(term, loss, terms, *self.where)

    def make_batch(self, x: torch.Tensor) -> JointBatch:
        """The step's joint samples for the data batch ``x`` (prior codes drawn here)."""
        return JointBatch(
            x, self.encoder, self.decoder, int(self.config["latent_dim"]), sample_x=self.config["sample_x"],
            decode_together=self.decode_together,
        )

    def discriminator_step(self, batch: JointBatch) -> dict[str, torch.Tensor]:
        """``n_critic`` discriminator updates on the batch's samples, generator outputs detached."""
        terms: dict[str, torch.Tensor] = {}
        if self.discriminator is None or self.disc_optimizer is None:
            return terms
        optim = self.config["optim"]
        for _ in range(optim["n_critic"]):
            with self.forward_precision():
                d_loss, terms = self.divergence.discriminator_loss(self.discriminator, batch)
            self.check_loss("d_loss", d_loss, terms)
            clip = optim["disc_clip_grad_norm"] or optim["clip_grad_norm"]
            self._update("disc", self.disc_optimizer, d_loss, self.discriminator.parameters(), clip)
        return terms

    def generator_step(self, batch: JointBatch) -> dict[str, torch.Tensor]:
        """One encoder/decoder update on the divergence's objective, the discriminator frozen."""
        if self.discriminator is not None:
            self.discriminator.requires_grad_(False)
        try:
            with self.forward_precision():
                g_loss, terms = self.divergence.generator_loss(self.discriminator, batch)
            self.check_loss("g_loss", g_loss, terms)
            params = [p for group in self.gen_optimizer.param_groups for p in group["params"]]
            self._update("gen", self.gen_optimizer, g_loss, params, self.config["optim"]["clip_grad_norm"])
            if self.ema is not None:
                self.ema.update(self.graph.ema_weight() if self.recording else None)  # type: ignore[union-attr]
        finally:
            if self.discriminator is not None:
                self.discriminator.requires_grad_(True)
        return terms

    def step(self, x: torch.Tensor, *, number: int = 0, saved: tuple[Path, int] | None = None) -> dict[str, torch.Tensor]:
        """Discriminator update(s), then the encoder/decoder update, on the data batch ``x``.

        ``number`` (the step's number) and ``saved`` (the run directory and step of the last
        checkpoint) only go into the message of a divergence."""
        self.where = (number, saved)
        optim = self.config["optim"]
        if is_scheduled(optim):
            set_learning_rates(optim, self.gen_optimizer, self.disc_optimizer, lr_factor(optim, number - 1, self.config["steps"]))
        for module in (self.encoder, self.decoder, self.discriminator):
            if module is not None:
                module.train()
        if self.graph is not None:
            return self.graph.step(x)
        return self.updates(x)

    def updates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The step's updates on ``x`` (what ``step`` runs, or replays from a CUDA graph)."""
        batch = self.make_batch(x)
        terms = self.discriminator_step(batch)
        terms.update(self.generator_step(batch))
        return terms
