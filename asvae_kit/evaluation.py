"""Running metrics on a split: ``Trainer.evaluate`` and ``asvae-kit evaluate`` both come here.

A metric (docs/design.md §2) is ``fn(trainer, data) -> dict[str, float]``, ``data`` being an image
tensor ``[N, C, H, W]`` on the trainer's device.  A metric may also take, by keyword:

- ``labels``: the images' integer labels (or ``None`` when the data has none);
- ``split``: ``"train"``, ``"val"`` or ``"test"``, the split ``data`` came from;
- options of its own with defaults (``k=1000`` for ``nll``), set per call as ``"nll:k=100"`` or
  ``{"name": "nll", "k": 100}``.  A metric that draws random numbers takes ``seed`` (default 0).

How a metric runs, so that its numbers can be trusted:

- its options are checked before any metric runs (and when the config is validated), by
  ``asvae_kit.config.check_metric_spec``: against the options the registry read from its
  signature when it registered (``entry.options``: its options, which of ``labels``/``split`` it
  takes, its ``weights``), then by its function's own ``check_options`` when it has one (``nll``
  refuses a ``k`` whose importance weights cannot fit in memory);
- under ``torch.no_grad``, with every network in eval mode, each module's mode restored after;
- under its own forked RNG (CPU, and the trainer's CUDA device when it has one), seeded with its
  ``seed`` option (0 for a metric without one): the same run evaluates to the same numbers every
  time, and evaluating in the middle of training leaves training's random numbers untouched;
- with the weights its factory's ``weights`` attribute names: ``"average"`` (the default: the
  EMA average when the run keeps one) or ``"raw"`` (the training weights, for metrics that read
  the discriminator, which was trained against them: ``skl`` and ``objective``).

A metric that does not apply to a model (``nll`` of an implicit encoder, ``skl`` without a
two-sided discriminator, ``probe`` without labels) raises ``MetricNotApplicable``: asked for by
name, that is an error; as part of the default set, it becomes a note beside the results.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch

from .checks import is_int
from .config import check_metric_spec
from .data import check_images, images_and_labels
from .errors import AsvaeKitError, ConfigError
from .registry import ComponentEntry
from .splits import check_split

__all__ = ["MetricNotApplicable", "Evaluation", "evaluate", "seeded"]


class MetricNotApplicable(AsvaeKitError, ValueError):
    """The metric is not defined for this model or data (the message says why and what would do)."""


class Evaluation(dict):
    """Metric values by name, plus what they were computed on.

    Attributes: ``split`` ("train", "val" or "test"), ``source`` (a sentence naming the split, its
    images and how many of them were evaluated), ``n_images`` (how many were evaluated), and
    ``notes`` (metric name -> why it was skipped).
    """

    def __init__(self, values: Mapping[str, float], *, split: str, source: str, n_images: int, notes: Mapping[str, str]) -> None:
        super().__init__(values)
        self.split, self.source, self.n_images, self.notes = split, source, n_images, dict(notes)

    def as_dict(self) -> dict[str, Any]:
        return {"split": self.split, "source": self.source, "n_images": self.n_images, "metrics": dict(self), "notes": self.notes}


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device | None = None) -> Iterator[None]:
    """torch's global RNG forked for the duration (the CPU's, and ``device``'s when it is a CUDA
    device) and seeded with ``seed`` (``None``: forked only); put back as it was after."""
    cuda = device is not None and device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None  # type: ignore[union-attr]
    with torch.random.fork_rng(devices=[index] if cuda else [], device_type="cuda"):
        if seed is not None:
            torch.default_generator.manual_seed(seed)
            if cuda:
                with torch.cuda.device(index):
                    torch.cuda.manual_seed(seed)
        yield


def _seed(component: ComponentEntry, options: Mapping[str, Any]) -> int:
    """The seed a metric runs under: its ``seed`` option, else its default for it, else 0."""
    if "seed" in options:
        return int(options["seed"])
    default = component.options.keys.get("seed")
    return int(default) if is_int(default) else 0


def _call(component: ComponentEntry, trainer: Any, images: torch.Tensor, options: dict[str, Any], supplied: dict[str, Any]) -> dict[str, float]:
    takes = {k: v for k, v in supplied.items() if k in component.options.supplied}
    return {k: float(v) for k, v in component.factory(trainer, images, **options, **takes).items()}


def evaluate(
    trainer: Any,
    metrics: str | Iterable[str | Mapping[str, Any]] | None = None,
    split: str = "test",
    data: Any = None,
    report: Callable[[str], None] | None = None,
) -> Evaluation:
    """Run ``metrics`` (default the config's) on up to ``eval_size`` images of ``split`` (or of ``data``).

    ``split`` is ``"test"`` (the data set's test split, or the held-out test slice training never
    sees: for final numbers), ``"val"`` (the validation slice of the training split, which
    training never sees either: for tuning) or ``"train"``.  Returns an ``Evaluation``: the
    values, with ``.split``, ``.source``, ``.n_images`` and ``.notes`` (metrics that did not
    apply, and why).  ``report`` is told how long each metric took.  The global RNG and the
    networks' train/eval modes are as they were afterwards."""
    check_split(split)
    explicit = metrics is not None
    specs = trainer.config["metrics"] if metrics is None else ([metrics] if isinstance(metrics, (str, Mapping)) else list(metrics))
    if explicit and not specs:
        raise ConfigError(
            "evaluate was given an empty list of metrics (e.g. --metrics ',,,'), so it would evaluate nothing; "
            "name at least one, like --metrics recon,nll:k=100 (Python: metrics=['recon']), or leave it out for the run's own"
        )
    # every name and option is checked before any metric runs (and before the data is read)
    shape, latent = getattr(trainer, "data_shape", None), getattr(trainer, "latent_dim", None)
    runs = [check_metric_spec(spec, data_shape=shape, latent_dim=latent) for spec in specs]
    if data is None:
        chosen = trainer.split_data(split)  # refuses val/test when training read other data (fit(data=...))
        source, dataset = chosen.source, chosen.dataset
    else:
        source, dataset = "the data passed to evaluate()", data
    eval_size = trainer.config["eval_size"]
    with seeded(None, trainer.device):  # a data set with random transforms draws here
        images, labels = images_and_labels(dataset, eval_size)
    images = check_images(images, f"evaluation data ({source})", trainer.data_shape).to(trainer.device)
    total = len(dataset) if hasattr(dataset, "__len__") else None
    if data is not None:
        source = f"{source} ({total if total is not None else len(images)} images)"
    if total is not None and len(images) < total:
        source = f"{source}; the first {len(images)} of them evaluated (eval_size={eval_size})"
    supplied = {"labels": labels, "split": split}
    values: dict[str, float] = {}
    notes: dict[str, str] = {}
    with trainer.evaluating(), torch.no_grad():
        for name, component, options in runs:
            started = time.perf_counter()
            try:
                with seeded(_seed(component, options), trainer.device), trainer.weights(component.options.weights):
                    values.update(_call(component, trainer, images, options, supplied))
            except MetricNotApplicable as exc:
                if explicit:
                    raise
                notes[name] = str(exc)
            if report:
                report(f"{name}: {'n/a' if name in notes else 'done'} in {time.perf_counter() - started:.1f} s")
    return Evaluation(values, split=split, source=source, n_images=len(images), notes=notes)
