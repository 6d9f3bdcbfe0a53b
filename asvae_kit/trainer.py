"""The ``Trainer``: runs the algorithm (docs/design.md §1) on parts that ``asvae_kit.builder`` built.

It feeds batches to the ``AlgorithmStep`` (which makes the discriminator and encoder/decoder
updates of each step), logs averaged loss terms, stops cleanly on
SIGTERM/SIGINT and on divergence, and tells its ``RunDirectory`` when to write the config, the
metrics, the grids and the checkpoints (how they are written is ``asvae_kit.rundir``'s job).
Sampling and encoding come from ``asvae_kit.trainer_base``, metrics from ``asvae_kit.evaluation``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch

from .algorithm import AlgorithmStep
from .checks import check_int
from .data import BatchStream, check_images, first_images
from .distributed import DistContext, finish_together, peers_reported, seed_replica_noise
from .errors import CheckpointError, ConfigError, NotHeldOutError, TrainingDivergedError
from .ema import RAW_PREFIX
from .evaluation import Evaluation, evaluate
from .images import interleave_rows
from .logger_group import LoggerGroup
from .loss_history import LossHistory
from .trainer_base import TrainerBase
from .progress import Progress, progress_mode
from .rng import capture_rng, restore_rng
from .rundir import CONFIG_FILE, METRICS_FILE, MODEL_FILE, STATE_FILE, RunDirectory
from .signals import StopSignals, TrainingStopped
from .splits import check_split
from .threads import warn_if_oversubscribed

if TYPE_CHECKING:  # pragma: no cover
    from .splits import ConfiguredData, DataSplit

__all__ = ["Trainer", "TrainingDivergedError", "CONFIG_FILE", "MODEL_FILE", "STATE_FILE", "METRICS_FILE"]

GRID_SIZE = 64
RECON_PAIRS = 32


class Trainer(TrainerBase):
    """Encoder, decoder, discriminator and divergence with their optimizers and training loop.

    Build one with ``asvae_kit.build(...)`` or ``asvae_kit.load(run_dir)``: the builder makes the
    ``AlgorithmStep`` (networks on ``device``, divergence, optimizers) and the data splits.
    """

    def __init__(
        self,
        config: dict[str, Any],
        *,
        algorithm: AlgorithmStep,
        data_shape: tuple[int, int, int],
        device: torch.device,
        dist: DistContext,
        data: ConfiguredData | None = None,
        loggers: Sequence[Any] = (),
    ) -> None:
        self.config, self.dist, self.device, self.data_shape = config, dist, device, tuple(data_shape)
        self.latent_dim = int(config["latent_dim"])
        self.algorithm = algorithm  # the networks, the divergence and the optimizers, one step at a time
        self.encoder, self.decoder, self.discriminator = algorithm.encoder, algorithm.decoder, algorithm.discriminator
        self.divergence, self.num_heads = algorithm.divergence, algorithm.num_heads
        self.gen_optimizer, self.disc_optimizer, self.ema = algorithm.gen_optimizer, algorithm.disc_optimizer, algorithm.ema
        self.loggers = LoggerGroup(loggers)  # built from config['loggers']; open only while a writing fit() runs
        self.data = data  # the configured data set's splits; training sees only split_data("train")
        #: fit(data=...) trained on other data, so the configured val/test splits are not held out from it
        self.trained_on_fit_data = False
        self.step, self.log = 0, LossHistory()
        self.run: RunDirectory | None = None
        self.run_id = uuid.uuid4().hex  # tags every checkpoint of this run (load keeps the saved one)
        seed_replica_noise(self.dist, config["seed"], self.step)
        self.data_generator = torch.Generator().manual_seed(int(config["seed"]))
        fixed = torch.Generator().manual_seed(int(config["seed"]) + 1)
        self.fixed_z = torch.randn(GRID_SIZE, self.latent_dim, generator=fixed).to(self.device)
        self._recon_images: torch.Tensor | None = None
        self._stream: BatchStream | None = None  # over the configured dataset, kept across fit() calls
        self._stream_state: dict[str, Any] | None = None  # from a checkpoint, applied to the next stream
        self._last_saved_step: int | None = None
        self._saved_as: tuple[Path, int, int] | None = None  # (run folder, step, rows of history) of the last checkpoint

    def __repr__(self) -> str:
        parts = ", ".join(f"{key}={self.config[key]['name']!r}" for key in ("divergence", "encoder", "decoder", "data"))
        where = f", run_dir={str(self.run_dir)!r}" if self.run_dir is not None else ""
        return f"Trainer({parts}, step={self.step}/{self.config['steps']}, device={str(self.device)!r}{where})"

    @property
    def history(self) -> list[dict[str, float]]:
        """Every logged row so far (``step``, averaged loss terms, ``time_s``, ``steps_per_s``)."""
        return self.log.history

    @property
    def run_dir(self) -> Path | None:
        """Where this trainer writes (the folder it was loaded from or last saved to), or ``None``."""
        return self.run.path if self.run is not None else None

    # -- data ----------------------------------------------------------------------------------
    @property
    def dataset(self) -> Any:
        """The configured data set's ``"train"`` split: its training split less the validation
        slice, or all of it less the held-out test and validation slices (``asvae_kit.splits``),
        built on first use.  Training draws from it and from nothing else."""
        return self.split_data("train").dataset

    def split_data(self, split: str = "train") -> DataSplit:
        """The ``"train"``, ``"val"`` or ``"test"`` split of the configured data (``asvae_kit.splits``),
        with a sentence saying what it is.  After ``fit(data=...)`` the ``"val"`` and ``"test"``
        splits are refused: nothing says the data trained on left them out."""
        check_split(split)
        if self.data is None:
            raise ConfigError("this trainer has no configured data (data=None); pass data to fit() or evaluate()")
        if split != "train" and self.trained_on_fit_data:
            raise NotHeldOutError(
                f"this trainer was trained on data passed to fit(data=...), so the configured data set's {split!r} split "
                f"({self.config['data']['name']}) is not known to be held out from what it trained on; pass held-out "
                "images yourself: trainer.evaluate(data=held_out_images) (split='train' still reads the configured training split)"
            )
        return self.data.split(split)

    # -- one step ------------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One algorithm step (``self.algorithm``, docs/design.md §1) on the data batch ``x``: discriminator
        update(s), then the encoder/decoder update.  Returns the detached loss terms."""
        saved = (self.run.path, self._last_saved_step) if self.run is not None and self._last_saved_step is not None else None
        if self.dist.enabled:
            # each replica's noise stream restarts from (seed, rank, step) every step: the
            # checkpoint holds rank 0's RNG state only, and this is what makes a resume exact
            seed_replica_noise(self.dist, self.config["seed"], self.step)
            with peers_reported(self.step + 1, saved, self.dist, self.run.path if self.run is not None else None):
                terms = self.algorithm.step(x, number=self.step + 1, saved=saved)
        else:
            terms = self.algorithm.step(x, number=self.step + 1, saved=saved)
        self.step += 1
        return terms

    # -- the loop ------------------------------------------------------------------------------
    def fit(
        self, steps: int | None = None, data: Any = None, *, run_dir: str | os.PathLike | RunDirectory | None = None,
        progress: bool | str | None = None,
    ) -> "Trainer":
        """Train until ``self.step == steps`` (the run's total; default ``config['steps']``).

        ``data``: a ``Dataset``, ``DataLoader`` or image tensor ``[N, C, H, W]`` in [0, 1]; default
        the configured dataset.  ``run_dir``: where metrics, grids and checkpoints go, a path or a
        ``RunDirectory`` (default the directory this trainer was loaded from or last saved to; none
        means nothing is written).
        ``progress``: a tqdm bar on a terminal and one line per logged row elsewhere (``None``),
        ``True``/``"bar"``, ``"lines"``, or ``False``/``"off"``.
        """
        if steps is not None:  # config.json states the total this run trains to
            self.config["steps"] = check_int(steps, "fit(steps=...), the run's total step count,", minimum=0)
        if run_dir is not None:
            self._use_run_dir(run_dir)
        stream = self._batch_stream(data)
        if data is not None and self.step < self.config["steps"]:
            self.trained_on_fit_data = True  # checkpointed: evaluate() refuses the configured val/test splits from now on
        writes = self.run is not None and self.dist.is_main
        if self._recon_images is None or data is not None:
            source = self.dataset if data is None else data
            self._recon_images = check_images(first_images(source, RECON_PAIRS), "training data", self.data_shape).to(self.device)
        with contextlib.ExitStack() as stack:
            if writes:
                stack.enter_context(self.run.lock())  # type: ignore[union-attr]
            stop = stack.enter_context(StopSignals())
            if writes:
                self.run.prepare(fresh=self.step == 0, run_id=self.run_id)  # type: ignore[union-attr]
                self.run.write_config(self.config, self.data_shape)  # type: ignore[union-attr]
                stack.enter_context(self.loggers.opened(self.run.path, self.config, self.step, self.run_id))  # type: ignore[union-attr]
            warn_if_oversubscribed(torch.get_num_threads())
            self._train_until(self.config["steps"], stream, writes, progress_mode(progress) if self.dist.is_main else "off", stop)
        finish_together(self.dist)
        return self

    def _train_until(self, total: int, stream: BatchStream, writes: bool, mode: str, stop: StopSignals) -> None:
        log_every, sample_every, ckpt_every = (self.config[k] for k in ("log_every", "sample_every", "checkpoint_every"))
        shown = Progress(mode, total, self.step)
        self.log.start(self.step)
        try:
            while self.step < total:
                if self.dist.enabled:  # travels with the step's gradients: every process agrees to stop at the same step
                    self.algorithm.stop_requested = stop.received is not None
                self.log.add(self.train_step(next(stream)))
                shown.advance()
                if log_every and (self.step % log_every == 0 or self.step == total):
                    shown.row(self._log_row())
                if writes and sample_every and self.step % sample_every == 0:
                    self._save_grids_or_warn()
                if ckpt_every and self.step % ckpt_every == 0 and self.run is not None:
                    if writes:
                        self.save()
                    else:  # rank 0 saved this step (if its save fails it stops, and so does every peer)
                        self._last_saved_step = self.step
                if self._stopping(stop):
                    break
        finally:
            shown.close()
        if self.log.pending:
            self._log_row()
        if writes:
            self._save_unless_saved()  # first: nothing after training may cost the model
            self._save_grids_or_warn()
        if self._stopping(stop):
            signum = stop.received if stop.received is not None else signal.SIGTERM
            why = signal.Signals(signum).name if stop.received is not None else "another process received a stop signal"
            where = f"; checkpoint saved to {self.run_dir} (resume with `asvae-kit train --resume --out {self.run_dir}`)" if writes else ""
            raise TrainingStopped(signum, f"{why}: training stopped after step {self.step}{where}")

    def _stopping(self, stop: StopSignals) -> bool:
        """Whether training stops after this step: a signal this process received, or under data
        parallelism one any process received, as agreed in the step's all-reduce."""
        return self.algorithm.agreed_stop if self.dist.enabled else stop.received is not None

    def _save_grids_or_warn(self) -> None:
        try:
            self.save_grids()
        except Exception as exc:  # a picture is never worth a run
            warnings.warn(f"could not write the image grids of step {self.step} to {self.run_dir}: {exc}", stacklevel=3)

    def _batch_stream(self, data: Any) -> BatchStream:
        """Batches of ``data``, or of the configured dataset (one stream kept across ``fit`` calls,
        its shuffling position checkpointed, so a resumed run sees the batches an unbroken one would)."""
        def stream_of(source: Any) -> BatchStream:
            return BatchStream(
                source, self.config["batch_size"], self.data_shape, self.device, self.data_generator,
                rank=self.dist.rank, world_size=self.dist.world_size,
            )

        if data is not None:
            return stream_of(data)
        if self._stream is None:
            self._stream = stream_of(self.dataset)
            if self._stream_state is not None:
                self._stream.load_state_dict(self._stream_state)
                self._stream_state = None
        return self._stream

    def _log_row(self) -> dict[str, float]:
        row = self.log.row(self.step)
        self.loggers.log_row(row)
        return row

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self, metrics: Iterable[Any] | None = None, split: str = "test", data: Any = None) -> Evaluation:
        """The metrics (default ``config['metrics']``; ``"fd"``, ``"nll:k=100"`` or ``{"name": ...}``) on
        up to ``eval_size`` images of ``split`` or of ``data``: ``"test"`` (held out from training,
        for final numbers), ``"val"`` (the validation slice, held out too, for tuning) or
        ``"train"``.  After ``fit(data=...)``, ``"val"`` and ``"test"`` raise ``NotHeldOutError``;
        pass ``data=``.  See ``asvae_kit.evaluation.evaluate``."""
        return evaluate(self, metrics, split, data)

    # -- persistence ---------------------------------------------------------------------------
    def _use_run_dir(self, run_dir: str | os.PathLike | RunDirectory) -> RunDirectory:
        """Write to ``run_dir`` from now on (a ``RunDirectory`` is used as given: ``train`` passes the
        one it claimed, with its ``overwrite``)."""
        if isinstance(run_dir, RunDirectory):
            self.run = run_dir
            return run_dir
        if self.run is None or Path(run_dir) != self.run.path:
            self.run = RunDirectory(run_dir)
        return self.run

    def save_grids(self, run_dir: str | os.PathLike | None = None) -> None:
        """Write the fixed-noise sample grid and the data/reconstruction grid for this step."""
        run = self._use_run_dir(run_dir) if run_dir is not None else self.run
        if run is None:
            raise ValueError("save_grids() needs a run directory: trainer.save_grids('runs/my-run')")
        x = self._recon_images
        samples, pairs = self.sample(GRID_SIZE, z=self.fixed_z), interleave_rows(x, self.reconstruct(x)) if x is not None else None
        run.write_grids(self.step, samples, pairs)
        for name, images in (("samples", samples), ("reconstructions", pairs)):
            if images is not None:
                self.loggers.log_images(name, images, self.step)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """All network weights, flat, prefixed ``encoder.``/``decoder.``/``discriminator.``; with EMA,
        the encoder and decoder entries are the average, and the raw ones are under ``train.``."""
        raw = {f"{name}.{k}": v.detach().cpu().contiguous() for name, module in self.networks() for k, v in module.state_dict().items()}
        if self.ema is None:
            return raw
        averaged = self.ema.tensors()
        return {**raw, **averaged, **{RAW_PREFIX + k: raw[k] for k in averaged}}

    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights that resuming needs: optimizers, RNG and data-stream state, history."""
        return {
            **self.algorithm.state_dict(),  # the optimizers and loss scalers
            "rng": capture_rng(self.data_generator),
            "data_stream": self._stream.state_dict() if self._stream is not None else self._stream_state,
            "history": self.history,
            "trained_on_fit_data": self.trained_on_fit_data,
        }

    def save(self, run_dir: str | os.PathLike | None = None) -> Path:
        """Write ``config.json`` and one checkpoint (weights + ``state_dict()``) as a unit."""
        if run_dir is None and self.run is None:
            raise ValueError("save() needs a run directory the first time: trainer.save('runs/my-run')")
        run = self._use_run_dir(run_dir) if run_dir is not None else self.run
        if self.ema is not None and self.ema.swapped:
            raise RuntimeError("save() inside trainer.averaged() would store the average as the training weights; save outside it")
        if self.dist.is_main:  # only rank 0 writes; the replicas are identical
            run.write_config(self.config, self.data_shape)  # type: ignore[union-attr]
            run.save_checkpoint(step=self.step, run_id=self.run_id, tensors=self.state_tensors(), state=self.state_dict(), keep=self.config["keep_checkpoints"])  # type: ignore[union-attr]
            self._last_saved_step, self._saved_as = self.step, (run.path, self.step, len(self.history))  # type: ignore[union-attr]
        return run.path  # type: ignore[union-attr]

    def _save_unless_saved(self) -> None:
        """The save at the end of ``fit``, unless the checkpoint of this step already holds this
        state (it was just taken, no row logged since): one checkpoint per step, not ``step-N`` and
        a copy ``step-N.1``.  (``config.json`` was written when ``fit`` began.)"""
        if self.run is None or self._saved_as != (self.run.path, self.step, len(self.history)):
            self.save()

    def load_state(self, run_dir: str | os.PathLike) -> None:
        """Load the newest checkpoint written by ``save`` (weights, and the state when present)."""
        run = RunDirectory(run_dir)
        tensors, state, model_path = run.read_checkpoint()
        averaged = {k: v for k, v in tensors.items() if not k.startswith(RAW_PREFIX)}
        raw = {**averaged, **{k[len(RAW_PREFIX):]: v for k, v in tensors.items() if k.startswith(RAW_PREFIX)}}
        for name, module in self.networks():
            try:
                module.load_state_dict({k[len(name) + 1 :]: v for k, v in raw.items() if k.startswith(name + ".")})
            except RuntimeError as exc:
                raise CheckpointError(f"{model_path}: the {name} weights do not fit the config's network: {exc}") from None
        if self.ema is not None:
            self.ema.load_tensors(averaged)  # the average (a run saved without one: the weights themselves)
        if state is not None:
            self.load_state_dict(state)
        self.run = run
        self._saved_as = (run.path, self.step, len(self.history)) if state is not None else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved (a checkpoint's ``trainer_state.pt``)."""
        self.step = int(state["step"])
        self.run_id = state.get("run_id") or self.run_id
        self.algorithm.load_state_dict(state)
        restore_rng(state.get("rng", {}), self.data_generator)
        self._stream, self._stream_state = None, state.get("data_stream")
        self.log.history = list(state.get("history", []))
        self.trained_on_fit_data = bool(state.get("trained_on_fit_data", False))
        self._last_saved_step = self.step
