"""The study's scheduler: the plan as it prints (``--dry-run`` too), the job each run sends to a
worker, and ``Study``, which runs every planned run not yet in results.jsonl, phase by phase as
results decide them, and stops cleanly on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from .plan import PHASES, phase_totals, pick_for, planned_runs, ranking, val_value
from .pool import WorkerFailed, WorkerPool
from .results import RESULTS_FILE, append_result, check_rows_match, read_results
from .runs import Run, comparable_config, evaluation_plan, make_run, resolved_config, run_overrides
from .spec import Spec, canonical_json
from .worker import available_cores

__all__ = [
    "Options", "Study", "StopRequested", "job_for", "prepare_jobs", "describe_result", "plan_lines", "dry_run_lines",
]


class StopRequested(Exception):
    """SIGTERM reached the study (Ctrl-C arrives as KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


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
        "seed": run.seed, "steps": run.steps, "config": comparable_config(config), "evaluation_plan": json.loads(canonical_json(plan)),
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
        run = make_run("tune", group, spec, 0, spec.tune_seed, spec.steps)
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
        lines.append(f"  [{state}] {run.label(spec)}\n      key {run.key}\n      preset {spec.models[run.model].preset_for(run.arch)}, overrides {canonical_json(run_overrides(spec, run, options.threads))}")
    pending = [f"{'/'.join(p for p in g if p)}" for g in spec.groups() if pick_for(spec, g, done).state == "pending"]
    if pending:
        lines.append(f"  final runs of {', '.join(pending)}: {len(spec.seeds)} seed(s) each, once their tuning picks a point")
    if spec.long:
        waiting = [f"{d}/{a}".strip("/") for d, a in spec.sections() if ranking(spec, (d, a), done) is None]
        if waiting:
            also = f" (and {', '.join(spec.long.also)})" if spec.long.also else ""
            lines.append(f"  long runs of {', '.join(waiting)}: the top {spec.long.top}{also} at {spec.long.factor * spec.steps} steps, once the final runs are in")
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
