"""The run directory: every file a run writes or reads, behind one object.

A run directory holds ``config.json``, ``metrics.csv``, the PNG grids (``samples.png`` and
``reconstructions.png`` for the latest, ``images/`` for every one), the checkpoints (folders
``checkpoints/step-N``, switched to through ``latest`` once complete) and its own mark,
``.asvae-kit-run``.  The trainer decides *when* each is written; ``RunDirectory`` and the
modules of this package decide *how*:

* ``files``: config.json (atomic), metrics.csv (appended, by the ``csv`` logger), the grids;
* ``checkpoint``: a checkpoint as one consistent unit, and reading it back;
* ``marker``: the run's own mark, and telling a run folder from anything else;
* ``lock``: refusing a folder that is not a run, and one writer at a time.

The folder trusts nothing it did not write: a run is recognised by its mark (or a config.json
asvae-kit wrote), never by file names alone; ``latest`` resolves only into the run's
``checkpoints/``; pruning removes only checkpoints carrying the run's id; no run file is written
through a symbolic link; and no error message quotes what a file holds.

Atomic writes themselves are ``asvae_kit.fileio``'s, shared with the data and classifier caches.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from ..fileio import remove_stale_temporaries
from .checkpoint import MODEL_FILE, STATE_FILE, read_checkpoint, write_checkpoint
from .files import CONFIG_FILE, METRICS_FILE, is_asvae_config, read_config, write_config, write_grids
from .lock import (
    LOCK_FILE, RUN_PATHS, START_MODES, RunLock, check_output_dir, check_run_files, has_checkpoint, is_run_dir, refuse_foreign_folder,
)
from .marker import MARKER_FILE, read_marker, write_marker

__all__ = [
    "RunDirectory",
    "RunLock",
    "check_output_dir",
    "is_run_dir",
    "has_checkpoint",
    "read_config",
    "is_asvae_config",
    "START_MODES",
    "RUN_PATHS",
    "CONFIG_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "STATE_FILE",
    "LOCK_FILE",
    "MARKER_FILE",
]


class RunDirectory:
    """One run's folder: ``lock()`` it (or ``claimed()`` it: checked under the lock), ``prepare()``
    it, then write and read its files.

    ``overwrite``: the user agreed to write into this folder whatever it holds (``--overwrite``),
    so ``prepare`` replaces a ``metrics.csv`` that asvae-kit did not write instead of refusing it.
    """

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self._marked: str | None = None  # the run id this object last found or wrote in the marker
        self._locked = False  # this object holds the folder's lock now

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    @contextlib.contextmanager
    def lock(self) -> Iterator[RunLock | None]:
        """Hold the writer's lock while the block runs (refused while another process holds it).
        Taken through this object already (``train`` claims the folder, then ``fit`` locks it), it
        is not taken again: the block runs under the hold it has, and not a file is touched."""
        if self._locked:
            yield None
            return
        with RunLock(self.path) as held:
            self._locked = True
            try:
                yield held
            finally:
                self._locked = False

    @contextlib.contextmanager
    def claimed(self, mode: str = "new", *, writer: bool = True) -> Iterator[bool]:
        """Check the folder for ``mode`` (``START_MODES``, see ``check_output_dir``) and, for the
        ``writer`` (rank 0), hold its lock while the block runs; yield whether the run there is resumed.

        The check runs once before the lock (a folder that is not a run is refused without even a
        lock file written into it) and again under it: that second answer is the one acted on, so
        a ``train`` started while another finishes sees what the other left, never what it saw
        before.  Other ranks (``writer=False``) only check; they read the same folder, and nothing
        is written there before every rank has decided (building the trainer is a collective)."""
        resumes = check_output_dir(self.path, overwrite=self.overwrite, mode=mode)
        if not writer:
            yield resumes
            return
        with self.lock():
            yield check_output_dir(self.path, overwrite=self.overwrite, mode=mode)

    def prepare(self, *, fresh: bool, run_id: str | None = None) -> None:
        """Make the folder ready for run ``run_id``: create it, refuse it if one of its run files is a
        symbolic link, clear what a killed process left (temporary files, and for a ``fresh`` run,
        at step 0, a ``metrics.csv`` from a run that died before its first checkpoint; one that
        asvae-kit did not write is refused unless ``overwrite``), and mark it as the run's."""
        refuse_foreign_folder(self.path, overwrite=self.overwrite)
        self.path.mkdir(parents=True, exist_ok=True)
        check_run_files(self.path, replace_metrics=fresh and self.overwrite)
        remove_stale_temporaries(self.path, names=RUN_PATHS)
        if fresh:
            (self.path / METRICS_FILE).unlink(missing_ok=True)
        if run_id is not None:
            self.mark(run_id)

    def mark(self, run_id: str) -> None:
        """Write the run's marker (``MARKER_FILE``) unless it already names ``run_id``."""
        if self._marked == run_id:
            return
        record = read_marker(self.path)
        if record is None or record.get("run_id") != run_id:
            write_marker(self.path, run_id)
        self._marked = run_id

    def write_config(self, config: dict[str, Any], data_shape: Sequence[int]) -> None:
        if self._marked is None:
            refuse_foreign_folder(self.path, overwrite=self.overwrite)
        self.path.mkdir(parents=True, exist_ok=True)
        write_config(self.path, config, data_shape)

    def read_config(self) -> dict[str, Any]:
        """The run's ``config.json`` (``CheckpointError`` when missing or not asvae-kit's JSON object)."""
        return read_config(self.path)

    def write_grids(self, step: int, samples: torch.Tensor, pairs: torch.Tensor | None) -> None:
        write_grids(self.path, step, samples, pairs)

    def save_checkpoint(self, *, step: int, run_id: str, tensors: dict[str, torch.Tensor], state: dict[str, Any], keep: int) -> Path:
        """Write one checkpoint (``checkpoint.write_checkpoint``), the folder marked as the run's first."""
        if self._marked is None:
            refuse_foreign_folder(self.path, overwrite=self.overwrite)
        self.path.mkdir(parents=True, exist_ok=True)
        self.mark(run_id)
        return write_checkpoint(self.path, step=step, run_id=run_id, tensors=tensors, state=state, keep=keep)

    def read_checkpoint(self) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, Path]:
        """``(weights, state or None, path of the weights file)`` of the newest complete checkpoint."""
        return read_checkpoint(self.path)
