"""The weight average (``asvae_kit.ema``): what it averages, who uses it, and exact resumes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import asvae_kit
from asvae_kit.ema import EMA, RAW_PREFIX

SMALL = {"encoder.hidden": [16], "decoder.hidden": [16], "discriminator.hidden": [16], "latent_dim": 4, "batch_size": 8, "device": "cpu"}


def test_the_average_moves_by_one_minus_the_warmed_up_decay():
    layer = torch.nn.Linear(2, 2)
    ema = EMA({"layer": layer}, decay=0.9)
    before = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.add_(1.0)
    ema.update()  # update 0: decay min(0.9, 1/10) = 0.1, so the average moves 90% of the way
    torch.testing.assert_close(ema.average["layer"]["weight"], before + 0.9)
    assert ema.updates == 1
    with ema.applied():
        torch.testing.assert_close(layer.weight, before + 0.9)
        with ema.applied():  # re-entrant
            torch.testing.assert_close(layer.weight, before + 0.9)
        torch.testing.assert_close(layer.weight, before + 0.9)
    torch.testing.assert_close(layer.weight, before + 1.0)  # the raw weights are back


def test_the_decay_warms_up_to_its_value():
    ema = EMA({"layer": torch.nn.Linear(1, 1, bias=False)}, decay=0.5)
    # d_t = min(decay, (1 + t) / (10 + t)): 1/10, 2/11, ..., 8/17, then 9/18 = 0.5 = decay from update 8 on
    assert [ema.decay_at(t) for t in range(10)] == pytest.approx([0.1, 2 / 11, 3 / 12, 4 / 13, 5 / 14, 6 / 15, 7 / 16, 8 / 17, 0.5, 0.5])
    assert EMA({}, decay=0.999).decay_at(100) == pytest.approx(101 / 110) and EMA({}, decay=0.999).decay_at(10**6) == 0.999
    weight, average = ema.modules["layer"].weight, []
    with torch.no_grad():
        weight.fill_(0.0)
        ema.average["layer"]["weight"].fill_(0.0)
        for t in range(10):  # the weights walk 1, 2, 3, ...: follow the average by hand
            weight.fill_(t + 1.0)
            expected = (average[-1] if average else 0.0) * ema.decay_at(t) + (t + 1.0) * (1 - ema.decay_at(t))
            assert ema.next_weight() == pytest.approx(1 - ema.decay_at(t))
            ema.update()
            average.append(expected)
            assert float(ema.average["layer"]["weight"]) == pytest.approx(expected, rel=1e-6)
    assert ema.updates == 10
    for decay in (0.5, 0.9, 0.999, 0.05):  # warm_count: from there on the decay is the configured one
        e = EMA({}, decay=decay)
        assert e.decay_at(e.warm_count) == decay and (e.warm_count == 0 or e.decay_at(e.warm_count - 1) < decay)


def test_the_update_count_is_checkpointed(tmp_path):
    trainer = asvae_kit.build("mlp-vae", steps=3, ema=0.9, **SMALL).fit(run_dir=tmp_path / "run", progress=False)
    assert trainer.ema.updates == 3 and trainer.state_dict()["ema_updates"] == 3
    assert asvae_kit.load(tmp_path / "run").ema.updates == 3
    old = {k: v for k, v in trainer.state_dict().items() if k != "ema_updates"}  # a checkpoint from before the warm-up
    fresh = asvae_kit.build("mlp-vae", steps=3, ema=0.9, **SMALL)
    fresh.load_state_dict({**old, "step": 3})
    assert fresh.ema.updates == fresh.ema.warm_count and fresh.ema.next_weight() == pytest.approx(0.1)  # goes on at the full decay


def test_samples_and_saved_weights_use_the_average_and_resume_is_exact(tmp_path):
    trainer = asvae_kit.build("mlp-asvae", steps=6, ema=0.5, **SMALL)
    trainer.fit(3, run_dir=tmp_path / "run", progress=False)
    raw_sample = trainer.decoder(torch.zeros(1, 4)).mean
    with trainer.ema.applied():
        averaged_sample = trainer.decoder(torch.zeros(1, 4)).mean
    assert not torch.allclose(raw_sample, averaged_sample)
    torch.testing.assert_close(trainer.sample(1, z=torch.zeros(1, 4)), averaged_sample)
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    key = next(k for k in saved if k.startswith("decoder."))
    torch.testing.assert_close(saved[key], trainer.ema.average["decoder"][key[len("decoder."):]])
    torch.testing.assert_close(saved[RAW_PREFIX + key], trainer.decoder.state_dict()[key[len("decoder."):]])
    assert not any(k.startswith(RAW_PREFIX + "discriminator") for k in saved)  # only encoder and decoder are averaged

    resumed = asvae_kit.load(tmp_path / "run")
    assert resumed.ema.updates == 3  # mid warm-up (0.5 is reached at update 8): the count must come back
    resumed.fit(6, progress=False)
    whole = asvae_kit.build("mlp-asvae", steps=6, ema=0.5, **SMALL).fit(progress=False)
    assert resumed.ema.updates == whole.ema.updates == 6
    for (name, a), b in zip(whole.state_tensors().items(), resumed.state_tensors().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_evaluation_uses_the_average():
    trainer = asvae_kit.build("mlp-vae", steps=3, ema=0.5, **SMALL).fit(progress=False)
    with_ema = trainer.evaluate(["recon"])["recon_mse"]
    trainer.ema = None
    raw = trainer.evaluate(["recon"])["recon_mse"]
    assert with_ema != pytest.approx(raw, rel=1e-9)


def test_every_metric_sees_the_average_whoever_calls_evaluate():
    from asvae_kit.evaluation import evaluate

    trainer = asvae_kit.build("mlp-vae", steps=3, ema=0.5, **SMALL).fit(progress=False)
    torch.manual_seed(1)
    direct = evaluate(trainer, ["nll:k=4:n=16"])["nll"]  # what `asvae-kit evaluate` calls
    torch.manual_seed(1)
    assert direct == pytest.approx(trainer.evaluate(["nll:k=4:n=16"])["nll"], rel=1e-9)
    trainer.ema, ema = None, trainer.ema
    torch.manual_seed(1)
    assert direct != pytest.approx(evaluate(trainer, ["nll:k=4:n=16"])["nll"], rel=1e-9)  # the raw weights differ
    trainer.ema = ema
    with trainer.ema.applied():
        with pytest.raises(RuntimeError, match="inside trainer.averaged"):
            trainer.save("unused")


def test_an_interrupted_swap_leaves_the_raw_weights(monkeypatch):
    trainer = asvae_kit.build("mlp-vae", steps=2, ema=0.5, **SMALL).fit(progress=False)
    raw = {k: v.clone() for k, v in trainer.decoder.state_dict().items()}

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with trainer.ema.applied():
            boom()
    assert all(torch.equal(raw[k], v) for k, v in trainer.decoder.state_dict().items()) and not trainer.ema.swapped
