"""``asvae-kit compare``: the spec's checks, the selection rule, resuming, and the report.

The spec checks and the rule are pure and fast; the worker is exercised in this process (resume
from a checkpoint, divergence); two studies run end to end in worker processes on the bundled
digits with tiny networks: a planted best that the rule must pick, and examples/study-smoke.toml
through the command line.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from asvae_kit.compare import (
    RESULTS_FILE,
    Options,
    SpecError,
    final_runs,
    job_for,
    load_spec,
    long_models,
    long_runs,
    main,
    parse_spec_mapping,
    pick_for,
    run_job,
    run_overrides,
    tune_runs,
)
from asvae_kit.compare.report import mean_std_cell, render_report, replace_block

ROOT = Path(__file__).resolve().parents[1]
TINY = {"batch_size": 32, "latent_dim": 4, "encoder.hidden": [16], "decoder.hidden": [16], "discriminator.hidden": [16], "log_every": 10}
BASE: dict[str, Any] = {
    "steps": 30,
    "seeds": [0],
    "smoke": True,
    "select": {"metric": "recon_mse", "goal": "min"},
    "tune_metrics": ["recon"],
    "metrics": ["recon"],
    "curve": [10],
    "overrides": TINY,
    "datasets": {"digits": {"data": "digits"}},
    "models": {"vae": {"preset": "mlp-vae", "grid": {"optim.lr": [1e-9, 1e-3]}}},
}


def write_spec(tmp_path: Path, changes: dict[str, Any] | None = None, name: str = "spec.json") -> Path:
    spec = copy.deepcopy(BASE)
    spec.update(copy.deepcopy(changes or {}))
    path = tmp_path / name
    path.write_text(json.dumps(spec))
    return path


def spec_error(tmp_path: Path, changes: dict[str, Any]) -> str:
    path = write_spec(tmp_path, changes)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert str(path) in message, message  # every message names the spec file
    return message


# ---------------------------------------------------------------------------------------------
# the spec


def test_an_unknown_model_key_is_named_with_the_fix(tmp_path):
    message = spec_error(tmp_path, {"models": {"vae": {"prest": "mlp-vae", "grid": {"optim.lr": [1e-3]}}}})
    assert "'prest'" in message and "models.vae" in message and "preset" in message


def test_a_mistyped_config_key_in_a_grid_fails_before_anything_runs(tmp_path):
    message = spec_error(tmp_path, {"models": {"vae": {"preset": "mlp-vae", "grid": {"optim.lrr": [1e-3, 2e-3]}}}})
    assert "model 'vae'" in message and "'lrr'" in message and "'lr'" in message and "data set 'digits'" in message


def test_unequal_grids_are_refused_unless_allowed(tmp_path):
    models = {
        "vae": {"preset": "mlp-vae", "grid": {"optim.lr": [1e-3, 2e-3]}},
        "avb": {"preset": "mlp-avb", "points": [{"optim.lr": 1e-3}]},
    }
    message = spec_error(tmp_path, {"models": models})
    assert "vae: 2, avb: 1" in message and "allow_unequal_grids" in message
    spec = load_spec(write_spec(tmp_path, {"models": models, "allow_unequal_grids": True}))
    assert [len(m.points) for m in spec.models.values()] == [2, 1]


def test_the_select_metric_must_come_from_the_tune_metrics(tmp_path):
    message = spec_error(tmp_path, {"select": {"metric": "fd", "goal": "min"}, "tune_metrics": ["recon"]})
    assert "'fd'" in message and "tune_metrics" in message and "recon_mse" in message
    assert "'min' or 'max'" in spec_error(tmp_path, {"select": {"metric": "recon_mse", "goal": "lowest"}})
    assert "no option 'kk'" in spec_error(tmp_path, {"metrics": ["nll:kk=3"]})
    raw = {k: v for k, v in BASE.items() if k != "tune_metrics"}
    assert parse_spec_mapping(raw, tmp_path / "s.json").tune_metrics == [{"name": "recon"}]  # the metric reporting recon_mse


def test_fewer_than_three_seeds_need_smoke(tmp_path):
    message = spec_error(tmp_path, {"seeds": [1, 2], "smoke": False})
    assert "at least 3" in message and "smoke = true" in message
    assert load_spec(write_spec(tmp_path, {"seeds": [1, 2, 3], "smoke": False}), validate=False).seeds == [1, 2, 3]
    assert "below steps" in spec_error(tmp_path, {"curve": [30]})


def test_a_grid_is_the_cartesian_product_in_spec_order(tmp_path):
    spec = load_spec(write_spec(tmp_path, {"models": {"vae": {"preset": "mlp-vae", "grid": {"optim.lr": [1e-3, 2e-3], "batch_size": [16, 32]}}}}))
    assert spec.models["vae"].points == [
        {"optim.lr": 1e-3, "batch_size": 16}, {"optim.lr": 1e-3, "batch_size": 32},
        {"optim.lr": 2e-3, "batch_size": 16}, {"optim.lr": 2e-3, "batch_size": 32},
    ]


def test_toml_specs_read_and_the_smoke_example_validates():
    spec = load_spec(ROOT / "examples" / "study-smoke.toml")
    assert list(spec.models) == ["vae", "avb", "ali", "asvae"] and {len(m.points) for m in spec.models.values()} == {2}
    assert spec.select.key == "fd" and spec.long is not None and spec.doc is None


def test_data_dir_goes_to_the_data_sets_that_read_files(tmp_path):
    datasets = {"digits": {"data": "digits"}, "mnist": {"data": {"name": "mnist", "split": "test"}}}
    spec = load_spec(write_spec(tmp_path, {"datasets": datasets}), data_dir="/data")
    overrides = {r.dataset: run_overrides(spec, r) for r in tune_runs(spec)}
    assert overrides["mnist"]["data"] == {"name": "mnist", "split": "test", "data_dir": "/data"}
    assert overrides["digits"]["data"] == {"name": "digits"} and overrides["digits"]["threads"] == 1


def test_dry_run_prints_every_run_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(write_spec(tmp_path)), "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "2 tune, 1 final runs; 0 of 3 already" in printed
    assert 'key tune|digits||vae|{"optim.lr":0.001}|seed=0|steps=30' in printed and "once their tuning picks a point" in printed
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# the rule and the phases (pure)


def fake_row(key: str, value: float | None, status: str = "ok") -> dict[str, Any]:
    metrics = {} if value is None else {"recon_mse": value}
    return {"key": key, "status": status, "evaluations": {"val": {"metrics": metrics}}}


def test_the_rule_picks_the_best_finite_value_first_on_ties(tmp_path):
    spec = parse_spec_mapping({**BASE, "models": {"vae": {"preset": "mlp-vae", "grid": {"optim.lr": [1e-4, 2e-4, 4e-4]}}}}, tmp_path / "s.json")
    group = ("digits", "", "vae")
    keys = [r.key for r in tune_runs(spec)]

    def pick(values, statuses=("ok", "ok", "ok")):
        done = {k: fake_row(k, v, s) for k, v, s in zip(keys, values, statuses) if v != "missing"}
        return pick_for(spec, group, done)

    assert pick([math.nan, 0.5, 0.5]).index == 1  # NaN never wins; a tie keeps the first
    assert pick([0.1, 0.7, 0.6], ("diverged", "ok", "ok")).index == 2  # a diverged run never wins
    assert pick([0.1, 0.2, 0.3], ("diverged",) * 3).state == "none"
    assert pick([0.3, None, 0.2]).index == 2  # a missing value is not a value
    assert pick([0.3, "missing", 0.2]).state == "pending"
    spec.select = type(spec.select)("recon_mse", "max", spec.select.metric)
    assert pick([0.3, 0.9, 0.2]).index == 1


def test_long_runs_rerun_the_top_models_by_mean_final_val(tmp_path):
    raw = {
        **BASE, "seeds": [1, 2, 3], "long": {"factor": 3, "top": 1, "seeds": [7]},
        "models": {"vae": {"preset": "mlp-vae", "points": [{}]}, "avb": {"preset": "mlp-avb", "points": [{}]}},
    }
    spec = parse_spec_mapping(raw, tmp_path / "s.json")
    done = {r.key: fake_row(r.key, 0.5) for r in tune_runs(spec)}
    finals = final_runs(spec, done)
    assert [(r.model, r.seed) for r in finals] == [("vae", 1), ("vae", 2), ("vae", 3), ("avb", 1), ("avb", 2), ("avb", 3)]
    values = {"vae": [0.30, 0.31, 0.32], "avb": [0.20, 0.40, math.nan]}  # avb's mean of finite values: 0.30
    for run in finals[:-1]:
        done[run.key] = fake_row(run.key, values[run.model][run.seed - 1])
    assert long_runs(spec, done) == []  # waits for every final run
    done[finals[-1].key] = fake_row(finals[-1].key, values["avb"][2])
    (run,) = long_runs(spec, done)
    assert (run.model, run.seed, run.steps) == ("avb", 7, 90)


def test_long_also_reruns_the_model_a_study_is_about_whatever_its_rank(tmp_path):
    raw = {
        **BASE, "seeds": [1, 2, 3], "long": {"factor": 2, "top": 1, "seeds": [7], "also": ["ali", "avb"]},
        "models": {m: {"preset": f"mlp-{m}", "points": [{}]} for m in ("vae", "avb", "ali")},
    }
    spec = parse_spec_mapping(raw, tmp_path / "s.json")
    done = {r.key: fake_row(r.key, 0.5) for r in tune_runs(spec)}
    values = {"vae": 0.3, "avb": 0.2, "ali": 0.9}
    finals = final_runs(spec, done)
    for run in finals[:-1]:
        done[run.key] = fake_row(run.key, values[run.model])
    assert long_models(spec, ("digits", ""), done) is None and long_runs(spec, done) == []  # the finals decide the top
    done[finals[-1].key] = fake_row(finals[-1].key, values[finals[-1].model])
    # avb is the top one; ali is rerun though last; avb, named in also too, is not rerun twice
    assert long_models(spec, ("digits", ""), done) == ["avb", "ali"]
    assert [(r.model, r.seed, r.steps) for r in long_runs(spec, done)] == [("avb", 7, 60), ("ali", 7, 60)]
    report = render_report(spec, done, out=tmp_path, where=tmp_path, top_level=None)
    assert "the top 1 models by mean final val recon_mse and ali, avb whatever their rank are trained again at 2×" in report
    table = report[report.index("**Budget check**"):]
    assert "the top 1 by mean val recon MSE at 30 steps and ali, avb whatever their rank, trained again" in table
    assert "| avb |" in table and "| ali |" in table and "| vae |" not in table
    assert "at 30 steps avb < ali; at 60 steps: waits for the long runs" in table
    for run in long_runs(spec, done):
        done[run.key] = fake_row(run.key, {"avb": 0.25, "ali": 0.1}[run.model])
    report = render_report(spec, done, out=tmp_path, where=tmp_path, top_level=None)
    assert "at 30 steps avb < ali; at 60 steps ali < avb: **the order changed**" in report


def test_long_also_without_a_pick_or_a_finite_final_mean_is_said_not_ranked(tmp_path):
    raw = {
        **BASE, "seeds": [1, 2, 3], "long": {"factor": 2, "top": 1, "seeds": [7], "also": ["ali", "avb"]},
        "models": {m: {"preset": f"mlp-{m}", "points": [{}]} for m in ("vae", "avb", "ali")},
    }
    spec = parse_spec_mapping(raw, tmp_path / "s.json")
    done = {r.key: fake_row(r.key, math.nan if r.model == "ali" else 0.5) for r in tune_runs(spec)}  # ali: no pick
    for run in final_runs(spec, done):
        done[run.key] = fake_row(run.key, {"vae": 0.3, "avb": math.nan}[run.model])  # avb: every final seed non-finite
    assert long_models(spec, ("digits", ""), done) == ["vae", "avb"]
    for run in long_runs(spec, done):
        done[run.key] = fake_row(run.key, {"vae": 0.2, "avb": 0.1}[run.model])
    report = render_report(spec, done, out=tmp_path, where=tmp_path, top_level=None)
    # avb, better at 60 steps but unranked at 30, does not make the order "change"
    assert "at 30 steps vae; at 60 steps vae: the order held. Not rerun: ali (no usable tuning run, so no pick)." in report


@pytest.mark.parametrize("also, message", [
    (["gan"], "long.also names 'gan', which is not a model of the spec; its models: vae"),
    ("vae", "long.also must be a list of distinct model names"),
    (["vae", "vae"], "long.also must be a list of distinct model names"),
])
def test_long_also_names_only_models_of_the_spec(tmp_path, also, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_spec_mapping({**BASE, "long": {"also": also}}, tmp_path / "s.json")


def test_replace_block_keeps_the_prose_and_appends_a_missing_block():
    text = "# Doc\n\nBefore.\n\n<!-- compare:results -->\nold\n<!-- /compare:results -->\n\nAfter.\n"
    new = replace_block(text, "compare:results", "new table")
    assert new == "# Doc\n\nBefore.\n\n<!-- compare:results -->\nnew table\n<!-- /compare:results -->\n\nAfter.\n"
    assert replace_block("# Doc\n", "compare:results", "x") == "# Doc\n\n<!-- compare:results -->\nx\n<!-- /compare:results -->\n"
    assert mean_std_cell("recon_mse", [0.01, 0.03, math.nan]) == "0.0200 ± 0.0141" and mean_std_cell("fd", []) == "n/a"


# ---------------------------------------------------------------------------------------------
# the worker, in this process


def final_job(tmp_path: Path, changes: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = load_spec(write_spec(tmp_path, {"steps": 20, **(changes or {})}))
    done = {r.key: fake_row(r.key, 0.1 * (i + 1)) for i, r in enumerate(tune_runs(spec))}
    run = final_runs(spec, done)[0]
    return job_for(spec, run, Options(out=tmp_path / "out", jobs=1, threads=1, command="test"))


def test_a_killed_run_resumes_from_its_checkpoint_keeping_its_val_curve(tmp_path):
    job = final_job(tmp_path)
    first = run_job(job)
    assert first["status"] == "ok" and first["resumed_from"] is None and [p["step"] for p in first["curve"]] == [10, 20]
    assert first["evaluations"]["test"]["split"] == "test" and first["evaluations"]["val"]["split"] == "val"
    assert first["images"] == ["digits-vae-samples.png", "digits-vae-reconstructions.png"]
    # the same run directory asked for 30 steps: it goes on from step 20 with the points it had
    longer = run_job({**job, "steps": 30, "curve": [10, 20, 30]})
    assert longer["resumed_from"] == 20 and [p["step"] for p in longer["curve"]] == [10, 20, 30]
    assert longer["curve"][:2] == first["curve"]
    # without the recorded points the checkpoint cannot be trusted for the curve: it restarts
    (Path(job["run_dir"]) / "compare-progress.json").unlink()
    again = run_job({**job, "steps": 30, "curve": [10, 20, 30]})
    assert again["resumed_from"] is None and [p["step"] for p in again["curve"]] == [10, 20, 30]


def test_a_diverging_run_is_recorded_not_raised(tmp_path):
    job = final_job(tmp_path, {"models": {"vae": {"preset": "mlp-vae", "points": [{"optim.lr": 100.0}]}}})
    row = run_job(job)
    assert row["status"] == "diverged" and "g_loss" in row["error"] and row["key"] == job["key"]


# ---------------------------------------------------------------------------------------------
# whole studies, in worker processes

PLANTED = """
title = "Planted best"
doc = "study.md"
steps = 30
seeds = [0]
smoke = true
select = { metric = "recon_mse", goal = "min" }
tune_metrics = ["recon"]
metrics = ["recon"]
curve = [10]
overrides = { batch_size = 32, latent_dim = 4, "encoder.hidden" = [16], "decoder.hidden" = [16], log_every = 10 }

[long]
factor = 2
top = 1

[datasets.digits]
data = { name = "digits" }

[models.vae]
preset = "mlp-vae"
grid = { "optim.lr" = [1e-9, 1e-3] }
"""


def compare(*args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "asvae_kit.compare", *map(str, args)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_compare_picks_the_planted_best_resumes_and_rebuilds_the_same_report(tmp_path):
    spec = tmp_path / "study.toml"
    spec.write_text(PLANTED)
    doc = tmp_path / "study.md"
    doc.write_text("# Study\n\nProse before.\n\n<!-- compare:results -->\nold\n<!-- /compare:results -->\n\nProse after.\n")
    out = tmp_path / "out"
    proc = compare(spec, "--out", out, "--jobs", "2")
    assert "2 tune, 1 final, 1 long runs; 0 of 4 already" in proc.stderr
    assert "] tune digits/vae optim.lr=0.001 seed 0: val recon_mse" in proc.stderr
    results = out / RESULTS_FILE
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(r["phase"] for r in rows) == ["final", "long", "tune", "tune"]
    by_phase = {r["phase"]: r for r in rows}
    assert by_phase["final"]["point"] == {"optim.lr": 0.001} and by_phase["long"]["point"] == {"optim.lr": 0.001}  # the rule's pick
    assert by_phase["long"]["steps"] == 60 and [p["step"] for p in by_phase["long"]["curve"]] == [30, 60]
    # the final run stopped at step 10 to evaluate val; the long run of the same seed did not: same weights at 30
    assert by_phase["long"]["curve"][0]["metrics"] == by_phase["final"]["curve"][1]["metrics"]
    assert all(r["machine"]["cores"] >= 1 and r["finished"] for r in rows)

    report = (out / "report.md").read_text()
    for section in ("# Planted best", "## digits", "**Test metrics**", "**Tuning**", "**Val recon MSE against steps**",
                    "**Budget check**", "Ranking by mean val recon_mse", "**Images**", "| vae | optim.lr=0.001 | 1 |"):
        assert section in report, section
    text = doc.read_text()
    assert text.startswith("# Study\n\nProse before.\n\n<!-- compare:results -->\n") and text.endswith("<!-- /compare:results -->\n\nProse after.\n")
    assert "\nold\n" not in text and "**Tuning**" in text and "](out/images/digits-vae-samples.png)" in text

    # a second call finds everything done: it runs nothing and rewrites the same report
    before = results.read_bytes()
    proc = compare(spec, "--out", out)
    assert "4 of 4 already" in proc.stderr and "] tune" not in proc.stderr and results.read_bytes() == before
    assert (out / "report.md").read_text() == report
    compare(spec, "--out", out, "--report-only")
    assert (out / "report.md").read_text() == report and doc.read_text() == text

    # only the tuning rows: it resumes at the final runs (whose finished checkpoints it finds)
    tune_lines = [line for line in before.decode().splitlines() if json.loads(line)["phase"] == "tune"]
    results.write_text("\n".join(tune_lines) + "\n")
    proc = compare(spec, "--out", out)
    assert "2 tune (2 done)" in proc.stderr and "] tune" not in proc.stderr and "] final" in proc.stderr and "] long" in proc.stderr
    lines = results.read_text().splitlines()
    assert lines[:2] == tune_lines and len(lines) == 4


@pytest.mark.slow
def test_the_smoke_example_runs_through_the_command_line(tmp_path):
    out = tmp_path / "smoke"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "asvae_kit", "compare", str(ROOT / "examples" / "study-smoke.toml"), "--out", str(out)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (out / RESULTS_FILE).read_text().splitlines()]
    assert [sum(r["phase"] == p for r in rows) for p in ("tune", "final", "long")] == [8, 4, 2]
    report = (out / "report.md").read_text()
    for model in ("vae", "avb", "ali", "asvae"):
        assert f"| {model} | " in report
        assert (out / "images" / f"digits-{model}-samples.png").is_file()
    assert "n/a: skl does not apply to vae, avb." in report and "Ranking by mean val fd" in report


@pytest.mark.slow
def test_a_failing_run_is_reported_with_its_key_and_the_others_go_on(tmp_path):
    spec = write_spec(tmp_path, {
        "curve": [],
        "models": {"vae": {"preset": "mlp-vae", "points": [{}]}},
        "datasets": {"digits": {"data": "digits"}, "mnist": {"data": {"name": "mnist", "data_dir": str(tmp_path / "missing")}}},
    })
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "asvae_kit.compare", str(spec), "--out", str(out), "--jobs", "2"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1, proc.stderr[-4000:]
    assert "FAILED tune mnist/vae (preset) seed 0 (key tune|mnist||vae|{}|seed=0|steps=30)" in proc.stderr
    assert "not found" in proc.stderr and "rerun the same command" in proc.stderr
    rows = [json.loads(line) for line in (out / RESULTS_FILE).read_text().splitlines()]
    assert sorted((r["dataset"], r["phase"]) for r in rows) == [("digits", "final"), ("digits", "tune")]


@pytest.mark.slow
def test_sigterm_stops_the_workers_and_the_same_command_resumes_from_their_checkpoints(tmp_path):
    spec = write_spec(tmp_path, {
        "steps": 1200, "curve": [], "models": {"vae": {"preset": "mlp-vae", "points": [{}]}},
        "overrides": {**TINY, "checkpoint_every": 100, "log_every": 100},
    })
    out = tmp_path / "out"
    args = [sys.executable, "-m", "asvae_kit.compare", str(spec), "--out", str(out), "--jobs", "1"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not list(out.glob("runs/tune-*/checkpoints/step-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "SIGTERM: stopping the workers" in stderr and f"Resume with the same command:\n  python -m asvae_kit.compare {spec} --out {out} --jobs 1" in stderr
    assert not (out / RESULTS_FILE).exists() or not (out / RESULTS_FILE).read_text().strip()
    proc = compare(spec, "--out", out, "--jobs", "1")
    rows = {r["phase"]: r for r in map(json.loads, (out / RESULTS_FILE).read_text().splitlines())}
    assert rows["tune"]["resumed_from"] >= 100 and rows["final"]["resumed_from"] is None, proc.stderr
    assert f"resumed from step {rows['tune']['resumed_from']}" in proc.stderr


def test_python_dash_m_runs_the_command():
    """``python -m asvae_kit.compare`` (what the workers run) is the command, with its spec format as help."""
    proc = subprocess.run([sys.executable, "-m", "asvae_kit.compare", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "results.jsonl" in proc.stdout and "--report-only" in proc.stdout


def test_a_worker_that_fails_is_reported_with_the_tail_of_its_stderr():
    from asvae_kit.compare.pool import WorkerFailed, WorkerPool

    pool = WorkerPool(jobs=1, threads=1)
    try:
        future = pool.submit({"kind": "run", "not": "a job"})  # no key, config or run directory
        with pytest.raises(WorkerFailed, match=r"worker exited with status [1-9]") as info:
            future.result(timeout=300)
    finally:
        pool.stop(grace_s=5)
    assert "Traceback" in str(info.value) or "Error" in str(info.value)
    with pytest.raises(WorkerFailed, match="the study is stopping"):  # nothing starts once stopping
        pool._run("{}")
