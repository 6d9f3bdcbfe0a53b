"""Fused kernels behind asvae-kit's losses (DESIGN.md §4).

``fused_disc_head`` is the one op every divergence calls: the discriminator's head layer fused with
the per-segment statistics all the adversarial losses are linear combinations of.  Importing this
package never imports Triton; the Triton implementation is loaded on first use.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from .reference import fused_disc_head_reference

__all__ = ["fused_disc_head", "fused_disc_head_reference", "IMPLS"]

IMPLS = ("auto", "triton", "torch")


def _default_impl() -> str:
    impl = os.environ.get("ASVAE_KIT_KERNELS", "auto").strip().lower() or "auto"
    if impl not in IMPLS:
        raise ValueError(f"ASVAE_KIT_KERNELS={impl!r} is not one of {IMPLS}; unset it or pick one of those")
    return impl


def fused_disc_head(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    segment_sizes: Sequence[int],
    *,
    impl: str | None = None,
) -> torch.Tensor:
    """Head logits ``h @ weight.T + bias`` reduced to ``[S, K, 3]`` per-segment statistics.

    ``out[s, k] = (mean l_k, mean softplus(l_k), mean softplus(-l_k))`` over the rows of segment
    ``s``.  Differentiable in ``h``, ``weight`` and ``bias``.
    """
    impl = _default_impl() if impl is None else impl
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r} is not one of {IMPLS}")
    return fused_disc_head_reference(h, weight, bias, segment_sizes)
