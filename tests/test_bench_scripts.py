"""The benchmark scripts in ``bench/`` still run (tiny, on CPU), so a GPU session finds them working.

Their figures mean nothing here; the GPU-only parts (CUDA-graph variants, GPU time, kernel
counts) are covered by ``bench/gpu.sh`` on a GPU.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import asvae_kit

pytestmark = pytest.mark.slow  # each runs a script in a fresh interpreter

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run(tmp_path: Path, script: str, *args: str) -> dict:
    out = tmp_path / "out.json"
    result = subprocess.run([sys.executable, str(BENCH / script), *args, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("preset", ["mlp-asvae", "dcgan-asvae"])
def test_step_compare_times_the_library_beside_the_handwritten_loop(tmp_path, preset):
    report = _run(tmp_path, "step_compare.py", "--device", "cpu", "--preset", preset, "--steps", "2", "--repeats", "1", "--batch", "4")
    assert len(report["library"]) == len(report["handwritten"]) == 1 and "library-graphs" not in report  # CPU: no graphs
    assert report["preset"] == preset and report["summary"]["library_over_handwritten"] > 0
    assert len(report["handwritten-fused"]) == 1 and report["summary"]["library_over_handwritten_fused"] > 0


@pytest.mark.parametrize("override, named", [
    ({"optim.weight_decay": 0.01}, "'optim.weight_decay': 0.01"),
    ({"optim.schedule": "cosine"}, "'optim.schedule': 'cosine'"),
    ({"ema": 0.99}, "ema 0.99"),
    ({"divergence.critic": "joint"}, "'divergence.critic': 'joint'"),
])
def test_the_yardstick_refuses_a_config_it_does_not_implement(override, named):
    step_compare = _load_bench("step_compare")
    trainer = asvae_kit.build("mlp-asvae", data=None, data_shape=[1, 8, 8], batch_size=4, device="cpu", **override)
    with pytest.raises(SystemExit, match=re.escape(named)):
        step_compare.handwritten_parts(trainer)


def _load_bench(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("preset, nets", [
    ("mlp-asvae", {"encoder.hidden": [32], "decoder.hidden": [32], "discriminator.hidden": [32]}),
    ("dcgan-asvae", {"encoder.width": 8, "decoder.width": 8, "discriminator.width": 8, "discriminator.hidden": [32]}),
])
def test_the_handwritten_yardstick_computes_the_library_step(preset, nets):
    """The loop the library is timed against is the same math (the dcgan recipe's n_critic 2 and
    lambda_z 0.3 included): from the same weights and random state, three steps give the library's
    losses."""
    step_compare = _load_bench("step_compare")
    trainer = asvae_kit.build(preset, data=None, data_shape=[1, 28, 28], batch_size=16, device="cpu", latent_dim=4, **nets)
    parts, recipe = step_compare.handwritten_parts(trainer)
    assert recipe["n_critic"] == trainer.config["optim"]["n_critic"] and recipe["lambda_z"] == trainer.config["divergence"].get("lambda_z", 1.0)
    x = torch.rand(16, 1, 28, 28)
    for seed in range(3):
        torch.manual_seed(seed)
        terms = trainer.train_step(x)
        torch.manual_seed(seed)
        d_loss, g_loss = step_compare.handwritten_step(*parts, x, **recipe)
        torch.testing.assert_close(d_loss, terms["d_loss"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g_loss, terms["g_loss"], rtol=1e-5, atol=1e-4)


def test_kernel_report_gives_wall_time_and_the_memory_floor(tmp_path):
    report = _run(tmp_path, "kernel_report.py", "--device", "cpu", "--shapes", "96x32", "--repeats", "2")
    assert [row["impl"] for row in report["rows"]] == ["torch", "eager"]  # triton is GPU-only here
    assert all(row["wall_ms"] > 0 and row["floor_ms"] > 0 for row in report["rows"])
    assert report["copy_bandwidth_gb_s"] > 0 and "torch_N96_D32_wall_speedup_over_eager" in report["summary"]


def test_allreduce_share_times_the_two_process_step(tmp_path):
    import os

    out = tmp_path / "share.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(BENCH / "allreduce_share.py"),
           "--steps", "2", "--warmup", "1", "--batch", "4", "--size", "8", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["processes"] == 2 and report["steps"] == 2 and 0 < report["allreduce_share_median"] < 1
