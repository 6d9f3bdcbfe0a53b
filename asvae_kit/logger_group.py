"""The run's experiment loggers as one group, fed only while a writing ``fit`` has them open.

Loggers (the ``register_loggers`` hook; built-ins in ``plugins/loggers.py``) are built with the
trainer, so a missing package fails before training, on every process.  ``opened`` starts each
one on the run directory (telling it the step training resumes from, so rows logged after the
last checkpoint by an interrupted run can be dropped) and closes exactly those it started, also
when training fails.  Outside ``opened``, rows and images go nowhere.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

__all__ = ["LoggerGroup"]


class LoggerGroup:
    def __init__(self, loggers: Sequence[Any] = ()) -> None:
        self.all = list(loggers)
        self._open: list[Any] = []

    def __len__(self) -> int:
        return len(self.all)

    @contextlib.contextmanager
    def opened(self, run_dir: Path, config: dict[str, Any], step: int, run_id: str) -> Iterator[None]:
        """Start every logger for a ``fit`` from ``step``; close the started ones afterwards."""
        try:
            for logger in self.all:
                logger.start(Path(run_dir), config, step, run_id)
                self._open.append(logger)
            yield
        finally:
            opened, self._open = self._open, []
            for logger in opened:
                logger.close()

    def log_row(self, row: dict[str, float]) -> None:
        for logger in self._open:
            logger.log_row(row)

    def log_images(self, name: str, images: torch.Tensor, step: int) -> None:
        for logger in self._open:
            logger.log_images(name, images, step)
