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
