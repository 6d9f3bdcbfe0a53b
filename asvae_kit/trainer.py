"""The ``Trainer``: alternating discriminator and encoder/decoder steps (DESIGN.md §1), logging,
image grids, checkpoints, save/load.

A run directory holds ``config.json``, ``metrics.csv``, PNG grids (``samples.png`` and
``reconstructions.png`` for the latest, ``images/`` for every one) and checkpoints: each one a
folder ``checkpoints/step-N`` with ``model.safetensors`` and ``trainer_state.pt`` (optimizers,
RNG states, step; read with ``weights_only=True``), switched to through ``latest`` once complete
(``asvae_kit.checkpoint``).  While training, the folder is locked against a second writer, and
SIGTERM/SIGINT finish the step and save before stopping.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import torch
from torch import nn

from .data import BatchStream, check_images, first_images
from .distributed import average_gradients, broadcast_parameters, context_from_env
from .divergence import JointBatch, check_head_count
from .checkpoint import MODEL_FILE, STATE_FILE, read_checkpoint, write_checkpoint
from .errors import AsvaeKitError, CheckpointError, ConfigError
from .fileio import remove_stale_temporaries
from .guard import DivergenceGuard
from .images import slerp
from .rundir import RunLock
from .runfiles import CONFIG_FILE, METRICS_FILE, MetricsFile, write_config, write_grids
from .signals import StopSignals, TrainingStopped
from .splits import DataSplit

if TYPE_CHECKING:  # pragma: no cover
    from .evaluation import Evaluation

__all__ = ["Trainer", "TrainingDivergedError", "CONFIG_FILE", "MODEL_FILE", "STATE_FILE", "METRICS_FILE"]

GRID_SIZE = 64
RECON_PAIRS = 32


class TrainingDivergedError(AsvaeKitError, FloatingPointError):
    """A loss became NaN or infinite, or grew past ``diverge_factor`` times its running median;
    nothing is saved after that step, so the last checkpoint on disk is the last good state."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a torch device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but this torch build sees no CUDA GPU; use device='cpu' or 'auto'")
    return device


class Trainer:
    """Encoder, decoder, discriminator and divergence with their optimizers and training loop.

    Build one with ``asvae_kit.build(...)`` or ``asvae_kit.load(run_dir)``.
    """

    def __init__(
        self,
        config: dict[str, Any],
        *,
        encoder: nn.Module,
        decoder: nn.Module,
        discriminator: nn.Module | None,
        divergence: Any,
        data_shape: tuple[int, int, int],
        dataset: Any = None,
    ) -> None:
        self.config = config
        self.dist = context_from_env()
        self.device = resolve_device(config["device"])
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.data_shape = tuple(data_shape)
        self.latent_dim = int(config["latent_dim"])
        self.divergence = divergence
        self.num_heads = int(getattr(divergence, "num_heads", 0))
        check_head_count(discriminator, self.num_heads, config["divergence"]["name"])
        self.encoder = encoder.to(self.device)
        self.decoder = decoder.to(self.device)
        self.discriminator = discriminator.to(self.device) if self.num_heads > 0 and discriminator is not None else None

        optim = config["optim"]
        betas = tuple(optim["betas"])
        self.gen_optimizer = torch.optim.Adam(
            [*self.encoder.parameters(), *self.decoder.parameters()], lr=optim["lr"], betas=betas, weight_decay=optim["weight_decay"]
        )
        self.disc_optimizer = (
            torch.optim.Adam(
                self.discriminator.parameters(), lr=optim["disc_lr"] or optim["lr"], betas=betas, weight_decay=optim["weight_decay"]
            )
            if self.discriminator is not None
            else None
        )
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.run_dir: Path | None = None
        self._full_dataset = dataset  # as built from config['data']; training sees only split_data('train')
        self._splits: dict[str, DataSplit] = {}
        broadcast_parameters(self._modules(), self.dist)
        self._seed_replica_noise()
        self.data_generator = torch.Generator().manual_seed(int(config["seed"]))
        fixed = torch.Generator().manual_seed(int(config["seed"]) + 1)
        self.fixed_z = torch.randn(GRID_SIZE, self.latent_dim, generator=fixed).to(self.device)
        self._recon_images: torch.Tensor | None = None
        self._stream: BatchStream | None = None  # over the configured dataset, kept across fit() calls
        self._stream_state: dict[str, Any] | None = None  # from a checkpoint, applied to the next stream
        self._pending: dict[str, list[torch.Tensor]] = {}
        self._guard = DivergenceGuard(config["diverge_factor"])
        self._last_saved_step: int | None = None
        self._time_before = 0.0  # training seconds logged before this fit() call
        self.run_id = uuid.uuid4().hex  # tags every checkpoint of this run (load keeps the saved one)
        self._metrics_file = MetricsFile()

    # ------------------------------------------------------------------------------------------
    # data

    @property
    def dataset(self) -> Any:
        """The configured data set's training portion (its training split, or all of it less the
        held-out slice that evaluation uses; see ``asvae_kit.splits``), built on first use."""
        return self.split_data("train").dataset

    def split_data(self, split: str = "train") -> "DataSplit":
        """The ``"train"`` or ``"test"`` split of the configured data, with a sentence saying what it is."""
        from .splits import split_dataset

        if split not in self._splits:
            entry = self.config["data"]
            if entry.get("name") is None:
                raise ConfigError("this trainer has no configured data (data=None); pass data to fit() or evaluate()")
            if self._full_dataset is None:
                from .registry import build_entry

                self._full_dataset = build_entry("dataset", entry)
            self._splits[split] = split_dataset(self._full_dataset, entry, self.config["holdout"], split)
        return self._splits[split]

    # ------------------------------------------------------------------------------------------
    # one step

    def _modules(self) -> list[nn.Module]:
        return [m for m in (self.encoder, self.decoder, self.discriminator) if m is not None]

    def set_learning_rates(self) -> None:
        """Give both optimizers the learning rates of ``config['optim']`` (``disc_lr`` or ``lr``)."""
        optim = self.config["optim"]
        for group in self.gen_optimizer.param_groups:
            group["lr"] = optim["lr"]
        if self.disc_optimizer is not None:
            for group in self.disc_optimizer.param_groups:
                group["lr"] = optim["disc_lr"] or optim["lr"]

    def make_batch(self, x: torch.Tensor) -> JointBatch:
        """The step's joint samples for the data batch ``x`` (prior codes drawn here)."""
        return JointBatch(x, self.encoder, self.decoder, self.latent_dim, sample_x=self.config["sample_x"])

    def discriminator_step(self, batch: JointBatch) -> dict[str, torch.Tensor]:
        """``n_critic`` discriminator updates on the batch's samples, generator outputs detached."""
        terms: dict[str, torch.Tensor] = {}
        if self.discriminator is None:
            return terms
        for _ in range(self.config["optim"]["n_critic"]):
            d_loss, terms = self.divergence.discriminator_loss(self.discriminator, batch)
            self._check_loss(d_loss, "d_loss", terms)
            self.disc_optimizer.zero_grad(set_to_none=True)  # type: ignore[union-attr]
            d_loss.backward()
            average_gradients(self.discriminator.parameters(), self.dist)
            self.disc_optimizer.step()  # type: ignore[union-attr]
        return terms

    def generator_step(self, batch: JointBatch) -> dict[str, torch.Tensor]:
        """One encoder/decoder update on the divergence's objective, the discriminator frozen."""
        if self.discriminator is not None:
            self.discriminator.requires_grad_(False)
        try:
            g_loss, terms = self.divergence.generator_loss(self.discriminator, batch)
            self._check_loss(g_loss, "g_loss", terms)
            self.gen_optimizer.zero_grad(set_to_none=True)
            g_loss.backward()
            average_gradients((p for group in self.gen_optimizer.param_groups for p in group["params"]), self.dist)
            self.gen_optimizer.step()
        finally:
            if self.discriminator is not None:
                self.discriminator.requires_grad_(True)
        return terms

    def train_step(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One algorithm step (DESIGN.md §1) on the data batch ``x``: discriminator update(s),
        then the encoder/decoder update.  Returns the detached loss terms."""
        for m in self._modules():
            m.train()
        batch = self.make_batch(x)
        diagnostics = self.discriminator_step(batch)
        diagnostics.update(self.generator_step(batch))
        self.step += 1
        return diagnostics

    def _check_loss(self, loss: torch.Tensor, term: str, terms: dict[str, torch.Tensor]) -> None:
        """Raise ``TrainingDivergedError`` when ``loss`` (``d_loss`` or ``g_loss``) is NaN/inf or has
        blown up (``DivergenceGuard``)."""
        what = {"d_loss": "discriminator loss", "g_loss": "encoder/decoder loss"}[term]
        why = self._guard.check(term, float(loss.detach()))
        if why is None:
            return
        detail = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
        if self._last_saved_step is not None and self.run_dir is not None:
            kept = f"the last checkpoint in {self.run_dir} (step {self._last_saved_step}) is intact"
            fix = f"resume it with a lower learning rate: asvae-kit train --resume --out {self.run_dir} --lr LR"
        else:
            kept = "no checkpoint of this run was written"
            fix = "train again with a lower optim.lr (--lr)"
        raise TrainingDivergedError(
            f"the {what} ({term}) {why} at step {self.step + 1} ({detail}); training stopped and {kept}. To go on, {fix}, "
            "or check the data for extreme values (diverge_factor=0 turns the growth check off)."
        )

    # ------------------------------------------------------------------------------------------
    # the loop

    def fit(self, steps: int | None = None, data: Any = None, *, run_dir: str | os.PathLike | None = None, progress: bool | None = None) -> "Trainer":
        """Train until ``self.step == steps`` (the run's total; default ``config['steps']``).

        ``data``: a ``Dataset``, ``DataLoader`` or image tensor ``[N, C, H, W]`` in [0, 1]; default
        the configured dataset.  ``run_dir``: where metrics, grids and checkpoints go (default the
        directory this trainer was loaded from or last saved to; none means nothing is written).
        ``progress``: a tqdm bar; by default only when stderr is a terminal.
        """
        if steps is not None:
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
                raise ConfigError(f"fit(steps=...) takes the run's total step count, a non-negative integer; got {steps!r}")
            self.config["steps"] = steps  # config.json states the total this run trains to
        total = self.config["steps"]
        if run_dir is not None:
            self.run_dir = Path(run_dir)
        stream = self._batch_stream(data)
        writes = self.run_dir is not None and self.dist.is_main
        if self._recon_images is None or data is not None:
            source = self.dataset if data is None else data
            self._recon_images = check_images(first_images(source, RECON_PAIRS), "training data", self.data_shape).to(self.device)
        log_every, sample_every, ckpt_every = (self.config[k] for k in ("log_every", "sample_every", "checkpoint_every"))
        lock = RunLock(self.run_dir) if writes else contextlib.nullcontext()
        with lock, StopSignals() as stop:
            if writes:
                self.run_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
                remove_stale_temporaries(self.run_dir)  # left by a process killed mid-write
                stale = self.run_dir / METRICS_FILE
                if self.step == 0 and stale.exists():  # left by a run that died before its first checkpoint
                    stale.unlink()
                    self._metrics_file.reset()
                self._write_config()
            self._train_until(total, stream, writes, log_every, sample_every, ckpt_every, progress, stop)
        return self

    def _train_until(self, total: int, stream: BatchStream, writes: bool, log_every: int, sample_every: int, ckpt_every: int, progress: bool | None, stop: StopSignals) -> None:
        from tqdm.auto import tqdm

        show = (sys.stderr.isatty() if progress is None else progress) and self.dist.is_main
        bar = tqdm(total=total, initial=min(self.step, total), disable=not show, unit="step", dynamic_ncols=True)
        start = time.perf_counter()
        started_at = self.step
        self._time_before = float(self.history[-1].get("time_s", 0.0)) if self.history else 0.0
        try:
            while self.step < total:
                terms = self.train_step(next(stream))
                for k, v in terms.items():
                    self._pending.setdefault(k, []).append(v)  # tensors: no device sync until a row is logged
                bar.update(1)
                if log_every and (self.step % log_every == 0 or self.step == total):
                    row = self._log_row(time.perf_counter() - start, self.step - started_at)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k not in ("step", "time_s", "steps_per_s")}, refresh=False)
                if writes:
                    if sample_every and self.step % sample_every == 0:
                        self._save_grids_or_warn()
                    if ckpt_every and self.step % ckpt_every == 0:
                        self.save(self.run_dir)
                if stop.received is not None:
                    break
        finally:
            bar.close()
        if self._pending:
            self._log_row(time.perf_counter() - start, self.step - started_at)
        if writes:
            self.save(self.run_dir)  # first: nothing after training may cost the model
            self._save_grids_or_warn()
        if stop.received is not None:
            name = signal.Signals(stop.received).name
            where = f"; checkpoint saved to {self.run_dir} (resume with `asvae-kit train --resume --out {self.run_dir}`)" if writes else ""
            raise TrainingStopped(stop.received, f"{name}: training stopped after step {self.step}{where}")

    def _save_grids_or_warn(self) -> None:
        try:
            self.save_grids(self.run_dir)  # type: ignore[arg-type]
        except Exception as exc:  # a picture is never worth a run
            warnings.warn(f"could not write the image grids of step {self.step} to {self.run_dir}: {exc}", stacklevel=3)

    def _seed_replica_noise(self) -> None:
        """Under data parallelism, give each replica its own noise stream (they share weights and
        data order); a function of (seed, rank, step), so a resumed run reseeds consistently."""
        if self.dist.enabled:
            torch.manual_seed((int(self.config["seed"]) * 7919 + self.dist.rank) * 1_000_003 + self.step)

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

    def _log_row(self, elapsed: float, steps_done: int) -> dict[str, float]:
        """Average the terms gathered since the last row into one history/metrics.csv row."""
        row: dict[str, float] = {"step": self.step}
        row.update({k: torch.stack(v).double().mean().item() for k, v in sorted(self._pending.items())})
        row["time_s"] = round(self._time_before + elapsed, 3)  # continues across resumes
        row["steps_per_s"] = round(steps_done / elapsed, 3) if elapsed > 0 else float("nan")
        self._pending = {}
        self.history.append(row)
        if self.run_dir is not None and self.dist.is_main:
            self._metrics_file.append(self.run_dir, row)  # type: ignore[arg-type]
        return row

    # ------------------------------------------------------------------------------------------
    # inference

    def eval_mode(self) -> None:
        """Put every network in eval mode (``fit`` switches them back to train mode each step)."""
        for m in self._modules():
            m.eval()

    @torch.no_grad()
    def sample(self, n: int, *, seed: int | None = None, z: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` images ``[n, C, H, W]`` (the decoder's mean at z ~ p(z)); ``seed`` makes them repeatable."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"sample(n): n must be a positive integer, got {n!r}")
        self.eval_mode()
        if z is None:
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            z = torch.randn(n, self.latent_dim, generator=generator)
        elif tuple(z.shape) != (n, self.latent_dim):
            raise ValueError(f"sample(n={n}, z=...): z must have shape [{n}, {self.latent_dim}], got {list(z.shape)}")
        return torch.cat([self.decoder(chunk.to(self.device)).mean for chunk in z.split(512)])

    @torch.no_grad()
    def interpolate(self, rows: int = 8, steps: int = 10, *, seed: int | None = None) -> torch.Tensor:
        """``rows * steps`` images: each row decodes a spherical path between two prior draws."""
        for key, value in (("rows", rows), ("steps", steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "rows" else 2):
                raise ValueError(f"interpolate({key}=...): expected an integer >= {1 if key == 'rows' else 2}, got {value!r}")
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        ends = torch.randn(2, rows, self.latent_dim, generator=generator)
        return self.sample(rows * steps, z=slerp(ends[0], ends[1], steps))

    def _as_input(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected an image tensor [B, C, H, W], got {type(x).__name__}")
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"images have shape {list(x.shape)}, expected [B, {', '.join(map(str, self.data_shape))}]")
        return x.to(self.device, dtype=torch.float32)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean E[z|x], ``[B, latent_dim]``."""
        self.eval_mode()
        return self.encoder(self._as_input(x)).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """decoder(encode(x)).mean, ``[B, C, H, W]``."""
        self.eval_mode()
        return self.decoder(self.encoder(self._as_input(x)).mean).mean

    def evaluate(self, metrics: Iterable[Any] | None = None, split: str = "test", data: Any = None) -> "Evaluation":
        """Run the named metrics (default ``config['metrics']``) on up to ``eval_size`` images of
        ``split``: ``"test"`` (the data set's test split, or the held-out slice training never
        sees) or ``"train"``; or on ``data`` when given.  Returns an ``Evaluation``: a dict of
        values with ``.split``, ``.source``, ``.n_images`` and ``.notes`` (metrics that did not
        apply, and why).  A metric is a name (``"fd"``), ``"nll:k=100"`` or ``{"name": ..., **options}``."""
        from .evaluation import evaluate

        return evaluate(self, metrics, split, data)

    # ------------------------------------------------------------------------------------------
    # persistence

    def save_grids(self, run_dir: str | os.PathLike) -> None:
        """Write the fixed-noise sample grid and the data/reconstruction grid for this step."""
        x = self._recon_images[:RECON_PAIRS] if self._recon_images is not None else None
        write_grids(Path(run_dir), self.step, self.sample(GRID_SIZE, z=self.fixed_z), x, self.reconstruct(x) if x is not None else None)

    def _write_config(self) -> None:
        write_config(self.run_dir, self.config, self.data_shape)  # type: ignore[arg-type]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """All network weights, flat, prefixed ``encoder.``/``decoder.``/``discriminator.``."""
        out: dict[str, torch.Tensor] = {}
        for prefix, module in (("encoder", self.encoder), ("decoder", self.decoder), ("discriminator", self.discriminator)):
            if module is not None:
                for k, v in module.state_dict().items():
                    out[f"{prefix}.{k}"] = v.detach().cpu().contiguous()
        return out

    def save(self, run_dir: str | os.PathLike | None = None) -> Path:
        """Write ``config.json`` and one checkpoint (weights + optimizer/RNG/data state) as a unit
        (see ``asvae_kit.checkpoint``)."""
        if run_dir is None and self.run_dir is None:
            raise ValueError("save() needs a run directory the first time: trainer.save('runs/my-run')")
        self.run_dir = Path(run_dir) if run_dir is not None else self.run_dir
        if not self.dist.is_main:  # only rank 0 writes; the replicas are identical
            return self.run_dir  # type: ignore[return-value]
        self.run_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        self._write_config()
        state = {
            "gen_optimizer": self.gen_optimizer.state_dict(),
            "disc_optimizer": self.disc_optimizer.state_dict() if self.disc_optimizer is not None else None,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "data": self.data_generator.get_state(),
            },
            "data_stream": self._stream.state_dict() if self._stream is not None else self._stream_state,
            "history": self.history,
        }
        write_checkpoint(
            self.run_dir, step=self.step, run_id=self.run_id, tensors=self.state_tensors(), state=state, keep=self.config["keep_checkpoints"]  # type: ignore[arg-type]
        )
        self._last_saved_step = self.step
        return self.run_dir  # type: ignore[return-value]

    def load_state(self, run_dir: str | os.PathLike) -> None:
        """Load the newest checkpoint written by ``save`` (weights, and the state when present)."""
        run_dir = Path(run_dir)
        tensors, state, model_path = read_checkpoint(run_dir)
        for prefix, module in (("encoder", self.encoder), ("decoder", self.decoder), ("discriminator", self.discriminator)):
            if module is None:
                continue
            sub = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
            try:
                module.load_state_dict(sub)
            except RuntimeError as exc:
                raise CheckpointError(f"{model_path}: the {prefix} weights do not fit the config's network: {exc}") from None
        if state is not None:
            self.step = int(state["step"])
            self.run_id = state.get("run_id") or self.run_id
            self.gen_optimizer.load_state_dict(state["gen_optimizer"])
            if self.disc_optimizer is not None and state.get("disc_optimizer") is not None:
                self.disc_optimizer.load_state_dict(state["disc_optimizer"])
            rng = state.get("rng", {})
            if "torch" in rng:
                torch.set_rng_state(rng["torch"])
            if rng.get("cuda") and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            if "data" in rng:
                self.data_generator.set_state(rng["data"])
            self._stream, self._stream_state = None, state.get("data_stream")
            self._seed_replica_noise()  # the checkpoint holds rank 0's noise state
            self.history = list(state.get("history", []))
            self._last_saved_step = self.step
        self.run_dir = run_dir
