"""One full training step (discriminator update + encoder/decoder update) at batch 64 on 28x28
images, for the mlp, dcgan and resnet ASVAE presets, eager and (on a GPU) replayed from a CUDA graph
(``cuda_graphs``).  Run with ``pytest bench --benchmark-only``; ``bench/step_compare.py`` puts
the same step beside a hand-written loop."""

from __future__ import annotations

import pytest
import torch

import asvae_kit

HAS_GPU = torch.cuda.is_available()


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "cuda-graphs"])
@pytest.mark.parametrize("preset", ["mlp-asvae", "dcgan-asvae", "resnet-asvae"])
def test_train_step_batch64_28x28(benchmark, preset, graphs):
    if graphs and not HAS_GPU:
        pytest.skip("CUDA graphs need a CUDA GPU")
    device = "cuda" if HAS_GPU else "cpu"
    trainer = asvae_kit.build(preset, data=None, data_shape=[1, 28, 28], batch_size=64, device=device, cuda_graphs=graphs)
    x = torch.rand(64, 1, 28, 28, device=device)
    benchmark.group = "train-step b64 28x28"
    benchmark.extra_info.update({"preset": preset, "device": str(trainer.device), "threads": torch.get_num_threads(), "cuda_graphs": graphs})

    def step():
        trainer.train_step(x)
        if device == "cuda":
            torch.cuda.synchronize()

    warmup = 5 if graphs else 3  # allocator, autotuning, and with graphs the capture
    for _ in range(warmup):
        step()
    benchmark.pedantic(step, rounds=10, iterations=1)
    assert trainer.step == warmup + 10
    if graphs:
        assert trainer.algorithm.replays >= 10  # a StepGraph wraps the step
