"""The run's own mark: what makes a folder an asvae-kit run, never file names alone.

``.asvae-kit-run`` is written when a run folder is prepared (and with its first checkpoint, for
a run saved without ``fit``): one JSON object naming the format, the run's id and the asvae-kit
version that made it.  A folder is a run when it holds that marker, or -- for runs made before
the marker existed -- a ``config.json`` that asvae-kit wrote (``files.is_asvae_config``).  A
folder holding another tool's ``config.json``, ``model.safetensors`` or ``samples.png`` is not a
run, whatever its file names say.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import CheckpointError
from ..fileio import atomic_write_text
from .files import is_asvae_config, read_config, refuse_link

__all__ = ["MARKER_FILE", "MARKER_FORMAT", "read_marker", "write_marker", "is_run_dir"]

MARKER_FILE = ".asvae-kit-run"
#: The marker's ``format`` value: what tells it from any other file of that name.
MARKER_FORMAT = "asvae-kit run"
#: A marker is about 150 bytes; a bigger file of that name is not one.
_MAX_MARKER_BYTES = 64 << 10


def read_marker(run_dir: Path) -> dict[str, Any] | None:
    """The marker of ``run_dir`` as a mapping, or ``None`` when there is none (or the file of that
    name is a link, too big, or not asvae-kit's JSON)."""
    path = Path(run_dir) / MARKER_FILE
    if path.is_symlink() or not path.is_file() or path.stat().st_size > _MAX_MARKER_BYTES:
        return None
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == MARKER_FORMAT else None


def write_marker(run_dir: Path, run_id: str) -> None:
    """Mark ``run_dir`` as the folder of run ``run_id`` (atomically; never through a link)."""
    record = {"format": MARKER_FORMAT, "run_id": run_id, "asvae_kit_version": __version__, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write_text(refuse_link(Path(run_dir) / MARKER_FILE), json.dumps(record, indent=1, sort_keys=True) + "\n")


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is an asvae-kit run folder: it holds the run marker, or a ``config.json``
    asvae-kit wrote (runs from before the marker)."""
    path = Path(path)
    if read_marker(path) is not None:
        return True
    try:
        return is_asvae_config(read_config(path))
    except CheckpointError:
        return False
