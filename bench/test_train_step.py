"""One full training step (discriminator update + encoder/decoder update) at batch 64 on 28x28
images, for the mlp and resnet ASVAE presets.  Run with ``pytest bench --benchmark-only``."""

from __future__ import annotations

import pytest
import torch

import asvae_kit


@pytest.mark.parametrize("preset", ["mlp-asvae", "resnet-asvae"])
def test_train_step_batch64_28x28(benchmark, preset):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    trainer = asvae_kit.build(preset, data=None, data_shape=[1, 28, 28], batch_size=64, device=device)
    x = torch.rand(64, 1, 28, 28, device=device)
    benchmark.group = "train-step b64 28x28"
    benchmark.extra_info.update({"preset": preset, "device": str(trainer.device), "threads": torch.get_num_threads()})

    def step():
        trainer.train_step(x)
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):  # warm-up: allocator, autotuning
        step()
    benchmark.pedantic(step, rounds=10, iterations=1)
    assert trainer.step == 13
