"""The plan: which runs a spec makes given the results so far (tune, then final runs of each
pick, then the long runs of the best), the selection rule applied to the tuning rows, and the
ranking of the models by their final (or long) runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .runs import Run, make_run
from .spec import Spec

__all__ = [
    "PHASES", "Pick", "tune_runs", "final_runs", "long_models", "long_runs", "planned_runs", "pick_for", "ranking", "phase_totals",
    "row_ok", "val_value", "mean_finite",
]

PHASES = ("tune", "final", "long")


def tune_runs(spec: Spec) -> list[Run]:
    return [
        make_run("tune", group, spec, index, spec.tune_seed, spec.steps)
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
    runs = [make_run("tune", group, spec, i, spec.tune_seed, spec.steps) for i in range(len(spec.models[group[2]].points))]
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
            runs += [make_run("final", group, spec, pick.index, seed, spec.steps) for seed in spec.seeds]
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
        runs = [make_run(phase, (dataset, arch, model), spec, pick.index, seed, steps) for seed in seeds]
        if phase == "final" and any(r.key not in done for r in runs):
            return None
        if phase == "long" and not all(r.key in done for r in runs):
            continue
        value = mean_finite(val_value(done.get(r.key), spec.select.key) for r in runs)
        if math.isfinite(value):
            scored.append((model, value))
    order = sorted(range(len(scored)), key=lambda i: (scored[i][1] if spec.select.goal == "min" else -scored[i][1], i))
    return [scored[i] for i in order]


def long_models(spec: Spec, section: tuple[str, str], done: Mapping[str, Mapping[str, Any]]) -> list[str] | None:
    """The models a (data set, architecture) trains at the long budget: the ``top`` by mean final
    val value, then those of ``long.also`` with a pick, whatever their rank; ``None`` while the
    final runs are not all in."""
    assert spec.long is not None
    order = ranking(spec, section, done)
    if order is None:
        return None
    top = [model for model, _ in order[: spec.long.top]]
    also = [m for m in spec.long.also if m not in top and pick_for(spec, (*section, m), done).state == "picked"]
    return top + also


def long_runs(spec: Spec, done: Mapping[str, Mapping[str, Any]]) -> list[Run]:
    """The budget check's runs: per (data set, architecture) whose finals are all in, the models of
    ``long_models``, at ``factor`` times the steps."""
    if spec.long is None:
        return []
    runs = []
    for dataset, arch in spec.sections():
        models = long_models(spec, (dataset, arch), done)
        for model in models or []:
            index = pick_for(spec, (dataset, arch, model), done).index
            runs += [make_run("long", (dataset, arch, model), spec, index, seed, spec.steps * spec.long.factor) for seed in spec.long.seeds]
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
    top = min(spec.long.top + len(spec.long.also), models) if spec.long else 0
    return {
        "tune": sum(len(spec.models[m].points) for _, _, m in spec.groups()),
        "final": groups * len(spec.seeds),
        "long": len(spec.sections()) * top * (len(spec.long.seeds) if spec.long else 0),
    }
