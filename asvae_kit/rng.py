"""Saving and restoring the random state a run depends on, so that resuming is exact."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["capture_rng", "restore_rng"]


def capture_rng(data_generator: torch.Generator) -> dict[str, Any]:
    """torch's global CPU and CUDA states and the data-order generator's."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "data": data_generator.get_state(),
    }


def restore_rng(rng: dict[str, Any], data_generator: torch.Generator) -> None:
    """Put back what ``capture_rng`` saved (a CUDA state only where CUDA is present)."""
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if "data" in rng:
        data_generator.set_state(rng["data"])
