"""Guarding a run directory: never write into a folder that is not a run, one writer at a time.

``check_output_dir`` refuses a ``--out`` that is a file, or a non-empty folder that holds no
asvae-kit run (unless the user says ``overwrite``).  ``RunLock`` is a lock file in the run
directory naming its holder (pid, host, start time); a second writer is refused with that name,
and a lock whose process is gone (same host) is broken and taken over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from ..errors import RunDirectoryError
from ..fileio import TMP_SUFFIX

__all__ = ["LOCK_FILE", "RUN_FILES", "is_run_dir", "check_output_dir", "RunLock"]

LOCK_FILE = ".asvae-kit.lock"
#: Files whose presence marks a folder as an asvae-kit run (``latest`` names its newest checkpoint).
RUN_FILES = ("config.json", "model.safetensors", "latest")


def is_run_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in RUN_FILES)


def has_checkpoint(path: Path) -> bool:
    """A checkpoint of the run in ``path`` can be loaded: ``latest`` names one (a kill between the
    switch of ``latest`` and the top-level weights file leaves no ``model.safetensors`` yet), or
    the weights of a run from asvae-kit 0.1 sit at its top."""
    return (path / "latest").is_file() or (path / "model.safetensors").is_file()


def _ours(name: str) -> bool:
    """What a run leaves in its folder besides its files: the lock, and the temporary file of an
    atomic write a kill cut short (``.NAME.XXXXXXXX.tmp``, removed when training starts again)."""
    return name == LOCK_FILE or (name.startswith(".") and name.endswith(TMP_SUFFIX))


def check_output_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Raise ``RunDirectoryError`` unless ``path`` can receive a new run."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"--out {path} is a file, not a directory; choose a directory for the run")
    if path.is_dir() and not is_run_dir(path) and not overwrite:
        others = sorted(p.name for p in path.iterdir() if not _ours(p.name))
        if others:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise RunDirectoryError(
                f"{path} is not empty ({shown}) and holds no asvae-kit run, so training there could overwrite "
                "your files; choose a new or empty --out, or pass --overwrite to write into it anyway"
            )
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """``with RunLock(run_dir):`` holds ``run_dir/.asvae-kit.lock`` for one writer."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.held = False

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _attempt in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                holder = self._holder()
                pid, host = holder.get("pid"), holder.get("host")
                if holder and host == me["host"] and isinstance(pid, int) and pid != me["pid"] and not _alive(pid):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                if holder.get("pid") == me["pid"] and host == me["host"]:
                    return self  # this process already holds it (a nested fit)
                who = f"process {pid} on {host} (since {holder.get('started')})" if holder else "another process"
                raise RunDirectoryError(
                    f"{self.path.parent} is being written by {who}; wait for it to finish, or, if that process is "
                    f"gone, delete {self.path}"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise RunDirectoryError(f"could not take the lock {self.path}; delete it if no run is writing there")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
