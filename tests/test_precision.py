"""Mixed precision (config ``precision``; ``asvae_kit.algorithm``): bf16 and float16 autocast on
CPU, float32 losses, one loss scaler per optimizer, exact resumes."""

from __future__ import annotations

import pytest
import torch

import asvae_kit

SMALL = {"encoder.hidden": [16], "decoder.hidden": [16], "discriminator.hidden": [16], "latent_dim": 4, "batch_size": 8, "device": "cpu"}


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("16-mixed", torch.float16), ("32", torch.float32)])
def test_forward_passes_run_in_the_precision_and_losses_stay_float32(precision, dtype):
    trainer = asvae_kit.build("mlp-asvae", precision=precision, **SMALL)
    seen = []
    hook = trainer.decoder.register_forward_hook(lambda module, args, out: seen.append(out.mean.dtype))
    batch = trainer.algorithm.make_batch(torch.rand(8, 1, 8, 8))
    with trainer.algorithm.forward_precision():
        loss, terms = trainer.divergence.generator_loss(trainer.discriminator, batch)
    hook.remove()
    assert seen and set(seen) == {dtype}
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert batch.log_px.dtype == torch.float32  # summed over pixels in float32


def test_bf16_training_is_close_to_float32_and_resumes_exactly(tmp_path):
    full = asvae_kit.build("mlp-asvae", steps=6, log_every=6, **SMALL).fit(progress=False)
    half = asvae_kit.build("mlp-asvae", steps=6, log_every=6, precision="bf16", **SMALL).fit(progress=False)
    assert half.history[-1]["g_loss"] == pytest.approx(full.history[-1]["g_loss"], rel=0.05)
    asvae_kit.build("mlp-asvae", steps=6, precision="bf16", **SMALL).fit(3, run_dir=tmp_path / "run", progress=False)
    resumed = asvae_kit.load(tmp_path / "run")
    resumed.config["steps"] = 6
    resumed.fit(progress=False)
    whole = asvae_kit.build("mlp-asvae", steps=3, precision="bf16", **SMALL).fit(progress=False).fit(6, progress=False)
    for (name, a), b in zip(whole.state_tensors().items(), resumed.state_tensors().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_float16_overflow_skips_only_that_optimizers_step():
    trainer = asvae_kit.build("mlp-asvae", precision="16-mixed", **SMALL)
    assert set(trainer.algorithm.scalers) == {"gen", "disc"}
    first = next(trainer.discriminator.parameters())
    hook = first.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    disc_before = {k: v.clone() for k, v in trainer.discriminator.state_dict().items()}
    dec_before = {k: v.clone() for k, v in trainer.decoder.state_dict().items()}
    scale = trainer.algorithm.scalers["disc"].get_scale()
    trainer.train_step(torch.rand(8, 1, 8, 8))
    hook.remove()
    assert all(torch.equal(disc_before[k], v) for k, v in trainer.discriminator.state_dict().items())  # skipped
    assert any(not torch.equal(dec_before[k], v) for k, v in trainer.decoder.state_dict().items())  # taken
    assert trainer.algorithm.scalers["disc"].get_scale() == scale / 2
    assert trainer.algorithm.scalers["gen"].get_scale() == scale


def test_the_scalers_are_checkpointed(tmp_path):
    trainer = asvae_kit.build("mlp-asvae", steps=2, precision="16-mixed", **SMALL)
    hook = next(trainer.discriminator.parameters()).register_hook(lambda grad: torch.full_like(grad, float("inf")))
    trainer.train_step(torch.rand(8, 1, 8, 8))  # halves the discriminator's scale only
    hook.remove()
    trainer.save(tmp_path / "run")
    loaded = asvae_kit.load(tmp_path / "run")
    scales = {name: s.get_scale() for name, s in loaded.algorithm.scalers.items()}
    assert scales == {name: s.get_scale() for name, s in trainer.algorithm.scalers.items()} and scales["disc"] < scales["gen"]


def test_a_precision_name_is_checked():
    with pytest.raises(asvae_kit.ConfigError, match="Did you mean 'bf16'"):
        asvae_kit.build("mlp-vae", precision="bf61")
    assert asvae_kit.build("mlp-vae", precision=32, device="cpu").config["precision"] == "32"
