"""Guarding a run directory: never write into a folder that is not a run, one writer at a time.

``check_output_dir`` decides what ``train --out`` may do with a folder: start a new run there (a
new or empty folder, or a run folder without a checkpoint), continue the run there (``resume``),
or either (``if-exists``).  A folder is a run only by its own mark (``marker.is_run_dir``); a
non-empty folder that holds none is refused untouched unless the user says ``overwrite``.
``RunLock`` is a lock file in the run directory naming its holder (pid, host, start time); a
second writer is refused with that name, and a lock whose process is gone (same host) is broken
and taken over.  The check that decides is made again while holding the lock
(``RunDirectory.claimed``), so a second ``train`` cannot decide on what a finishing first one
is about to change.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from ..errors import RunDirectoryError
from ..fileio import TMP_SUFFIX
from .checkpoint import CHECKPOINTS_DIR, LATEST_FILE, MODEL_FILE, latest_checkpoint
from .files import CONFIG_FILE, GRID_FILES, IMAGES_DIR, METRICS_FILE, foreign_metrics_error, metrics_file_is_ours, refuse_link
from .marker import MARKER_FILE, is_run_dir

__all__ = ["LOCK_FILE", "START_MODES", "RUN_PATHS", "is_run_dir", "has_checkpoint", "check_output_dir", "check_run_files", "RunLock"]

LOCK_FILE = ".asvae-kit.lock"
#: What ``train`` asks of its ``--out``: a new run, the run there (``--resume``), or either
#: (``--resume-if-exists``: resume the run there when it has a checkpoint, else start one).
START_MODES = ("new", "resume", "if-exists")
#: Every path of a run directory that asvae-kit writes as a regular file or folder of its own:
#: none may be a symbolic link (a write would land wherever it points).
RUN_PATHS = (CONFIG_FILE, METRICS_FILE, *GRID_FILES, MODEL_FILE, LATEST_FILE, MARKER_FILE, IMAGES_DIR, CHECKPOINTS_DIR)
#: A lock file is about 100 bytes; a bigger one is not asvae-kit's.
_MAX_LOCK_BYTES = 4096


def has_checkpoint(path: Path) -> bool:
    """A checkpoint of the asvae-kit run in ``path`` can be loaded: ``latest`` names one (a kill
    between the switch of ``latest`` and the top-level weights file leaves no ``model.safetensors``
    yet), or the weights of a run from asvae-kit 0.1 sit at its top.  A folder that is not a run
    (``is_run_dir``) has none, whatever files it holds.  ``CheckpointError`` when ``latest`` is a
    link or names something outside the run's ``checkpoints/``."""
    path = Path(path)
    if not path.is_dir() or not is_run_dir(path):
        return False
    return latest_checkpoint(path) is not None or (path / MODEL_FILE).is_file()


def check_run_files(path: Path, *, replace_metrics: bool = False) -> None:
    """Refuse (``RunDirectoryError``, one line naming the file) a run folder where a file asvae-kit
    writes is a symbolic link, or whose ``metrics.csv`` asvae-kit did not write (another header, or
    binary) -- unless ``replace_metrics``: a new run the user allowed to overwrite the folder."""
    for name in RUN_PATHS:
        refuse_link(path / name)
    metrics = path / METRICS_FILE
    if metrics.is_file() and not replace_metrics and not metrics_file_is_ours(metrics):
        raise foreign_metrics_error(metrics)


def _ours(name: str) -> bool:
    """What a run leaves in its folder besides its files: the lock, and the temporary file of an
    atomic write a kill cut short (``.NAME.XXXXXXXX.tmp``, removed when training starts again)."""
    return name == LOCK_FILE or (name.startswith(".") and name.endswith(TMP_SUFFIX))


def check_output_dir(path: str | os.PathLike, *, overwrite: bool = False, mode: str = "new") -> bool:
    """Raise ``RunDirectoryError`` unless ``path`` can receive what ``mode`` (``START_MODES``) asks;
    return whether the run there is resumed (``resume``, or ``if-exists`` on a run with a checkpoint).

    Refused: a dangling link or a file as ``path``; a non-empty folder that is not an asvae-kit
    run (unless ``overwrite``); a new run over a run that has a checkpoint; ``resume`` of a folder
    that has none; a run file that is a link or a ``metrics.csv`` of another tool (``check_run_files``).  Reads only: nothing is written, so a refused folder is left untouched.
    """
    if mode not in START_MODES:
        raise ValueError(f"mode must be one of {START_MODES}, got {mode!r}")
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise RunDirectoryError(
            f"--out {path} is a symbolic link to {os.readlink(path)}, which does not exist; create that folder, or choose another --out"
        )
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"--out {path} is a file, not a directory; choose a directory for the run")
    run = path.is_dir() and is_run_dir(path)
    if path.is_dir() and not run:
        others = sorted(p.name for p in path.iterdir() if not _ours(p.name))
        if mode == "resume":
            raise RunDirectoryError(
                f"--resume given, but {path} holds no asvae-kit run to continue (no {MARKER_FILE} or config.json of asvae-kit's); "
                "drop --resume to start a run there, or choose the folder of a run"
            )
        if others and not overwrite:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise RunDirectoryError(
                f"{path} is not empty ({shown}) and holds no asvae-kit run, so training there could overwrite "
                "your files; choose another --out, or pass --overwrite to write into it anyway"
            )
    existing = run and has_checkpoint(path)
    if mode == "new" and existing:
        raise RunDirectoryError(
            f"{path} already holds a run; pass --resume to continue it (--resume-if-exists to continue it or start one), "
            "or choose another --out"
        )
    if mode == "resume" and not existing:
        raise RunDirectoryError(f"--resume given, but {path} holds no run to continue; drop --resume to start one there")
    if path.is_dir():
        check_run_files(path, replace_metrics=overwrite and not existing)
    return existing


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _text(value: object, limit: int = 255) -> str | None:
    """A lock field fit to print: a short string of printable characters, else ``None``."""
    return value if isinstance(value, str) and len(value) <= limit and value.isprintable() else None


class RunLock:
    """``with RunLock(run_dir):`` holds ``run_dir/.asvae-kit.lock`` for one writer.

    Taking it creates ``run_dir`` if needed; a folder it created is removed again on release
    when nothing was written there (a run refused or failed before its first file)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.held = False
        self._created_dir = False

    def _holder(self) -> dict:
        """The holder recorded in the lock file (pid, host, started), fields checked so that a
        message may print them; ``{}`` when the file is not asvae-kit's lock."""
        try:
            if self.path.is_symlink() or self.path.stat().st_size > _MAX_LOCK_BYTES:
                return {}
            record = json.loads(self.path.read_bytes().decode("utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(record, dict) or not isinstance(record.get("pid"), int) or _text(record.get("host")) is None:
            return {}
        return {"pid": record["pid"], "host": record["host"], "started": _text(record.get("started"), 40) or "?"}

    def acquire(self) -> "RunLock":
        folder = self.path.parent
        self._created_dir = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _attempt in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                if self.path.is_symlink():
                    self._remove_created_dir()
                    raise RunDirectoryError(
                        f"{self.path} is a symbolic link, not asvae-kit's lock file; remove it if no run is writing to {folder}"
                    ) from None
                holder = self._holder()
                pid, host = holder.get("pid"), holder.get("host")
                if holder and host == me["host"] and isinstance(pid, int) and pid != me["pid"] and not _alive(pid):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                if holder.get("pid") == me["pid"] and host == me["host"]:
                    return self  # this process already holds it (a nested fit, or train's claim then fit)
                who = f"process {pid} on {host} (since {holder.get('started')})" if holder else "another process"
                raise RunDirectoryError(
                    f"{folder} is being written by {who}; wait for it to finish, or, if that process is "
                    f"gone, delete {self.path}"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise RunDirectoryError(f"could not take the lock {self.path}; delete it if no run is writing there")

    def _remove_created_dir(self) -> None:
        if self._created_dir:
            try:
                self.path.parent.rmdir()  # only when empty
            except OSError:
                pass
            self._created_dir = False

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
            self._remove_created_dir()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
