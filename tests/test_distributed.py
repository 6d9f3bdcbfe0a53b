"""Data-parallel training under torchrun with the gloo backend, two CPU processes (docs/design.md §6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import asvae_kit
from asvae_kit.data import BatchStream

WORKER = Path(__file__).with_name("ddp_worker.py")


def _torchrun(*args, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.slow
def test_two_gloo_processes_stay_identical_on_different_data(tmp_path):
    result = _torchrun(str(WORKER), str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    verdict = json.loads((tmp_path / "result.json").read_text())
    assert verdict == {"identical_weights": True, "different_noise": True, "different_data": True, "batch_per_rank": 8, "step": 4}
    run = tmp_path / "run"
    assert asvae_kit.load(run).step == 4  # rank 0's checkpoint loads in a single process
    assert len((run / "metrics.csv").read_text().splitlines()) == 3  # header + 2 rows, written once


@pytest.mark.slow
def test_cli_train_under_torchrun_reports_once(tmp_path):
    run = tmp_path / "cli"
    result = _torchrun("-m", "asvae_kit", "train", "--preset", "mlp-vae", "--steps", "3", "--batch-size", "8", "--out", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("done: step 3") == 1 and "on 2 processes" in result.stderr
    assert (run / "model.safetensors").is_file()


def test_shards_of_a_global_batch_are_disjoint_and_cover_it():
    images = torch.arange(40, dtype=torch.float32).div(40).view(40, 1, 1, 1).expand(40, 1, 8, 8).contiguous()
    streams = [BatchStream(images, 4, (1, 8, 8), torch.device("cpu"), torch.Generator().manual_seed(0), rank=r, world_size=2) for r in range(2)]
    single = BatchStream(images, 8, (1, 8, 8), torch.device("cpu"), torch.Generator().manual_seed(0))
    for _ in range(7):  # crosses an epoch boundary
        a, b = (next(s)[:, 0, 0, 0] for s in streams)
        whole = next(single)[:, 0, 0, 0]
        assert len(a) == len(b) == 4
        assert set(a.tolist()).isdisjoint(b.tolist())
        assert sorted(a.tolist() + b.tolist()) == sorted(whole.tolist())


def test_a_cpu_run_uses_gloo_even_where_cuda_is_available(monkeypatch):
    import torch.distributed as dist

    from asvae_kit.distributed import context_from_env

    backends = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: backends.append(backend))
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    assert context_from_env("cpu").rank == 1
    context_from_env("auto")
    context_from_env("cuda:0")
    assert backends == ["gloo", "nccl", "nccl"]
