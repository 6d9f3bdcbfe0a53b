"""The spec file of ``asvae-kit compare``: its dataclasses, how it is read and checked (every
message names the file and the key), and how its points and values are written for a person.

``parse_spec_mapping`` checks the structure and names; ``runs.load_spec`` then resolves every run.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import ConfigError, UnknownComponentError
from ..names import did_you_mean

__all__ = [
    "SpecError", "Select", "DatasetSpec", "ModelSpec", "LongSpec", "Spec", "parse_spec_mapping", "read_spec_file",
    "metric_outputs", "format_value", "format_point", "canonical_json", "METRIC_OUTPUTS", "MIN_SEEDS",
]

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

_TOP_KEYS = {
    "title", "doc", "images", "out", "steps", "tune_seed", "seeds", "select", "tune_metrics", "metrics", "eval_size",
    "curve", "architectures", "overrides", "long", "datasets", "models", "smoke", "allow_unequal_grids",
}
_MODEL_KEYS = {"preset", "overrides", "grid", "points"}
_DATASET_KEYS = {"data", "overrides"}
_LONG_KEYS = {"factor", "top", "seeds", "also"}
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
    #: models trained at the long budget whatever their rank (the model a study is about), after the top ones
    also: list[str] = field(default_factory=list)


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


def read_spec_file(path: Path) -> dict[str, Any]:
    """The spec mapping of a TOML, YAML or JSON file (TOML through tomllib, or tomli before 3.11)."""
    from ..config import load_config_file

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
    from ..config import parse_metric
    from ..plugin_manager import get_registry
    from ..registry import check_metric_options

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
    as_json = [canonical_json(p) for p in points]
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


def _long(value: Any, seeds: list[int], models: Iterable[str], path: Path, smoke: bool) -> LongSpec | None:
    if value is None:
        return None
    raw = _check_keys(value, _LONG_KEYS, "long", path)
    factor = _int(raw.get("factor", 3), "long.factor", path, minimum=2)
    top = _int(raw.get("top", 2), "long.top", path, minimum=1)
    long_seeds = _seeds(raw["seeds"], "long.seeds", path, smoke) if "seeds" in raw else list(seeds)
    also = raw.get("also", [])
    known = list(models)
    if not isinstance(also, list) or not all(isinstance(m, str) for m in also) or len(set(also)) != len(also):
        raise _fail(path, f"long.also must be a list of distinct model names, e.g. also = [\"{known[0]}\"], got {also!r}")
    unknown = [m for m in also if m not in known]
    if unknown:
        raise _fail(path, f"long.also names {', '.join(map(repr, unknown))}, which is not a model of the spec; its models: {', '.join(known)}")
    return LongSpec(factor, top, long_seeds, also)


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
    models = _models(raw.get("models"), path, allow_unequal)
    spec = Spec(
        path=path, title=title, steps=steps, tune_seed=_int(raw.get("tune_seed", 0), "tune_seed", path), seeds=seeds,
        select=Select(key, goal, _producer(key, tune_metrics, path)), tune_metrics=tune_metrics, metrics=metrics,
        datasets=_datasets(raw.get("datasets"), path), models=models,
        architectures=list(architectures), curve=_curve(raw.get("curve", []), steps, path),
        eval_size=None if eval_size is None else _int(eval_size, "eval_size", path, minimum=2),
        overrides=_overrides(raw.get("overrides"), "overrides", path), long=_long(raw.get("long"), seeds, models, path, smoke),
        doc=_path(raw.get("doc"), "doc", base, path), images=_path(raw.get("images"), "images", base, path),
        out=_path(raw.get("out"), "out", base, path), smoke=smoke, allow_unequal_grids=allow_unequal,
    )
    for model in spec.models.values():
        if "{arch}" not in model.preset and len(spec.architectures) > 1:
            raise _fail(path, f"models.{model.name}: preset {model.preset!r} has no {{arch}}, so every architecture would train the same model; write it as \"{{arch}}-{model.name}\"")
    return spec


# ---------------------------------------------------------------------------------------------
# points and values as JSON and as a person reads them


def canonical_json(value: Any) -> str:
    """``value`` as JSON with sorted keys and no spaces: the same text for the same value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def format_value(value: Any) -> str:
    """A config value as a person reads it: strings bare, the rest as JSON (``5e-05``, ``true``)."""
    return value if isinstance(value, str) else json.dumps(value)


def format_point(point: Mapping[str, Any]) -> str:
    """``optim.lr=0.0002 divergence.lambda_z=0.3``, or ``(preset)`` for the preset's own settings."""
    return " ".join(f"{k}={format_value(v)}" for k, v in point.items()) or "(preset)"

