"""Pure-PyTorch reference for the fused discriminator head (DESIGN.md §4).

This is the specification the Triton kernel is tested against, and the implementation used on
CPU tensors (and whenever Triton cannot run).  For logits ``l = h @ weight.T + bias`` it returns,
for every segment ``s`` of rows and every head ``k``::

    out[s, k] = (mean l_k, mean softplus(l_k), mean softplus(-l_k))

All arithmetic is done in float32 (or float64 when the inputs are float64, which gradcheck uses).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["fused_disc_head_reference"]


def fused_disc_head_reference(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    segment_sizes: Sequence[int],
) -> torch.Tensor:
    """Return the ``[S, K, 3]`` head statistics of ``h`` (see the module docstring)."""
    compute_dtype = torch.float64 if h.dtype == torch.float64 else torch.float32
    logits = torch.addmm(bias.to(compute_dtype), h.to(compute_dtype), weight.to(compute_dtype).t())
    stats = torch.stack((logits, F.softplus(logits), F.softplus(-logits)), dim=-1)  # [N, K, 3]
    return torch.stack([chunk.mean(dim=0) for chunk in stats.split(list(segment_sizes), dim=0)])
