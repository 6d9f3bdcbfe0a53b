"""Input checks of ``fused_disc_head`` (docs/design.md §4): each error names the offending values.

The public function calls :func:`check_tensors` and :func:`check_values` once per call; the
registered ops, which ``torch.ops`` callers and compiled graphs reach directly, call
:func:`validate` (both).
"""

from __future__ import annotations

import operator
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["check_tensors", "check_values", "validate"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensors(h: object, weight: object, bias: object) -> None:
    for name, t in (("h", h), ("weight", weight), ("bias", bias)):
        if not isinstance(t, Tensor):
            raise TypeError(f"fused_disc_head: {name} must be a torch.Tensor, got {type(t).__name__}")


def validate(h: Tensor, weight: Tensor, bias: Tensor, segment_sizes: Sequence[int]) -> list[int]:
    """All the checks; the segment sizes as a list of ints."""
    check_tensors(h, weight, bias)
    return check_values(h, weight, bias, segment_sizes)


def check_values(h: Tensor, weight: Tensor, bias: Tensor, segment_sizes: Sequence[int]) -> list[int]:
    """Shapes, dtypes, devices and segments of tensors (``check_tensors`` passed); the segment
    sizes as a list of ints."""
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
