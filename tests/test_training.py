"""End-to-end training: which parameters each step moves, learning on digits, save/load, runs."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from shared_data import SHARED_DATA as SHARED
from shared_data import needs_fashion

import asvae_kit
from asvae_kit.errors import ConfigError
from asvae_kit.trainer import TrainingDivergedError

SMALL = {"encoder.hidden": [32], "decoder.hidden": [32], "discriminator.hidden": [32, 16], "latent_dim": 4, "batch_size": 16}


def _params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()} if module is not None else {}


def _changed(before, module):
    return {n for n, p in module.named_parameters() if not torch.equal(before[n], p.detach())}


@pytest.mark.parametrize("divergence", ["elbo", "avb", "ali", "asvae"])
def test_each_step_moves_exactly_the_modules_it_should(divergence):
    trainer = asvae_kit.build("mlp-asvae", divergence=divergence, **SMALL)
    x = torch.rand(16, 1, 8, 8, device=trainer.device)
    enc, dec, disc = _params(trainer.encoder), _params(trainer.decoder), _params(trainer.discriminator)

    batch = trainer.algorithm.make_batch(x)
    trainer.algorithm.discriminator_step(batch)
    assert not _changed(enc, trainer.encoder) and not _changed(dec, trainer.decoder)
    if divergence == "elbo":
        assert trainer.discriminator is None
    else:
        assert _changed(disc, trainer.discriminator), "the discriminator step must update the discriminator"
        disc = _params(trainer.discriminator)

    trainer.algorithm.generator_step(batch)
    assert _changed(enc, trainer.encoder), "the encoder/decoder step must update the encoder"
    assert _changed(dec, trainer.decoder), "the encoder/decoder step must update the decoder"
    if trainer.discriminator is not None:
        assert not _changed(disc, trainer.discriminator)
        assert all(p.requires_grad for p in trainer.discriminator.parameters())


def test_n_critic_updates_the_discriminator_that_many_times():
    trainer = asvae_kit.build("mlp-asvae", **SMALL, **{"optim.n_critic": 3})
    trainer.train_step(torch.rand(16, 1, 8, 8, device=trainer.device))
    state = trainer.disc_optimizer.state_dict()["state"]
    assert all(int(s["step"]) == 3 for s in state.values())
    assert all(int(s["step"]) == 1 for s in trainer.gen_optimizer.state_dict()["state"].values())


@pytest.mark.slow
def test_mlp_asvae_learns_digits():
    trainer = asvae_kit.build("mlp-asvae", steps=400, log_every=50)
    trainer.fit()
    result = trainer.evaluate(["reconstruction-mse"])
    assert result["recon_mse"] < 0.5 * result["mean_image_mse"], result
    assert all(math.isfinite(row["skl"]) for row in trainer.history)
    assert trainer.history[-1]["step"] == 400


def test_save_load_sample_is_identical_and_config_round_trips(tmp_path):
    trainer = asvae_kit.build("mlp-asvae", steps=5, **SMALL)
    trainer.fit(run_dir=tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.json", "model.safetensors", "latest", "metrics.csv", "samples.png", "reconstructions.png"):
        assert (run / name).is_file(), name
    checkpoint = run / "checkpoints" / (run / "latest").read_text().strip()
    assert checkpoint.name == "step-0000005" and (checkpoint / "model.safetensors").is_file()
    loaded = asvae_kit.load(run)
    assert loaded.config == json.loads((run / "config.json").read_text())
    assert loaded.config == trainer.config
    assert loaded.step == 5
    torch.testing.assert_close(loaded.sample(16, seed=7), trainer.sample(16, seed=7), rtol=0, atol=0)
    assert not torch.equal(loaded.sample(16, seed=7), loaded.sample(16, seed=8))
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(loaded.encode(x), trainer.encode(x), rtol=0, atol=0)
    # trainer_state.pt is plain data: it loads with weights_only=True
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=True)
    assert state["step"] == 5 and "gen_optimizer" in state and "rng" in state


def test_resume_continues_to_the_total_step_count(tmp_path):
    run = tmp_path / "run"
    asvae_kit.build("mlp-asvae", steps=4, log_every=2, **SMALL).fit(run_dir=run)
    trainer = asvae_kit.load(run)
    trainer.fit(7)
    assert trainer.step == 7
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 7]
    assert {"d_loss", "g_loss", "l_x", "l_z", "skl"} <= set(rows[0])


def test_fit_accepts_tensors_datasets_and_loaders():
    from torch.utils.data import DataLoader, TensorDataset

    trainer = asvae_kit.build("mlp-vae", data=None, data_shape=[1, 8, 8], **SMALL)
    images = torch.rand(40, 1, 8, 8)
    trainer.fit(2, data=images)
    trainer.fit(4, data=TensorDataset(images, torch.zeros(40)))
    trainer.fit(6, data=DataLoader(images, batch_size=8))
    assert trainer.step == 6


def test_bad_data_is_rejected_with_a_clear_error():
    trainer = asvae_kit.build("mlp-vae", data=None, data_shape=[1, 8, 8], **SMALL)
    with pytest.raises(asvae_kit.DataError, match="NaN"):
        trainer.fit(1, data=torch.full((8, 1, 8, 8), float("nan")))
    with pytest.raises(asvae_kit.DataError, match=r"\[0, 1\]"):
        trainer.fit(1, data=torch.rand(8, 1, 8, 8) * 255)
    with pytest.raises(asvae_kit.DataError, match=r"\(1, 8, 8\)"):
        trainer.fit(1, data=torch.rand(8, 1, 28, 28))
    with pytest.raises(ConfigError, match="no configured data"):
        trainer.fit(1)


def test_divergence_to_nan_stops_with_a_clear_error(tmp_path):
    trainer = asvae_kit.build("mlp-vae", **SMALL)
    with torch.no_grad():
        next(trainer.decoder.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match="lower optim.lr"):
        trainer.fit(1)


def test_implicit_encoder_trains_with_asvae_and_is_refused_by_elbo():
    trainer = asvae_kit.build("mlp-asvae", encoder="mlp-implicit", **{k: v for k, v in SMALL.items() if k != "encoder.hidden"})
    trainer.fit(2)
    assert math.isfinite(trainer.history[-1]["l_z"])
    vae = asvae_kit.build("mlp-vae", encoder="mlp-implicit", latent_dim=4, batch_size=8)
    with pytest.raises(ConfigError, match="closed-form KL"):
        vae.fit(1)


@pytest.mark.parametrize("likelihood", ["gaussian", "laplace"])
def test_continuous_likelihoods_with_sampled_x(likelihood):
    trainer = asvae_kit.build("mlp-asvae", sample_x=True, **{"decoder.likelihood": likelihood}, **SMALL)
    trainer.fit(2)
    assert all(math.isfinite(v) for v in trainer.history[-1].values())


def test_bernoulli_with_sampled_x_explains_itself():
    trainer = asvae_kit.build("mlp-asvae", sample_x=True, **SMALL)
    with pytest.raises(ConfigError, match="reparameterised sample"):
        trainer.fit(1)


@needs_fashion
def test_resnet_asvae_runs_on_real_fashion_mnist(tmp_path):
    trainer = asvae_kit.build(
        "resnet-asvae",
        data="fashion-mnist",
        batch_size=8,
        **{"data.data_dir": str(SHARED), "data.split": "test", "data.limit": 64, "encoder.width": 8, "decoder.width": 8, "discriminator.width": 8},
    )
    assert trainer.data_shape == (1, 28, 28)
    trainer.fit(3, run_dir=tmp_path / "fmnist")
    assert all(math.isfinite(v) for v in trainer.history[-1].values())
    loaded = asvae_kit.load(tmp_path / "fmnist")
    assert loaded.sample(4, seed=0).shape == (4, 1, 28, 28)


@pytest.mark.parametrize("divergence, heads", [("asvae", 2), ("avb", 1), ("ali", 1)])
def test_a_discriminator_with_the_wrong_head_count_is_refused(divergence, heads):
    from asvae_kit.algorithm import AlgorithmStep
    from asvae_kit.distributed import context_from_env
    from asvae_kit.guard import DivergenceGuard
    from asvae_kit.optimizers import make_optimizers

    config = asvae_kit.build("mlp-asvae", divergence=divergence, **SMALL).config
    div = asvae_kit.build_component("divergence", divergence)
    assert div.num_heads == heads
    context = {"data_shape": (1, 8, 8), "latent_dim": 4}
    wrong = asvae_kit.build_component("discriminator", "joint-mlp", num_heads=heads + 1, hidden=[8], **context)
    encoder = asvae_kit.build_component("encoder", "mlp", hidden=[8], **context)
    decoder = asvae_kit.build_component("decoder", "mlp", hidden=[8], **context)
    gen_optimizer, disc_optimizer = make_optimizers(config["optim"], encoder, decoder, wrong)
    with pytest.raises(ConfigError, match=rf"needs a discriminator with {heads} head\(s\), but its head has {heads + 1}"):
        AlgorithmStep(
            encoder=encoder, decoder=decoder, discriminator=wrong, divergence=div, gen_optimizer=gen_optimizer,
            disc_optimizer=disc_optimizer, config=config, dist=context_from_env(), guard=DivergenceGuard(0),
        )


def test_resume_reproduces_an_unbroken_run(tmp_path):
    whole = asvae_kit.build("mlp-asvae", steps=10, **SMALL)
    whole.fit()
    asvae_kit.build("mlp-asvae", steps=5, **SMALL).fit(run_dir=tmp_path / "run")
    resumed = asvae_kit.load(tmp_path / "run")
    resumed.fit(10)
    for (name, a), b in zip(whole.state_tensors().items(), resumed.state_tensors().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["steps"] == 10


def test_load_overrides_are_validated(tmp_path):
    asvae_kit.build("mlp-asvae", steps=2, **SMALL).fit(run_dir=tmp_path / "run")
    assert asvae_kit.load(tmp_path / "run", steps=4, log_every=1).config["steps"] == 4
    with pytest.raises(ConfigError, match="log_every"):
        asvae_kit.load(tmp_path / "run", log_every=-5)
    with pytest.raises(ConfigError, match="keeps the run's model"):
        asvae_kit.load(tmp_path / "run", latent_dim=3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks loading a GPU run on a CPU-only machine")
def test_a_run_saved_on_a_gpu_loads_on_the_cpu(tmp_path):
    run = tmp_path / "run"
    asvae_kit.build("mlp-asvae", steps=1, **SMALL).fit(run_dir=run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "device": "cuda"}))
    with pytest.warns(UserWarning, match="loading it on the CPU"):
        trainer = asvae_kit.load(run)
    assert trainer.device.type == "cpu" and trainer.sample(2).shape == (2, 1, 8, 8)


def test_fit_input_errors():
    from torch.utils.data import Dataset, IterableDataset

    trainer = asvae_kit.build("mlp-vae", data=None, data_shape=[1, 8, 8], **SMALL)
    with pytest.raises(asvae_kit.DataError, match="DataLoader or an image tensor"):
        trainer.fit(1, data=np.random.rand(8, 1, 8, 8))

    class Empty(Dataset):
        def __len__(self):
            return 0

        def __getitem__(self, i):
            raise IndexError(i)

    with pytest.raises(asvae_kit.DataError, match="empty"):
        trainer.fit(1, data=Empty())

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(torch.rand(20, 1, 8, 8))

    trainer.fit(2, data=Stream())
    assert trainer.step == 2
    with pytest.raises(ConfigError, match="non-negative integer"):
        trainer.fit(6.5, data=Stream())
    with pytest.raises(ValueError, match=r"z must have shape \[4, 4\]"):
        trainer.sample(4, z=torch.randn(10, 4))


def test_a_stale_metrics_file_is_not_appended_to(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("step,old\n1,2\n")
    asvae_kit.build("mlp-asvae", steps=2, log_every=1, **SMALL).fit(run_dir=run)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["step"] for r in rows] == ["1", "2"] and "old" not in rows[0]


@pytest.mark.parametrize("likelihood, sample_x", [("bernoulli", False), ("gaussian", True), ("laplace", False)])
def test_asvae_decodes_z_q_and_z_p_in_one_call_with_the_same_values(likelihood, sample_x):
    from asvae_kit.joint_batch import JointBatch

    trainer = asvae_kit.build("mlp-asvae", sample_x=sample_x, **{**SMALL, "decoder.likelihood": likelihood})
    x = torch.rand(16, 1, 8, 8, device=trainer.device)
    calls = []
    hook = trainer.decoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    z_p, z_m = torch.randn(16, 4), torch.randn(16, 4)
    assert trainer.algorithm.make_batch(x).decode_together
    torch.manual_seed(3)
    together = JointBatch(x, trainer.encoder, trainer.decoder, 4, z_p=z_p, z_m=z_m, sample_x=sample_x, decode_together=True)
    values_together = (together.log_px, together.x_p)  # log_px first: z_q takes the same noise in both
    assert calls == [32]
    torch.manual_seed(3)
    apart = JointBatch(x, trainer.encoder, trainer.decoder, 4, z_p=z_p, z_m=z_m, sample_x=sample_x)
    values_apart = (apart.log_px, apart.x_p)
    hook.remove()
    assert calls == [32, 16, 16]
    torch.testing.assert_close(values_together[0], values_apart[0], rtol=1e-5, atol=1e-4)
    if not sample_x:  # a sample draws its noise for all 32 rows at once, so only the means compare
        torch.testing.assert_close(values_together[1], values_apart[1], rtol=1e-5, atol=1e-6)


def test_a_decoder_with_batch_statistics_decodes_z_q_and_z_p_apart():
    from asvae_kit.algorithm import AlgorithmStep, uses_batch_statistics

    trainer = asvae_kit.build("mlp-asvae", **SMALL)
    assert trainer.algorithm.decode_together and not uses_batch_statistics(trainer.decoder)
    trainer.decoder.net.append(torch.nn.BatchNorm1d(64))  # rows of one call now see each other
    parts = ("encoder", "decoder", "discriminator", "divergence", "gen_optimizer", "disc_optimizer", "config", "dist", "guard")
    step = AlgorithmStep(**{name: getattr(trainer.algorithm, name) for name in parts})
    assert uses_batch_statistics(trainer.decoder) and not step.decode_together
    assert not step.make_batch(torch.rand(4, 1, 8, 8)).decode_together


def test_split_rows_score_x_itself_for_a_validating_torch_distribution():
    from torch.distributions import Bernoulli, Independent

    from asvae_kit.joint_batch import _Rows

    logits = torch.randn(6, 1, 2, 2)
    x = torch.randint(0, 2, (3, 1, 2, 2)).float()
    lik = Independent(Bernoulli(logits=logits, validate_args=True), 3)  # refuses values outside {0, 1}
    for start, stop, rows in ((0, 3, slice(0, 3)), (3, None, slice(3, 6))):
        expected = Independent(Bernoulli(logits=logits[rows]), 3).log_prob(x)
        torch.testing.assert_close(_Rows(lik, start, stop).log_prob(x), expected)


def test_split_rows_score_full_precision_x_under_a_half_precision_mean():
    from asvae_kit.distributions import GaussianLikelihood
    from asvae_kit.joint_batch import _Rows

    mean = torch.rand(4, 1, 2, 2).to(torch.bfloat16)
    log_scale = torch.zeros(1, 1, 1, 1)
    x = torch.rand(2, 1, 2, 2) + 1e-3  # not representable in bfloat16
    got = _Rows(GaussianLikelihood(mean, log_scale), 0, 2).log_prob(x)
    torch.testing.assert_close(got, GaussianLikelihood(mean[:2], log_scale).log_prob(x))
