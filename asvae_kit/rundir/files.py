"""The human-facing files of a run directory: ``config.json``, ``metrics.csv`` and the PNG grids."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch

from ..fileio import atomic_path, atomic_write_text
from ..images import save_image_grid

__all__ = ["CONFIG_FILE", "METRICS_FILE", "write_config", "MetricsFile", "write_grids"]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"


def write_config(run_dir: Path, config: dict[str, Any], data_shape: Sequence[int]) -> None:
    """``config.json``: the resolved config with the image shape, sorted, atomically."""
    record = {**config, "data_shape": list(data_shape)}
    atomic_write_text(Path(run_dir) / CONFIG_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


class MetricsFile:
    """``metrics.csv``, one row per log step; the columns are fixed by the first row (or the
    header already in the file, when a run resumes)."""

    def __init__(self) -> None:
        self.columns: list[str] | None = None

    def reset(self) -> None:
        """Forget the columns (the file was removed)."""
        self.columns = None

    def drop_rows_after(self, run_dir: Path, step: int) -> None:
        """Remove rows past ``step`` (an interrupted run logged them after its last checkpoint;
        resuming from ``step`` logs them again), rewriting the file atomically."""
        path = Path(run_dir) / METRICS_FILE
        if not path.is_file():
            return
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if len(rows) < 2 or "step" not in rows[0]:
            return
        at = rows[0].index("step")
        kept = [rows[0]] + [r for r in rows[1:] if len(r) > at and r[at] and float(r[at]) <= step]
        if len(kept) < len(rows):
            with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
                csv.writer(f).writerows(kept)

    def append(self, run_dir: Path, row: dict[str, float]) -> None:
        path = Path(run_dir) / METRICS_FILE
        if self.columns is None:
            if path.exists() and path.stat().st_size > 0:
                with open(path, newline="") as f:
                    self.columns = next(csv.reader(f), None)
            if not self.columns:
                self.columns = list(row)
                with open(path, "w", newline="") as f:
                    csv.writer(f).writerow(self.columns)
        with open(path, "a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(c)) for c in self.columns])


def write_grids(run_dir: Path, step: int, samples: torch.Tensor, pairs: torch.Tensor | None = None) -> None:
    """``samples.png`` and ``reconstructions.png`` (``pairs``: rows of 8 originals above their 8
    reconstructions, see ``images.interleave_rows``), plus a copy of each under ``images/`` named by the step."""
    run_dir = Path(run_dir)
    save_image_grid(samples, run_dir / "images" / f"samples_{step:07d}.png")
    save_image_grid(samples, run_dir / "samples.png")
    if pairs is not None:
        save_image_grid(pairs, run_dir / "images" / f"reconstructions_{step:07d}.png", nrow=8)
        save_image_grid(pairs, run_dir / "reconstructions.png", nrow=8)
