"""A whole algorithm step as one CUDA graph (config ``cuda_graphs``).

On a GPU each step of the library launches a few hundred small kernels, and launching them costs
more host time than the GPU needs to run them.  ``StepGraph`` records the whole step (prior draws,
discriminator update(s), encoder/decoder update, both fused Adam steps, the weight average) once,
then replays it: one launch per step.  The batch is copied into a static input buffer first.

How a run goes: the first ``warmup`` steps run eagerly on a side stream (Adam creates its state,
libraries their workspaces), the next step is captured and replayed, and every later step with a
batch of the same shape replays the graph.  The divergence guard cannot look at a loss inside a
graph, so it checks the step's losses right after the replay, before anything is written.

Where capture cannot work the step runs eagerly and one ``GraphCaptureWarning`` says why: no CUDA
device, ``16-mixed`` precision (its loss scaler reads overflow flags on the host), data parallelism,
a component that synchronises with the host during capture (the error is quoted), or a batch
whose shape differs from the captured one (that step only; e.g. a last, smaller batch).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, Any, Callable, ContextManager

import torch

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
    """The CUDA side of ``StepGraph``: a side stream for warm-up, capture and replay."""

    def warmup(self) -> ContextManager[Any]:
        """Run the enclosed work on a side stream that the current stream then waits for."""
        return _side_stream()

    def capture(self, body: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
        """Record ``body`` (which runs nothing on the GPU while recorded) into a graph; return its
        replay and ``body``'s output, a static tensor that each replay refills."""
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread's CUDA calls (a logger's, a data loader's) do not break the capture
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = body()
        return graph.replay, out


@contextlib.contextmanager
def _side_stream() -> Any:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        yield
    torch.cuda.current_stream().wait_stream(stream)


class StepGraph:
    """``step(x)``: the algorithm step on the batch ``x``, replayed from a CUDA graph where it can be.

    ``backend`` does the CUDA work (``CudaGraphs``); tests give a stand-in to check the rest on CPU.
    """

    def __init__(self, algorithm: "AlgorithmStep", *, warmup: int = 3, backend: Any = None) -> None:
        self.algorithm, self.warmup_steps, self.backend = algorithm, warmup, backend or CudaGraphs()
        self.warmed = 0
        self.replays = 0
        self.disabled: str | None = None  # why capture was given up, once it was
        self._replay: Callable[[], None] | None = None
        self._static_x: torch.Tensor | None = None
        self._static_out: torch.Tensor | None = None
        self._layout: tuple[list[tuple[str, list[str]]], list[str]] = ([], [])
        self._told_shape = False

    @property
    def captured(self) -> bool:
        return self._replay is not None

    def reset(self) -> None:
        """Forget the graph (the optimizers' state tensors were replaced, e.g. by a resume): the
        next steps warm up and capture again."""
        self.warmed, self._replay, self._static_x, self._static_out = 0, None, None, None

    def step(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        eager = self.algorithm.updates
        if self.disabled is not None:
            return eager(x)
        if self._replay is None:
            if self.warmed < self.warmup_steps:
                self.warmed += 1
                with self.backend.warmup():
                    return eager(x)
            if not self._capture(x):
                return eager(x)
        assert self._static_x is not None
        if (x.shape, x.dtype, x.device) != (self._static_x.shape, self._static_x.dtype, self._static_x.device):
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
        assert self._replay is not None
        self._replay()
        self.replays += 1
        return self._results()

    def _capture(self, x: torch.Tensor) -> bool:
        """Record the step for batches like ``x``; on failure give up capture for good, warn, and
        return False (nothing of the step ran, so it can run eagerly)."""
        algorithm = self.algorithm
        self._static_x = x.clone()
        for optimizer in (algorithm.gen_optimizer, algorithm.disc_optimizer):
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)  # gradients are then allocated in the graph's memory
        algorithm.deferred_checks = []
        try:
            self._replay, self._static_out = self.backend.capture(self._body)
        except Exception as exc:  # whatever a component did that capture forbids
            self.reset()
            self.disabled = f"{type(exc).__name__}: {exc}".strip()
            warnings.warn(
                f"cuda_graphs: capturing the training step failed, so every step runs eagerly ({self.disabled}). "
                "A component that reads a GPU value on the host (.item(), float(t), a host-side branch on a tensor) "
                "or copies from host memory during the step cannot be captured; set cuda_graphs=false to silence this.",
                GraphCaptureWarning, stacklevel=3,
            )
            return False
        finally:
            algorithm.deferred_checks = None
        return True

    def _body(self) -> torch.Tensor:
        """One step on the static batch; returns its losses and terms stacked in one tensor, so a
        single copy brings them to the host after a replay."""
        terms = self.algorithm.updates(self._static_x)
        checks = self.algorithm.deferred_checks or []
        flat = [value for _, loss, snapshot in checks for value in (loss, *snapshot.values())]
        flat += list(terms.values())
        self._layout = ([(term, list(snapshot)) for term, _, snapshot in checks], list(terms))
        return torch.stack([t.detach().float().reshape(()) for t in flat])

    def _results(self) -> dict[str, torch.Tensor]:
        """The replayed step's terms, after the guard checked its losses: copies on the device, as
        an eager step returns them (the next replay overwrites the static output)."""
        assert self._static_out is not None
        values = self._static_out.clone()
        host = values.cpu()  # waits for the replay
        checks, names = self._layout
        at = 0
        for term, keys in checks:
            loss, snapshot = host[at], dict(zip(keys, host[at + 1 : at + 1 + len(keys)]))
            at += 1 + len(keys)
            self.algorithm.guard.check_loss(term, loss, snapshot, *self.algorithm.where)
        return dict(zip(names, values[at:]))
