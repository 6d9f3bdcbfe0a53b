"""The human-facing files of a run directory: ``config.json``, ``metrics.csv`` and the PNG grids.

A run directory trusts nothing it did not write: no run file is ever written through a symbolic
link (``refuse_link``), a ``metrics.csv`` whose header is not asvae-kit's is refused rather than
emptied or filled with blank rows, and no error message quotes what a file holds (a file may be
a link to something private); messages name the file and the way out.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import CheckpointError, RunDirectoryError
from ..fileio import atomic_path, atomic_write_text
from ..images import save_image_grid

__all__ = [
    "CONFIG_FILE", "METRICS_FILE", "GRID_FILES", "IMAGES_DIR", "write_config", "read_config", "is_asvae_config", "MetricsFile",
    "write_grids", "refuse_link", "metrics_file_is_ours", "foreign_metrics_error",
]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
IMAGES_DIR = "images"
#: The latest grids, at the top of the run directory (a copy of each is kept under ``images/``).
GRID_FILES = ("samples.png", "reconstructions.png")
#: The largest ``config.json`` read: asvae-kit writes about 2 KB; anything far bigger is not one of its.
MAX_CONFIG_BYTES = 4 << 20
#: The keys whose presence (each a component entry) marks a ``config.json`` as asvae-kit's.
_CONFIG_ENTRIES = ("encoder", "decoder", "divergence")


def refuse_link(path: Path) -> Path:
    """``path``, unless it is a symbolic link: a run file is never written through one (the write
    would land wherever the link points), nor is the link silently replaced.  ``RunDirectoryError``."""
    if Path(path).is_symlink():
        raise RunDirectoryError(
            f"{path} is a symbolic link; asvae-kit writes its run files only as regular files, never through a link: "
            "remove the link (or choose another --out)"
        )
    return Path(path)


def write_config(run_dir: Path, config: dict[str, Any], data_shape: Sequence[int]) -> None:
    """``config.json``: the resolved config with the image shape, sorted, atomically."""
    record = {**config, "data_shape": list(data_shape)}
    atomic_write_text(refuse_link(Path(run_dir) / CONFIG_FILE), json.dumps(record, indent=2, sort_keys=True) + "\n")


def is_asvae_config(config: Any) -> bool:
    """Whether a parsed ``config.json`` is one asvae-kit wrote: a mapping with component entries
    ``encoder``, ``decoder`` and ``divergence`` (each a name or ``{"name": ...}``) and an integer
    ``latent_dim``; how runs from before the run marker (``MARKER_FILE``) are recognised."""
    if not isinstance(config, dict) or not isinstance(config.get("latent_dim"), int):
        return False
    for key in _CONFIG_ENTRIES:
        entry = config.get(key)
        if not (isinstance(entry, str) or (isinstance(entry, dict) and isinstance(entry.get("name"), str))):
            return False
    return True


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's ``config.json`` as a mapping; ``CheckpointError`` (one line naming the file and the
    way out, never its contents) when it is missing, not JSON text, or not a config asvae-kit wrote."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} not found; pass a run directory written by `asvae-kit train` or Trainer.save()")
    fix = "restore the run's config.json, or pass the folder of a run asvae-kit wrote"
    if path.stat().st_size > MAX_CONFIG_BYTES:  # a data file, say: refused before it is read
        raise CheckpointError(f"{path} is larger than any config.json asvae-kit writes, so it is not a run's config; {fix}")
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read ({type(exc).__name__}); check its permissions") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not UTF-8 text (a binary or garbled file), so it is not a run's config; {fix}") from None
    except json.JSONDecodeError as exc:  # its message says where, never what
        raise CheckpointError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}); {fix}") from None
    if not isinstance(config, dict):
        kind = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(type(config), "null")
        raise CheckpointError(f"{path} holds {kind}, not the JSON object asvae-kit writes as a run's config; {fix}")
    return config


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _read_rows(path: Path) -> list[list[str]]:
    """Every row of a ``metrics.csv``; ``RunDirectoryError`` naming the file and the fix when it is
    binary or garbled (never quoting it)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise RunDirectoryError(
            f"{path} cannot be read as asvae-kit's CSV ({type(exc).__name__}: a binary or garbled file); move it away "
            "(a new one is started) or restore it from a copy"
        ) from None


def foreign_metrics_error(path: Path) -> RunDirectoryError:
    """The one message for a ``metrics.csv`` asvae-kit did not write (its header, never quoted)."""
    return RunDirectoryError(
        f"{path} has a header asvae-kit did not write (its first column is not 'step'), so it is another tool's file; "
        "move it away (a new one is started), choose another --out, or pass --overwrite to replace it in a new run"
    )


def metrics_file_is_ours(path: Path) -> bool:
    """Whether ``path`` (an existing ``metrics.csv``) has asvae-kit's header (first column ``step``).
    ``RunDirectoryError`` when it is binary or garbled."""
    rows = _read_rows(path)
    return not rows or (bool(rows[0]) and rows[0][0] == "step")


class MetricsFile:
    """``metrics.csv``, one row per log step; the columns are fixed by the first row (or the
    header already in the file, when a run resumes).  A file whose header is not asvae-kit's is
    refused, never appended to (its rows would be blanks) nor emptied."""

    def __init__(self) -> None:
        self.columns: list[str] | None = None

    def reset(self) -> None:
        """Forget the columns (the file was removed)."""
        self.columns = None

    def drop_rows_after(self, run_dir: Path, step: int) -> None:
        """Remove rows past ``step`` (an interrupted run logged them after its last checkpoint;
        resuming from ``step`` logs them again), rewriting the file atomically."""
        path = refuse_link(Path(run_dir) / METRICS_FILE)
        if not path.is_file():
            return
        rows = _read_rows(path)
        if not rows:
            return
        if not rows[0] or rows[0][0] != "step":
            raise foreign_metrics_error(path)
        try:
            kept = [rows[0]] + [r for r in rows[1:] if r and r[0] and float(r[0]) <= step]
        except ValueError:
            raise RunDirectoryError(
                f"{path} has a row whose step is not a number (a garbled file); move it away (a new one is started) "
                "or restore it from a copy"
            ) from None
        if len(kept) < len(rows):
            with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerows(kept)

    def append(self, run_dir: Path, row: dict[str, float]) -> None:
        path = refuse_link(Path(run_dir) / METRICS_FILE)
        if self.columns is None:
            if path.exists() and path.stat().st_size > 0:
                rows = _read_rows(path)
                header = rows[0] if rows else []
                if header and header[0] != "step":
                    raise foreign_metrics_error(path)
                self.columns = header or None
            if not self.columns:
                self.columns = list(row)
                with open(path, "w", newline="", encoding="utf-8") as f:
                    csv.writer(f).writerow(self.columns)
        with open(path, "a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow([_fmt(row.get(c)) for c in self.columns])


def write_grids(run_dir: Path, step: int, samples: torch.Tensor, pairs: torch.Tensor | None = None) -> None:
    """``samples.png`` and ``reconstructions.png`` (``pairs``: rows of 8 originals above their 8
    reconstructions, see ``images.interleave_rows``), plus a copy of each under ``images/`` named by the step."""
    run_dir = Path(run_dir)
    images = refuse_link(run_dir / IMAGES_DIR)
    save_image_grid(samples, refuse_link(images / f"samples_{step:07d}.png"))
    save_image_grid(samples, refuse_link(run_dir / "samples.png"))
    if pairs is not None:
        save_image_grid(pairs, refuse_link(images / f"reconstructions_{step:07d}.png"), nrow=8)
        save_image_grid(pairs, refuse_link(run_dir / "reconstructions.png"), nrow=8)
