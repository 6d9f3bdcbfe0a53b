"""The Markdown report of ``asvae-kit compare``: a pure function of the spec and results.jsonl.

Nothing here reads the clock or the machine: dates, the machine, timings and split sizes all come
from the rows, so ``--report-only`` rebuilds the report byte for byte.  ``replace_block`` rewrites
the marked block of a document and keeps the prose around it; ``write_reports`` writes
``OUT/report.md`` and that block of the spec's ``doc``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..progress import format_duration
from .plan import long_models, pick_for, planned_runs, ranking
from .runs import Run, make_run
from .spec import Spec, format_point, format_value, metric_outputs

__all__ = [
    "mean_std", "mean_std_cell", "markdown_table", "replace_block", "render_report", "write_reports", "COLUMNS", "HIDDEN",
    "REPORT_FILE", "DOC_BLOCK",
]

REPORT_FILE = "report.md"
#: The marked block of ``doc`` that the report rewrites.
DOC_BLOCK = "compare:results"

#: Column title and format of the values a report shows (others: their key and 4 significant digits).
COLUMNS: dict[str, tuple[str, str]] = {
    "recon_mse": ("recon MSE", "{:.4f}"),
    "recon_bce": ("recon BCE", "{:.4f}"),
    "nll": ("NLL (nats)", "{:.1f}"),
    "fd": ("FD", "{:.1f}"),
    "probe_acc": ("probe acc", "{:.3f}"),
    "skl": ("SKL", "{:.2f}"),
    "sample_mean_pixel": ("sample mean px", "{:.3f}"),
    "fid": ("FID", "{:.1f}"),
    "is": ("IS", "{:.2f}"),
    "elbo": ("ELBO", "{:.1f}"),
    "ms_per_step": ("ms/step", "{:.1f}"),
}
#: Values reported beside others that the tables leave out (floors and bookkeeping).
HIDDEN = ("recon_bce", "mean_image_mse", "fd_train", "nll_se", "nll_bits_per_dim", "nll_k", "nll_n", "is_std")


def mean_std(values: Iterable[Any]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the finite numbers in ``values``."""
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan, 0
    mean = sum(finite) / len(finite)
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else 0.0
    return mean, std, len(finite)


def _fmt(key: str, value: float) -> str:
    return COLUMNS.get(key, (key, "{:.4g}"))[1].format(value)


def title_of(key: str) -> str:
    return COLUMNS.get(key, (key, ""))[0]


def mean_std_cell(key: str, values: Sequence[Any]) -> str:
    """``0.0158 ± 0.0003`` over several values, the value alone over one, ``n/a`` over none."""
    mean, std, n = mean_std(values)
    if n == 0:
        return "n/a"
    return _fmt(key, mean) if n == 1 else f"{_fmt(key, mean)} ± {_fmt(key, std)}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the block between ``<!-- NAME -->`` and ``<!-- /NAME -->`` replaced by
    ``body`` (the block appended at the end when the markers are missing)."""
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text.split(begin, 1)[1]:
        head, rest = text.split(begin, 1)
        return head + block + rest.split(end, 1)[1]
    return text.rstrip() + "\n\n" + block + "\n"


# ---------------------------------------------------------------------------------------------
# reading the rows


def _metrics(row: Mapping[str, Any] | None, split: str) -> dict[str, Any]:
    if not row or row.get("status") != "ok":
        return {}
    return dict((((row.get("evaluations") or {}).get(split)) or {}).get("metrics") or {})


def _evaluation(rows: Iterable[Mapping[str, Any] | None], split: str) -> Mapping[str, Any] | None:
    for row in rows:
        if row and row.get("status") == "ok" and split in (row.get("evaluations") or {}):
            return row["evaluations"][split]
    return None


def _curve_value(row: Mapping[str, Any] | None, step: int, key: str) -> float:
    if not row or row.get("status") != "ok":
        return math.nan
    for point in row.get("curve") or []:
        if point.get("step") == step:
            value = (point.get("metrics") or {}).get(key)
            return float(value) if isinstance(value, (int, float)) else math.nan
    return math.nan


def _columns(entries: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any] | None], split: str, first: str | None = None) -> list[str]:
    """The value keys to show: the metrics' known outputs in metric order, then any other key the
    rows report (sorted), less ``HIDDEN``; ``first`` leads."""
    seen = {k for r in rows for k in _metrics(r, split)}
    keys = [k for e in entries for k in metric_outputs(e) if k in seen]
    keys += sorted(seen - set(keys))
    keys = [k for k in dict.fromkeys(keys) if k not in HIDDEN]
    if first and first in keys:
        keys.remove(first)
        keys.insert(0, first)
    return keys


def metric_text(entry: Mapping[str, Any]) -> str:
    """A metric entry as written in a spec: ``nll:k=1000:n=256``."""
    return ":".join([entry["name"], *(f"{k}={format_value(v)}" for k, v in entry.items() if k != "name")])


def _seeds_cell(rows: Sequence[Mapping[str, Any] | None]) -> str:
    ok = sum(1 for r in rows if r and r.get("status") == "ok")
    diverged = sum(1 for r in rows if r and r.get("status") == "diverged")
    missing = sum(1 for r in rows if r is None)
    notes = [f"{diverged} diverged"] * bool(diverged) + [f"{missing} to run"] * bool(missing)
    return f"{ok}" + (f" ({', '.join(notes)})" if notes else "")


def _also_words(also: Sequence[str]) -> str:
    """`` and asvae whatever its rank``: the models ``long.also`` reruns, for the budget check's sentences."""
    if not also:
        return ""
    return f" and {', '.join(also)} whatever {'its' if len(also) == 1 else 'their'} rank"


def _seed_list(seeds: Sequence[int]) -> str:
    return ", ".join(map(str, seeds))


# ---------------------------------------------------------------------------------------------
# the report


class _Report:
    """Renders one report; ``where`` is the folder the Markdown file lives in (for image links)."""

    def __init__(self, spec: Spec, rows: Mapping[str, Mapping[str, Any]], out: Path, where: Path, level: int) -> None:
        self.spec, self.rows, self.out, self.where, self.level = spec, rows, out, where, level

    def heading(self, text: str, depth: int = 0) -> str:
        return f"{'#' * (self.level + depth)} {text}"

    def row(self, run: Run) -> Mapping[str, Any] | None:
        return self.rows.get(run.key)

    # -- the protocol --------------------------------------------------------------------------
    def protocol(self) -> str:
        spec, key = self.spec, self.spec.select.key
        counts = {m: len(spec.models[m].points) for m in spec.models}
        equal = len(set(counts.values())) == 1
        budget = (f"{next(iter(counts.values()))} grid point(s) each, the same tuning budget for every model" if equal
                  else "grid points: " + ", ".join(f"{m} {n}" for m, n in counts.items()) + " (unequal tuning budgets)")
        models = ", ".join(f"{m} (`{spec.models[m].preset}`)" for m in spec.models)
        archs = [a for a in spec.architectures if a]
        parts = [
            f"Models: {models}" + (f", with {{arch}} = {', '.join(archs)}" if archs else "")
            + (f"; every run also sets {format_point(spec.overrides)}" if spec.overrides else "") + ".",
            f"Each model is tuned over its grid ({budget}) for {spec.steps} steps with seed {spec.tune_seed}, every point scored on "
            f"the validation split with {', '.join(metric_text(e) for e in spec.tune_metrics)}.",
            f"The rule, fixed before any result: each model keeps the point with the {spec.select.words} (ties: the first point "
            "in the spec; a diverged run or a non-finite value never wins).",
            f"Each pick is then trained with seeds {_seed_list(spec.seeds)} for {spec.steps} steps, recording val {key} at steps "
            f"{', '.join(map(str, spec.curve_steps()))}, and scored on the test split with {', '.join(metric_text(e) for e in spec.metrics)}"
            + (f" (up to {spec.eval_size} images per evaluation)" if spec.eval_size else "") + "; tables give the mean ± standard deviation over seeds.",
        ]
        if spec.long:
            parts.append(
                f"Budget check: per data set{' and architecture' if archs else ''}, the top {spec.long.top} models by mean final val {key}"
                f"{_also_words(spec.long.also)} are trained again at {spec.long.factor}× the budget ({spec.long.factor * spec.steps} steps, "
                f"seeds {_seed_list(spec.long.seeds)})."
            )
        parts.append(self.splits())
        parts.append(self.measured())
        return " ".join(p for p in parts if p)

    def splits(self) -> str:
        sentences = []
        for dataset in self.spec.datasets:
            tune = [self.row(r) for r in _phase_runs(self.spec, self.rows, "tune") if r.dataset == dataset]
            final = [self.row(r) for r in _phase_runs(self.spec, self.rows, "final") if r.dataset == dataset]
            val, test = _evaluation(tune, "val"), _evaluation(final, "test")
            said = [f"{name} is {_source(e)}" for name, e in (("val", val), ("test", test)) if e]
            if said:
                sentences.append(f"{dataset}: {'; '.join(said)}.")
        return ("Splits: " + " ".join(sentences)) if sentences else ""

    def measured(self) -> str:
        rows = [r for r in self.rows.values() if r.get("key") in self._planned_keys()]
        if not rows:
            return "No run has finished yet."
        dates = sorted({str(r.get("finished", ""))[:10] for r in rows if r.get("finished")})
        machines = sorted({_machine_text(r.get("machine") or {}) for r in rows})
        threads = sorted({int(r["threads"]) for r in rows if isinstance(r.get("threads"), int)})
        seconds = sum(float(r.get("train_s") or 0) + float(r.get("eval_s") or 0) for r in rows)
        when = "" if not dates else f" {dates[0]}" if len(dates) == 1 else f" {dates[0]} to {dates[-1]}"
        per_run = f", {'/'.join(map(str, threads))} thread(s) per run" if threads else ""
        return f"Measured{when} on {'; '.join(machines)}{per_run}; {len(rows)} runs, {format_duration(seconds)} of training and evaluation in all."

    def _planned_keys(self) -> set[str]:
        return {r.key for r in planned_runs(self.spec, self.rows)}

    # -- one data set and architecture ---------------------------------------------------------
    def section(self, dataset: str, arch: str) -> str:
        title = f"{dataset}, {arch}" if arch else dataset
        parts = [self.heading(title), self.results_table(dataset, arch), self.tuning_table(dataset, arch), self.curve_table(dataset, arch)]
        if self.spec.long:
            parts.append(self.long_table(dataset, arch))
        parts.append(self.grids(dataset, arch))
        return "\n\n".join(p for p in parts if p)

    def _final_rows(self, dataset: str, arch: str, model: str) -> list[Mapping[str, Any] | None]:
        pick = pick_for(self.spec, (dataset, arch, model), self.rows)
        if pick.state != "picked":
            return []
        return [self.row(make_run("final", (dataset, arch, model), self.spec, pick.index, s, self.spec.steps)) for s in self.spec.seeds]

    def _won_with(self, dataset: str, arch: str, model: str) -> str:
        pick = pick_for(self.spec, (dataset, arch, model), self.rows)
        if pick.state == "pending":
            return "(tuning not finished)"
        if pick.state == "none":
            return f"(no tuning run gave a finite val {self.spec.select.key})"
        return format_point(self.spec.models[model].points[pick.index])

    def results_table(self, dataset: str, arch: str) -> str:
        spec = self.spec
        per_model = {m: self._final_rows(dataset, arch, m) for m in spec.models}
        all_rows = [r for rows in per_model.values() for r in rows]
        columns = _columns(spec.metrics, all_rows, "test")
        body = []
        for model, rows in per_model.items():
            cells = [mean_std_cell(k, [_metrics(r, "test").get(k) for r in rows]) for k in columns]
            ms = mean_std_cell("ms_per_step", [r.get("ms_per_step") if r and r.get("status") == "ok" else None for r in rows])
            body.append([model, self._won_with(dataset, arch, model), _seeds_cell(rows) if rows else "0", *cells, ms])
        test = _evaluation(all_rows, "test")
        floor = mean_std([_metrics(r, "test").get("fd_train") for r in all_rows])
        said = f"**Test metrics** on {_source(test)}" if test else "**Test metrics**"
        said += f"; FD of real training images at this size: {_fmt('fd', floor[0])}" if floor[2] else ""
        notes = self._notes(per_model)
        text = said + ". Each model with the settings it won with; mean ± std over seeds:\n\n"
        text += markdown_table(["model", "won with", "seeds", *(title_of(k) for k in columns), "ms/step"], body)
        return text + (f"\n\n{notes}" if notes else "")

    @staticmethod
    def _notes(per_model: Mapping[str, Sequence[Mapping[str, Any] | None]]) -> str:
        """``n/a: skl does not apply to vae, avb.`` from the evaluations' notes."""
        missing: dict[str, list[str]] = {}
        for model, rows in per_model.items():
            for row in rows:
                for name in ((((row or {}).get("evaluations") or {}).get("test") or {}).get("notes") or {}):
                    if model not in missing.setdefault(name, []):
                        missing[name].append(model)
        return " ".join(f"n/a: {name} does not apply to {', '.join(models)}." for name, models in missing.items())

    def tuning_table(self, dataset: str, arch: str) -> str:
        spec, key = self.spec, self.spec.select.key
        runs = [make_run("tune", (dataset, arch, m), spec, i, spec.tune_seed, spec.steps) for m in spec.models for i in range(len(spec.models[m].points))]
        columns = _columns(spec.tune_metrics, [self.row(r) for r in runs], "val", first=key)
        body = []
        for run in runs:
            row = self.row(run)
            pick = pick_for(spec, (dataset, arch, run.model), self.rows)
            won = pick.state == "picked" and pick.index == run.index
            if row is None:
                cells, status = ["—"] * len(columns), "to run"
            elif row.get("status") != "ok":
                cells, status = ["—"] * len(columns), f"diverged at step {row.get('diverged_at')}"
            else:
                values = _metrics(row, "val")
                cells = [_fmt(k, values[k]) if isinstance(values.get(k), (int, float)) else "n/a" for k in columns]
                status = "**picked**" if won else ""
                if won:
                    cells[0] = f"**{cells[0]}**"
            ms = row.get("ms_per_step") if row else None
            body.append([run.model, format_point(spec.models[run.model].points[run.index]), *cells, _fmt("ms_per_step", ms) if isinstance(ms, (int, float)) else "—", status])
        counts = ", ".join(f"{m} {len(spec.models[m].points)}" for m in spec.models)
        text = f"**Tuning**: every grid point ({counts}), seed {spec.tune_seed}, {spec.steps} steps, scored on val; the pick of each model in bold:\n\n"
        return text + markdown_table(["model", "point", *(f"val {title_of(k)}" for k in columns), "ms/step", ""], body)

    def curve_table(self, dataset: str, arch: str) -> str:
        spec, key = self.spec, self.spec.select.key
        steps = spec.curve_steps()
        body = []
        for model in spec.models:
            rows = self._final_rows(dataset, arch, model)
            if rows:
                body.append([model, *(mean_std_cell(key, [_curve_value(r, s, key) for r in rows]) for s in steps)])
        if not body:
            return ""
        text = f"**Val {title_of(key)} against steps** (each pick, mean ± std over its final seeds):\n\n"
        return text + markdown_table(["model", *(f"step {s}" for s in steps)], body)

    def long_table(self, dataset: str, arch: str) -> str:
        spec, key = self.spec, self.spec.select.key
        assert spec.long is not None
        rerun = long_models(spec, (dataset, arch), self.rows)
        if rerun is None:
            return "**Budget check**: waits for the final runs."
        long_steps = spec.long_curve_steps()
        body = []
        for model in rerun:
            index = pick_for(spec, (dataset, arch, model), self.rows).index
            rows = [self.row(make_run("long", (dataset, arch, model), spec, index, s, long_steps[-1])) for s in spec.long.seeds]
            finals = self._final_rows(dataset, arch, model)
            body.append([
                model, _seeds_cell(rows), mean_std_cell(key, [_curve_value(r, spec.steps, key) for r in finals]),
                *(mean_std_cell(key, [_curve_value(r, s, key) for r in rows]) for s in long_steps),
                mean_std_cell(key, [_metrics(r, "test").get(key) for r in finals]),
                mean_std_cell(key, [_metrics(r, "test").get(key) for r in rows]),
            ])
        name = title_of(key)
        header = ["model", "seeds", f"val {name} at {spec.steps} (final runs)", *(f"val {name} at {s} (long runs)" for s in long_steps),
                  f"test {name} at {spec.steps} (final runs)", f"test {name} at {long_steps[-1]} (long runs)"]
        text = (f"**Budget check**: the top {spec.long.top} by mean val {name} at {spec.steps} steps{_also_words(spec.long.also)}, trained again for "
                f"{long_steps[-1]} steps ({spec.long.factor}×), seeds {_seed_list(spec.long.seeds)}:\n\n")
        unpicked = [m for m in spec.long.also if m not in rerun]
        note = f" Not rerun: {', '.join(unpicked)} (no usable tuning run, so no pick)." if unpicked else ""
        return text + markdown_table(header, body) + "\n\n" + self._ranking_sentence(dataset, arch, rerun) + note

    def _ranking_sentence(self, dataset: str, arch: str, rerun: list[str]) -> str:
        spec = self.spec
        assert spec.long is not None
        sign = " < " if spec.select.goal == "min" else " > "
        before = [m for m, _ in ranking(spec, (dataset, arch), self.rows) or [] if m in rerun]
        # models without a finite final mean (all seeds diverged) have no place to keep or lose
        after = [m for m, _ in ranking(spec, (dataset, arch), self.rows, phase="long") or [] if m in before]
        steps = spec.steps * spec.long.factor
        if len(after) < len(before):
            return f"Ranking by mean val {spec.select.key}: at {spec.steps} steps {sign.join(before)}; at {steps} steps: waits for the long runs."
        held = "the order held" if after == before else "**the order changed**"
        return f"Ranking by mean val {spec.select.key}: at {spec.steps} steps {sign.join(before)}; at {steps} steps {sign.join(after)}: {held}."

    def grids(self, dataset: str, arch: str) -> str:
        body = []
        folder = self.spec.images_dir(self.out)
        for model in self.spec.models:
            rows = self._final_rows(dataset, arch, model)
            row = rows[0] if rows else None
            names = (row or {}).get("images") or []
            if len(names) == 2:
                links = [f"![{model} {what}]({_link(folder / name, self.where)})" for what, name in zip(("samples", "reconstructions"), names)]
                body.append([model, *links])
        if not body:
            return ""
        text = f"**Images** (seed {self.spec.seeds[0]} of each pick): 32 samples, and 16 test images above their reconstructions:\n\n"
        return text + markdown_table(["model", "samples", "reconstructions"], body)

    def render(self, title: bool) -> str:
        parts = [f"# {self.spec.title}"] if title else []
        parts.append(self.protocol())
        for dataset, arch in self.spec.sections():
            parts.append(self.section(dataset, arch))
        return "\n\n".join(parts) + "\n"


def _phase_runs(spec: Spec, rows: Mapping[str, Mapping[str, Any]], phase: str) -> list[Run]:
    return [r for r in planned_runs(spec, rows) if r.phase == phase]


def _source(evaluation: Mapping[str, Any]) -> str:
    """The evaluation's sentence naming its images, with the count when the sentence lacks it."""
    source = str(evaluation.get("source", "unrecorded images"))
    return source if "evaluated" in source else f"{source} ({evaluation.get('n_images')} images evaluated)"


def _machine_text(machine: Mapping[str, Any]) -> str:
    text = f"{machine.get('cores', '?')} cores ({machine.get('cpu', 'unknown CPU')})"
    if machine.get("gpu"):
        text += f" with {machine['gpu']}"
    return text + f", torch {machine.get('torch', '?')}"


def _link(path: Path, where: Path) -> str:
    return Path(os.path.relpath(path, where)).as_posix()


def render_report(spec: Spec, rows: Mapping[str, Mapping[str, Any]], *, out: Path, where: Path, top_level: int | None) -> str:
    """The report: with a ``# title`` and sections at level 2 when ``top_level`` is 1 (report.md),
    or without a title and sections at level 3 (the block inside a document's ``## Results``)."""
    level = 2 if top_level == 1 else 3
    return _Report(spec, rows, out, where, level).render(title=top_level == 1)


def write_reports(spec: Spec, out: Path, rows: Mapping[str, Mapping[str, Any]]) -> list[Path]:
    """Write OUT/report.md and the block in ``doc``; the paths written."""
    from ..fileio import atomic_write_text

    written = [out / REPORT_FILE]
    atomic_write_text(out / REPORT_FILE, render_report(spec, rows, out=out, where=out, top_level=1))
    if spec.doc is not None:
        body = render_report(spec, rows, out=out, where=spec.doc.parent, top_level=None)
        old = spec.doc.read_text(encoding="utf-8") if spec.doc.is_file() else f"# {spec.title}\n"
        atomic_write_text(spec.doc, replace_block(old, DOC_BLOCK, body))
        written.append(spec.doc)
    return written
