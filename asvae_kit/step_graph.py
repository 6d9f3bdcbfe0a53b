"""A whole algorithm step as one CUDA graph (config ``cuda_graphs``).

On a GPU each step of the library launches a few hundred small kernels, and launching them costs
more host time than the GPU needs to run them.  ``StepGraph`` records the whole step (prior draws,
discriminator update(s), encoder/decoder update, both fused Adam steps, the weight average) once,
then replays it: one launch per step.  The batch is copied into a static input buffer first.

How a run goes:

1. ``warmup`` steps run eagerly on a side stream (Adam creates its state, Triton compiles, cuBLAS
   makes its workspaces);
2. one *rehearsal* step runs the recorded body itself, eagerly, with CUDA's sync debugging on: a
   component that reads a GPU value on the host or copies from host memory is found here, named,
   and the run goes on eagerly with one ``GraphCaptureWarning`` (recording such a step would fail
   and could leave the process's CUDA state unusable).  Sync debugging does not see everything a
   graph forbids (``torch.cuda.synchronize()``, event waits, non-blocking copies from pinned host
   memory); those end in ``GraphCaptureError`` or, for the last, a replay that re-reads a stale
   host buffer;
3. the next step is recorded and replayed, and so is every later step with a batch of that shape.

``StepGraph`` wraps an ``AlgorithmStep`` (the builder decides whether to: ``capture_blocker``)
and offers the trainer the same ``step``/``state_dict``/``load_state_dict`` and parts.  It runs
the step's updates with hooks of its own (``asvae_kit.step_hooks.StepHooks``): eager ones for the
steps it does not record, and ``DeviceHooks`` for the body it rehearses and records.

The divergence guard cannot stop a graph half-way, so ``DeviceHooks`` does its test on the
device: a loss that is NaN, infinite or above the guard's current limit sets a flag that makes the
fused Adam steps skip (``found_inf``, as a loss scaler does) and holds the weight average still.
After the replay the host reads the losses and raises ``TrainingDivergedError`` as an eager step
would, with the weights as they were before the step.  Values that change from step to step
without being a tensor of the step (the guard's limits, the weight average's warmed-up step
``EMA.next_weight()``) live in small device tensors that the host rewrites before each replay;
the host also counts each replayed step's weight-average update, which the graph cannot.

Where capture cannot work the step runs eagerly and one ``GraphCaptureWarning`` says why: no CUDA
device, ``16-mixed`` precision (its loss scaler reads overflow flags on the host), data
parallelism, a component that synchronises (found by the rehearsal), or a batch whose shape
differs from the recorded one (that batch only; e.g. a last, smaller batch).
"""

from __future__ import annotations

import contextlib
import os
import traceback
import warnings
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator

import torch

from .errors import GraphCaptureError, TrainingDivergedError
from .schema import KEYS
from .step_hooks import EagerHooks

if TYPE_CHECKING:  # pragma: no cover
    from .algorithm import AlgorithmStep
    from .distributed import DistContext
    from .ema import EMA
    from .guard import DivergenceGuard

__all__ = ["StepGraph", "DeviceHooks", "CudaGraphs", "GraphCaptureWarning", "capture_blocker"]


class GraphCaptureWarning(UserWarning):
    """``cuda_graphs`` is on but a step runs eagerly; the message says why and what to change."""


def capture_blocker(config: dict[str, Any], device: torch.device, dist: "DistContext") -> str | None:
    """Why this run cannot capture its step in a CUDA graph, or ``None`` when it can."""
    if device.type != "cuda":
        return f"device is {str(device)!r}, and CUDA graphs need a CUDA device (device='cuda')"
    if str(config.get("precision", KEYS["precision"].default)) == "16-mixed":  # a partial config: the default
        return "precision '16-mixed' scales losses with GradScaler, which reads overflow flags on the host; use precision='bf16' or '32'"
    if dist.enabled:
        return f"data parallelism ({dist.world_size} processes) is not captured yet; run one process per run, or cuda_graphs=false"
    return None


class CudaGraphs:
    """The CUDA side of ``StepGraph``: a side stream for eager steps, the sync check, capture."""

    def warmup(self) -> ContextManager[Any]:
        """Run the enclosed work on a side stream that the current stream then waits for."""
        return _side_stream()

    @contextlib.contextmanager
    def sync_check(self) -> Iterator[list[str]]:
        """Yield a list that, after the block, holds where (``file:line``) the block synchronised
        with the host (``torch.cuda.set_sync_debug_mode``)."""
        found: list[str] = []
        previous = torch.cuda.get_sync_debug_mode()
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            show = warnings.showwarning

            def note(message: Any, category: Any, filename: str, lineno: int, *rest: Any) -> None:
                if "synchronizing" in str(message):
                    found.append(_caller_outside_torch())
                else:
                    show(message, category, filename, lineno, *rest)

            warnings.showwarning = note
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield found
            finally:
                torch.cuda.set_sync_debug_mode(previous)

    def capture(self, body: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
        """Record ``body`` (which runs nothing on the GPU while recorded) into a graph; return its
        replay and ``body``'s output, a static tensor that each replay refills."""
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.current_stream()
        try:
            # thread_local: another thread's CUDA calls (a logger's, a data loader's) do not break the capture
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                out = body()
        except BaseException:
            torch.cuda.set_stream(stream)  # a failed capture_end leaves the graph's stream current
            raise
        return graph.replay, out


def _caller_outside_torch() -> str:
    """``file:line`` of the innermost frame outside torch and the warnings machinery: the code
    that made torch synchronise (a backward's syncs surface where the backward was called)."""
    skip = (os.path.dirname(torch.__file__) + os.sep, warnings.__file__, __file__)
    for frame in reversed(traceback.extract_stack()[:-1]):
        if not frame.filename.startswith(skip):
            return f"{frame.filename}:{frame.lineno}"
    return "an unknown place"


@contextlib.contextmanager
def _side_stream() -> Iterator[None]:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(stream):
            yield
    finally:
        torch.cuda.current_stream().wait_stream(stream)


class DeviceHooks:
    """The step's hooks while it is rehearsed and recorded (``asvae_kit.step_hooks.StepHooks``):
    a loss is tested on the device, where a divergent one sets ``skip``; the optimizers' steps and
    the weight average's update read ``skip``, so they leave everything as it was; the losses are
    kept (``checks``) for the host to check after the replay.  ``refresh()`` writes what changes
    between replays (the guard's limits, the weight average's step) where the graph reads it."""

    autocast_cache = False  # a graph replays the casts it recorded; autocast's cache would go stale

    def __init__(self, guard: "DivergenceGuard", ema: "EMA | None", device: torch.device) -> None:
        self.guard, self.ema = guard, ema
        self.skip = torch.zeros((), dtype=torch.float32, device=device)  # 1.0 once a loss of the step is divergent
        #: the losses of the body so far, with their terms: (term, loss, terms)
        self.checks: list[tuple[str, torch.Tensor, dict[str, torch.Tensor]]] = []
        #: term -> (the device tensor the graph reads the guard's limit from, the value written in it)
        self.limits: dict[str, tuple[torch.Tensor, float]] = {}
        #: (the device tensor the graph reads the weight average's step from, the value written in it)
        self.ema_step: tuple[torch.Tensor, float] | None = None

    def begin(self) -> None:
        """At the start of the body: no loss checked yet, none divergent."""
        self.skip.zero_()
        self.checks = []

    def check_loss(self, term: str, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """Keep ``loss`` for the host, and set ``skip`` when it is NaN, infinite or above the
        guard's limit."""
        self.checks.append((term, loss, dict(terms)))
        if term not in self.limits:  # first met in the rehearsal, which runs eagerly
            written = self.guard.limit(term)
            self.limits[term] = (torch.full((), written, device=loss.device), written)
        limit = self.limits[term][0]
        value = loss.detach().float()
        divergent = ~torch.isfinite(value) | (value.abs() > limit)
        torch.maximum(self.skip, divergent.float(), out=self.skip)

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer's step, skipped when ``skip`` is set (fused Adam reads it as ``found_inf``,
        as for a loss scaler).  Unfused optimizers cannot skip on the device."""
        fused = all(group.get("fused") for group in optimizer.param_groups)
        if fused:
            optimizer.found_inf = self.skip  # type: ignore[attr-defined]
        try:
            optimizer.step()
        finally:
            if fused:
                del optimizer.found_inf  # type: ignore[attr-defined]

    def ema_weight(self) -> torch.Tensor:
        """The weight average's step, 0 when ``skip`` is set.  The warmed-up step
        (``EMA.next_weight``) changes from step to step, so it lives in a device tensor that the host
        rewrites before each replay (``refresh``), as the guard's limits do."""
        assert self.ema is not None
        if self.ema_step is None:  # first met in the rehearsal, which runs eagerly
            written = self.ema.next_weight()
            self.ema_step = (torch.full((), written, device=self.skip.device), written)
        return (1.0 - self.skip) * self.ema_step[0]

    def refresh(self) -> None:
        """Before a replay (and the capture): write the guard's current limits and the weight
        average's step for this update where the graph reads them."""
        for term, (tensor, written) in self.limits.items():
            value = self.guard.limit(term)
            if value != written:
                tensor.fill_(value)
                self.limits[term] = (tensor, value)
        if self.ema_step is not None and self.ema is not None:
            tensor, written = self.ema_step
            value = self.ema.next_weight()
            if value != written:
                tensor.fill_(value)
                self.ema_step = (tensor, value)


class StepGraph:
    """The algorithm step ``algorithm``, replayed from a CUDA graph where it can be: ``step(x,
    number=..., saved=...)``, ``state_dict()`` and ``load_state_dict()`` as ``AlgorithmStep``'s, and
    the step's parts (networks, optimizers, ``ema``, ``guard``, ``make_batch``...) are the wrapped
    step's own.

    ``backend`` does the CUDA work (``CudaGraphs``); tests give a stand-in to check the rest on CPU.
    """

    def __init__(self, algorithm: "AlgorithmStep", *, warmup: int = 2, backend: Any = None) -> None:
        self.algorithm, self.warmup_steps, self.backend = algorithm, warmup, backend or CudaGraphs()
        #: the hooks of the steps that run eagerly (warm-up, fallback): the guard at once, and autocast
        #: casting as in the recorded steps
        self.eager_hooks = EagerHooks(algorithm.guard, autocast_cache=False)
        self.replays = 0
        self.disabled: str | None = None  # why the run went back to eager steps, once it did
        self._told_shape = False
        self.reset()

    def __getattr__(self, name: str) -> Any:
        """The wrapped step's parts: ``encoder``, ``gen_optimizer``, ``ema``, ``guard``..."""
        if name.startswith("__") or name == "algorithm":  # copy/pickle probes, and before __init__ set it
            raise AttributeError(name)
        return getattr(self.algorithm, name)

    @property
    def captured(self) -> bool:
        return self._replay is not None

    def reset(self) -> None:
        """Forget the graph (the optimizers' state tensors were replaced, e.g. by a resume): the
        next steps warm up, rehearse and capture again."""
        self.warmed, self.rehearsed = 0, False
        self._replay: Callable[[], None] | None = None
        self._static_x: torch.Tensor | None = None
        self._static_out: torch.Tensor | None = None
        self._layout: tuple[list[tuple[str, list[str]]], list[str]] = ([], [])
        #: the recorded body's hooks, made by the rehearsal
        self.device_hooks: DeviceHooks | None = None

    # -- what the trainer calls ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return self.algorithm.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The wrapped step's ``load_state_dict``; the captured graph is dropped (the optimizers'
        state tensors are new) and captured again."""
        self.algorithm.load_state_dict(state)
        self.reset()

    def step(self, x: torch.Tensor, *, number: int = 0, saved: tuple[Any, int] | None = None) -> dict[str, torch.Tensor]:
        """``AlgorithmStep.step``: eagerly while warming up, rehearsed once, then replayed."""
        self.algorithm.begin(number, saved)
        if self.disabled is not None:
            return self._eager(x)
        if not self.rehearsed:
            if self.warmed < self.warmup_steps:
                self.warmed += 1
                with self.backend.warmup():
                    return self._eager(x)
            return self._rehearse(x)
        if self._replay is None:
            if self._signature(x) != self._signature(self._static_x):
                return self._rehearse(x)  # record only what was rehearsed (first-time work for a shape is not recordable)
            self._capture(x)
        assert self._static_x is not None and self._replay is not None and self.device_hooks is not None
        if self._signature(x) != self._signature(self._static_x):
            if not self._told_shape:
                self._told_shape = True
                warnings.warn(
                    f"cuda_graphs: a batch of shape {tuple(x.shape)} does not fit the graph captured for "
                    f"{tuple(self._static_x.shape)}, so it trains eagerly (as will any other such batch); a data set "
                    "whose size is a multiple of batch_size gives full batches only",
                    GraphCaptureWarning, stacklevel=2,
                )
            return self._eager(x)
        self._static_x.copy_(x)
        self.device_hooks.refresh()
        self._replay()
        self.replays += 1
        return self._counted(self._results(self._static_out))

    def _eager(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.algorithm.updates(x, self.eager_hooks)

    @staticmethod
    def _signature(x: torch.Tensor | None) -> tuple[Any, ...]:
        return (None,) if x is None else (x.shape, x.dtype, x.device)

    def _rehearse(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the body to be recorded once, eagerly, and look for host synchronisation in it."""
        self.rehearsed = True
        self._static_x = x.clone()
        self.device_hooks = DeviceHooks(self.algorithm.guard, self.algorithm.ema, x.device)
        with self.backend.warmup(), self.backend.sync_check() as syncs:
            out = self._body()
        if syncs:
            where = ", ".join(dict.fromkeys(syncs))
            self.disabled = f"the step synchronises with the host at {where}"
            warnings.warn(
                f"cuda_graphs: {self.disabled}, which a CUDA graph cannot record, so every step runs eagerly. "
                "A component that reads a GPU value on the host (.item(), float(t), `if t.any():`) or builds a "
                "device tensor from host data (torch.tensor(..., device=...)) in its forward cannot be captured; "
                "change it, or set cuda_graphs=false to silence this.",
                GraphCaptureWarning, stacklevel=3,
            )
        try:
            return self._counted(self._results(out))
        finally:
            if self.disabled is not None:
                self.reset()  # the static buffers are not needed any more

    def _capture(self, x: torch.Tensor) -> None:
        """Record the step for batches like ``x``; a failure is an error (see ``GraphCaptureError``)."""
        assert self._static_x is not None and self.device_hooks is not None  # the rehearsal's buffer, of x's shape
        self._static_x.copy_(x)
        self.device_hooks.refresh()
        for optimizer in (self.algorithm.gen_optimizer, self.algorithm.disc_optimizer):
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)  # gradients are then allocated in the graph's memory
        try:
            self._replay, self._static_out = self.backend.capture(self._body)
        except Exception as exc:
            cause = exc.__context__ or exc  # a failed capture_end hides the first error
            self.disabled = f"{type(cause).__name__}: {cause}".strip()
            raise GraphCaptureError(
                f"cuda_graphs: recording the training step failed ({self.disabled}) although its rehearsal found "
                "no host synchronisation. The process's CUDA state may not be usable after a failed capture: "
                "restart the run with cuda_graphs=false (--resume continues from the last checkpoint), and "
                "please report the error."
            ) from exc

    def _body(self) -> torch.Tensor:
        """One step on the static batch, with the device hooks; returns its losses and terms
        stacked in one tensor, so a single copy brings them to the host."""
        hooks = self.device_hooks
        assert hooks is not None
        hooks.begin()
        terms = self.algorithm.updates(self._static_x, hooks)
        checks, hooks.checks = hooks.checks, []  # the body's losses: only their layout outlives it
        flat = [hooks.skip, *(value for _, loss, snapshot in checks for value in (loss, *snapshot.values())), *terms.values()]
        self._layout = ([(term, list(snapshot)) for term, _, snapshot in checks], list(terms))
        return torch.stack([t.detach().float().reshape(()) for t in flat])

    def _results(self, out: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The step's terms, after the guard checked its losses on the host: copies on the
        device, as an eager step returns them (the next replay overwrites the static output)."""
        assert out is not None
        values = out.clone()
        host = values.cpu()  # waits for the step
        checks, names = self._layout
        skipped, at = bool(host[0] > 0), 1
        for term, keys in checks:
            loss, snapshot = host[at], dict(zip(keys, host[at + 1 : at + 1 + len(keys)]))
            at += 1 + len(keys)
            try:
                self.eager_hooks.check_loss(term, loss, snapshot)
            except TrainingDivergedError as exc:
                if skipped:
                    raise
                # the guard's limit fell within the step (n_critic > 1): the device had let the updates through
                raise TrainingDivergedError(f"{exc} (cuda_graphs: this step's updates were applied before the check)") from None
        return dict(zip(names, values[at:]))

    def _counted(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """After a rehearsed or replayed step that passed the guard: count its weight-average update
        (a replay runs no Python, so ``EMA.update`` cannot count it)."""
        if self.algorithm.ema is not None:
            self.algorithm.ema.updates += 1
        return terms
