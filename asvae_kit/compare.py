"""``asvae-kit compare SPEC``: tune, select and compare models on equal terms, from one spec file.

    asvae-kit compare examples/study.toml               # or: python -m asvae_kit.compare SPEC
    asvae-kit compare SPEC --dry-run                    # the plan: every run's key and overrides
    asvae-kit compare SPEC --report-only                # rebuild the report from results.jsonl

The protocol, in four phases, each decided by the results of the one before:

1. **tune**: every grid point of every model, on every data set and architecture, trained for
   ``steps`` with ``tune_seed`` and scored on the ``val`` split (a fixed slice of the training
   split that training never draws from) with ``tune_metrics``;
2. **select**: per (data set, architecture, model), the point the declared rule prefers
   (``select``: the lowest or highest val value; ties go to the first point in spec order; a
   diverged run or a non-finite value never wins);
3. **final**: each pick trained with every seed of ``seeds`` and scored on the ``test`` split with
   ``metrics``, recording the val value of the rule's metric at each ``curve`` step on the way;
4. **long** (optional): per (data set, architecture), the ``top`` models by mean final val value
   trained again at ``factor`` times the budget, so the report can say whether the ranking held.

The spec (TOML, YAML or JSON; paths are relative to the spec file)::

    title = "VAE, AVB, ALI and ASVAE"   # heading of the report
    doc = "../docs/study.md"            # optional: rewrite its block <!-- compare:results -->
                                        #   ... <!-- /compare:results --> (appended when missing)
    images = "../docs/images"           # optional: where the grids go (default OUT/images)
    out = "../runs/study"               # results folder (--out wins)
    steps = 3000                        # budget of every tuning and final run
    tune_seed = 0
    seeds = [1, 2, 3]                   # final seeds: at least 3 unless smoke = true
    select = { metric = "fd", goal = "min" }   # the rule, always read on split "val"
    tune_metrics = ["fd", "recon"]      # tuning runs' val metrics (must report select.metric;
                                        #   default: the metric that reports it)
    metrics = ["recon", "nll:k=1000:n=256", "fd", "probe", "skl"]   # final test metrics
    eval_size = 2000                    # images per evaluation (config eval_size)
    curve = [1000, 2000]                # extra val checkpoints of final runs (the last step always)
    architectures = ["mlp", "dcgan"]    # substituted for {arch} in each preset
    overrides = { batch_size = 64 }     # config overrides of every run
    smoke = false                       # true: allow fewer than 3 seeds (CI smoke specs)
    allow_unequal_grids = false         # true: models may have different numbers of grid points

    [long]                              # optional budget check
    factor = 3                          # the reruns train factor * steps, val read at each multiple of steps
    top = 2                             # per (data set, architecture): the best by mean final val value
    seeds = [1, 2, 3]                   #   (diverged seeds left out of the mean; ties in spec order); default: seeds

    [datasets.fashion-mnist]
    data = { name = "fashion-mnist" }   # the config's data entry (a name or a mapping)
    overrides = {}                      # optional, over the spec's overrides

    [models.vae]
    preset = "{arch}-vae"
    overrides = {}                      # optional, over the data set's
    grid = { "optim.lr" = [1e-4, 2e-4, 4e-4, 8e-4] }   # the cartesian product of the values, or
    # points = [ { "optim.lr" = 1e-4 }, { "optim.lr" = 2e-4, "divergence.lambda_z" = 1.0 } ]

``select.metric`` is a value the tune metrics report (``fd``, ``recon_mse``, ``nll``,
``probe_acc``, ``skl``...).  Every model must have as many grid points as every other (the same
tuning budget) unless ``allow_unequal_grids``.  The whole spec is resolved before anything runs
(every model x data set x architecture x point through ``resolve_config``), so a typo fails in a
second with a message naming the spec file, the model and the key.

Each run is identified by a stable key (phase, data set, architecture, model, grid point, seed,
steps).  ``OUT/results.jsonl`` gets one JSON line per finished run, appended and fsynced: its key,
resolved config, the evaluations (split, the sentence naming the images, their count, values,
notes), the val curve, ms/step, the date, torch and the machine.  On start, runs already there are
skipped, so a killed or interrupted study resumes with the same command; rows made with other
settings (the spec edited since) are refused, not mixed in.  A run killed mid-way resumes from its
run directory's newest checkpoint (``OUT/runs/...``) with the val points it had recorded; one
without a usable checkpoint restarts from step 0.  A run that diverges is a row too (status
"diverged", with the message): it never wins and is never redone.

Runs go to worker processes (``--jobs``, default: the cores; ``--threads`` torch threads each,
default 1, so they share the cores without oversubscribing them).  One line per finished run goes
to stderr, e.g. ``[ 12/136  31.2 min] tune fashion-mnist/mlp/asvae optim.disc_lr=5e-05 seed 0:
val fd 123.4 (54 ms/step)``.  A failing run is reported with its key and its worker's stderr; the
others go on and the exit status is 1.  Ctrl-C or SIGTERM stops the workers (each saves a
checkpoint first), keeps every finished row and prints the command that resumes.

The report (``OUT/report.md``, and the block in ``doc``) is a pure function of the spec and
``results.jsonl`` (dates, machine and timings come from the rows): ``--report-only`` rebuilds it
byte for byte.  Grids of each pick (its first final seed) go to ``images`` as
``{dataset}-{arch}-{model}-samples.png`` and ``-reconstructions.png``.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .errors import ConfigError, UnknownComponentError
from .names import did_you_mean

__all__ = [
    "SpecError", "Spec", "Run", "Pick", "load_spec", "parse_spec_mapping", "validate_runs", "tune_runs", "final_runs",
    "long_runs", "planned_runs", "pick_for", "ranking", "phase_totals", "read_results", "run_study", "main",
    "add_arguments", "run_from_args", "RESULTS_FILE", "REPORT_FILE", "DOC_BLOCK", "METRIC_OUTPUTS",
]

PHASES = ("tune", "final", "long")
RESULTS_FILE = "results.jsonl"
REPORT_FILE = "report.md"
#: The marked block of ``doc`` that the report rewrites.
DOC_BLOCK = "compare:results"
#: Per run directory: the val values recorded so far, so a resumed run keeps them.
PROGRESS_FILE = "compare-progress.json"
MIN_SEEDS = 3

#: What each built-in metric reports (a plugin metric is assumed to report its own name).
METRIC_OUTPUTS: dict[str, tuple[str, ...]] = {
    "recon": ("recon_mse", "recon_bce", "mean_image_mse"),
    "reconstruction-mse": ("recon_mse", "mean_image_mse"),
    "nll": ("nll", "nll_se", "nll_bits_per_dim", "nll_k", "nll_n"),
    "fd": ("fd", "fd_train", "sample_mean_pixel"),
    "skl": ("skl",),
    "probe": ("probe_acc",),
    "fid": ("fid",),
    "is": ("is", "is_std"),
    "elbo-bound": ("elbo", "log_px", "kl"),
}

#: Config keys that change how a run is carried out, not what it computes: not compared on resume.
VOLATILE_KEYS = (
    "threads", "device", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints", "loggers", "compile",
    "cuda_graphs", "data.data_dir", "data.download", "data_shape",
)

_TOP_KEYS = {
    "title", "doc", "images", "out", "steps", "tune_seed", "seeds", "select", "tune_metrics", "metrics", "eval_size",
    "curve", "architectures", "overrides", "long", "datasets", "models", "smoke", "allow_unequal_grids",
}
_MODEL_KEYS = {"preset", "overrides", "grid", "points"}
_DATASET_KEYS = {"data", "overrides"}
_LONG_KEYS = {"factor", "top", "seeds"}
_SELECT_KEYS = {"metric", "goal"}


class SpecError(ConfigError):
    """A comparison spec that cannot be run as written (its message names the file and the key)."""


# ---------------------------------------------------------------------------------------------
# the spec


@dataclass(frozen=True)
class Select:
    """The selection rule: the ``goal`` ("min"/"max") of the val value ``key``, reported by ``metric``."""

    key: str
    goal: str
    metric: dict[str, Any]

    def better(self, a: float, b: float) -> bool:
        """True when ``a`` beats ``b`` strictly (so ties keep the earlier one)."""
        return a < b if self.goal == "min" else a > b

    @property
    def words(self) -> str:
        return f"{'lowest' if self.goal == 'min' else 'highest'} val {self.key}"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    data: dict[str, Any]
    overrides: dict[str, Any]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    preset: str
    overrides: dict[str, Any]
    points: list[dict[str, Any]]

    def preset_for(self, arch: str) -> str:
        return self.preset.replace("{arch}", arch)


@dataclass(frozen=True)
class LongSpec:
    factor: int
    top: int
    seeds: list[int]


@dataclass
class Spec:
    """A parsed and checked comparison spec (see the module docstring)."""

    path: Path
    title: str
    steps: int
    tune_seed: int
    seeds: list[int]
    select: Select
    tune_metrics: list[dict[str, Any]]
    metrics: list[dict[str, Any]]
    datasets: dict[str, DatasetSpec]
    models: dict[str, ModelSpec]
    architectures: list[str] = field(default_factory=lambda: [""])
    curve: list[int] = field(default_factory=list)
    eval_size: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    long: LongSpec | None = None
    doc: Path | None = None
    images: Path | None = None
    out: Path | None = None
    smoke: bool = False
    allow_unequal_grids: bool = False
    data_dir: str | None = None

    def groups(self) -> list[tuple[str, str, str]]:
        """Every (data set, architecture, model), in spec order."""
        return [(d, a, m) for d in self.datasets for a in self.architectures for m in self.models]

    def sections(self) -> list[tuple[str, str]]:
        """Every (data set, architecture), in spec order."""
        return [(d, a) for d in self.datasets for a in self.architectures]

    def curve_steps(self, steps: int | None = None) -> list[int]:
        """The val checkpoints of a final run (``curve`` and the last step)."""
        total = self.steps if steps is None else steps
        return sorted({*(c for c in self.curve if c < total), total})

    def long_curve_steps(self) -> list[int]:
        """The val checkpoints of a long run: every multiple of ``steps`` up to ``factor * steps``."""
        assert self.long is not None
        return [self.steps * k for k in range(1, self.long.factor + 1)]

    def images_dir(self, out: Path) -> Path:
        return self.images if self.images is not None else out / "images"


def _fail(spec_path: Path, message: str) -> SpecError:
    return SpecError(f"{spec_path}: {message}")


def _read_spec_file(path: Path) -> dict[str, Any]:
    """The spec mapping of a TOML, YAML or JSON file (TOML through tomllib, or tomli before 3.11)."""
    from .config import load_config_file

    if path.suffix.lower() == ".toml" and path.is_file():
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ImportError:
                raise SpecError(f"{path}: reading TOML on Python 3.10 needs tomli: pip install tomli (or write the spec as JSON or YAML)") from None
        try:
            return tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"{path} is not valid TOML: {exc}") from None
    try:
        return load_config_file(path)
    except ConfigError as exc:
        raise SpecError(str(exc).replace("config file", "spec file", 1)) from None


def _check_keys(mapping: Any, allowed: set[str], where: str, path: Path) -> dict[str, Any]:
    if not isinstance(mapping, Mapping):
        raise _fail(path, f"{where} must be a table (mapping), got {mapping!r}")
    for key in mapping:
        if key not in allowed:
            raise _fail(path, f"unknown key {key!r} in {where}.{did_you_mean(str(key), allowed)} Known keys: {', '.join(sorted(allowed))}.")
    return dict(mapping)


def _int(value: Any, where: str, path: Path, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(path, f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def _bool(value: Any, where: str, path: Path) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, f"{where} must be true or false, got {value!r}")
    return value


def _seeds(value: Any, where: str, path: Path, smoke: bool) -> list[int]:
    if not isinstance(value, list) or not value:
        raise _fail(path, f"{where} must be a non-empty list of seeds, e.g. [1, 2, 3], got {value!r}")
    seeds = [_int(s, f"each seed of {where}", path) for s in value]
    if len(set(seeds)) != len(seeds):
        raise _fail(path, f"{where} names a seed twice: {seeds}")
    if len(seeds) < MIN_SEEDS and not smoke:
        raise _fail(
            path, f"{where} has {len(seeds)} seed(s); a comparison needs at least {MIN_SEEDS} to give a spread "
            f"(e.g. [1, 2, 3]), or set smoke = true for a quick check"
        )
    return seeds


def _metric_list(value: Any, where: str, path: Path) -> list[dict[str, Any]]:
    """Parsed metric entries, each a registered metric with options it takes."""
    from .config import parse_metric
    from .plugin_manager import get_registry
    from .registry import check_metric_options

    if not isinstance(value, list) or not value:
        raise _fail(path, f"{where} must be a non-empty list of metrics like ['fd', 'nll:k=100'], got {value!r}")
    entries = []
    for spec in value:
        try:
            entry = parse_metric(spec)
            component = get_registry().get("metric", entry["name"])
            check_metric_options(component, {k: v for k, v in entry.items() if k != "name"})
        except (ConfigError, UnknownComponentError) as exc:
            raise _fail(path, f"{where}: {exc}") from None
        entry["name"] = component.name
        entries.append(entry)
    return entries


def metric_outputs(entry: Mapping[str, Any]) -> tuple[str, ...]:
    """The values a metric entry reports (``METRIC_OUTPUTS``; a plugin metric: its own name)."""
    return METRIC_OUTPUTS.get(entry["name"], (entry["name"],))


def _select(value: Any, path: Path) -> tuple[str, str]:
    raw = _check_keys(value, _SELECT_KEYS, "select", path)
    key, goal = raw.get("metric"), raw.get("goal", "min")
    if not isinstance(key, str) or not key:
        raise _fail(path, f"select.metric must name a value the tune metrics report, e.g. 'fd' or 'recon_mse', got {key!r}")
    if goal not in ("min", "max"):
        raise _fail(path, f"select.goal must be 'min' or 'max', got {goal!r}")
    return key, goal


def _reporting_metric(key: str) -> str:
    """The built-in metric that reports ``key`` (``recon`` for ``recon_mse``), else ``key`` itself:
    the tune metrics when a spec names none."""
    return next((name for name, outputs in METRIC_OUTPUTS.items() if key in outputs), key)


def _producer(key: str, metrics: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    """The metric entry of ``metrics`` that reports ``key``."""
    for entry in metrics:
        if key in metric_outputs(entry):
            return entry
    reported = sorted({k for e in metrics for k in metric_outputs(e)})
    raise _fail(
        path, f"select.metric {key!r} is not reported by tune_metrics ({', '.join(e['name'] for e in metrics)}), which report "
        f"{', '.join(reported)}.{did_you_mean(key, reported)} Add the metric that reports it to tune_metrics."
    )


def _curve(value: Any, steps: int, path: Path) -> list[int]:
    if not isinstance(value, list):
        raise _fail(path, f"curve must be a list of step counts below steps ({steps}), e.g. [1000, 2000], got {value!r}")
    points = [_int(c, "each curve step", path, minimum=1) for c in value]
    for c in points:
        if c >= steps:
            raise _fail(path, f"curve step {c} is not below steps ({steps}); the last step is always on the curve")
    if len(set(points)) != len(points):
        raise _fail(path, f"curve names a step twice: {points}")
    return sorted(points)


def _overrides(value: Any, where: str, path: Path) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(path, f"{where} must be a table of config overrides like {{ batch_size = 64 }}, got {value!r}")
    return dict(value)


def _grid_points(name: str, raw: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """A model's grid points: the cartesian product of ``grid`` (last key fastest), or ``points``."""
    where = f"model {name!r}"
    if "grid" in raw and "points" in raw:
        raise _fail(path, f"{where} has both grid and points; give one (grid: the product of value lists; points: an explicit list)")
    if "grid" in raw:
        grid = raw["grid"]
        if not isinstance(grid, Mapping) or not grid:
            raise _fail(path, f"{where}: grid must be a table of config keys to lists of values, e.g. {{ \"optim.lr\" = [1e-4, 2e-4] }}, got {grid!r}")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise _fail(path, f"{where}: grid key {key!r} needs a non-empty list of values, got {values!r}")
        keys = list(grid)
        points = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    elif "points" in raw:
        points = raw["points"]
        if not isinstance(points, list) or not points or not all(isinstance(p, Mapping) for p in points):
            raise _fail(path, f"{where}: points must be a non-empty list of tables of config overrides, got {points!r}")
        points = [dict(p) for p in points]
    else:
        points = [{}]
    as_json = [_canonical(p) for p in points]
    twice = [format_point(p) for p, j in zip(points, as_json) if as_json.count(j) > 1]
    if twice:
        raise _fail(path, f"{where}: its grid names the point {twice[0]} twice; each point is one run, so list it once")
    return points


def _datasets(value: Any, path: Path) -> dict[str, DatasetSpec]:
    if not isinstance(value, Mapping) or not value:
        raise _fail(path, "datasets must be a table with one entry per data set, e.g. [datasets.fashion-mnist] data = { name = \"fashion-mnist\" }")
    out = {}
    for name, raw in value.items():
        raw = _check_keys(raw, _DATASET_KEYS, f"datasets.{name}", path)
        data = raw.get("data", name)
        if isinstance(data, str):
            data = {"name": data}
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            raise _fail(path, f"datasets.{name}.data must be a data set name or a table with 'name', got {data!r}")
        out[str(name)] = DatasetSpec(str(name), dict(data), _overrides(raw.get("overrides"), f"datasets.{name}.overrides", path))
    return out


def _models(value: Any, path: Path, allow_unequal: bool) -> dict[str, ModelSpec]:
    if not isinstance(value, Mapping) or not value:
        raise _fail(path, "models must be a table with one entry per model, e.g. [models.vae] preset = \"mlp-vae\"")
    out = {}
    for name, raw in value.items():
        raw = _check_keys(raw, _MODEL_KEYS, f"models.{name}", path)
        preset = raw.get("preset")
        if not isinstance(preset, str) or not preset:
            raise _fail(path, f"models.{name} needs a preset, e.g. preset = \"{{arch}}-{name}\" (see `asvae-kit list preset`)")
        out[str(name)] = ModelSpec(str(name), preset, _overrides(raw.get("overrides"), f"models.{name}.overrides", path), _grid_points(str(name), raw, path))
    counts = {name: len(m.points) for name, m in out.items()}
    if len(set(counts.values())) > 1 and not allow_unequal:
        listed = ", ".join(f"{k}: {v}" for k, v in counts.items())
        raise _fail(
            path, f"the models have different numbers of grid points ({listed}), so their tuning budgets differ; give every "
            "model the same number, or set allow_unequal_grids = true (the report states the counts)"
        )
    return out


def _long(value: Any, seeds: list[int], path: Path, smoke: bool) -> LongSpec | None:
    if value is None:
        return None
    raw = _check_keys(value, _LONG_KEYS, "long", path)
    factor = _int(raw.get("factor", 3), "long.factor", path, minimum=2)
    top = _int(raw.get("top", 2), "long.top", path, minimum=1)
    long_seeds = _seeds(raw["seeds"], "long.seeds", path, smoke) if "seeds" in raw else list(seeds)
    return LongSpec(factor, top, long_seeds)


def _path(value: Any, key: str, base: Path, path: Path) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _fail(path, f"{key} must be a path (relative to the spec file), got {value!r}")
    return (base / value).resolve() if not Path(value).is_absolute() else Path(value)


def parse_spec_mapping(raw: Mapping[str, Any], path: Path) -> Spec:
    """A ``Spec`` from the mapping of the spec file at ``path`` (structure and names checked;
    ``validate_runs`` then resolves every run's config)."""
    raw = _check_keys(raw, _TOP_KEYS, "the spec", path)
    base = path.resolve().parent
    smoke = _bool(raw.get("smoke", False), "smoke", path)
    allow_unequal = _bool(raw.get("allow_unequal_grids", False), "allow_unequal_grids", path)
    if "steps" not in raw:
        raise _fail(path, "the spec needs steps, the step budget of every tuning and final run (e.g. steps = 3000)")
    steps = _int(raw["steps"], "steps", path, minimum=1)
    if "seeds" not in raw:
        raise _fail(path, f"the spec needs seeds, the final runs' seeds (at least {MIN_SEEDS}, e.g. seeds = [1, 2, 3])")
    seeds = _seeds(raw["seeds"], "seeds", path, smoke)
    if "select" not in raw:
        raise _fail(path, "the spec needs select, the rule declared before any result, e.g. select = { metric = \"fd\", goal = \"min\" }")
    key, goal = _select(raw["select"], path)
    tune_metrics = _metric_list(raw.get("tune_metrics", [_reporting_metric(key)]), "tune_metrics", path)
    if "metrics" not in raw:
        raise _fail(path, "the spec needs metrics, the final runs' test metrics (e.g. metrics = [\"recon\", \"fd\"])")
    metrics = _metric_list(raw["metrics"], "metrics", path)
    architectures = raw.get("architectures", [""])
    if not isinstance(architectures, list) or not architectures or not all(isinstance(a, str) for a in architectures):
        raise _fail(path, f"architectures must be a non-empty list of names substituted for {{arch}} in presets, e.g. [\"mlp\"], got {architectures!r}")
    if len(set(architectures)) != len(architectures):
        raise _fail(path, f"architectures names one twice: {architectures}")
    title = raw.get("title", "Comparison study")
    if not isinstance(title, str):
        raise _fail(path, f"title must be a string, got {title!r}")
    eval_size = raw.get("eval_size")
    spec = Spec(
        path=path, title=title, steps=steps, tune_seed=_int(raw.get("tune_seed", 0), "tune_seed", path), seeds=seeds,
        select=Select(key, goal, _producer(key, tune_metrics, path)), tune_metrics=tune_metrics, metrics=metrics,
        datasets=_datasets(raw.get("datasets"), path), models=_models(raw.get("models"), path, allow_unequal),
        architectures=list(architectures), curve=_curve(raw.get("curve", []), steps, path),
        eval_size=None if eval_size is None else _int(eval_size, "eval_size", path, minimum=2),
        overrides=_overrides(raw.get("overrides"), "overrides", path), long=_long(raw.get("long"), seeds, path, smoke),
        doc=_path(raw.get("doc"), "doc", base, path), images=_path(raw.get("images"), "images", base, path),
        out=_path(raw.get("out"), "out", base, path), smoke=smoke, allow_unequal_grids=allow_unequal,
    )
    for model in spec.models.values():
        if "{arch}" not in model.preset and len(spec.architectures) > 1:
            raise _fail(path, f"models.{model.name}: preset {model.preset!r} has no {{arch}}, so every architecture would train the same model; write it as \"{{arch}}-{model.name}\"")
    return spec


def load_spec(path: str | os.PathLike, *, data_dir: str | None = None, validate: bool = True) -> Spec:
    """Read, check and (``validate``) resolve every run of the spec file at ``path``.

    ``data_dir`` (``--data-dir``) is set on every data entry whose data set reads files."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file {path} not found" + (" (it is a directory)" if path.is_dir() else ""))
    spec = parse_spec_mapping(_read_spec_file(path), path)
    spec.data_dir = data_dir
    if validate:
        validate_runs(spec)
    return spec


# ---------------------------------------------------------------------------------------------
# runs and their configs


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def format_value(value: Any) -> str:
    """A config value as a person reads it: strings bare, the rest as JSON (``5e-05``, ``true``)."""
    return value if isinstance(value, str) else json.dumps(value)


def format_point(point: Mapping[str, Any]) -> str:
    """``optim.lr=0.0002 divergence.lambda_z=0.3``, or ``(preset)`` for the preset's own settings."""
    return " ".join(f"{k}={format_value(v)}" for k, v in point.items()) or "(preset)"


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


def _run(phase: str, group: tuple[str, str, str], spec: Spec, index: int, seed: int, steps: int) -> Run:
    dataset, arch, model = group
    return Run(phase, dataset, arch, model, index, _canonical(spec.models[model].points[index]), seed, steps)


def _data_entry(spec: Spec, dataset: DatasetSpec) -> dict[str, Any]:
    """The data set's config entry, with ``--data-dir`` where its factory reads files."""
    entry = copy.deepcopy(dataset.data)
    if spec.data_dir and _takes_data_dir(entry["name"]):
        entry["data_dir"] = spec.data_dir
    return entry


def _takes_data_dir(name: str) -> bool:
    from .plugin_manager import get_registry

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
    from .config import resolve_config

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
            resolved_config(spec, _run("tune", group, spec, index, spec.tune_seed, spec.steps))


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


# ---------------------------------------------------------------------------------------------
# the plan: which runs exist, given the results so far


def tune_runs(spec: Spec) -> list[Run]:
    return [
        _run("tune", group, spec, index, spec.tune_seed, spec.steps)
        for group in spec.groups() for index in range(len(spec.models[group[2]].points))
    ]


def row_ok(row: Mapping[str, Any] | None) -> bool:
    return row is not None and row.get("status") == "ok"


def val_value(row: Mapping[str, Any] | None, key: str) -> float:
    """The row's val ``key`` at its last step (NaN when it diverged or lacks the value)."""
    if not row_ok(row):
        return math.nan
    value = (((row or {}).get("evaluations") or {}).get("val") or {}).get("metrics", {}).get(key)
    return float(value) if isinstance(value, (int, float)) else math.nan


@dataclass(frozen=True)
class Pick:
    """The selection of one (data set, architecture, model): ``state`` is "pending" (tuning not
    finished), "none" (no usable point) or "picked" (``index`` and its val ``value``)."""

    state: str
    index: int = -1
    value: float = math.nan


def pick_for(spec: Spec, group: tuple[str, str, str], done: Mapping[str, Mapping[str, Any]]) -> Pick:
    """The rule applied to a group's tuning rows: the best finite val value wins, ties keep the
    earlier point, a diverged run or a non-finite value never wins."""
    runs = [_run("tune", group, spec, i, spec.tune_seed, spec.steps) for i in range(len(spec.models[group[2]].points))]
    if any(r.key not in done for r in runs):
        return Pick("pending")
    best: Pick = Pick("none")
    for run in runs:
        value = val_value(done[run.key], spec.select.key)
        if math.isfinite(value) and (best.state == "none" or spec.select.better(value, best.value)):
            best = Pick("picked", run.index, value)
    return best


def final_runs(spec: Spec, done: Mapping[str, Mapping[str, Any]]) -> list[Run]:
    """The final runs of every group whose tuning is finished and found a pick."""
    runs = []
    for group in spec.groups():
        pick = pick_for(spec, group, done)
        if pick.state == "picked":
            runs += [_run("final", group, spec, pick.index, seed, spec.steps) for seed in spec.seeds]
    return runs


def mean_finite(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def ranking(spec: Spec, section: tuple[str, str], done: Mapping[str, Mapping[str, Any]], phase: str = "final") -> list[tuple[str, float]] | None:
    """Models of a (data set, architecture) ordered by the mean val value of their ``phase`` runs
    (best first; ties in spec order; models without a finite mean left out), or ``None`` while a
    pick or one of those runs is still to come."""
    dataset, arch = section
    scored = []
    for model in spec.models:
        pick = pick_for(spec, (dataset, arch, model), done)
        if pick.state == "pending":
            return None
        if pick.state == "none":
            continue
        steps, seeds = (spec.steps, spec.seeds) if phase == "final" else (spec.steps * spec.long.factor, spec.long.seeds)  # type: ignore[union-attr]
        runs = [_run(phase, (dataset, arch, model), spec, pick.index, seed, steps) for seed in seeds]
        if phase == "final" and any(r.key not in done for r in runs):
            return None
        if phase == "long" and not all(r.key in done for r in runs):
            continue
        value = mean_finite(val_value(done.get(r.key), spec.select.key) for r in runs)
        if math.isfinite(value):
            scored.append((model, value))
    order = sorted(range(len(scored)), key=lambda i: (scored[i][1] if spec.select.goal == "min" else -scored[i][1], i))
    return [scored[i] for i in order]


def long_runs(spec: Spec, done: Mapping[str, Mapping[str, Any]]) -> list[Run]:
    """The budget check's runs: per (data set, architecture) whose finals are all in, the ``top``
    models by mean final val value, at ``factor`` times the steps."""
    if spec.long is None:
        return []
    runs = []
    for dataset, arch in spec.sections():
        order = ranking(spec, (dataset, arch), done)
        if order is None:
            continue
        for model, _ in order[: spec.long.top]:
            index = pick_for(spec, (dataset, arch, model), done).index
            runs += [_run("long", (dataset, arch, model), spec, index, seed, spec.steps * spec.long.factor) for seed in spec.long.seeds]
    return runs


def planned_runs(spec: Spec, done: Mapping[str, Mapping[str, Any]]) -> list[Run]:
    """Every run the results so far determine, one architecture at a time (in spec order), and
    within it one data set at a time, phase by phase: a study stopped part-way leaves whole
    sections (tuned, picked, final and long runs) rather than a little of everything."""
    arch_order = {a: i for i, a in enumerate(spec.architectures)}
    data_order = {d: i for i, d in enumerate(spec.datasets)}
    runs = tune_runs(spec) + final_runs(spec, done) + long_runs(spec, done)
    return sorted(runs, key=lambda r: (arch_order[r.arch], data_order[r.dataset], PHASES.index(r.phase)))


def phase_totals(spec: Spec) -> dict[str, int]:
    """How many runs each phase has at most (fewer when a group has no usable tuning run)."""
    groups = len(spec.groups())
    models = len(spec.models)
    top = min(spec.long.top, models) if spec.long else 0
    return {
        "tune": sum(len(spec.models[m].points) for _, _, m in spec.groups()),
        "final": groups * len(spec.seeds),
        "long": len(spec.sections()) * top * (len(spec.long.seeds) if spec.long else 0),
    }


# ---------------------------------------------------------------------------------------------
# results.jsonl


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """The rows of ``results.jsonl`` by key (a line a kill cut short is skipped, with a warning)."""
    rows: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return rows
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            print(f"warning: {path}:{number} is not a whole JSON line (a write cut short?); that run will be redone", file=sys.stderr)
            continue
        if isinstance(row, dict) and isinstance(row.get("key"), str):
            rows[row["key"]] = row
    return rows


def append_result(path: Path, row: Mapping[str, Any]) -> None:
    """Append one row to ``results.jsonl``, flushed and fsynced (after a newline if the last line was cut)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    needs_newline = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with open(path, "a", encoding="utf-8") as f:
        f.write(("\n" if needs_newline else "") + json.dumps(row, allow_nan=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def check_rows_match(spec: Spec, runs: Sequence[Run], done: Mapping[str, Mapping[str, Any]], results: Path) -> None:
    """Refuse rows of the same key that were computed with another config or evaluation plan
    (the spec was edited after they ran): mixing them would compare unequal runs."""
    for run in runs:
        row = done.get(run.key)
        if row is None or "config" not in row:
            continue
        now = comparable_config(resolved_config(spec, run))
        then = row["config"]
        changed = sorted(k for k in now.keys() & then.keys() if _canonical(now[k]) != _canonical(then[k]))
        plan = json.loads(_canonical(evaluation_plan(spec, run)))
        if changed or ("evaluation_plan" in row and row["evaluation_plan"] != plan):
            what = f"config keys {', '.join(changed)}" if changed else "its metrics or curve steps"
            raise SpecError(
                f"{spec.path}: {results} holds run {run.label(spec)!r} made with other settings ({what} differ from the "
                "spec's now); rerun the edited spec into a new --out, or delete those lines to redo them"
            )


# ---------------------------------------------------------------------------------------------
# the worker: one run in its own process


def machine_info() -> dict[str, Any]:
    """CPU model, core count, torch and Python versions of this machine."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": available_cores(), "gpu": gpu, "torch": torch.__version__, "python": platform.python_version()}


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _evaluate(trainer: Any, specs: Sequence[Mapping[str, Any]], split: str) -> dict[str, Any]:
    """``specs`` on ``split`` as a dict; a metric that does not apply becomes a note, not an error
    (the metrics are passed as the run's default set, which is how ``evaluate`` treats them)."""
    saved = trainer.config["metrics"]
    trainer.config["metrics"] = [dict(s) for s in specs]
    try:
        return trainer.evaluate(split=split).as_dict()
    finally:
        trainer.config["metrics"] = saved


def _read_progress(run_dir: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads((run_dir / PROGRESS_FILE).read_text())["curve"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _open_trainer(job: Mapping[str, Any]) -> tuple[Any, int | None, list[dict[str, Any]]]:
    """The job's trainer: resumed from its run directory's newest checkpoint, with the curve
    points recorded before it (when they are all there), or built fresh in an emptied folder."""
    import asvae_kit
    from .errors import CheckpointError

    run_dir = Path(job["run_dir"])
    load_overrides = {k: job["overrides"][k] for k in ("threads", "device") if k in job["overrides"]}
    data = job["overrides"].get("data", {})
    if isinstance(data, Mapping) and "data_dir" in data:
        load_overrides["data.data_dir"] = data["data_dir"]
    if (run_dir / "config.json").is_file():
        try:
            trainer = asvae_kit.load(run_dir, **load_overrides, steps=job["steps"])
        except (CheckpointError, ConfigError, OSError) as exc:
            print(f"cannot resume {run_dir} ({exc}); restarting it", file=sys.stderr)
        else:
            curve = [p for p in _read_progress(run_dir) if p["step"] <= trainer.step]
            missing = [c for c in job["curve"] if c < trainer.step and c not in {p["step"] for p in curve}]
            if not missing and 0 < trainer.step <= job["steps"]:
                return trainer, trainer.step, curve
            print(f"{run_dir}: checkpoint at step {trainer.step} lacks val points {missing}; restarting it", file=sys.stderr)
    shutil.rmtree(run_dir, ignore_errors=True)
    return asvae_kit.build(job["preset"], **job["overrides"]), None, []


def _train_with_curve(trainer: Any, job: Mapping[str, Any], curve: list[dict[str, Any]]) -> tuple[float, int]:
    """Train to each curve step in turn, evaluating val with the curve metric there (saved to the
    run's progress file), then to the last step.  Returns (training seconds, steps trained)."""
    from .fileio import atomic_write_text

    run_dir = Path(job["run_dir"])
    recorded = {p["step"] for p in curve}
    train_s, start_step = 0.0, trainer.step
    for stop in sorted({*job["curve"], job["steps"]}):
        if trainer.step < stop:
            started = time.perf_counter()
            trainer.fit(stop, run_dir=run_dir, progress=False)
            train_s += time.perf_counter() - started
        if stop in job["curve"] and stop not in recorded:
            curve.append({"step": stop, **_evaluate(trainer, [job["curve_metric"]], "val")})
            recorded.add(stop)
            atomic_write_text(run_dir / PROGRESS_FILE, json.dumps({"key": job["key"], "curve": curve}))
    return train_s, trainer.step - start_step


def draw_images(trainer: Any, folder: Path, stem: str) -> list[str]:
    """32 samples, and 16 test images above their reconstructions, as two PNGs; their names."""
    from .data import images_and_labels
    from .images import interleave_rows, save_image_grid

    names = [f"{stem}-samples.png", f"{stem}-reconstructions.png"]
    save_image_grid(trainer.sample(32, seed=0), folder / names[0], nrow=8, min_cell=56)
    x, _ = images_and_labels(trainer.split_data("test").dataset, 16)
    save_image_grid(interleave_rows(x, trainer.reconstruct(x).cpu()), folder / names[1], nrow=8, min_cell=56)
    return names


def run_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """Train, evaluate and draw one run; its results.jsonl row (a divergence is a row too)."""
    import torch

    from .errors import TrainingDivergedError

    torch.set_num_threads(int(job["overrides"].get("threads") or 1))
    trainer, resumed_from, curve = _open_trainer(job)
    row: dict[str, Any] = {**job["row"], "status": "ok", "resumed_from": resumed_from, "run_dir": job["run_dir"]}
    started = time.perf_counter()
    try:
        train_s, trained = _train_with_curve(trainer, job, curve)
    except TrainingDivergedError as exc:
        return {**row, "status": "diverged", "error": " ".join(str(exc).split()), "diverged_at": trainer.step, **_stamp()}
    evaluations = {split: _evaluate(trainer, specs, split) for split, specs in job["end"].items()}
    if curve and "val" not in evaluations:
        evaluations["val"] = {k: v for k, v in curve[-1].items() if k != "step"}
    row.update(
        evaluations=evaluations, curve=[{"step": p["step"], "metrics": p["metrics"]} for p in curve],
        ms_per_step=1000 * train_s / trained if trained else None, train_s=train_s,
        eval_s=time.perf_counter() - started - train_s, threads=torch.get_num_threads(), device=str(trainer.device),
    )
    if job.get("images"):
        row["images"] = draw_images(trainer, Path(job["images"]["folder"]), job["images"]["stem"])
    return {**row, **_stamp()}


def _stamp() -> dict[str, Any]:
    return {"finished": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_info()}


def prepare_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """Train (or find cached) the data set's project classifier, the feature network of ``fd``, by
    running ``fd`` once on a few training images: the same code path every run then takes."""
    import asvae_kit
    import torch

    torch.set_num_threads(int(job["overrides"].get("threads") or 1))
    trainer = asvae_kit.build(job["preset"], **{**job["overrides"], "steps": 0, "eval_size": 16})
    trainer.config["metrics"] = ["fd"]
    trainer.evaluate(split="train")
    return {"prepared": job["dataset"]}


def worker_main() -> int:
    """``python -m asvae_kit.compare --worker``: a job as JSON on stdin, its result as the last stdout line."""
    from .errors import AsvaeKitError
    from .signals import TrainingStopped

    job = json.loads(sys.stdin.read())
    try:
        result = prepare_job(job) if job.get("kind") == "prepare" else run_job(job)
    except AsvaeKitError as exc:  # a known problem (missing data files...): its message says it all
        print(f"{type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except TrainingStopped as exc:  # SIGTERM from the study: the step finished and the run is saved
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    sys.stdout.flush()
    print(json.dumps(result, allow_nan=True), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# the parent: scheduling workers


class StopRequested(Exception):
    """SIGTERM reached the study (Ctrl-C arrives as KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class WorkerFailed(Exception):
    """A worker exited without a result (its stderr tail is the message)."""


class WorkerPool:
    """Jobs in subprocesses, at most ``jobs`` at once, each in its own session (so Ctrl-C reaches
    only the study, which then stops them with SIGTERM: they save a checkpoint first)."""

    def __init__(self, jobs: int, threads: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="compare-worker")
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.lock = threading.Lock()
        self.processes: set[subprocess.Popen] = set()
        self.stopping = False

    def submit(self, job: Mapping[str, Any]) -> Future:
        return self.executor.submit(self._run, json.dumps(job))

    def _run(self, payload: str) -> dict[str, Any]:
        with self.lock:
            if self.stopping:
                raise WorkerFailed("not started: the study is stopping")
            proc = subprocess.Popen(
                [sys.executable, "-m", "asvae_kit.compare", "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, env=self.env, start_new_session=True,
            )
            self.processes.add(proc)
        try:
            stdout, stderr = proc.communicate(payload)
        finally:
            with self.lock:
                self.processes.discard(proc)
        lines = [line for line in stdout.splitlines() if line.strip()]
        if proc.returncode != 0 or not lines:
            tail = "\n".join(stderr.strip().splitlines()[-25:])
            raise WorkerFailed(f"worker exited with status {proc.returncode}:\n{tail}")
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            raise WorkerFailed(f"worker's last output line is not JSON: {lines[-1][:300]!r}") from None

    def stop(self, grace_s: float = 120.0) -> None:
        """SIGTERM every worker (each finishes its step and saves), then SIGKILL what is left."""
        with self.lock:
            self.stopping = True
            procs = list(self.processes)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        try:
            for proc in procs:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
        except KeyboardInterrupt:  # a second Ctrl-C: stop them now, unsaved
            for proc in procs:
                proc.kill()
        self.executor.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self.executor.shutdown(wait=True)


@dataclass
class Options:
    """How to run a study (the command line's choices)."""

    out: Path
    jobs: int
    threads: int
    command: str  # the command line that resumes the study, for messages
    stream: Any = None  # where progress lines go (default stderr)

    def say(self, message: str) -> None:
        print(message, file=self.stream or sys.stderr, flush=True)


def job_for(spec: Spec, run: Run, options: Options) -> dict[str, Any]:
    """The JSON a worker receives for ``run``."""
    config = resolved_config(spec, run, options.threads)
    plan = evaluation_plan(spec, run)
    images = None
    if run.phase == "final" and run.seed == spec.seeds[0]:
        stem = "-".join(p for p in (run.dataset, run.arch, run.model) if p)
        images = {"folder": str(spec.images_dir(options.out)), "stem": stem}
    row = {
        "key": run.key, "phase": run.phase, "dataset": run.dataset, "arch": run.arch, "model": run.model,
        "preset": spec.models[run.model].preset_for(run.arch), "point": run.point, "point_index": run.index,
        "seed": run.seed, "steps": run.steps, "config": comparable_config(config), "evaluation_plan": json.loads(_canonical(plan)),
    }
    return {
        "kind": "run", "key": run.key, "preset": row["preset"], "overrides": run_overrides(spec, run, options.threads),
        "run_dir": str(options.out / "runs" / run.slug()), "steps": run.steps, "end": plan["end"], "curve": plan["curve"],
        "curve_metric": plan["curve_metric"], "images": images, "row": row,
    }


def _needs_classifier(spec: Spec) -> bool:
    return any(e["name"] == "fd" for e in [*spec.tune_metrics, *spec.metrics])


def prepare_jobs(spec: Spec, cores: int) -> list[dict[str, Any]]:
    """One job per data set whose project classifier ``fd`` needs (trained once, before the runs
    that would otherwise each train it at the same time), sharing the study's ``cores``."""
    if not _needs_classifier(spec):
        return []
    threads = max(1, cores // len(spec.datasets))
    jobs = []
    for dataset in spec.datasets:
        group = (dataset, spec.architectures[0], next(iter(spec.models)))
        run = _run("tune", group, spec, 0, spec.tune_seed, spec.steps)
        jobs.append({"kind": "prepare", "dataset": dataset, "preset": spec.models[group[2]].preset_for(group[1]), "overrides": run_overrides(spec, run, threads)})
    return jobs


def describe_result(spec: Spec, row: Mapping[str, Any]) -> str:
    """``val fd 123.4 (54 ms/step)``, ``test fd 120.1, val fd 118.2 (...)`` or ``diverged at step N``."""
    if row.get("status") != "ok":
        return f"diverged at step {row.get('diverged_at')}: {str(row.get('error', ''))[:160]}"
    key = spec.select.key
    parts = []
    test = ((row.get("evaluations") or {}).get("test") or {}).get("metrics", {})
    if key in test:
        parts.append(f"test {key} {test[key]:.4g}")
    value = val_value(row, key)
    parts.append(f"val {key} {value:.4g}" if math.isfinite(value) else f"val {key} n/a")
    ms = row.get("ms_per_step")
    how = [f"{ms:.0f} ms/step" if isinstance(ms, (int, float)) else "no steps left to train"]
    how += [f"resumed from step {row['resumed_from']}"] if row.get("resumed_from") else []
    return ", ".join(parts) + f" ({', '.join(how)})"


def plan_lines(spec: Spec, done: Mapping[str, Mapping[str, Any]], options: Options) -> list[str]:
    """The plan as a person reads it: counts per phase, what is already done, the workers."""
    totals = phase_totals(spec)
    runs = planned_runs(spec, done)
    finished = {p: sum(1 for r in runs if r.phase == p and r.key in done) for p in PHASES}
    parts = [f"{totals[p]} {p}" + (f" ({finished[p]} done)" if finished[p] else "") for p in PHASES if totals[p]]
    cores = available_cores()
    lines = [
        f"{spec.path}: {', '.join(parts)} runs; {sum(finished.values())} of {sum(totals.values())} already in {options.out / RESULTS_FILE}",
        f"{options.jobs} worker(s) x {options.threads} thread(s) on {cores} core(s)",
    ]
    if options.jobs * options.threads > cores:
        lines.append(
            f"warning: {options.jobs} workers x {options.threads} threads exceed the {cores} cores; runs will slow each other "
            f"down and their ms/step will not be comparable (use --jobs {max(1, cores // options.threads)})"
        )
    return lines


def dry_run_lines(spec: Spec, done: Mapping[str, Mapping[str, Any]], options: Options) -> list[str]:
    """Every run the results so far determine (key and overrides), and what waits on them."""
    lines = plan_lines(spec, done, options)
    for run in planned_runs(spec, done):
        state = "done" if run.key in done else "to run"
        lines.append(f"  [{state}] {run.label(spec)}\n      key {run.key}\n      preset {spec.models[run.model].preset_for(run.arch)}, overrides {_canonical(run_overrides(spec, run, options.threads))}")
    pending = [f"{'/'.join(p for p in g if p)}" for g in spec.groups() if pick_for(spec, g, done).state == "pending"]
    if pending:
        lines.append(f"  final runs of {', '.join(pending)}: {len(spec.seeds)} seed(s) each, once their tuning picks a point")
    if spec.long:
        waiting = [f"{d}/{a}".strip("/") for d, a in spec.sections() if ranking(spec, (d, a), done) is None]
        if waiting:
            lines.append(f"  long runs of {', '.join(waiting)}: the top {spec.long.top} at {spec.long.factor * spec.steps} steps, once the final runs are in")
    return lines


class Study:
    """Runs every planned run not yet in results.jsonl, phase by phase as results decide them."""

    def __init__(self, spec: Spec, options: Options) -> None:
        self.spec, self.options = spec, options
        self.results = options.out / RESULTS_FILE
        self.done = read_results(self.results)
        self.failed: dict[str, str] = {}
        self.checked: set[str] = set()  # rows already compared with the spec
        self.in_flight: dict[Future, Run] = {}
        self.started = time.monotonic()

    def run(self) -> int:
        """Run the study; the exit status (0, 1 when a run failed, 128+signal when stopped)."""
        for line in plan_lines(self.spec, self.done, self.options):
            self.options.say(line)
        self._todo()  # refuses rows made with other settings before any worker starts
        pool = WorkerPool(self.options.jobs, self.options.threads)
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if threading.current_thread() is threading.main_thread() else None
        try:
            if self._todo():
                self._prepare(pool)
            self._loop(pool)
        except (KeyboardInterrupt, StopRequested) as exc:
            return self._stopped(pool, exc)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            pool.close()
        return self._finish()

    @staticmethod
    def _on_sigterm(signum: int, frame: object) -> None:
        raise StopRequested(signum)

    def _todo(self, in_flight: Iterable[str] = ()) -> list[Run]:
        busy = set(in_flight)
        runs = planned_runs(self.spec, self.done)
        unchecked = [r for r in runs if r.key in self.done and r.key not in self.checked]
        check_rows_match(self.spec, unchecked, self.done, self.results)
        self.checked.update(r.key for r in unchecked)
        return [r for r in runs if r.key not in self.done and r.key not in self.failed and r.key not in busy]

    def _prepare(self, pool: WorkerPool) -> None:
        jobs = prepare_jobs(self.spec, self.options.jobs * self.options.threads)
        if not jobs:
            return
        self.options.say(f"preparing the project classifier of fd for {', '.join(j['dataset'] for j in jobs)} (trained once, then cached)")
        futures = {pool.submit(job): job for job in jobs}
        self._wait_all(futures)
        for future, job in futures.items():
            try:
                future.result()
            except WorkerFailed as exc:  # each run will train it itself; say why
                self.options.say(f"warning: preparing {job['dataset']}'s classifier failed ({exc}); the runs will train it themselves")

    @staticmethod
    def _wait_all(futures: Iterable[Future]) -> None:
        pending = set(futures)
        while pending:
            _, pending = wait(pending, timeout=1.0)

    def _loop(self, pool: WorkerPool) -> None:
        in_flight = self.in_flight
        while True:
            for run in self._todo(r.key for r in in_flight.values())[: max(0, self.options.jobs - len(in_flight))]:
                in_flight[pool.submit(job_for(self.spec, run, self.options))] = run
            if not in_flight:
                return
            finished, _ = wait(list(in_flight), timeout=1.0, return_when=FIRST_COMPLETED)
            for future in finished:
                self._collect(in_flight.pop(future), future)

    def _collect(self, run: Run, future: Future) -> None:
        try:
            row = future.result()
        except WorkerFailed as exc:
            self.failed[run.key] = str(exc)
            self.options.say(f"FAILED {run.label(self.spec)} (key {run.key}):\n{exc}")
            return
        append_result(self.results, row)
        self.done[run.key] = row
        self.checked.add(run.key)
        count = sum(1 for r in planned_runs(self.spec, self.done) if r.key in self.done)
        total = sum(phase_totals(self.spec).values())
        minutes = (time.monotonic() - self.started) / 60
        width = len(str(total))
        self.options.say(f"[{count:>{width}}/{total} {minutes:5.1f} min] {run.label(self.spec)}: {describe_result(self.spec, row)}")

    def _stopped(self, pool: WorkerPool, exc: BaseException) -> int:
        name = exc.args[0] if isinstance(exc, StopRequested) else "SIGINT"
        self.options.say(f"\n{name}: stopping the workers (each saves a checkpoint of its run) ...")
        pool.stop()
        for future, run in list(self.in_flight.items()):  # runs that finished while the others stopped
            if future.done() and not future.cancelled() and future.exception() is None:
                self._collect(self.in_flight.pop(future), future)
        kept = len(read_results(self.results))
        self.options.say(
            f"stopped. {kept} finished run(s) are kept in {self.results}; the stopped runs resume from their checkpoints. "
            f"Resume with the same command:\n  {self.options.command}"
        )
        return 128 + (exc.signum if isinstance(exc, StopRequested) else signal.SIGINT)

    def _finish(self) -> int:
        for group in self.spec.groups():
            if pick_for(self.spec, group, self.done).state == "none":
                self.options.say(f"note: {'/'.join(p for p in group if p)}: no tuning run gave a finite val {self.spec.select.key}; it has no final runs")
        if self.failed:
            self.options.say(
                f"{len(self.failed)} run(s) failed (above, with their keys); the runs that depend on them did not start. "
                f"Fix the cause and rerun the same command to do only what is missing:\n  {self.options.command}"
            )
            return 1
        return 0


# ---------------------------------------------------------------------------------------------
# the command


def write_reports(spec: Spec, out: Path, rows: Mapping[str, Mapping[str, Any]]) -> list[Path]:
    """Write OUT/report.md and the block in ``doc``; the paths written."""
    from .fileio import atomic_write_text
    from .report import render_report, replace_block

    written = [out / REPORT_FILE]
    atomic_write_text(out / REPORT_FILE, render_report(spec, rows, out=out, where=out, top_level=1))
    if spec.doc is not None:
        body = render_report(spec, rows, out=out, where=spec.doc.parent, top_level=None)
        old = spec.doc.read_text(encoding="utf-8") if spec.doc.is_file() else f"# {spec.title}\n"
        atomic_write_text(spec.doc, replace_block(old, DOC_BLOCK, body))
        written.append(spec.doc)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``asvae-kit compare`` (and ``python -m asvae_kit.compare``)."""
    parser.add_argument("spec", help="the spec file (TOML, YAML or JSON; format above)")
    parser.add_argument("--out", help="folder for results.jsonl, report.md, runs/ and (default) images/ (default: the spec's out)")
    parser.add_argument("--jobs", type=_positive_int, help="worker processes at once (default: the cores divided by --threads)")
    parser.add_argument("--threads", type=_positive_int, default=1, help="torch threads per worker (config threads; default 1)")
    parser.add_argument("--data-dir", help="data_dir of every data set read from files (else $ASVAE_KIT_DATA)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--dry-run", action="store_true", help="print the plan (every run's key and overrides) and run nothing")
    what.add_argument("--report-only", action="store_true", help="rebuild the report from results.jsonl without running anything")


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def run_from_args(args: argparse.Namespace, prog: str = "asvae-kit compare") -> int:
    """Carry out a parsed ``compare`` command line; the exit status."""
    spec = load_spec(args.spec, data_dir=str(Path(args.data_dir).resolve()) if args.data_dir else None)
    if args.out is None and spec.out is None:
        raise SpecError(f"{spec.path}: no output folder: pass --out DIR, or set out = \"DIR\" in the spec")
    out = Path(args.out).resolve() if args.out else spec.out
    assert out is not None
    threads = args.threads
    jobs = args.jobs or max(1, available_cores() // threads)
    command = " ".join([prog, shlex.quote(args.spec), *(["--out", shlex.quote(args.out)] if args.out else []),
                        *(["--data-dir", shlex.quote(args.data_dir)] if args.data_dir else []),
                        *(["--jobs", str(args.jobs)] if args.jobs else []), *(["--threads", str(threads)] if threads != 1 else [])])
    options = Options(out=out, jobs=jobs, threads=threads, command=command)
    if args.dry_run:
        for line in dry_run_lines(spec, read_results(out / RESULTS_FILE), options):
            print(line)
        return 0
    if args.report_only:
        rows = read_results(out / RESULTS_FILE)
        if not rows:
            raise SpecError(f"{spec.path}: {out / RESULTS_FILE} holds no results to report; run the study first (without --report-only)")
        check_rows_match(spec, [r for r in planned_runs(spec, rows) if r.key in rows], rows, out / RESULTS_FILE)
        status = 0
    else:
        out.mkdir(parents=True, exist_ok=True)
        status = Study(spec, options).run()
        rows = read_results(out / RESULTS_FILE)
    for path in write_reports(spec, out, rows):
        options.say(f"wrote {path}")
    return status


def make_parser(prog: str = "python -m asvae_kit.compare") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m asvae_kit.compare SPEC [options]`` (``--worker``: one job from stdin)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--worker"]:
        return worker_main()
    args = make_parser().parse_args(argv)
    try:
        return run_from_args(args, prog="python -m asvae_kit.compare")
    except ConfigError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
