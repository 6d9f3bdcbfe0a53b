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
from ..fileio import is_temporary_name
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
    """What a run leaves in its folder besides its files: the lock, and the temporary file of an atomic write of one of its own files that a
    kill cut short (``.config.json.XXXXXXXX.tmp``, removed when training starts again).  A user's
    own hidden ``.draft.tmp`` is not ours."""
    return name == LOCK_FILE or is_temporary_name(name, of=RUN_PATHS)


def refuse_foreign_folder(path: Path, *, overwrite: bool = False) -> None:
    """Raise ``RunDirectoryError`` when ``path`` is a non-empty folder that is not an asvae-kit run
    (another tool's files, whatever their names), unless ``overwrite``: writing there could
    replace the user's files.  The one rule for ``train --out``, ``fit(run_dir=...)`` and ``save``."""
    if overwrite or not path.is_dir() or is_run_dir(path):
        return
    others = sorted(
        p.name for p in path.iterdir()
        if not _ours(p.name) and not (p.name == METRICS_FILE and metrics_file_is_ours(p))  # a run that died before its marker
    )
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise RunDirectoryError(
            f"{path} is not empty ({shown}) and holds no asvae-kit run, so training there could overwrite "
            "your files; choose another --out, or pass --overwrite to write into it anyway (from Python: another "
            "run_dir, or RunDirectory(path, overwrite=True))"
        )


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
        if mode == "resume":
            raise RunDirectoryError(
                f"--resume given, but {path} holds no asvae-kit run to continue (no {MARKER_FILE} or config.json of asvae-kit's); "
                "drop --resume to start a run there, or choose the folder of a run"
            )
        refuse_foreign_folder(path, overwrite=overwrite)
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


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (``/proc/PID/stat``'s start time, in clock ticks since boot),
    or ``None`` where that cannot be read: with it a pid the system reused is not mistaken for
    the process that took the lock."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _job() -> tuple[str | None, int]:
    """This process's job and the attempt of it: torchrun's run id and restart count, else SLURM's
    job id and restart count; ``(None, 0)`` outside both.  A lock an earlier attempt of the same job
    left is stale on any host: the job was relaunched, so that attempt is over."""
    for job, attempt in (("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT"), ("SLURM_JOB_ID", "SLURM_RESTART_COUNT")):
        if os.environ.get(job):
            count = os.environ.get(attempt, "").strip()
            return f"{job}={os.environ[job]}"[:200], int(count) if count.isdigit() else 0
    return None, 0


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

    def _holder(self, raw: bytes | None = None) -> dict:
        """The holder recorded in the lock file (pid, host, started), fields checked so that a
        message may print them; ``{}`` when the file is not asvae-kit's lock.  ``raw``: the file's
        bytes as already read (``_raw``), so that the holder judged stale is the one ``_break``
        compares with."""
        if self.path.is_symlink():
            return {}
        raw = self._raw() if raw is None else raw
        if len(raw) > _MAX_LOCK_BYTES:
            return {}
        try:
            record = json.loads(raw.decode("utf-8"))
        except ValueError:
            return {}
        if not isinstance(record, dict) or not isinstance(record.get("pid"), int) or _text(record.get("host")) is None:
            return {}
        holder = {"pid": record["pid"], "host": record["host"], "started": _text(record.get("started"), 40) or "?"}
        for key in ("process_start", "job"):
            if _text(record.get(key)) is not None:
                holder[key] = record[key]
        if isinstance(record.get("attempt"), int):
            holder["attempt"] = record["attempt"]
        return holder

    def _stale(self, holder: dict, me: dict) -> bool:
        """Whether the lock's holder is gone: on this host, its pid is dead or now belongs to a
        process that started later (a reused pid, e.g. a restarted container); on any host, it
        was an earlier attempt of this same job (torchrun's restarts, a SLURM requeue)."""
        pid = holder.get("pid")
        if holder.get("job") is not None and holder.get("job") == me["job"] and holder.get("attempt", 0) < me["attempt"]:
            return True
        if holder.get("host") != me["host"] or not isinstance(pid, int):
            return False
        if pid != me["pid"] and not _alive(pid):
            return True
        recorded = holder.get("process_start")
        return recorded is not None and recorded != _process_start(pid)

    def _break(self, raw: bytes) -> bool:
        """Remove the stale lock whose bytes are ``raw``, unless the file there is no longer that
        one (another process broke it and took the lock meanwhile): it is read again right before
        the removal, so two processes that judged the same lock stale do not both take it over
        (the one that comes second finds the first's lock, or none, and tries again)."""
        if self._raw() != raw:
            return False
        self.path.unlink(missing_ok=True)
        return True

    def _raw(self) -> bytes:
        """The lock file's bytes (one past ``_MAX_LOCK_BYTES`` at most, enough to tell a file too
        big to be asvae-kit's lock), ``b""`` when there is none."""
        try:
            with open(self.path, "rb") as f:
                return f.read(_MAX_LOCK_BYTES + 1)
        except OSError:
            return b""

    def acquire(self) -> "RunLock":
        folder = self.path.parent
        self._created_dir = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        job, attempt = _job()
        me = {
            "pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "process_start": _process_start(os.getpid()), "job": job, "attempt": attempt,
        }
        for _attempt in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                if self.path.is_symlink():
                    self._remove_created_dir()
                    raise RunDirectoryError(
                        f"{self.path} is a symbolic link, not asvae-kit's lock file; remove it if no run is writing to {folder}"
                    ) from None
                raw = self._raw()
                holder = self._holder(raw)
                pid, host = holder.get("pid"), holder.get("host")
                if holder and self._stale(holder, me):
                    self._break(raw)  # stale: its process is gone; if another took it meanwhile, the next try says so
                    continue
                if pid == me["pid"] and host == me["host"] and holder.get("process_start") in (None, me["process_start"]):
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
