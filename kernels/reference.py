"""Pure-PyTorch reference for the fused discriminator head (docs/design.md §4).

This is the specification the Triton kernel is tested against, and the implementation used on
CPU tensors (and whenever Triton cannot run).  For logits ``l = h @ weight.T + bias`` it returns,
for every segment ``s`` of rows and every head ``k``::

    out[s, k] = (mean l_k, mean softplus(l_k), mean softplus(-l_k))

All arithmetic is done in float32 (or float64 when the inputs are float64, which gradcheck uses),
with autocast switched off inside (the op casts its inputs for autocast itself).

Two functions live here:

* :func:`fused_disc_head_reference` -- the forward, written with ordinary differentiable PyTorch
  ops, so autograd through it is an independent check of the hand-written backward.
* :func:`fused_disc_head_reference_backward` -- the analytic backward in plain PyTorch.  It is what
  ``fused_disc_head`` runs for its backward (eager autograd.Function or registered op) when the
  Triton kernels are not used.  Like the Triton backward it recomputes the logits instead of
  saving an ``[N, K]`` tensor::

      dl[n, k] = (g[s, k, 0] + g[s, k, 1] * sigmoid(l) - g[s, k, 2] * sigmoid(-l)) / size[s]
      grad_h = dl @ weight,   grad_weight = dl.T @ h,   grad_bias = dl.sum(0)

  with ``g = grad_out`` and ``s`` the segment of row ``n``.

Neither function validates its inputs; :func:`asvae_kit.kernels.fused_disc_head` does.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["fused_disc_head_reference", "fused_disc_head_reference_backward", "compute_dtype"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the statistics are accumulated in: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _exact_dtypes(device: torch.device):
    """Autocast off: the arithmetic below must run in the compute dtype it asks for."""
    if device.type in ("cuda", "cpu", "xpu", "mps", "hpu"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def fused_disc_head_reference(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    segment_sizes: Sequence[int],
) -> torch.Tensor:
    """Return the ``[S, K, 3]`` head statistics of ``h`` (see the module docstring)."""
    cdt = compute_dtype(h.dtype)
    with _exact_dtypes(h.device):
        logits = torch.addmm(bias.to(cdt), h.to(cdt), weight.to(cdt).t())
        stats = torch.stack((logits, F.softplus(logits), F.softplus(-logits)), dim=-1)  # [N, K, 3]
        return torch.stack([chunk.mean(dim=0) for chunk in stats.split(list(segment_sizes), dim=0)])


def fused_disc_head_reference_backward(
    grad_out: torch.Tensor,
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    segment_sizes: Sequence[int],
    need_grad_h: bool = True,
    need_grad_weight_bias: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of ``fused_disc_head_reference`` w.r.t. ``(h, weight, bias)`` for ``grad_out``.

    Each gradient has the dtype of its input; the skipped ones are ``None``.
    """
    cdt = compute_dtype(h.dtype)
    with _exact_dtypes(h.device):
        hc, wc = h.to(cdt), weight.to(cdt)
        logits = torch.addmm(bias.to(cdt), hc, wc.t())  # recomputed, [N, K]
        # [N, K, 3]: each row gets its segment's grad_out / size (device ops only: no host copy,
        # so a CUDA graph can record it)
        g = grad_out.to(cdt)
        coef = torch.cat([g[s].div(n).expand(n, *g.shape[1:]) for s, n in enumerate(segment_sizes)])
        dl = coef[..., 0] + coef[..., 1] * torch.sigmoid(logits) - coef[..., 2] * torch.sigmoid(-logits)
        grad_h = (dl @ wc).to(h.dtype) if need_grad_h else None
        grad_w = grad_b = None
        if need_grad_weight_bias:
            grad_w = (dl.t() @ hc).to(weight.dtype)
            grad_b = dl.sum(dim=0).to(bias.dtype)
    return grad_h, grad_w, grad_b
