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


FAULT_WORKER = Path(__file__).with_name("ddp_fault_worker.py")


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    env.pop("WORLD_SIZE", None)
    return env


def _torchrun(*args, timeout=240, env=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env or _env(), timeout=timeout)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fault(tmp_path, fault):
    """Both ranks' last words (``type: message``) and the step each stopped at."""
    result = _torchrun(str(FAULT_WORKER), str(tmp_path), fault, timeout=120, env=_env(ASVAE_KIT_DIST_TIMEOUT="60"))
    words = [(tmp_path / f"rank-{r}.txt").read_text().splitlines() for r in range(2)]
    return result, words


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_every_rank_at_once_with_the_same_message(tmp_path):
    result, words = _fault(tmp_path, "nan")
    assert result.returncode != 0
    assert words[0] == words[1], words  # the same verdict, the same message, the same step
    message, step = words[0]
    assert message.startswith("TrainingDivergedError: the encoder/decoder loss (g_loss) became nan at step 5")
    assert "last checkpoint in" in message and "(step 4) is intact" in message and step == "step 4"
    assert "terminate called" not in result.stderr  # the group is left before exit: no SIGABRT
    run = tmp_path / "run"
    assert asvae_kit.load(run).step == 4  # nothing was saved after the diverged step
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-")) == ["step-0000002", "step-0000004"]


@pytest.mark.slow
def test_an_error_on_one_rank_is_its_own_and_its_peer_reports_a_lost_peer(tmp_path):
    result, words = _fault(tmp_path, "raise")
    assert result.returncode != 0
    assert words[1] == ["ValueError: rank 1's own failure at step 5", "step 4"]
    assert words[0][0].startswith("PeerLostError: process 0 of 2: another process left or stopped answering during step 5")
    assert "(step 4) is intact" in words[0][0]  # rank 0 wrote it
    assert asvae_kit.load(tmp_path / "run").step == 4


@pytest.mark.slow
def test_a_stop_signal_on_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    result, words = _fault(tmp_path, "stop")
    assert result.returncode != 0
    assert words[0][1] == words[1][1] == "step 4", words  # rank 1 had its signal during step 3
    assert words[0][0].startswith("TrainingStopped: another process received a stop signal: training stopped after step 4")
    assert words[1][0].startswith("TrainingStopped: SIGTERM: training stopped after step 4")
    assert asvae_kit.load(tmp_path / "run").step == 4


@pytest.mark.slow
def test_two_nodes_on_localhost_train_together_like_one_node(tmp_path):
    """Two torchrun launches (``--nnodes 2``, one process each, a c10d rendezvous on 127.0.0.1)
    end with the weights of the two-process single-node run."""
    train = ["-m", "asvae_kit", "train", "--preset", "mlp-vae", "--steps", "6", "--batch-size", "8", "--quiet"]
    single = _torchrun(*train, "--out", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr[-3000:]
    port = _free_port()
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "1",
             "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "asvae-two-nodes",
             *train, "--out", str(tmp_path / "shared")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
        )
        for rank in range(2)
    ]
    outputs = [node.communicate(timeout=180) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
        assert "terminate called" not in err
    a, b = asvae_kit.load(tmp_path / "single"), asvae_kit.load(tmp_path / "shared")
    assert a.step == b.step == 6
    wa, wb = a.state_tensors(), b.state_tensors()
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


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
    timeouts = []
    monkeypatch.setattr(dist, "init_process_group", lambda backend, timeout: (backends.append(backend), timeouts.append(timeout)))
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    assert context_from_env("cpu").rank == 1
    context_from_env("auto")
    context_from_env("cuda:0")
    assert backends == ["gloo", "nccl", "nccl"]
    assert {t.total_seconds() for t in timeouts} == {600.0}  # no rank waits forever for a vanished peer
    monkeypatch.setenv("ASVAE_KIT_DIST_TIMEOUT", "30")
    context_from_env("cpu")
    assert timeouts[-1].total_seconds() == 30.0
    monkeypatch.setenv("ASVAE_KIT_DIST_TIMEOUT", "soon")
    with pytest.raises(asvae_kit.errors.ConfigError, match="ASVAE_KIT_DIST_TIMEOUT='soon'"):
        context_from_env("cpu")


#: Under torchrun: ``asvae-kit train`` (argv in sys.argv[1]); on the first launch only
#: (TORCHELASTIC_RESTART_COUNT 0), rank 0 SIGKILLs itself right before its second checkpoint
#: folder is renamed into place (an audit hook, PEP 578).
_KILLED_WORKER = r"""
import json, os, signal, sys
from asvae_kit.cli import main

renames = 0

def hook(event, args):
    global renames
    if event == "os.rename" and os.path.basename(os.fsdecode(args[1])).startswith("step-"):
        renames += 1
        if renames == 2:
            os.kill(os.getpid(), signal.SIGKILL)

if os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0" and os.environ.get("RANK") == "0":
    sys.addaudithook(hook)
sys.exit(main(json.loads(sys.argv[1])))
"""


@pytest.mark.slow
def test_a_killed_worker_under_max_restarts_resumes_and_ends_like_an_unbroken_run(tmp_path):
    from tiny_run import TINY

    def argv(out):
        return ["train", "--preset", "mlp-vae", "--steps", "8", "--batch-size", "8", "--checkpoint-every", "2", "--log-every", "2",
                "--sample-every", "0", "--no-progress", *TINY, "--resume-if-exists", "--out", str(out)]

    worker = tmp_path / "killed_worker.py"
    worker.write_text(_KILLED_WORKER)
    env = _env(ASVAE_KIT_DIST_TIMEOUT="60")
    broken = _torchrun("--max-restarts", "1", str(worker), json.dumps(argv(tmp_path / "broken")), timeout=300, env=env)
    assert broken.returncode == 0, broken.stderr[-3000:]
    assert "resuming" in broken.stderr and "(from step 2)" in broken.stderr  # the relaunched group resumed from the last complete checkpoint
    assert "the newest checkpoint rank 0 completed in" in broken.stderr  # rank 1 does not claim rank 0's unfinished one
    whole = _torchrun("-m", "asvae_kit", *argv(tmp_path / "whole"), env=env)
    assert whole.returncode == 0, whole.stderr[-3000:]
    a, b = asvae_kit.load(tmp_path / "whole"), asvae_kit.load(tmp_path / "broken")
    assert a.step == b.step == 8
    wa, wb = a.state_tensors(), b.state_tensors()
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
