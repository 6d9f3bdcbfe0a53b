"""Stopping training cleanly on SIGTERM (what SLURM, Docker and Kubernetes send) and SIGINT.

While a ``StopSignals`` block is active in the main thread, the first signal only sets
``received``: the trainer finishes the step in flight, saves a consistent checkpoint and raises
``TrainingStopped``.  A second signal ends the process at once with the default action.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

__all__ = ["StopSignals", "TrainingStopped", "SIGNALS"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingStopped(KeyboardInterrupt):
    """Training stopped on a signal after finishing a step (and, with a run directory, saving it).

    A ``KeyboardInterrupt`` so that ``except Exception`` does not swallow a stop request;
    ``exit_code`` is the shell's convention, 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class StopSignals:
    """Context manager: catch SIGINT/SIGTERM as stop requests (a no-op outside the main thread)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None:  # the second signal: stop now, the default way
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum
        print(f"\n{signal.Signals(signum).name} received: finishing this step and saving (send it again to stop at once)", file=sys.stderr)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
