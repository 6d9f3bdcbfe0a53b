"""Which implementation of ``fused_disc_head`` runs: ``impl``, ``$ASVAE_KIT_KERNELS`` and the
Triton fallback (docs/design.md §4).  Imports Triton only through :func:`_load_triton_module`,
on the first call that runs it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from types import ModuleType

import torch
from torch import Tensor

__all__ = ["IMPLS", "ENV_VAR", "MAX_TRITON_HEADS", "pick", "failed", "record_failure", "reset_fallback_state"]

#: Accepted values of ``impl`` and of ``$ASVAE_KIT_KERNELS``.
IMPLS = ("auto", "triton", "torch")
#: Environment variable holding the default ``impl``.
ENV_VAR = "ASVAE_KIT_KERNELS"
#: Largest number of heads K the Triton kernels take (they unroll a loop over the heads); the one
#: definition (``fused_disc_head_triton.MAX_HEADS`` is this).  ``impl="auto"`` uses the reference above it.
MAX_TRITON_HEADS = 16

_TRITON_MODULE = __package__ + ".fused_disc_head_triton"


class _State:
    failure: str | None = None  # why impl="auto" gave up on Triton (set once, then sticky)
    warned: bool = False


def reset_fallback_state() -> None:
    """Forget a recorded Triton failure (for tests)."""
    _State.failure = None
    _State.warned = False


def record_failure(reason: str) -> None:
    """``impl="auto"`` gives up on Triton for the rest of the process; one ``RuntimeWarning``."""
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
    frame, level = sys._getframe(2), 2  # level 1 is record_failure, the warn() caller
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame, level = frame.f_back, level + 1
    return level if frame is not None else 1


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
        record_failure(f"Triton could not be imported ({type(exc).__name__}: {exc}; "
                       f"pip install 'asvae-kit[triton]')")
        return None
    if module.INTERPRETED:  # TRITON_INTERPRET=1: the interpreter is for tests, not a GPU fast path
        return None
    return module


def pick(impl: str, h: Tensor, weight: Tensor) -> tuple[str, ModuleType | None]:
    """Resolve ``impl`` (``"default"``: ``$ASVAE_KIT_KERNELS``) to ``(impl, Triton module or None
    for the reference)``.  Raises what ``impl="triton"`` or a bad variable call for."""
    if impl == "default":
        impl = _default_impl()
    if impl == "torch":
        return impl, None
    if impl == "triton":
        return impl, _require_triton(h, weight)
    if impl != "auto":
        raise ValueError(f"fused_disc_head: impl={impl!r} is not one of {IMPLS}")
    return impl, _auto_triton_module(h, weight)


def failed() -> bool:
    """Whether ``impl="auto"`` has given up on Triton in this process."""
    return _State.failure is not None
