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
   (and the models of ``also``, whatever their rank) trained again at ``factor`` times the budget,
   so the report can say whether the ranking held.

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
    also = ["asvae"]                    # optional: models rerun whatever their rank (the one a study is about)

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


# The package, one job per module (each imports only those above it):
#   spec     the spec file: its dataclasses, reading and checking it, points and values as text
#   runs     one run (key, label, folder) and its config; load_spec resolves every run
#   plan     which runs the results so far determine; the selection rule; the ranking
#   results  OUT/results.jsonl: read, append, check against the spec
#   worker   what runs in a worker process (python -m asvae_kit.compare --worker)
#   pool     the worker processes
#   study    the scheduler: the plan as printed, each run's job, Study, stopping on signals
#   report   the Markdown report (report.md and the block in doc)
#   here     the command: its options, run_from_args, main

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError
from .plan import PHASES, Pick, final_runs, long_models, long_runs, mean_finite, phase_totals, pick_for, planned_runs, ranking, row_ok, tune_runs, val_value
from .pool import WorkerFailed, WorkerPool
from .report import (
    COLUMNS, DOC_BLOCK, HIDDEN, REPORT_FILE, markdown_table, mean_std, mean_std_cell, metric_text, render_report, replace_block, title_of,
    write_reports,
)
from .results import RESULTS_FILE, append_result, check_rows_match, read_results
from .runs import (
    VOLATILE_KEYS, Run, comparable_config, evaluation_plan, load_spec, make_run, resolved_config, run_overrides, validate_runs,
)
from .spec import (
    METRIC_OUTPUTS, MIN_SEEDS, DatasetSpec, LongSpec, ModelSpec, Select, Spec, SpecError, format_point, format_value,
    metric_outputs, parse_spec_mapping,
)
from .study import Options, StopRequested, Study, describe_result, dry_run_lines, job_for, plan_lines, prepare_jobs
from .worker import PROGRESS_FILE, available_cores, draw_images, machine_info, prepare_job, run_job, worker_main

__all__ = [
    "SpecError", "Spec", "Run", "Pick", "load_spec", "parse_spec_mapping", "validate_runs", "tune_runs", "final_runs",
    "long_models", "long_runs", "planned_runs", "pick_for", "ranking", "phase_totals", "read_results", "main",
    "add_arguments", "run_from_args", "RESULTS_FILE", "REPORT_FILE", "DOC_BLOCK", "METRIC_OUTPUTS",
]


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
