"""The comparison study: VAE, AVB, ALI and ASVAE on the same networks, data and step budget.

    python bench/study.py                      # the full study (about 45 minutes on 2 CPU cores)
    python bench/study.py --levers             # the ASVAE recipe search on Fashion-MNIST
    python bench/study.py --smoke --out /tmp/s # a two-minute version on the bundled digits (CI)

Every run is the library's own preset (``mlp-vae``, ``mlp-avb``, ``mlp-ali``, ``mlp-asvae``) with
only the data, the seed and the step budget overridden, trained in a worker process with one
torch thread (``--jobs`` workers side by side: two single-thread processes use 2 cores better
than one two-thread process at these sizes, and never oversubscribe them).  Each run is then
scored on held-out images only: the data set's test split (Fashion-MNIST), or the held-out 10%
of MNIST's test split that training never sees (only MNIST's test images are available here).

Results go to ``OUT/results.jsonl`` (one line per run, appended as runs finish, so an
interrupted study resumes where it stopped) and to the marked sections of ``--doc``
(``docs/study.md``): the tables between ``<!-- study:NAME -->`` and ``<!-- /study:NAME -->``
are rewritten and the prose around them is kept.  Sample and reconstruction grids of seed 0 go
to ``docs/images/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data"
MODELS = ("vae", "avb", "ali", "asvae")
METRIC_COLUMNS = [
    ("recon_mse", "recon MSE", "{:.4f}"),
    ("nll", "NLL (nats)", "{:.1f}"),
    ("fd", "FD", "{:.1f}"),
    ("probe_acc", "probe acc", "{:.3f}"),
    ("skl", "SKL", "{:.2f}"),
    ("sample_mean_pixel", "sample mean px", "{:.3f}"),
    ("ms_per_step", "ms/step", "{:.1f}"),
]

#: Variants of mlp-asvae tried in the recipe search (``--levers``), each a change to the preset
#: (whose recipe is disc_lr = lr / 4 and lambda_z = 0.3: see plugins/presets.py).
LEVERS: dict[str, dict[str, Any]] = {
    "preset (disc lr/4, lambda_z 0.3)": {},
    "no recipe (disc lr = lr, lambda_z 1)": {"optim.disc_lr": None, "divergence.lambda_z": 1.0},
    "disc lr/4 alone": {"divergence.lambda_z": 1.0},
    "lambda_z 0.3 alone": {"optim.disc_lr": None},
    "disc lr/8": {"optim.disc_lr": 2.5e-5},
    "lambda_z 0.1": {"divergence.lambda_z": 0.1},
    "lambda_z 0 (AVB's objective, 2-head critic)": {"divergence.lambda_z": 0.0},
    "+ analytic KL in l_x": {"divergence.analytic_kl": True},
    "+ instance noise 0.1": {"discriminator.input_noise": 0.1},
    "+ dropout 0.3": {"discriminator.dropout": 0.3},
    "+ spectral norm": {"discriminator.spectral_norm": True},
    "+ n_critic 2": {"optim.n_critic": 2},
    "+ gaussian likelihood, sample_x": {"decoder.likelihood": "gaussian", "sample_x": True},
}


def data_override(dataset: str, data_dir: str) -> dict[str, Any]:
    if dataset == "digits":
        return {"data": "digits"}
    if dataset == "mnist":  # only the 10k test images exist here: train on 90% of them, hold out 10%
        return {"data": {"name": "mnist", "data_dir": data_dir, "split": "test"}}
    return {"data": {"name": dataset, "data_dir": data_dir}}


# ---------------------------------------------------------------------------------------------
# one run (in a worker process)


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one preset, save it, evaluate it on held-out data; return one result row."""
    import torch

    torch.set_num_threads(1)
    import asvae_kit
    overrides = {**data_override(job["dataset"], job["data_dir"]), **job["overrides"]}
    trainer = asvae_kit.build(
        job["preset"], steps=job["steps"], seed=job["seed"], device="cpu", sample_every=0, log_every=100,
        eval_size=job["eval_size"], **overrides,
    )
    run_dir = Path(job["run_dir"])
    start = time.perf_counter()
    trainer.fit(run_dir=run_dir, progress=False)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    # the run's own metric list, so one that does not apply (skl without two joints) is a note
    trainer.config["metrics"] = ["recon", {"name": "nll", "k": job["nll_k"], "n": job["nll_n"]}, "fd", "skl", "probe"]
    result = trainer.evaluate()
    row = {
        **{k: job[k] for k in ("study", "dataset", "model", "variant", "seed", "steps")},
        **dict(result),
        "ms_per_step": 1000 * train_s / max(job["steps"], 1),
        "eval_s": time.perf_counter() - start,
        "split": result.source,
        "notes": result.notes,
        "run_dir": str(run_dir),
        "overrides": job["overrides"],
    }
    if job.get("images"):
        draw_images(trainer, Path(job["images"]), f"{job['dataset']}-{job['model']}")
    return row


def draw_images(trainer: Any, folder: Path, stem: str) -> None:
    """32 samples, and 16 held-out images above their reconstructions, as two small PNGs."""
    from asvae_kit.images import interleave_rows, save_image_grid
    from asvae_kit.data import images_and_labels

    save_image_grid(trainer.sample(32, seed=0), folder / f"{stem}-samples.png", nrow=8, min_cell=56)
    x, _ = images_and_labels(trainer.split_data("test").dataset, 16)
    save_image_grid(interleave_rows(x, trainer.reconstruct(x).cpu()), folder / f"{stem}-reconstructions.png", nrow=8, min_cell=56)


def redraw(results: Path, images: Path) -> None:
    """Draw the seed-0 grids again from the saved comparison runs (no training)."""
    import asvae_kit

    for line in results.read_text().splitlines():
        row = json.loads(line)
        if row["study"] == "comparison" and row["seed"] == 0 and row["variant"] == "preset":
            draw_images(asvae_kit.load(row["run_dir"], device="cpu"), images, f"{row['dataset']}-{row['model']}")


def worker_main(job_json: str) -> int:
    print(json.dumps(run_one(json.loads(job_json))))
    return 0


# ---------------------------------------------------------------------------------------------
# scheduling


def run_jobs(jobs: list[dict[str, Any]], results: Path, n_workers: int) -> list[dict[str, Any]]:
    """Run every job not already in ``results`` in worker processes; return all rows."""
    done = {}
    if results.is_file():
        for line in results.read_text().splitlines():
            row = json.loads(line)
            done[(row["study"], row["dataset"], row["model"], row["variant"], row["seed"], row["steps"])] = row
    todo = [j for j in jobs if (j["study"], j["dataset"], j["model"], j["variant"], j["seed"], j["steps"]) not in done]
    print(f"{len(jobs)} runs, {len(jobs) - len(todo)} already done; running {len(todo)} with {n_workers} worker(s)", file=sys.stderr)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "bench"), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()

    def launch(job: dict[str, Any]) -> dict[str, Any]:
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"run {job['dataset']}/{job['model']}/{job['variant']}/seed {job['seed']} failed:\n{proc.stderr[-3000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        with open(results, "a") as f:
            f.write(json.dumps(row) + "\n")
        elapsed = time.perf_counter() - started
        print(
            f"[{elapsed / 60:5.1f} min] {row['dataset']:>13} {row['model']:>5} {row['variant']:<24} seed {row['seed']}: "
            f"fd {row.get('fd', float('nan')):.1f}  recon {row.get('recon_mse', float('nan')):.4f}  {row['ms_per_step']:.0f} ms/step",
            file=sys.stderr,
        )
        return row

    with ThreadPoolExecutor(n_workers) as pool:
        new = list(pool.map(launch, todo))
    return list(done.values()) + new


def prepare_classifiers(datasets: list[str], data_dir: str, steps: int | None) -> None:
    """Train (or find cached) each data set's project classifier once, before the workers need it."""
    import torch

    import asvae_kit
    from asvae_kit.classifier import project_classifier
    from asvae_kit.data import images_and_labels

    for dataset in datasets:
        trainer = asvae_kit.build("mlp-vae", steps=0, device="cpu", **data_override(dataset, data_dir))
        images, labels = images_and_labels(trainer.split_data("train").dataset)
        info = project_classifier(images, labels, steps=steps, progress=lambda m: print(f"{dataset}: {m}", file=sys.stderr))
        test_x, test_y = images_and_labels(trainer.split_data("test").dataset)
        with torch.no_grad():
            acc = float((info.model(test_x).argmax(1) == test_y).float().mean())
        print(f"{dataset}: project classifier {'from cache' if info.cached else 'trained'}; held-out accuracy {acc:.3f}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# reporting


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def table(rows: list[dict[str, Any]], group: str) -> str:
    """A markdown table of mean ± std over seeds, one line per value of ``group``."""
    keys = list(dict.fromkeys(r[group] for r in rows))
    lines = [
        f"| {group} | seeds | " + " | ".join(title for _, title, _ in METRIC_COLUMNS) + " |",
        "|---" * (len(METRIC_COLUMNS) + 2) + "|",
    ]
    for key in keys:
        mine = [r for r in rows if r[group] == key]
        cells = []
        for column, _, fmt in METRIC_COLUMNS:
            mean, std = _mean_std([r.get(column) for r in mine])
            if math.isnan(mean):
                cells.append("n/a")
            elif len(mine) > 1:
                cells.append(f"{fmt.format(mean)} ± {fmt.format(std)}")
            else:
                cells.append(fmt.format(mean))
        lines.append(f"| {key} | {len(mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replace_section(doc: Path, name: str, body: str) -> None:
    """Rewrite the text between ``<!-- study:NAME -->`` and ``<!-- /study:NAME -->`` (appending
    the section when the markers are missing), keeping everything else in ``doc``."""
    begin, end = f"<!-- study:{name} -->", f"<!-- /study:{name} -->"
    text = doc.read_text() if doc.is_file() else "# The comparison study\n"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def machine() -> str:
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
    return f"{os.cpu_count()} cores ({cpu}), torch {torch.__version__}, one thread per run"


def report_study(rows: list[dict[str, Any]], args: argparse.Namespace, name: str, wall_min: float | None) -> None:
    parts = [
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; {args.steps} steps per run, batch 64, "
        f"seeds {', '.join(map(str, range(args.seeds)))}; NLL with k = {args.nll_k} importance samples on {args.nll_n} "
        f"held-out images; FD and probe on {args.eval_size} held-out images; "
        + (f"whole study {wall_min:.0f} min (including evaluation) with {args.jobs} worker(s). " if wall_min is not None else "")
        + "Mean ± standard deviation over seeds.",
    ]
    for dataset in args.datasets:
        mine = [r for r in rows if r["dataset"] == dataset]
        if not mine:
            continue
        mine.sort(key=lambda r: MODELS.index(r["model"]))
        floor = _mean_std([r.get("fd_train") for r in mine])[0]
        parts.append(f"**{dataset}** (evaluated on {mine[0]['split']}; FD of real training images at this size: {floor:.1f})\n\n" + table(mine, "model"))
    replace_section(Path(args.doc), name, "\n\n".join(parts))


def report_levers(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    text = (
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; mlp-asvae variants on {args.datasets[0]}, "
        f"{args.steps} steps, seeds {', '.join(map(str, range(args.seeds)))}, each against the preset; the VAE, AVB "
        "and ALI presets at the same budget for reference. NLL is in nats of each model's own likelihood, so the "
        "Gaussian-likelihood row (a density on continuous pixels) is not comparable with the Bernoulli rows.\n\n"
        + table(rows, "variant")
    )
    replace_section(Path(args.doc), "levers", text)


# ---------------------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a two-minute version on the bundled digits (CI)")
    p.add_argument("--levers", action="store_true", help="the ASVAE recipe search instead of the comparison")
    p.add_argument("--datasets", type=lambda s: s.split(","), help="default fashion-mnist,mnist (smoke: digits)")
    p.add_argument("--seeds", type=int, help="seeds per model (default 3; smoke and levers 1)")
    p.add_argument("--steps", type=int, help="training steps per run (default 3000; smoke 30)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes, one torch thread each (default 2)")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="folder holding mnist/ and fashion-mnist/")
    p.add_argument("--out", default=str(ROOT / "runs" / "study"), help="run directories and results.jsonl")
    p.add_argument("--doc", default=str(ROOT / "docs" / "study.md"), help="markdown file whose study sections are rewritten")
    p.add_argument("--images", help="folder for the seed-0 grids (default docs/images; smoke: none)")
    p.add_argument("--nll-k", type=int, help="importance samples for nll (default 1000; smoke 8)")
    p.add_argument("--nll-n", type=int, default=256, help="held-out images for nll (default 256)")
    p.add_argument("--eval-size", type=int, help="held-out images for recon, fd and probe (default 2000; smoke 100)")
    p.add_argument("--redraw", action="store_true", help="only draw the seed-0 grids again from the saved runs")
    p.add_argument("--report", action="store_true", help="only rewrite the doc's tables from the runs already in results.jsonl")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    smoke = args.smoke
    args.datasets = args.datasets or (["digits"] if smoke else ["fashion-mnist"] if args.levers else ["fashion-mnist", "mnist"])
    args.seeds = args.seeds or (1 if smoke or args.levers else 3)
    args.steps = args.steps or (30 if smoke else 3000)
    args.nll_k = args.nll_k or (8 if smoke else 1000)
    args.eval_size = args.eval_size or (100 if smoke else 2000)
    images = None if smoke and not args.images else (args.images or str(ROOT / "docs" / "images"))
    out = Path(args.out)
    if args.redraw:
        redraw(out / "results.jsonl", Path(images or ROOT / "docs" / "images"))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if not (args.report or args.redraw):
        prepare_classifiers(args.datasets, args.data_dir, 200 if smoke else None)

    study = "levers" if args.levers else ("smoke" if smoke else "comparison")
    jobs = []
    if args.levers:
        references = [("vae", "VAE (reference)", {}), ("avb", "AVB (reference)", {}), ("ali", "ALI (reference)", {})]
        variants = [("asvae", name, overrides) for name, overrides in LEVERS.items()] + references
    else:
        variants = [(model, "preset", {}) for model in MODELS]
    for dataset in args.datasets:
        for model, variant, overrides in variants:
            for seed in range(args.seeds):
                slug = f"{dataset}-{model}-{re.sub(r'[^a-z0-9]+', '-', variant.lower()).strip('-')}-s{seed}"
                jobs.append({
                    "study": study, "dataset": dataset, "model": model, "variant": variant, "seed": seed, "steps": args.steps,
                    "preset": f"mlp-{model}", "overrides": overrides, "data_dir": args.data_dir, "run_dir": str(out / slug),
                    "eval_size": args.eval_size, "nll_k": args.nll_k, "nll_n": args.nll_n,
                    "images": images if (seed == 0 and variant == "preset" and not args.levers) else None,
                })
    if args.report:
        results = out / "results.jsonl"
        rows = [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
    else:
        rows = run_jobs(jobs, out / "results.jsonl", args.jobs)
    rows = [r for r in rows if r["study"] == study]
    wall = (time.perf_counter() - started) / 60
    if args.levers:
        report_levers(rows, args)
    else:
        report_study(rows, args, study, None if args.report else wall)
    print(f"done in {wall:.1f} min; wrote {args.doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
