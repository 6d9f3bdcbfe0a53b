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

The divergence guard cannot stop a graph half-way, so the body does its test on the device: a
loss that is NaN, infinite or above the guard's current limit sets a flag that makes the fused
Adam steps skip (``found_inf``, as a loss scaler does) and holds the weight average still.  After
the replay the host reads the losses and raises ``TrainingDivergedError`` as an eager step would,
with the weights as they were before the step.  Values that change from step to step without
being a tensor of the step (the guard's limits, the weight average's warmed-up step
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

if TYPE_CHECKING:  # pragma: no cover
    from .algorithm import AlgorithmStep
    from .distributed import DistContext

__all__ = ["StepGraph", "CudaGraphs", "GraphCaptureWarning", "capture_blocker"]


class GraphCaptureWarning(UserWarning):
    """``cuda_graphs`` is on but a step runs eagerly; the message says why and what to change."""


def capture_blocker(config: dict[str, Any], device: torch.device, dist: "DistContext") -> str | None:
    """Why this run cannot capture its step in a CUDA graph, or ``None`` when it can."""
    if device.type != "cuda":
        return f"device is {str(device)!r}, and CUDA graphs need a CUDA device (device='cuda')"
    if str(config.get("precision", "32")) == "16-mixed":
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


class StepGraph:
    """``step(x)``: the algorithm step on the batch ``x``, replayed from a CUDA graph where it can be.

    ``backend`` does the CUDA work (``CudaGraphs``); tests give a stand-in to check the rest on CPU.
    """

    def __init__(self, algorithm: "AlgorithmStep", *, warmup: int = 2, backend: Any = None) -> None:
        self.algorithm, self.warmup_steps, self.backend = algorithm, warmup, backend or CudaGraphs()
        self.replays = 0
        self.disabled: str | None = None  # why the run went back to eager steps, once it did
        self._told_shape = False
        self.reset()

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
        self.skip: torch.Tensor | None = None  # 1.0 once a loss of the step is divergent
        self._limits: dict[str, tuple[torch.Tensor, float]] = {}
        self._ema_step: tuple[torch.Tensor, float] | None = None  # the weight average's step, as the graph reads it

    # -- the step ------------------------------------------------------------------------------
    def step(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        eager = self.algorithm.updates
        if self.disabled is not None:
            return eager(x)
        if not self.rehearsed:
            if self.warmed < self.warmup_steps:
                self.warmed += 1
                with self.backend.warmup():
                    return eager(x)
            return self._rehearse(x)
        if self._replay is None:
            if self._signature(x) != self._signature(self._static_x):
                return self._rehearse(x)  # record only what was rehearsed (first-time work for a shape is not recordable)
            self._capture(x)
        assert self._static_x is not None and self._replay is not None
        if self._signature(x) != self._signature(self._static_x):
            if not self._told_shape:
                self._told_shape = True
                warnings.warn(
                    f"cuda_graphs: a batch of shape {tuple(x.shape)} does not fit the graph captured for "
                    f"{tuple(self._static_x.shape)}, so it trains eagerly (as will any other such batch); a data set "
                    "whose size is a multiple of batch_size gives full batches only",
                    GraphCaptureWarning, stacklevel=2,
                )
            return eager(x)
        self._static_x.copy_(x)
        self._refresh_limits()
        self._refresh_ema_step()
        self._replay()
        self.replays += 1
        return self._counted(self._results(self._static_out))

    @staticmethod
    def _signature(x: torch.Tensor | None) -> tuple[Any, ...]:
        return (None,) if x is None else (x.shape, x.dtype, x.device)

    def _rehearse(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the body to be recorded once, eagerly, and look for host synchronisation in it."""
        self.rehearsed = True
        self._static_x = x.clone()
        self.skip = torch.zeros((), dtype=torch.float32, device=x.device)
        self._refresh_ema_step()
        with self.backend.warmup(), self.backend.sync_check() as syncs:
            out = self._recording(self._body)
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
        assert self._static_x is not None  # the rehearsal's buffer, of x's shape
        self._static_x.copy_(x)
        self._refresh_ema_step()
        for optimizer in (self.algorithm.gen_optimizer, self.algorithm.disc_optimizer):
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)  # gradients are then allocated in the graph's memory
        try:
            self._replay, self._static_out = self._recording(lambda: self.backend.capture(self._body))
        except Exception as exc:
            cause = exc.__context__ or exc  # a failed capture_end hides the first error
            self.disabled = f"{type(cause).__name__}: {cause}".strip()
            raise GraphCaptureError(
                f"cuda_graphs: recording the training step failed ({self.disabled}) although its rehearsal found "
                "no host synchronisation. The process's CUDA state may not be usable after a failed capture: "
                "restart the run with cuda_graphs=false (--resume continues from the last checkpoint), and "
                "please report the error."
            ) from exc

    def _recording(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` with the algorithm's loss checks deferred to ``_results``."""
        self.algorithm.deferred_checks = []
        try:
            return fn()
        finally:
            self.algorithm.deferred_checks = None

    def _body(self) -> torch.Tensor:
        """One step on the static batch; returns its losses and terms stacked in one tensor, so a
        single copy brings them to the host."""
        assert self.skip is not None
        self.skip.zero_()
        terms = self.algorithm.updates(self._static_x)
        checks = self.algorithm.deferred_checks or []
        flat = [self.skip, *(value for _, loss, snapshot in checks for value in (loss, *snapshot.values())), *terms.values()]
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
                self.algorithm.guard.check_loss(term, loss, snapshot, *self.algorithm.where)
            except TrainingDivergedError as exc:
                if skipped:
                    raise
                # the guard's limit fell within the step (n_critic > 1): the device had let the updates through
                raise TrainingDivergedError(f"{exc} (cuda_graphs: this step's updates were applied before the check)") from None
        return dict(zip(names, values[at:]))

    # -- the guard on the device ---------------------------------------------------------------
    def flag(self, term: str, loss: torch.Tensor) -> None:
        """Inside the body: set ``skip`` when ``loss`` is NaN, infinite or above the guard's limit."""
        assert self.skip is not None
        if term not in self._limits:  # first met in the rehearsal, which runs eagerly
            written = self.algorithm.guard.limit(term)
            self._limits[term] = (torch.full((), written, device=loss.device), written)
        limit = self._limits[term][0]
        value = loss.detach().float()
        divergent = ~torch.isfinite(value) | (value.abs() > limit)
        torch.maximum(self.skip, divergent.float(), out=self.skip)

    def _refresh_limits(self) -> None:
        """Before a replay: write the guard's current limits where the graph reads them."""
        for term, (tensor, written) in self._limits.items():
            value = self.algorithm.guard.limit(term)
            if value != written:
                tensor.fill_(value)
                self._limits[term] = (tensor, value)

    @contextlib.contextmanager
    def gated(self, optimizer: torch.optim.Optimizer) -> Iterator[None]:
        """Inside the body: the optimizer's step skips when ``skip`` is set (fused Adam reads it as
        ``found_inf``, as for a loss scaler).  Unfused optimizers cannot skip on the device."""
        fused = all(group.get("fused") for group in optimizer.param_groups)
        if fused:
            optimizer.found_inf = self.skip  # type: ignore[attr-defined]
        try:
            yield
        finally:
            if fused:
                del optimizer.found_inf  # type: ignore[attr-defined]

    def ema_weight(self) -> torch.Tensor:
        """Inside the body: the weight average's step, 0 when ``skip`` is set.  The warmed-up step
        (``EMA.next_weight``) changes from step to step, so it lives in a device tensor that the host
        rewrites before each replay (``_refresh_ema_step``), as the guard's limits do."""
        assert self.skip is not None and self.algorithm.ema is not None
        if self._ema_step is None:  # first met in the rehearsal, which runs eagerly
            written = self.algorithm.ema.next_weight()
            self._ema_step = (torch.full((), written, device=self.skip.device), written)
        return (1.0 - self.skip) * self._ema_step[0]

    def _refresh_ema_step(self) -> None:
        """Before a replay: write the weight average's step for this update where the graph reads it."""
        if self._ema_step is not None and self.algorithm.ema is not None:
            tensor, written = self._ema_step
            value = self.algorithm.ema.next_weight()
            if value != written:
                tensor.fill_(value)
                self._ema_step = (tensor, value)

    def _counted(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """After a rehearsed or replayed step that passed the guard: count its weight-average update
        (a replay runs no Python, so ``EMA.update`` cannot count it)."""
        if self.algorithm.ema is not None:
            self.algorithm.ema.updates += 1
        return terms
