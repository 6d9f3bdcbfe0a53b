"""The run's loss history: every step's loss terms, averaged into one row per ``log_every`` steps.

(Not to be confused with the experiment loggers, which receive these rows: ``asvae_kit.logger_group``
holds a run's loggers as one group, and ``plugins/loggers.py`` has the built-in ones.)

Terms stay tensors until a row is made, so logging costs no device sync per step.  A row holds
``step``, the averaged terms, ``time_s`` (training seconds, continued across resumes) and
``steps_per_s``; rows are kept in ``history`` (saved in each checkpoint) and passed on to the
run's files by the trainer.
"""

from __future__ import annotations

import time

import torch

__all__ = ["LossHistory"]


class LossHistory:
    """``start()`` at the beginning of ``fit``, ``add(terms)`` every step, ``row(step)`` to log."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []
        self._pending: dict[str, list[torch.Tensor]] = {}
        self._time_before = 0.0
        self._started = time.perf_counter()
        self._started_at = 0

    def start(self, step: int) -> None:
        """A ``fit`` call begins at ``step``: time it from now, after the time already logged."""
        self._time_before = float(self.history[-1].get("time_s", 0.0)) if self.history else 0.0
        self._started, self._started_at = time.perf_counter(), step

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for k, v in terms.items():
            self._pending.setdefault(k, []).append(v)

    @property
    def pending(self) -> bool:
        """Terms were added since the last row."""
        return bool(self._pending)

    def row(self, step: int) -> dict[str, float]:
        """Average the terms added since the last row into a new row of ``history``."""
        elapsed = time.perf_counter() - self._started
        row: dict[str, float] = {"step": step}
        row.update({k: torch.stack(v).double().mean().item() for k, v in sorted(self._pending.items())})
        row["time_s"] = round(self._time_before + elapsed, 3)
        row["steps_per_s"] = round((step - self._started_at) / elapsed, 3) if elapsed > 0 else float("nan")
        self._pending = {}
        self.history.append(row)
        return row
