"""The run directory: every file a run writes or reads, behind one object.

A run directory holds ``config.json``, ``metrics.csv``, the PNG grids (``samples.png`` and
``reconstructions.png`` for the latest, ``images/`` for every one) and the checkpoints (folders
``checkpoints/step-N``, switched to through ``latest`` once complete).  The trainer decides *when*
each is written; ``RunDirectory`` and the modules of this package decide *how*:

* ``files``: config.json (atomic), metrics.csv (appended, by the ``csv`` logger), the grids;
* ``checkpoint``: a checkpoint as one consistent unit, and reading it back;
* ``lock``: refusing a folder that is not a run, and one writer at a time.

Atomic writes themselves are ``asvae_kit.fileio``'s, shared with the data and classifier caches.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch

from ..fileio import remove_stale_temporaries
from .checkpoint import MODEL_FILE, STATE_FILE, read_checkpoint, write_checkpoint
from .files import CONFIG_FILE, METRICS_FILE, write_config, write_grids
from .lock import LOCK_FILE, RunLock, check_output_dir, has_checkpoint, is_run_dir

__all__ = [
    "RunDirectory",
    "RunLock",
    "check_output_dir",
    "is_run_dir",
    "has_checkpoint",
    "CONFIG_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "STATE_FILE",
    "LOCK_FILE",
]


class RunDirectory:
    """One run's folder: ``lock()`` it, ``prepare()`` it, then write and read its files."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    def lock(self) -> RunLock:
        """The writer's lock (a context manager), refused while another process holds it."""
        return RunLock(self.path)

    def prepare(self, *, fresh: bool) -> None:
        """Create the folder and clear what a killed process left: temporary files, and (for a
        ``fresh`` run, at step 0) a ``metrics.csv`` from a run that died before its first checkpoint."""
        self.path.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.path)
        if fresh:
            (self.path / METRICS_FILE).unlink(missing_ok=True)

    def write_config(self, config: dict[str, Any], data_shape: Sequence[int]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_config(self.path, config, data_shape)

    def write_grids(self, step: int, samples: torch.Tensor, pairs: torch.Tensor | None) -> None:
        write_grids(self.path, step, samples, pairs)

    def save_checkpoint(self, *, step: int, run_id: str, tensors: dict[str, torch.Tensor], state: dict[str, Any], keep: int) -> Path:
        return write_checkpoint(self.path, step=step, run_id=run_id, tensors=tensors, state=state, keep=keep)

    def read_checkpoint(self) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, Path]:
        """``(weights, state or None, path of the weights file)`` of the newest complete checkpoint."""
        return read_checkpoint(self.path)
