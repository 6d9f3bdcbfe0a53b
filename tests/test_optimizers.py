"""Optimizers (``asvae_kit.optimizers``): the learning-rate schedule, gradient clipping, and both
seen through a real training run."""

from __future__ import annotations

import math

import pytest
import torch

import asvae_kit
from asvae_kit.optimizers import clip_gradients, lr_factor

SMALL = {"encoder.hidden": [16], "decoder.hidden": [16], "discriminator.hidden": [16], "latent_dim": 4, "batch_size": 8, "device": "cpu"}


def test_schedule_factors():
    constant = {"schedule": "constant", "warmup_steps": 0}
    assert [lr_factor(constant, t, 10) for t in (0, 5, 9)] == [1.0, 1.0, 1.0]
    warm = {"schedule": "constant", "warmup_steps": 4}
    assert [lr_factor(warm, t, 10) for t in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cosine = {"schedule": "cosine", "warmup_steps": 2}
    assert lr_factor(cosine, 2, 12) == 1.0 and lr_factor(cosine, 7, 12) == pytest.approx(0.5)
    assert lr_factor(cosine, 12, 12) == pytest.approx(0.0, abs=1e-12)


def test_a_run_follows_the_schedule_on_both_optimizers_and_resumes_on_it(tmp_path):
    overrides = {**SMALL, "optim.schedule": "cosine", "optim.warmup_steps": 2, "optim.lr": 1e-3, "optim.disc_lr": 2e-3}
    trainer = asvae_kit.build("mlp-asvae", steps=10, **overrides)
    stream = trainer._batch_stream(None)
    for _ in range(5):  # half of a 10-step run, as if stopped there (fit(5) would make the run 5 steps long)
        trainer.train_step(next(stream))
    trainer.save(tmp_path / "run")
    expected = lr_factor(trainer.config["optim"], 4, 10)  # the 5th step's (0-based 4)
    assert trainer.gen_optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * expected)
    assert trainer.disc_optimizer.param_groups[0]["lr"] == pytest.approx(2e-3 * expected)
    resumed = asvae_kit.load(tmp_path / "run")
    resumed.fit(10, progress=False)
    assert resumed.gen_optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * lr_factor(trainer.config["optim"], 9, 10))
    whole = asvae_kit.build("mlp-asvae", steps=10, **overrides).fit(progress=False)
    for (name, a), b in zip(whole.state_tensors().items(), resumed.state_tensors().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_clipping_bounds_the_gradient_norm():
    layer = torch.nn.Linear(4, 4)
    layer.weight.grad = torch.full_like(layer.weight, 10.0)
    layer.bias.grad = torch.full_like(layer.bias, 10.0)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    clip_gradients(optimizer, 1.0)
    norm = torch.cat([p.grad.flatten() for p in layer.parameters()]).norm()
    assert norm == pytest.approx(1.0, rel=1e-5)
    clip_gradients(optimizer, None)  # off: untouched
    assert torch.cat([p.grad.flatten() for p in layer.parameters()]).norm() == pytest.approx(1.0, rel=1e-5)


def test_clipping_in_the_step_keeps_a_huge_lr_from_moving_weights_far():
    def moved(clip):
        trainer = asvae_kit.build("mlp-asvae", steps=1, **SMALL, **{"optim.lr": 1.0, "optim.clip_grad_norm": clip, "optim.disc_clip_grad_norm": clip})
        before = {k: v.clone() for k, v in trainer.state_tensors().items()}
        trainer.train_step(torch.rand(8, 1, 8, 8))
        return max((trainer.state_tensors()[k] - v).abs().max().item() for k, v in before.items())

    assert moved(1e-6) < moved(None)  # Adam normalises the step, but clipping to ~0 still shrinks it


@pytest.mark.parametrize("key, value, phrase", [
    ("optim.schedule", "cosnie", "Did you mean 'cosine'"),
    ("optim.warmup_steps", -1, "non-negative integer"),
    ("optim.clip_grad_norm", 0, "positive number or null"),
    ("ema", 1.5, r"decay in \(0, 1\)"),
    ("threads", 0, "positive integer"),
])
def test_bad_values_are_named(key, value, phrase):
    with pytest.raises(asvae_kit.ConfigError, match=phrase):
        asvae_kit.build("mlp-vae", **{key: value})


def test_lr_factor_is_finite_for_a_zero_step_run():
    assert math.isfinite(lr_factor({"schedule": "cosine", "warmup_steps": 0}, 0, 0))


def test_adam_is_fused_where_the_device_has_it():
    trainer = asvae_kit.build("mlp-asvae", **SMALL)
    assert trainer.gen_optimizer.defaults["fused"] and trainer.disc_optimizer.defaults["fused"]  # torch >= 2.4 fuses on CPU


def test_resuming_keeps_this_runs_adam_implementation(tmp_path):
    trainer = asvae_kit.build("mlp-asvae", steps=2, **SMALL)
    trainer.fit(run_dir=tmp_path / "run", progress=False)
    state = {**trainer.state_dict(), "step": trainer.step}
    for key in ("gen_optimizer", "disc_optimizer"):  # as an older, unfused build wrote it
        for group in state[key]["param_groups"]:
            group.update(fused=None, foreach=None)
    resumed = asvae_kit.build("mlp-asvae", steps=2, **SMALL)
    resumed.load_state_dict(state)
    for optimizer in (resumed.gen_optimizer, resumed.disc_optimizer):
        assert all(group["fused"] for group in optimizer.param_groups)
    assert resumed.gen_optimizer.state_dict()["state"][0]["step"] == state["gen_optimizer"]["state"][0]["step"]
