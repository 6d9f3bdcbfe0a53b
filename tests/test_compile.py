"""``compile: true`` (``AlgorithmStep.compile_networks``): the built-in networks trace without a
graph break, and a compiled run's losses equal eager's."""

from __future__ import annotations

import pytest
import torch

import asvae_kit

SMALL = {"encoder.hidden": [16], "decoder.hidden": [16], "discriminator.hidden": [16], "latent_dim": 4, "batch_size": 8, "device": "cpu"}


@pytest.fixture
def eager_random():
    """Compiled code draws from eager's generator, so both runs see the same noise."""
    import torch._inductor.config as inductor

    torch._dynamo.reset()
    with inductor.patch(fallback_random=True):  # config's own patch: a monkeypatch would delete the key on undo
        yield
    torch._dynamo.reset()


@pytest.mark.slow
def test_the_losses_compile_whole_and_match_eager(eager_random):
    eager = asvae_kit.build("mlp-asvae", steps=3, log_every=1, **SMALL).fit(progress=False)
    compiled = asvae_kit.build("mlp-asvae", steps=3, log_every=1, **SMALL)
    compiled.algorithm.compile_networks(fullgraph=True)  # a graph break would raise here
    compiled.fit(progress=False)
    for a, b in zip(eager.history, compiled.history):
        for key in ("d_loss", "g_loss", "skl"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (key, a, b)
    for (name, x), y in zip(eager.state_tensors().items(), compiled.state_tensors().values()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)


def test_the_config_key_compiles_and_is_checked():
    trainer = asvae_kit.build("mlp-asvae", compile=True, **SMALL)
    assert trainer.encoder._compiled_call_impl is not None and "features" in vars(trainer.discriminator)
    assert list(trainer.state_tensors())[0].startswith("encoder.")  # no "_orig_mod." in the weights' names
    with pytest.raises(asvae_kit.ConfigError, match="config 'compile' must be true or false"):
        asvae_kit.build("mlp-vae", compile="yes")


@pytest.mark.slow
def test_a_copy_of_a_compiled_discriminator_calls_its_own_features():
    import copy

    trainer = asvae_kit.build("mlp-asvae", compile=True, **SMALL)
    twin = copy.deepcopy(trainer.discriminator)
    with torch.no_grad():
        for p in twin.parameters():
            p.zero_()
    x, z = torch.rand(2, 1, 8, 8), torch.randn(2, 4)
    assert torch.all(twin.features(x, z) == 0)  # the copy's zero weights, not the original's
    assert twin.features.__self__ is twin
