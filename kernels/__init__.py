"""Fused kernels behind asvae-kit's losses (docs/design.md §4).

``fused_disc_head`` is the one op every divergence calls: the discriminator's head layer fused with
the per-segment statistics all the adversarial losses are linear combinations of.  It is registered
with ``torch.library`` as ``torch.ops.asvae_kit.fused_disc_head`` when this package is imported.

Modules: ``fused_disc_head`` (the public function, its dispatch and the op registration),
``selection`` (which implementation runs, the Triton fallback), ``validation`` (input checks),
``reference`` (pure PyTorch) and ``fused_disc_head_triton`` (the Triton kernels).  Importing this
package never imports Triton: the Triton kernels are loaded on the first call that runs them.
"""

from __future__ import annotations

from .fused_disc_head import ENV_VAR, IMPLS, MAX_TRITON_HEADS, fused_disc_head
from .reference import fused_disc_head_reference, fused_disc_head_reference_backward

__all__ = [
    "fused_disc_head",
    "fused_disc_head_reference",
    "fused_disc_head_reference_backward",
    "IMPLS",
    "ENV_VAR",
    "MAX_TRITON_HEADS",
]
