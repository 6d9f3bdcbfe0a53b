"""One run of a study (its stable key, label and folder name) and its config: the overrides of
spec, data set, model and grid point, the resolved config, what it is scored with, and
``load_spec``, which resolves the config of every run a spec can make so a typo fails at once.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError, UnknownComponentError
from .spec import DatasetSpec, Spec, SpecError, canonical_json, format_point, parse_spec_mapping, read_spec_file

__all__ = [
    "Run", "make_run", "run_overrides", "resolved_config", "validate_runs", "load_spec", "comparable_config",
    "evaluation_plan", "VOLATILE_KEYS",
]

#: Config keys that change how a run is carried out, not what it computes: not compared on resume.
VOLATILE_KEYS = (
    "threads", "device", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints", "loggers", "compile",
    "cuda_graphs", "data.data_dir", "data.download", "data_shape",
)


@dataclass(frozen=True)
class Run:
    """One training run of the study; ``key`` identifies it in results.jsonl across invocations."""

    phase: str
    dataset: str
    arch: str
    model: str
    index: int  # the grid point's position in the model's list
    point_json: str  # the grid point, canonical JSON
    seed: int
    steps: int

    @property
    def point(self) -> dict[str, Any]:
        return json.loads(self.point_json)

    @property
    def key(self) -> str:
        return f"{self.phase}|{self.dataset}|{self.arch}|{self.model}|{self.point_json}|seed={self.seed}|steps={self.steps}"

    @property
    def where(self) -> str:
        """``fashion-mnist/mlp/asvae`` (no architecture part when the spec names none)."""
        return "/".join(p for p in (self.dataset, self.arch, self.model) if p)

    def label(self, spec: Spec) -> str:
        point = spec.models[self.model].points[self.index] if self.model in spec.models else self.point
        return f"{self.phase} {self.where} {format_point(point)} seed {self.seed}" + (f" ({self.steps} steps)" if self.phase == "long" else "")

    def slug(self) -> str:
        import hashlib
        import re

        digest = hashlib.sha1(self.key.encode()).hexdigest()[:8]
        stem = re.sub(r"[^a-z0-9]+", "-", f"{self.phase}-{self.where}-p{self.index}-s{self.seed}".lower()).strip("-")
        return f"{stem}-{digest}"


def make_run(phase: str, group: tuple[str, str, str], spec: Spec, index: int, seed: int, steps: int) -> Run:
    """The ``phase`` run of ``group`` (data set, architecture, model) at grid point ``index``."""
    dataset, arch, model = group
    return Run(phase, dataset, arch, model, index, canonical_json(spec.models[model].points[index]), seed, steps)


def _data_entry(spec: Spec, dataset: DatasetSpec) -> dict[str, Any]:
    """The data set's config entry, with ``--data-dir`` where its factory reads files."""
    entry = copy.deepcopy(dataset.data)
    if spec.data_dir and _takes_data_dir(entry["name"]):
        entry["data_dir"] = spec.data_dir
    return entry


def _takes_data_dir(name: str) -> bool:
    from ..plugin_manager import get_registry

    try:
        options = get_registry().get("dataset", name).options
    except UnknownComponentError:
        return False  # resolve_config names the unknown data set
    return "data_dir" in options.keys and not options.accepts_any


def run_overrides(spec: Spec, run: Run, threads: int = 1) -> dict[str, Any]:
    """Every config override of ``run``: spec, data set, model, grid point, then the run's own."""
    dataset, model = spec.datasets[run.dataset], spec.models[run.model]
    own: dict[str, Any] = {"steps": run.steps, "seed": run.seed, "threads": threads, "sample_every": 0}
    if spec.eval_size is not None:
        own["eval_size"] = spec.eval_size
    return {**spec.overrides, "data": _data_entry(spec, dataset), **dataset.overrides, **model.overrides, **run.point, **own}


def resolved_config(spec: Spec, run: Run, threads: int = 1) -> dict[str, Any]:
    """The run's complete config (``resolve_config``); a ``SpecError`` names the spec, model and key."""
    from ..config import resolve_config

    preset = spec.models[run.model].preset_for(run.arch)
    try:
        return resolve_config(preset, run_overrides(spec, run, threads))
    except (ConfigError, UnknownComponentError) as exc:
        where = f"model {run.model!r} (preset {preset!r}, data set {run.dataset!r}"
        where += f", architecture {run.arch!r}" if run.arch else ""
        where += f", grid point {format_point(run.point)})"
        raise SpecError(f"{spec.path}: {where}: {' '.join(str(exc).split())}") from None


def validate_runs(spec: Spec) -> None:
    """Resolve the config of every (data set, architecture, model, grid point), so a typo fails now."""
    for group in spec.groups():
        for index in range(len(spec.models[group[2]].points)):
            resolved_config(spec, make_run("tune", group, spec, index, spec.tune_seed, spec.steps))


def comparable_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` flattened to dotted keys, less ``VOLATILE_KEYS`` (how a run ran, not what it computed)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = value

    walk("", config)
    return {k: v for k, v in flat.items() if k not in VOLATILE_KEYS}


def evaluation_plan(spec: Spec, run: Run) -> dict[str, Any]:
    """What a run is scored with: ``val``/``test`` metric lists at the end, and the val curve."""
    if run.phase == "tune":
        return {"end": {"val": spec.tune_metrics}, "curve": [], "curve_metric": None}
    if run.phase == "final":
        return {"end": {"test": spec.metrics}, "curve": spec.curve_steps(), "curve_metric": spec.select.metric}
    return {"end": {"test": [spec.select.metric]}, "curve": spec.long_curve_steps(), "curve_metric": spec.select.metric}


def load_spec(path: str | os.PathLike, *, data_dir: str | None = None, validate: bool = True) -> Spec:
    """Read, check and (``validate``) resolve every run of the spec file at ``path``.

    ``data_dir`` (``--data-dir``) is set on every data entry whose data set reads files."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file {path} not found" + (" (it is a directory)" if path.is_dir() else ""))
    spec = parse_spec_mapping(read_spec_file(path), path)
    spec.data_dir = data_dir
    if validate:
        validate_runs(spec)
    return spec
