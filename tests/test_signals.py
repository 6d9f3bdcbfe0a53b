"""SIGTERM and SIGINT (``asvae_kit.signals``): the step finishes, the run saves, and resuming is bit-exact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_run import TINY

import asvae_kit


def _cli(run: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "asvae_kit", "train", "--preset", "mlp-vae", "--steps", str(steps), "--batch-size", "8",
            "--checkpoint-every", "0", "--sample-every", "0", "--log-every", "5", "--no-progress", *TINY, "--out", str(run)]


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_finishes_the_step_saves_and_resumes_bit_exact(tmp_path, signum, code):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert subprocess.run(_cli(whole, 1500), env=env, capture_output=True).returncode == 0
    proc = subprocess.Popen(_cli(broken, 1500), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (broken / "metrics.csv").is_file():
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "training stopped after step" in err and "checkpoint saved" in err
    stopped_at = asvae_kit.load(broken).step
    assert 0 < stopped_at < 1500, "the signal came too late to test a resume"
    resume = [sys.executable, "-m", "asvae_kit", "train", "--resume", "--steps", "1500", "--no-progress", "--out", str(broken)]
    resumed = subprocess.run(resume, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(broken / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


STUCK_SAVE = """
import sys, time
import safetensors.torch as st
from asvae_kit.cli import main

real, calls = st.save_file, []

def stuck(tensors, path, metadata=None):
    calls.append(path)
    real(tensors, path, metadata=metadata)
    if len(calls) == 2:  # the second checkpoint: its weights written, then stuck before it is renamed into place
        print("STUCK", file=sys.stderr, flush=True)
        time.sleep(600)

st.save_file = stuck
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_second_signal_abandons_a_stuck_save_at_once_and_the_previous_checkpoint_stays(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--preset", "mlp-vae", "--steps", "50", "--batch-size", "8", "--checkpoint-every", "2",
            "--sample-every", "0", "--log-every", "0", "--no-progress", *TINY, "--out", str(run)]
    proc = subprocess.Popen([sys.executable, "-c", STUCK_SAVE, *args], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:  # wait until the second save is stuck
        lines.append(line)
        if line.strip() == "STUCK":
            break
    assert lines and lines[-1].strip() == "STUCK", "".join(lines)
    proc.send_signal(signal.SIGTERM)  # the first: finish the step and save, which cannot finish
    time.sleep(0.5)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)  # the second: stop at once
    start = time.monotonic()
    proc.wait(timeout=30)
    assert time.monotonic() - start < 5 and proc.returncode == -signal.SIGTERM
    proc.stderr.close()
    proc.stdout.close()
    resumed = asvae_kit.load(run)
    assert resumed.step == 2  # the stuck checkpoint of step 4 never became one
    names = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert names == ["step-0000002"], names
    again = subprocess.run([sys.executable, "-m", "asvae_kit", "train", "--resume", "--steps", "4", "--no-progress", "--out", str(run)],
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr  # the dead writer's lock is broken; training goes on from step 2
    assert asvae_kit.load(run).step == 4
