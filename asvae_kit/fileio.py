"""Atomic file writes: a crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterator

__all__ = [
    "atomic_path", "atomic_write_text", "atomic_write_with", "remove_stale_temporaries", "is_temporary_name", "file_mode", "TMP_SUFFIX",
]

TMP_SUFFIX = ".tmp"


def file_mode(directory: bool = False) -> int:
    """The mode ``open()``/``mkdir()`` would give a new file (0o666) or folder (0o777) under the umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, file_mode())  # mkstemp makes 0600; files follow the umask like open() does
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_with(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


#: ``atomic_path``'s temporary names: ``.NAME.`` + mkstemp's eight random characters + ``.tmp``
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{6,12}" + re.escape(TMP_SUFFIX) + "$")


def is_temporary_name(name: str, of: tuple[str, ...] | None = None) -> bool:
    """Whether ``name`` is a temporary file ``atomic_path`` (or a checkpoint's writer) made, of one
    of the files ``of`` when given (``.config.json.k3j_x9a2.tmp`` is one of ``config.json``)."""
    match = _TEMPORARY.match(name)
    return match is not None and (of is None or match.group("name") in of)


def remove_stale_temporaries(folder: str | os.PathLike, names: tuple[str, ...] | None = None) -> list[Path]:
    """Delete what a process killed mid-write leaves behind: ``atomic_path``'s ``.NAME.XXXX.tmp``
    files in ``folder`` (of the files ``names``, when given) and its ``images/`` (of PNG grids),
    and half-written checkpoint folders in ``checkpoints/`` (of ``step-NNNNNNN``); return what was
    removed.  A user's own hidden ``.tmp`` file matches none of these and stays.  Only call it
    while holding the folder's lock."""
    import shutil

    removed = []
    kinds = {
        Path(folder): lambda name: names is None or name in names,
        Path(folder) / "images": lambda name: name.endswith(".png"),
        Path(folder) / "checkpoints": lambda name: re.fullmatch(r"step-\d{7}(\.\d+)?", name) is not None,
    }
    for where, of_ours in kinds.items():
        if where.is_dir():
            for p in where.glob(f".*{TMP_SUFFIX}"):
                match = _TEMPORARY.match(p.name)
                if match is None or not of_ours(match.group("name")):  # a user's own hidden .tmp file: not ours
                    continue
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
    return removed
