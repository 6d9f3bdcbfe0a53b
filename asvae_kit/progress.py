"""What a person watching a run sees: a bar on a terminal, a line per logged row elsewhere.

Under nohup, SLURM or a pipe a tqdm bar shows nothing useful, so there ``Progress`` prints one
line to stderr for every logged row (step, losses, steps/s, ETA).  ``mode`` is ``"bar"``,
``"lines"`` or ``"off"``; ``progress_mode`` picks it from ``fit(progress=...)``.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

__all__ = ["Progress", "progress_mode", "format_duration"]

#: Columns of a logged row that are bookkeeping, not losses.
_NOT_LOSSES = ("step", "time_s", "steps_per_s")


def progress_mode(progress: bool | str | None, stream: TextIO | None = None) -> str:
    """``None``: a bar on a terminal, lines otherwise; ``True``: a bar; ``False``: off; or a mode name."""
    if isinstance(progress, str):
        if progress not in ("bar", "lines", "off"):
            raise ValueError(f"progress={progress!r}: expected 'bar', 'lines', 'off', True, False or None")
        return progress
    if progress is None:
        stream = sys.stderr if stream is None else stream
        return "bar" if stream.isatty() else "lines"
    return "bar" if progress else "off"


def format_duration(seconds: float) -> str:
    """``"1h02m"``, ``"3m07s"``, ``"12s"``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """``advance()`` after every step, ``row(row)`` after every logged row, ``close()`` at the end."""

    def __init__(self, mode: str, total: int, initial: int, stream: TextIO | None = None) -> None:
        self.mode, self.total = mode, total
        self.stream = sys.stderr if stream is None else stream
        self._bar: Any = None
        if mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=min(initial, total), unit="step", dynamic_ncols=True, file=self.stream)

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def row(self, row: dict[str, float]) -> None:
        losses = {k: v for k, v in row.items() if k not in _NOT_LOSSES}
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()}, refresh=False)
        elif self.mode == "lines":
            step, rate = int(row["step"]), row.get("steps_per_s", float("nan"))
            terms = " ".join(f"{k}={v:.4g}" for k, v in losses.items())
            eta = format_duration((self.total - step) / rate) if rate == rate and rate > 0 else "?"
            width = len(str(self.total))
            print(f"step {step:>{width}}/{self.total} {terms}  {rate:.3g} steps/s  ETA {eta}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
