"""The fused discriminator-head op, ``asvae_kit::fused_disc_head`` (docs/design.md §4).

What lives where:

* this module: the public function :func:`fused_disc_head` (validation, autocast, choice of
  implementation), the eager-mode ``torch.autograd.Function`` it calls, the ``torch.library``
  custom ops ``asvae_kit::fused_disc_head`` and ``asvae_kit::fused_disc_head_backward`` with their
  fake (meta) kernels and autograd formula (``register_autograd``), the fallback logic, and
  :data:`MAX_TRITON_HEADS` (the one definition of the Triton kernels' head limit).  It never
  imports Triton, so ``import asvae_kit`` (and ``import asvae_kit.kernels``) stays Triton-free
  while the op is registered from the start and ``torch.compile`` sees it.
* :mod:`asvae_kit.kernels.fused_disc_head_triton`: the Triton forward and backward kernels and
  their launchers, imported on the first call that runs Triton.
* :mod:`asvae_kit.kernels.reference`: the pure-PyTorch reference (forward and backward).

Two routes to the same implementations, chosen per call by :func:`fused_disc_head` after it has
validated its inputs (once):

* eager (not tracing): ``_FusedDiscHead``, a thin ``torch.autograd.Function`` whose forward and
  backward call the Triton launchers or the reference directly.  Nothing is validated again, and
  the implementation is picked once per call (the backward reuses the forward's choice): beyond
  the kernels, a call costs a few microseconds of checks and one autograd node.
* traced (``torch.compile``, ``torch.export``, ``make_fx``, fake tensors): the registered op.
  Registering it through ``torch.library`` makes it one opaque node for ``torch.compile``: no
  graph break, fake tensors get their shape from the fake kernel, and the compiled graph calls the
  op at run time, which then picks the Triton or the PyTorch path for the real tensors.  The ops
  validate their inputs themselves (a few microseconds), since they are also reachable directly
  as ``torch.ops.asvae_kit.fused_disc_head`` / ``fused_disc_head_backward``.

Both routes are first-order differentiable (no double backward).
"""

from __future__ import annotations

import importlib
import importlib.util
import operator
import os
import sys
import warnings
from types import ModuleType
from typing import Callable, Sequence, TypeVar

import torch
from torch import Tensor

from .reference import compute_dtype, fused_disc_head_reference, fused_disc_head_reference_backward

__all__ = ["fused_disc_head", "IMPLS", "MAX_TRITON_HEADS", "ENV_VAR"]

#: Accepted values of ``impl`` and of ``$ASVAE_KIT_KERNELS``.
IMPLS = ("auto", "triton", "torch")
#: Environment variable holding the default ``impl``.
ENV_VAR = "ASVAE_KIT_KERNELS"
#: Largest number of heads K the Triton kernels take (they unroll a loop over the heads);
#: ``impl="auto"`` uses the reference above it.  The one definition: ``fused_disc_head_triton``
#: imports it as its ``MAX_HEADS`` (this module must not import that one: it imports Triton).
MAX_TRITON_HEADS = 16

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_AUTOCAST_DEVICES = ("cuda", "cpu", "xpu", "mps", "hpu")
_TRITON_MODULE = __package__ + ".fused_disc_head_triton"
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)

T = TypeVar("T")


def fused_disc_head(
    h: Tensor,
    weight: Tensor,
    bias: Tensor,
    segment_sizes: Sequence[int],
    *,
    impl: str | None = None,
) -> Tensor:
    """Head logits ``l = h @ weight.T + bias`` reduced to per-segment statistics ``[S, K, 3]``.

    ``h`` ``[N, D]`` stacks the discriminator features of ``S`` batches along ``N`` (for example
    the encoder joint, the decoder joint and the marginal product); ``segment_sizes`` gives their
    lengths.  ``weight`` is ``[K, D]`` and ``bias`` ``[K]`` (an ``nn.Linear(D, K)``).  The result is

        ``out[s, k] = (mean l_k, mean softplus(l_k), mean softplus(-l_k))`` over the rows of ``s``

    in float32, accumulated in float32 whatever the input dtype (float16, bfloat16, float32);
    float64 inputs are computed and returned in float64 (for ``gradcheck``).  It is
    differentiable in ``h``, ``weight`` and ``bias`` (first order); the backward recomputes the
    logits instead of saving them.  Inputs may have any strides (no copies are made).  Under
    ``torch.autocast`` the tensors are cast to the autocast dtype first (float64 excepted), as for
    ``nn.Linear``; the result stays float32.

    ``impl``:
        ``"auto"`` -- the Triton kernels for CUDA tensors when Triton imports and compiles (and
        ``K <= MAX_TRITON_HEADS``), otherwise the PyTorch reference.  If Triton fails to import,
        compile or launch, the call falls back to the reference with **one** ``RuntimeWarning``
        per process, and the reference is used from then on.  CPU tensors always use the
        reference (the Triton interpreter is a test tool, not a fast path).
        ``"triton"`` -- the Triton kernels or an error saying why they cannot run (Triton not
        installed; tensors not on a CUDA device and ``TRITON_INTERPRET=1`` not set; ``K`` too
        large).  Failures are raised, never hidden.
        ``"torch"`` -- the pure-PyTorch reference (:mod:`asvae_kit.kernels.reference`).
        ``None`` (default) -- ``$ASVAE_KIT_KERNELS`` (``auto|triton|torch``), else ``"auto"``; it
        is read on every call (in a compiled function, when the op runs), so later changes of the
        variable take effect.  A call's backward uses the implementation its forward chose.

    The Triton kernels use no atomics: their results are bitwise reproducible run to run.

    NaN/inf policy: values are not inspected (that would cost a GPU sync on every call).  NaN and
    inf propagate exactly as the arithmetic dictates, only into the segments whose rows hold them:
    a NaN feature in segment ``s`` makes ``out[s]`` NaN and leaves the other segments untouched;
    ``l = +inf`` gives ``(inf, inf, 0)``.  Nothing is masked or clamped silently.

    Raises:
        ValueError: ``segment_sizes`` empty, holding a non-integer or a value < 1, or not summing
            to ``N``; ``h``/``weight``/``bias`` of the wrong rank or mismatched shapes; dtypes that
            differ or are not floating point; tensors on different devices; an unknown ``impl`` or
            ``$ASVAE_KIT_KERNELS``; ``impl="triton"`` with ``K > MAX_TRITON_HEADS``.  Each message
            names the offending values.
        TypeError: ``h``, ``weight`` or ``bias`` is not a tensor.
        RuntimeError: ``impl="triton"`` where Triton cannot run (the message says what to do).
    """
    if impl is None:
        impl_arg = "default"
    elif isinstance(impl, str) and impl in IMPLS:
        impl_arg = impl
    else:
        raise ValueError(f"impl={impl!r} is not one of {IMPLS}; or pass None to use ${ENV_VAR} "
                         f"(default 'auto')")
    _check_tensors(h, weight, bias)
    device_type = h.device.type
    if device_type in _AUTOCAST_DEVICES and torch.is_autocast_enabled(device_type):
        # What autocast does for nn.Linear: floating tensors other than float64 take its dtype.
        dtype = torch.get_autocast_dtype(device_type)
        h, weight, bias = _autocast_cast(h, dtype), _autocast_cast(weight, dtype), _autocast_cast(bias, dtype)
    sizes = _check_values(h, weight, bias, segment_sizes)  # the one validation of this call
    if _tracing():
        # One opaque node for torch.compile & co.; the graph calls the op on every run.
        return torch.ops.asvae_kit.fused_disc_head(h, weight, bias, sizes, impl_arg)
    impl_name, module = _pick(impl_arg, h, weight)
    return _FusedDiscHead.apply(h, weight, bias, sizes, impl_name, module)


def _tracing() -> bool:
    """Whether this call is traced or transformed -- dynamo, a dispatch mode (fake tensors,
    ``make_fx``), a ``torch.func`` transform -- where the registered op must be used (one opaque
    node with a fake kernel and an autograd formula; ``torch.func`` transforms get the op's
    behaviour, as before).  Three C calls, well under a microsecond."""
    return (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0
            or torch._C._are_functorch_transforms_active())


def _autocast_cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t.to(dtype) if t.is_floating_point() and t.dtype != torch.float64 else t


# --------------------------------------------------------------------------------------------
# Validation


def _check_tensors(h: object, weight: object, bias: object) -> None:
    for name, t in (("h", h), ("weight", weight), ("bias", bias)):
        if not isinstance(t, Tensor):
            raise TypeError(f"fused_disc_head: {name} must be a torch.Tensor, got {type(t).__name__}")


def _validate(h: Tensor, weight: Tensor, bias: Tensor, segment_sizes: Sequence[int]) -> list[int]:
    """All the checks (for the ops, which direct ``torch.ops`` callers reach unchecked)."""
    _check_tensors(h, weight, bias)
    return _check_values(h, weight, bias, segment_sizes)


def _check_values(h: Tensor, weight: Tensor, bias: Tensor, segment_sizes: Sequence[int]) -> list[int]:
    """Check shapes, dtypes, devices and segments of tensors (``_check_tensors`` passed); return
    the segment sizes as a list of ints."""
    if h.dim() != 2:
        raise ValueError(f"fused_disc_head: h must be 2-D [N, D]; got shape {tuple(h.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"fused_disc_head: weight must be 2-D [K, D]; got shape {tuple(weight.shape)}")
    if bias.dim() != 1:
        raise ValueError(f"fused_disc_head: bias must be 1-D [K]; got shape {tuple(bias.shape)}")
    N, D = h.shape
    K = weight.shape[0]
    if weight.shape[1] != D:
        raise ValueError(f"fused_disc_head: weight must be [K, D] with D={D} to match h of shape "
                         f"{tuple(h.shape)}; got weight of shape {tuple(weight.shape)}")
    if bias.shape[0] != K:
        raise ValueError(f"fused_disc_head: bias must be [K] with K={K} to match weight of shape "
                         f"{tuple(weight.shape)}; got bias of shape {tuple(bias.shape)}")
    if K == 0 or D == 0:
        raise ValueError(f"fused_disc_head: need at least one head and one feature; got K={K}, D={D}")
    if h.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"fused_disc_head: h has dtype {h.dtype}; supported are float16, bfloat16, "
                         f"float32 and float64")
    if weight.dtype != h.dtype or bias.dtype != h.dtype:
        raise ValueError(f"fused_disc_head: h, weight and bias must share one dtype; got h {h.dtype}, "
                         f"weight {weight.dtype}, bias {bias.dtype} (cast them, or run under "
                         f"torch.autocast)")
    if weight.device != h.device or bias.device != h.device:
        raise ValueError(f"fused_disc_head: h, weight and bias must be on one device; got h on "
                         f"{h.device}, weight on {weight.device}, bias on {bias.device}")
    return _segment_list(segment_sizes, N)


def _segment_list(segment_sizes: Sequence[int], N: int) -> list[int]:
    if isinstance(segment_sizes, (str, bytes)) or not hasattr(segment_sizes, "__iter__"):
        raise ValueError(f"fused_disc_head: segment_sizes must be a sequence of positive ints, one "
                         f"per stacked batch; got {segment_sizes!r}")
    sizes = []
    for i, s in enumerate(segment_sizes):
        if isinstance(s, bool) or not isinstance(s, (int, torch.SymInt)):
            try:
                if isinstance(s, bool):
                    raise TypeError
                s = operator.index(s)  # numpy integers, integer 0-d tensors
            except TypeError:
                raise ValueError(f"fused_disc_head: segment_sizes[{i}] = {s!r} is not an integer "
                                 f"(segment_sizes={list(segment_sizes)!r})") from None
        sizes.append(s)
    if not sizes:
        raise ValueError("fused_disc_head: segment_sizes is empty; pass one size per stacked batch, "
                         "e.g. [n_q, n_p, n_m]")
    for i, s in enumerate(sizes):
        if s < 1:
            raise ValueError(f"fused_disc_head: segment_sizes[{i}] = {s} is not positive; every "
                             f"segment needs at least one row (segment_sizes={sizes})")
    total = sum(sizes)
    if total != N:
        raise ValueError(f"fused_disc_head: segment_sizes {sizes} sum to {total}, but h has N={N} rows")
    return sizes


# --------------------------------------------------------------------------------------------
# Choosing an implementation


class _State:
    failure: str | None = None  # why impl="auto" gave up on Triton (set once, then sticky)
    warned: bool = False


def _reset_fallback_state() -> None:
    """Forget a recorded Triton failure (for tests)."""
    _State.failure = None
    _State.warned = False


def _default_impl() -> str:
    raw = os.environ.get(ENV_VAR, "")
    impl = raw.strip().lower() or "auto"
    if impl not in IMPLS:
        raise ValueError(f"{ENV_VAR}={raw!r} is not one of {IMPLS}; unset it or pick one of those")
    return impl


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _load_triton_module() -> ModuleType:
    """Import the Triton kernels (this is where Triton itself gets imported)."""
    return importlib.import_module(_TRITON_MODULE)


def _record_failure(reason: str) -> None:
    _State.failure = reason
    if not _State.warned:
        _State.warned = True
        warnings.warn(
            f"asvae_kit.kernels.fused_disc_head: {reason}; falling back to the PyTorch reference for "
            f"the rest of this process (set {ENV_VAR}=torch to choose it explicitly, or "
            f"{ENV_VAR}=triton to see the error)",
            RuntimeWarning,
            stacklevel=_caller_stacklevel(),
        )


def _caller_stacklevel() -> int:
    """``stacklevel`` pointing at the first frame outside this package and torch (the user's
    call), whichever route (autograd.Function, op, backward) led here."""
    skip = (os.path.dirname(__file__) + os.sep, os.path.dirname(torch.__file__) + os.sep)
    frame, level = sys._getframe(2), 2  # level 1 is _record_failure, the warn() caller
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame, level = frame.f_back, level + 1
    return level if frame is not None else 1


def _require_triton(h: Tensor, weight: Tensor) -> ModuleType:
    """The Triton module for ``impl="triton"``, or an error that says what to do."""
    K = weight.shape[0]
    if K > MAX_TRITON_HEADS:
        raise ValueError(f"fused_disc_head: impl='triton' supports at most {MAX_TRITON_HEADS} heads, "
                         f"got K={K} (weight of shape {tuple(weight.shape)}); use impl='torch' or "
                         f"impl='auto'")
    if not _triton_installed():
        raise RuntimeError("fused_disc_head: impl='triton' needs the triton package, which is not "
                           "installed; pip install 'asvae-kit[triton]' (or pip install triton), or use "
                           "impl='torch' (or 'auto', which falls back by itself)")
    device = h.device.type
    if device == "cpu" and not _interpret_requested():
        raise RuntimeError("fused_disc_head: impl='triton' cannot run on CPU tensors: Triton compiles "
                           "for GPUs. Move h, weight and bias to a CUDA device, or set "
                           "TRITON_INTERPRET=1 before the first Triton call to use the (slow) Triton "
                           "interpreter, or use impl='torch' (or 'auto')")
    if device not in ("cpu", "cuda"):
        raise RuntimeError(f"fused_disc_head: impl='triton' runs on CUDA tensors (or on CPU tensors "
                           f"with TRITON_INTERPRET=1), not on {h.device}; use impl='torch' (or 'auto')")
    try:
        module = _load_triton_module()
    except Exception as exc:
        raise RuntimeError(f"fused_disc_head: impl='triton' could not import Triton "
                           f"({type(exc).__name__}: {exc}); fix the installation "
                           f"(pip install 'asvae-kit[triton]') or use impl='torch'") from exc
    if device == "cpu" and not module.INTERPRETED:
        raise RuntimeError("fused_disc_head: the Triton kernels were loaded before TRITON_INTERPRET=1 "
                           "was set, so they are compiled for GPUs and cannot take CPU tensors; set "
                           "TRITON_INTERPRET=1 before the first Triton call (e.g. at the top of "
                           "conftest.py), or use impl='torch'")
    return module


def _auto_wants_triton(h: Tensor, weight: Tensor) -> bool:
    """Whether ``impl="auto"`` tries Triton for these tensors (CUDA, K small enough)."""
    return h.device.type == "cuda" and weight.shape[0] <= MAX_TRITON_HEADS


def _auto_triton_module(h: Tensor, weight: Tensor) -> ModuleType | None:
    """The Triton module when ``impl="auto"`` should use it, else None."""
    if _State.failure is not None or not _auto_wants_triton(h, weight):
        return None
    try:
        module = _load_triton_module()
    except Exception as exc:  # not installed, or broken
        _record_failure(f"Triton could not be imported ({type(exc).__name__}: {exc}; "
                        f"pip install 'asvae-kit[triton]')")
        return None
    if module.INTERPRETED:  # TRITON_INTERPRET=1: the interpreter is for tests, not a GPU fast path
        return None
    return module


def _pick(impl: str, h: Tensor, weight: Tensor) -> tuple[str, ModuleType | None]:
    """Resolve ``impl`` (``"default"``: ``$ASVAE_KIT_KERNELS``) and the Triton module to run
    (None: the reference).  Raises what ``impl="triton"`` or a bad variable call for."""
    if impl == "default":
        impl = _default_impl()
    if impl == "torch":
        return impl, None
    if impl == "triton":
        return impl, _require_triton(h, weight)
    if impl != "auto":
        raise ValueError(f"fused_disc_head: impl={impl!r} is not one of {IMPLS}")
    return impl, _auto_triton_module(h, weight)


def _run(impl: str, module: ModuleType | None,
         run_triton: Callable[[ModuleType], T], run_torch: Callable[[], T]) -> T:
    """Run what :func:`_pick` chose; ``impl="auto"`` falls back to the reference if Triton fails."""
    if module is None:
        return run_torch()
    if impl != "auto":
        return run_triton(module)
    if _State.failure is not None:  # Triton failed since the choice was made
        return run_torch()
    try:
        return run_triton(module)
    except _OUT_OF_MEMORY:
        raise  # not a Triton problem; the reference would not fit either
    except Exception as exc:  # compilation or launch failure
        _record_failure(f"the Triton kernel failed ({type(exc).__name__}: {exc})")
        return run_torch()


def _dispatch(impl: str, h: Tensor, weight: Tensor,
              run_triton: Callable[[ModuleType], T], run_torch: Callable[[], T]) -> T:
    impl, module = _pick(impl, h, weight)
    return _run(impl, module, run_triton, run_torch)


# --------------------------------------------------------------------------------------------
# Eager path: a thin autograd.Function (inputs validated and implementation picked by the caller)


class _FusedDiscHead(torch.autograd.Function):
    """``fused_disc_head`` for eager calls: the chosen implementation, forward and backward, with
    no validation and no second choice of implementation (the backward reuses the forward's).

    The old-style ``forward(ctx, ...)`` on purpose: with a separate ``setup_context``,
    ``Function.apply`` binds the arguments through ``inspect.signature`` on every call (~30 us).
    ``torch.func`` transforms, which need that style, are not supported by the registered op
    either; :func:`_tracing` sends such calls to the op, so they behave exactly as before.
    """

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor, sizes: list[int], impl: str,
                module: ModuleType | None) -> Tensor:
        ctx.save_for_backward(h, weight, bias)  # the inputs only: the logits are recomputed
        ctx.sizes, ctx.impl, ctx.module = sizes, impl, module
        return _run(
            impl, module,
            lambda triton_impl: triton_impl.forward(h, weight, bias, sizes),
            lambda: fused_disc_head_reference(h, weight, bias, sizes),
        )

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        h, weight, bias = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        sizes, need_wb = ctx.sizes, need_w or need_b
        gh, gw, gb = _run(
            ctx.impl, ctx.module,
            lambda triton_impl: triton_impl.backward(grad_out, h, weight, bias, sizes, need_h, need_wb),
            lambda: fused_disc_head_reference_backward(grad_out, h, weight, bias, sizes, need_h, need_wb),
        )
        return (gh if need_h else None, gw if need_w else None, gb if need_b else None,
                None, None, None)


# --------------------------------------------------------------------------------------------
# torch.library registration


@torch.library.custom_op("asvae_kit::fused_disc_head", mutates_args=())
def _fused_disc_head_op(
    h: Tensor, weight: Tensor, bias: Tensor, segment_sizes: list[int], impl: str
) -> Tensor:
    """``[S, K, 3]`` head statistics; ``impl`` is ``auto|triton|torch`` or ``default`` (env)."""
    # The public function validated already, but compiled graphs and direct torch.ops callers
    # reach the op without it; the checks cost a few microseconds.
    sizes = _validate(h, weight, bias, segment_sizes)
    return _dispatch(
        impl, h, weight,
        lambda triton_impl: triton_impl.forward(h, weight, bias, sizes),
        lambda: fused_disc_head_reference(h, weight, bias, sizes),
    )


@_fused_disc_head_op.register_fake
def _fused_disc_head_fake(h, weight, bias, segment_sizes, impl):
    return h.new_empty((len(segment_sizes), weight.shape[0], 3), dtype=compute_dtype(h.dtype))


@torch.library.custom_op("asvae_kit::fused_disc_head_backward", mutates_args=())
def _fused_disc_head_backward_op(
    grad_out: Tensor, h: Tensor, weight: Tensor, bias: Tensor, segment_sizes: list[int], impl: str,
    need_grad_h: bool, need_grad_weight_bias: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients w.r.t. ``(h, weight, bias)``; a skipped one comes back as an empty tensor."""
    sizes = _validate(h, weight, bias, segment_sizes)  # reached directly too (torch.ops, compiled graphs)
    S, K = len(sizes), weight.shape[0]
    if tuple(grad_out.shape) != (S, K, 3):
        raise ValueError(f"fused_disc_head backward: grad_out must have shape {(S, K, 3)}; got "
                         f"{tuple(grad_out.shape)}")
    gh, gw, gb = _dispatch(
        impl, h, weight,
        lambda triton_impl: triton_impl.backward(grad_out, h, weight, bias, sizes,
                                                 need_grad_h, need_grad_weight_bias),
        lambda: fused_disc_head_reference_backward(grad_out, h, weight, bias, sizes,
                                                   need_grad_h, need_grad_weight_bias),
    )
    return (
        gh if gh is not None else h.new_empty(0),
        gw if gw is not None else weight.new_empty(0),
        gb if gb is not None else bias.new_empty(0),
    )


@_fused_disc_head_backward_op.register_fake
def _fused_disc_head_backward_fake(grad_out, h, weight, bias, segment_sizes, impl,
                                   need_grad_h, need_grad_weight_bias):
    return (
        h.new_empty(h.shape) if need_grad_h else h.new_empty(0),
        weight.new_empty(weight.shape) if need_grad_weight_bias else weight.new_empty(0),
        bias.new_empty(bias.shape) if need_grad_weight_bias else bias.new_empty(0),
    )


def _setup_context(ctx, inputs, output) -> None:
    h, weight, bias, segment_sizes, impl = inputs
    ctx.save_for_backward(h, weight, bias)  # the inputs only: the logits are recomputed
    ctx.segment_sizes = segment_sizes
    ctx.impl = impl


def _backward(ctx, grad_out: Tensor):
    h, weight, bias = ctx.saved_tensors
    need_h, need_w, need_b = ctx.needs_input_grad[:3]
    gh, gw, gb = torch.ops.asvae_kit.fused_disc_head_backward(
        grad_out, h, weight, bias, ctx.segment_sizes, ctx.impl, need_h, need_w or need_b)
    return (gh if need_h else None, gw if need_w else None, gb if need_b else None, None, None)


_fused_disc_head_op.register_autograd(_backward, setup_context=_setup_context)
