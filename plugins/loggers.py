"""Built-in experiment loggers: ``csv`` (``metrics.csv``, on by default), ``tensorboard`` and ``wandb``.

Each is built with the trainer, so a missing package is one ``ConfigError`` line before any
training; ``start`` opens it on the run directory at the beginning of every ``fit`` that writes
one (with the step training resumes from: rows an interrupted run logged after its last
checkpoint are dropped, so a resumed run's curves do not run backwards), and ``close`` flushes it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import torch

import asvae_kit
from asvae_kit.checks import check_number
from asvae_kit.errors import ConfigError
from asvae_kit.images import make_grid
from asvae_kit.rundir.files import MetricsFile

__all__ = ["CsvLogger", "TensorBoardLogger", "WandbLogger"]


def _require(module: str, package: str, logger: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"logger {logger!r} needs the {package!r} package, which is not installed: pip install {package} "
            f"(to only sample or evaluate a run that used it: asvae_kit.load(run, loggers=[]))"
        )


class CsvLogger:
    """``metrics.csv`` in the run directory, one row per logged step (what ``asvae-kit plot`` reads)."""

    def __init__(self) -> None:
        self._file = MetricsFile()
        self._run_dir: Path | None = None

    def start(self, run_dir: Path, config: dict[str, Any], step: int, run_id: str) -> None:
        self._run_dir = Path(run_dir)
        self._file.reset()  # re-read the header: the file may have been replaced since
        self._file.drop_rows_after(self._run_dir, step)

    def log_row(self, row: dict[str, float]) -> None:
        if self._run_dir is not None:
            self._file.append(self._run_dir, row)

    def log_images(self, name: str, images: torch.Tensor, step: int) -> None:
        pass  # the run directory's PNG grids already hold them

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """TensorBoard event files under ``RUN/tensorboard``: every row's scalars, the sample and
    reconstruction grids at every sample step, and the config as text."""

    def __init__(self, flush_secs: float = 30.0) -> None:
        _require("tensorboard", "tensorboard", "tensorboard")
        self.flush_secs = check_number(flush_secs, "logger 'tensorboard': flush_secs", low=0, low_inclusive=False)
        self._writer: Any = None

    def start(self, run_dir: Path, config: dict[str, Any], step: int, run_id: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops the events an interrupted run wrote after the checkpoint resumed from
        self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), flush_secs=self.flush_secs, purge_step=step + 1 if step else None)
        self._writer.add_text("config", "```\n" + json.dumps(config, indent=2, sort_keys=True) + "\n```")

    def log_row(self, row: dict[str, float]) -> None:
        step = int(row["step"])
        for key, value in row.items():
            if key != "step":
                self._writer.add_scalar(f"train/{key}", value, step)

    def log_images(self, name: str, images: torch.Tensor, step: int) -> None:
        grid = torch.from_numpy(make_grid(images)).float().div(255)
        self._writer.add_image(name, grid.permute(2, 0, 1) if grid.dim() == 3 else grid.unsqueeze(0), step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class WandbLogger:
    """Weights & Biases in offline mode (files under ``RUN/wandb``; ``wandb sync`` uploads them)."""

    def __init__(self, project: str = "asvae-kit") -> None:
        _require("wandb", "wandb", "wandb")
        self.project = project
        self._run: Any = None

    def start(self, run_dir: Path, config: dict[str, Any], step: int, run_id: str) -> None:
        import wandb

        self._wandb = wandb
        # the run's id: every fit() and resume of one asvae-kit run continues one wandb run
        self._run = wandb.init(project=self.project, dir=str(run_dir), config=config, mode="offline", name=Path(run_dir).name, id=run_id, resume="allow")

    def log_row(self, row: dict[str, float]) -> None:
        self._run.log({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))

    def log_images(self, name: str, images: torch.Tensor, step: int) -> None:
        self._run.log({name: self._wandb.Image(make_grid(images))}, step=step)

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


@asvae_kit.hookimpl
def register_loggers(register):
    register("csv", CsvLogger, description="metrics.csv in the run directory, one row per log step (the default).")
    register("tensorboard", TensorBoardLogger, description="TensorBoard scalars, sample/reconstruction grids and the config under RUN/tensorboard (needs tensorboard).")
    register("wandb", WandbLogger, description="Weights & Biases in offline mode under RUN/wandb; `wandb sync` uploads (needs wandb).")
