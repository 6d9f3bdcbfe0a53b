"""The worker processes of a study: jobs run in subprocesses, at most ``jobs`` at once, each
stopped with SIGTERM (it saves a checkpoint first) when the study stops.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Mapping

__all__ = ["WorkerPool", "WorkerFailed"]


class WorkerFailed(Exception):
    """A worker exited without a result (its stderr tail is the message)."""


class WorkerPool:
    """Jobs in subprocesses, at most ``jobs`` at once, each in its own session (so Ctrl-C reaches
    only the study, which then stops them with SIGTERM: they save a checkpoint first)."""

    def __init__(self, jobs: int, threads: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="compare-worker")
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.lock = threading.Lock()
        self.processes: set[subprocess.Popen] = set()
        self.stopping = False

    def submit(self, job: Mapping[str, Any]) -> Future:
        return self.executor.submit(self._run, json.dumps(job))

    def _run(self, payload: str) -> dict[str, Any]:
        with self.lock:
            if self.stopping:
                raise WorkerFailed("not started: the study is stopping")
            proc = subprocess.Popen(
                [sys.executable, "-m", "asvae_kit.compare", "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, env=self.env, start_new_session=True,
            )
            self.processes.add(proc)
        try:
            stdout, stderr = proc.communicate(payload)
        finally:
            with self.lock:
                self.processes.discard(proc)
        lines = [line for line in stdout.splitlines() if line.strip()]
        if proc.returncode != 0 or not lines:
            tail = "\n".join(stderr.strip().splitlines()[-25:])
            raise WorkerFailed(f"worker exited with status {proc.returncode}:\n{tail}")
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            raise WorkerFailed(f"worker's last output line is not JSON: {lines[-1][:300]!r}") from None

    def stop(self, grace_s: float = 120.0) -> None:
        """SIGTERM every worker (each finishes its step and saves), then SIGKILL what is left."""
        with self.lock:
            self.stopping = True
            procs = list(self.processes)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        try:
            for proc in procs:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
        except KeyboardInterrupt:  # a second Ctrl-C: stop them now, unsaved
            for proc in procs:
                proc.kill()
        self.executor.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self.executor.shutdown(wait=True)
