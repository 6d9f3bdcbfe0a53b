"""What runs inside a worker process (``python -m asvae_kit.compare --worker``): one job as JSON
on stdin (a run, or preparing a data set's classifier), its result as the last stdout line.

A run opens its trainer (resumed from its newest checkpoint with the val points it recorded, or
fresh), trains to each curve step evaluating val there, then evaluates at the end and draws the
pick's image grids; its row carries the timings and the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import ConfigError

__all__ = ["PROGRESS_FILE", "machine_info", "available_cores", "draw_images", "run_job", "prepare_job", "worker_main"]

#: Per run directory: the val values recorded so far, so a resumed run keeps them.
PROGRESS_FILE = "compare-progress.json"


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
    from ..errors import CheckpointError

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
    from ..fileio import atomic_write_text

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
    from ..data import images_and_labels
    from ..images import interleave_rows, save_image_grid

    names = [f"{stem}-samples.png", f"{stem}-reconstructions.png"]
    save_image_grid(trainer.sample(32, seed=0), folder / names[0], nrow=8, min_cell=56)
    x, _ = images_and_labels(trainer.split_data("test").dataset, 16)
    save_image_grid(interleave_rows(x, trainer.reconstruct(x).cpu()), folder / names[1], nrow=8, min_cell=56)
    return names


def run_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """Train, evaluate and draw one run; its results.jsonl row (a divergence is a row too)."""
    import torch

    from ..errors import TrainingDivergedError

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
    from ..errors import AsvaeKitError
    from ..signals import TrainingStopped

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
