"""Running metrics on a split: ``Trainer.evaluate`` and ``asvae-kit evaluate`` both come here.

A metric (docs/design.md §2) is ``fn(trainer, data) -> dict[str, float]``, ``data`` being an image
tensor ``[N, C, H, W]`` on the trainer's device.  A metric may also take, by keyword:

- ``labels``: the images' integer labels (or ``None`` when the data has none);
- ``split``: ``"test"`` or ``"train"``, the split ``data`` came from;
- options of its own with defaults (``k=1000`` for ``nll``), set per call as ``"nll:k=100"`` or
  ``{"name": "nll", "k": 100}``.

A metric that does not apply to a model (``nll`` of an implicit encoder, ``skl`` without a
two-sided discriminator, ``probe`` without labels) raises ``MetricNotApplicable``: asked for by
name, that is an error; as part of the default set, it becomes a note beside the results.
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Callable, Iterable, Mapping

import torch

from .config import parse_metric
from .data import check_images, images_and_labels
from .errors import AsvaeKitError, ConfigError
from .names import did_you_mean
from .plugin_manager import get_registry
from .registry import metric_options

__all__ = ["MetricNotApplicable", "Evaluation", "evaluate"]


class MetricNotApplicable(AsvaeKitError, ValueError):
    """The metric is not defined for this model or data (the message says why and what would do)."""


class Evaluation(dict):
    """Metric values by name, plus what they were computed on.

    Attributes: ``split`` ("test" or "train"), ``source`` (a sentence naming the images),
    ``n_images``, and ``notes`` (metric name -> why it was skipped).
    """

    def __init__(self, values: Mapping[str, float], *, split: str, source: str, n_images: int, notes: Mapping[str, str]) -> None:
        super().__init__(values)
        self.split, self.source, self.n_images, self.notes = split, source, n_images, dict(notes)

    def as_dict(self) -> dict[str, Any]:
        return {"split": self.split, "source": self.source, "n_images": self.n_images, "metrics": dict(self), "notes": self.notes}


def _call(fn: Callable[..., Any], trainer: Any, images: torch.Tensor, options: dict[str, Any], supplied: dict[str, Any], name: str) -> dict[str, float]:
    known, accepts_any = metric_options(fn)
    for key in options:
        if key not in known and not accepts_any:
            raise ConfigError(f"metric {name!r} has no option {key!r}.{did_you_mean(key, known)} Its options: {', '.join(known) or 'none'}.")
    try:
        params = inspect.signature(fn).parameters
        takes = {k: v for k, v in supplied.items() if k in params or accepts_any}
    except (TypeError, ValueError):
        takes = {}
    return {k: float(v) for k, v in fn(trainer, images, **options, **takes).items()}


def evaluate(
    trainer: Any,
    metrics: str | Iterable[str | Mapping[str, Any]] | None = None,
    split: str = "test",
    data: Any = None,
    report: Callable[[str], None] | None = None,
) -> Evaluation:
    """Run ``metrics`` (default the config's) on up to ``eval_size`` images of ``split`` (or of ``data``).

    ``split`` is ``"test"`` (the data set's test split, or the held-out slice training never sees)
    or ``"train"``.  Returns an ``Evaluation``: the values, with ``.split``, ``.source``,
    ``.n_images`` and ``.notes`` (metrics that did not apply, and why).  ``report`` is told how
    long each metric took."""
    explicit = metrics is not None
    specs = trainer.config["metrics"] if metrics is None else ([metrics] if isinstance(metrics, (str, Mapping)) else list(metrics))
    entries = [parse_metric(s) for s in specs]
    registry = get_registry()
    fns = [(e["name"], registry.get("metric", e["name"]).factory, {k: v for k, v in e.items() if k != "name"}) for e in entries]
    if data is None:
        chosen = trainer.split_data(split)
        source, dataset = chosen.source, chosen.dataset
    else:
        source, dataset = "the data passed to evaluate()", data
    images, labels = images_and_labels(dataset, trainer.config["eval_size"])
    images = check_images(images, f"evaluation data ({source})", trainer.data_shape).to(trainer.device)
    supplied = {"labels": labels, "split": split}
    values: dict[str, float] = {}
    notes: dict[str, str] = {}
    trainer.eval_mode()
    with torch.no_grad(), trainer.averaged():  # the EMA weights, when the run keeps them
        for name, fn, options in fns:
            started = time.perf_counter()
            try:
                values.update(_call(fn, trainer, images, options, supplied, name))
            except MetricNotApplicable as exc:
                if explicit:
                    raise
                notes[name] = str(exc)
            if report:
                report(f"{name}: {'n/a' if name in notes else 'done'} in {time.perf_counter() - started:.1f} s")
    return Evaluation(values, split=split, source=source, n_images=len(images), notes=notes)
