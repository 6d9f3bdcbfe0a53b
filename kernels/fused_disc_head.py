"""The fused discriminator-head op ``asvae_kit::fused_disc_head``: the public function, its one
dispatch, and its registration -- a thin ``torch.autograd.Function`` for eager calls and
``torch.library`` custom ops for traced ones (``torch.compile`` sees one node, no graph break).
How calls are routed, validated and fall back is docs/design.md §4.  Never imports Triton.
"""

from __future__ import annotations

from types import ModuleType
from typing import Sequence

import torch
from torch import Tensor

from . import selection, validation
from .reference import compute_dtype, fused_disc_head_reference, fused_disc_head_reference_backward
from .selection import ENV_VAR, IMPLS, MAX_TRITON_HEADS

__all__ = ["fused_disc_head", "IMPLS", "MAX_TRITON_HEADS", "ENV_VAR"]

_AUTOCAST_DEVICES = ("cuda", "cpu", "xpu", "mps", "hpu")
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def fused_disc_head(h: Tensor, weight: Tensor, bias: Tensor, segment_sizes: Sequence[int], *,
                    impl: str | None = None) -> Tensor:
    """Head logits ``l = h @ weight.T + bias`` reduced to per-segment statistics ``[S, K, 3]``.

    ``h`` ``[N, D]`` stacks the discriminator features of ``S`` batches, whose lengths
    ``segment_sizes`` gives; ``weight`` ``[K, D]`` and ``bias`` ``[K]`` are an ``nn.Linear(D, K)``.
    ``out[s, k] = (mean l_k, mean softplus(l_k), mean softplus(-l_k))`` over the rows of ``s``,
    accumulated and returned in float32 (float64 for float64 inputs).  First-order differentiable
    in ``h``, ``weight`` and ``bias``; the backward recomputes the logits.  Any strides; under
    ``torch.autocast`` inputs are cast as for ``nn.Linear``.  NaN/inf are not inspected: they reach
    only the segments whose rows hold them.

    ``impl``: ``"auto"`` (Triton for CUDA tensors with ``K <= MAX_TRITON_HEADS``, else the
    reference; a Triton failure warns once and falls back for the rest of the process),
    ``"triton"`` (the kernels or an error saying why not), ``"torch"`` (the reference), or
    ``None``: ``$ASVAE_KIT_KERNELS``, read on every call, else ``"auto"``.  Full contract and
    routing: docs/design.md §4.

    Raises ``ValueError`` (bad shapes, dtypes, devices, segment sizes, ``impl`` or variable;
    ``impl="triton"`` with too many heads), ``TypeError`` (a non-tensor) or ``RuntimeError``
    (``impl="triton"`` where Triton cannot run); each message names the values.
    """
    if impl is None:
        impl_arg = "default"
    elif isinstance(impl, str) and impl in IMPLS:
        impl_arg = impl
    else:
        raise ValueError(f"impl={impl!r} is not one of {IMPLS}; or pass None to use ${ENV_VAR} "
                         f"(default 'auto')")
    validation.check_tensors(h, weight, bias)
    device_type = h.device.type
    if device_type in _AUTOCAST_DEVICES and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)  # as for nn.Linear: float64 is left alone
        h, weight, bias = (t.to(dtype) if t.is_floating_point() and t.dtype != torch.float64 else t
                           for t in (h, weight, bias))
    sizes = validation.check_values(h, weight, bias, segment_sizes)  # the one validation of this call
    if _tracing():  # one opaque node for torch.compile & co.; the graph calls the op on every run
        return torch.ops.asvae_kit.fused_disc_head(h, weight, bias, sizes, impl_arg)
    return _FusedDiscHead.apply(h, weight, bias, sizes, *selection.pick(impl_arg, h, weight))


def _tracing() -> bool:
    """Dynamo, a dispatch mode (fake tensors, ``make_fx``) or a ``torch.func`` transform: these
    get the registered op.  Three C calls, well under a microsecond."""
    return (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0
            or torch._C._are_functorch_transforms_active())


def _dispatch(backward: bool, impl: str, module: ModuleType | None, args: tuple):
    """The one dispatch: run the forward (``args = h, weight, bias, sizes``) or the backward
    (``args = grad_out, h, weight, bias, sizes, need_grad_h, need_grad_weight_bias``) on what
    :func:`selection.pick` chose (``module``: the Triton kernels, None: the reference).
    ``impl="auto"`` falls back to the reference when Triton fails (out of memory excepted)."""
    if module is not None and not (impl == "auto" and selection.failed()):
        kernel = module.backward if backward else module.forward
        if impl != "auto":
            return kernel(*args)  # failures are raised, never hidden
        try:
            return kernel(*args)
        except _OUT_OF_MEMORY:
            raise  # not a Triton problem; the reference would not fit either
        except Exception as exc:  # compilation or launch failure
            selection.record_failure(f"the Triton kernel failed ({type(exc).__name__}: {exc})")
    return (fused_disc_head_reference_backward if backward else fused_disc_head_reference)(*args)


class _FusedDiscHead(torch.autograd.Function):
    """Eager calls: inputs validated and implementation picked by the caller; the backward reuses
    the forward's choice.  Old-style ``forward(ctx, ...)`` on purpose: a separate
    ``setup_context`` makes ``apply`` bind arguments through ``inspect.signature`` (~30 us)."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor, sizes: list[int], impl: str,
                module: ModuleType | None) -> Tensor:
        ctx.save_for_backward(h, weight, bias)  # the inputs only: the logits are recomputed
        ctx.sizes, ctx.impl, ctx.module = sizes, impl, module
        return _dispatch(False, impl, module, (h, weight, bias, sizes))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        h, weight, bias = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        gh, gw, gb = _dispatch(True, ctx.impl, ctx.module,
                               (grad_out, h, weight, bias, ctx.sizes, need_h, need_w or need_b))
        return (gh if need_h else None, gw if need_w else None, gb if need_b else None, None, None, None)


# torch.library registration: what traced calls, compiled graphs and direct torch.ops callers run.
# The ops validate themselves (they are reachable without the public function) and pick the
# implementation when they run, for the real tensors.


@torch.library.custom_op("asvae_kit::fused_disc_head", mutates_args=())
def _fused_disc_head_op(h: Tensor, weight: Tensor, bias: Tensor, segment_sizes: list[int],
                        impl: str) -> Tensor:
    """``[S, K, 3]`` head statistics; ``impl`` is ``auto|triton|torch`` or ``default`` (env)."""
    sizes = validation.validate(h, weight, bias, segment_sizes)
    return _dispatch(False, *selection.pick(impl, h, weight), (h, weight, bias, sizes))


@_fused_disc_head_op.register_fake
def _(h, weight, bias, segment_sizes, impl):
    return h.new_empty((len(segment_sizes), weight.shape[0], 3), dtype=compute_dtype(h.dtype))


@torch.library.custom_op("asvae_kit::fused_disc_head_backward", mutates_args=())
def _fused_disc_head_backward_op(grad_out: Tensor, h: Tensor, weight: Tensor, bias: Tensor,
                                 segment_sizes: list[int], impl: str, need_grad_h: bool,
                                 need_grad_weight_bias: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients w.r.t. ``(h, weight, bias)``; a skipped one comes back as an empty tensor."""
    sizes = validation.validate(h, weight, bias, segment_sizes)
    if tuple(grad_out.shape) != (len(sizes), weight.shape[0], 3):
        raise ValueError(f"fused_disc_head backward: grad_out must have shape "
                         f"{(len(sizes), weight.shape[0], 3)}; got {tuple(grad_out.shape)}")
    grads = _dispatch(True, *selection.pick(impl, h, weight),
                      (grad_out, h, weight, bias, sizes, need_grad_h, need_grad_weight_bias))
    return tuple(g if g is not None else t.new_empty(0) for g, t in zip(grads, (h, weight, bias)))


@_fused_disc_head_backward_op.register_fake
def _(grad_out, h, weight, bias, segment_sizes, impl, need_grad_h, need_grad_weight_bias):
    return tuple(t.new_empty(t.shape if need else 0) for t, need in
                 ((h, need_grad_h), (weight, need_grad_weight_bias), (bias, need_grad_weight_bias)))


def _setup_context(ctx, inputs, output) -> None:
    h, weight, bias, ctx.segment_sizes, ctx.impl = inputs
    ctx.save_for_backward(h, weight, bias)  # the inputs only: the logits are recomputed


def _backward(ctx, grad_out: Tensor):
    h, weight, bias = ctx.saved_tensors
    need_h, need_w, need_b = ctx.needs_input_grad[:3]
    gh, gw, gb = torch.ops.asvae_kit.fused_disc_head_backward(
        grad_out, h, weight, bias, ctx.segment_sizes, ctx.impl, need_h, need_w or need_b)
    return (gh if need_h else None, gw if need_w else None, gb if need_b else None, None, None)


_fused_disc_head_op.register_autograd(_backward, setup_context=_setup_context)
