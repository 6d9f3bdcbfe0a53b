"""The built-in metrics (plugins/metrics.py) against closed forms and hand computations."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import asvae_kit
from asvae_kit.plugins.classifier import FeatureClassifier, classifier_features, frechet_distance, project_classifier
from asvae_kit.evaluation import MetricNotApplicable
from asvae_kit.plugins import metrics
from linear_gaussian import D_X, DECODER, make_trainer, sample_data


# ------------------------------------------------------------------------------------------------
# nll: the importance-weighted bound against the linear-Gaussian model's exact marginal


def exact_nll(x: torch.Tensor) -> torch.Tensor:
    """-log p(x) per row for p(x) = N(b, B B^T + s_p^2 I), the decoder's exact marginal."""
    B, b = torch.tensor(DECODER["B"]), torch.tensor(DECODER["b"])
    cov = B @ B.T + math.exp(2 * DECODER["log_scale"]) * torch.eye(D_X)
    return -torch.distributions.MultivariateNormal(b, cov).log_prob(x.flatten(1))


def test_nll_converges_to_the_exact_marginal_likelihood(plugin, float64):
    trainer = make_trainer("elbo")
    torch.manual_seed(0)
    x = sample_data(1000)
    exact = exact_nll(x).mean().item()
    estimates = {}
    for k in (1, 10, 100, 1000):
        torch.manual_seed(1)
        with torch.no_grad():  # the data is Gaussian, not images in [0, 1]: call the metric itself
            out = metrics.nll(trainer, x, k=k, n=1000)
        estimates[k] = out["nll"]
        assert out["nll_k"] == k and out["nll_n"] == 1000
    # An upper bound on -log p(x) that tightens as k grows: the encoder is not the true posterior,
    # so the one-sample bound (the ELBO) is loose by about half a nat here (measured: 0.51)...
    assert estimates[1] > estimates[10] > estimates[100] > estimates[1000]
    assert estimates[1] - exact > 0.3
    # ...and at k = 1000 it is within Monte Carlo error of the closed form (measured: +0.001 nats;
    # the same images enter both, so only the importance-sampling noise is left).
    assert exact - 0.005 <= estimates[1000] < exact + 0.01


def test_nll_refuses_an_implicit_encoder():
    trainer = asvae_kit.build("mlp-avb", encoder="mlp-implicit", steps=0, device="cpu", **{"data.limit": 40})
    with pytest.raises(MetricNotApplicable, match="explicit encoder"):
        trainer.evaluate(["nll:k=2"])
    # in the run's default set it becomes a note instead of an error
    trainer.config["metrics"] = ["recon", "nll"]
    out = trainer.evaluate()
    assert "nll" in out.notes and "recon_mse" in out and "nll" not in out


def test_nll_options_are_checked():
    trainer = asvae_kit.build("mlp-vae", steps=0, device="cpu", **{"data.limit": 40})
    with pytest.raises(asvae_kit.ConfigError, match="positive integer"):
        trainer.evaluate(["nll:k=0"])
    with pytest.raises(asvae_kit.ConfigError, match="Did you mean 'k'"):
        trainer.evaluate(["nll:kk=3"])


# ------------------------------------------------------------------------------------------------
# recon: a hand computation


def test_recon_matches_a_hand_computation():
    x = torch.tensor([[[[0.0, 1.0]]], [[[0.5, 0.25]]]])  # two 1x1x2 "images"
    r = torch.tensor([[[[0.5, 0.5]]], [[[0.5, 0.75]]]])
    stub = SimpleNamespace(reconstruct=lambda batch: r[: len(batch)])
    out = metrics.recon(stub, x)
    # squared errors 0.25, 0.25, 0, 0.25 over 4 pixels
    assert out["recon_mse"] == pytest.approx(0.75 / 4)
    bce = [-math.log(0.5), -math.log(0.5), -math.log(0.5), -(0.25 * math.log(0.75) + 0.75 * math.log(0.25))]
    assert out["recon_bce"] == pytest.approx(sum(bce) / 4, rel=1e-5)
    # mean image (0.25, 0.625): squared deviations 0.0625, 0.140625, 0.0625, 0.140625
    assert out["mean_image_mse"] == pytest.approx(0.40625 / 4)


# ------------------------------------------------------------------------------------------------
# fd: the project classifier's Fréchet distance


@pytest.fixture(scope="module")
def digits_classifier():
    from asvae_kit.plugins.datasets import load_digits

    data = load_digits()
    info = project_classifier(data.images, data.labels, steps=150)
    return info, data


def test_project_classifier_is_cached_and_reproducible(digits_classifier):
    info, data = digits_classifier
    assert not info.cached and info.path is not None and info.path.is_file()
    assert info.train_accuracy > 0.8
    again = project_classifier(data.images, data.labels, steps=150)
    assert again.cached and again.key == info.key
    for a, b in zip(info.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    other = project_classifier(data.images[:500], data.labels[:500], steps=20)
    assert other.key != info.key


def test_fd_is_zero_for_a_set_against_itself_and_grows_with_noise(digits_classifier):
    info, data = digits_classifier
    x = data.images[:600]
    real = classifier_features(info.model, x)
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-6)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=generator)
    distances = [frechet_distance(real, classifier_features(info.model, (x + s * noise).clamp(0, 1))) for s in (0.05, 0.1, 0.2, 0.4)]
    assert distances[0] > 0
    assert all(a < b for a, b in zip(distances, distances[1:])), distances


def test_frechet_distance_matches_the_closed_form_for_gaussians():
    # FD of N(m1, S1) and N(m2, S2) with commuting (diagonal) covariances is
    # |m1 - m2|^2 + sum (sqrt(s1) - sqrt(s2))^2; large samples come close to it.
    generator = torch.Generator().manual_seed(0)
    s1, s2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([2.0, 1.0, 1.0])
    a = torch.randn(200_000, 3, generator=generator, dtype=torch.float64) * s1.sqrt()
    b = torch.randn(200_000, 3, generator=generator, dtype=torch.float64) * s2.sqrt() + torch.tensor([1.0, 0.0, -1.0])
    exact = 2.0 + ((s1.sqrt() - s2.sqrt()) ** 2).sum().item()
    assert frechet_distance(a, b) == pytest.approx(exact, rel=0.02)


def test_fd_needs_labels(tmp_path):
    import numpy as np

    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((30, 8, 8), dtype=np.float32))
    trainer = asvae_kit.build("mlp-vae", steps=0, device="cpu", data={"name": "tensor", "path": str(tmp_path / "x.npy")})
    with pytest.raises(MetricNotApplicable, match="needs labels"):
        trainer.evaluate(["fd"])
    trainer.config["metrics"] = ["recon", "fd", "probe"]
    out = trainer.evaluate()
    assert set(out.notes) == {"fd", "probe"} and "recon_mse" in out


def test_feature_classifier_serves_other_shapes():
    model = FeatureClassifier((3, 32, 32), 10)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert model.features(torch.rand(2, 3, 32, 32)).shape == (2, 128)


# ------------------------------------------------------------------------------------------------
# probe, skl, fid/is


def test_probe_on_pixels_separates_the_digits():
    from asvae_kit.plugins.datasets import load_digits

    data = load_digits()
    trainer = asvae_kit.build("mlp-vae", steps=0, device="cpu")
    trainer.encode = lambda x: x.flatten(1)  # a linear probe on the raw pixels
    test = trainer.split_data("test").dataset
    out = metrics.probe(trainer, test.images, labels=test.labels)
    assert out["probe_acc"] > 0.85
    with pytest.raises(MetricNotApplicable, match="labelled"):
        metrics.probe(trainer, data.images[:10], labels=None)


@pytest.mark.parametrize("preset, has_skl", [("mlp-asvae", True), ("mlp-ali", True), ("mlp-avb", False), ("mlp-vae", False)])
def test_skl_where_the_divergence_estimates_it(preset, has_skl):
    trainer = asvae_kit.build(preset, steps=0, device="cpu", **{"data.limit": 60})
    if has_skl:
        first = trainer.evaluate(["skl"])["skl"]
        assert math.isfinite(first)
        assert trainer.evaluate(["skl"])["skl"] == first  # seeded: repeatable
    else:
        with pytest.raises(MetricNotApplicable, match="symmetric-KL"):
            trainer.evaluate(["skl"])


def test_fid_and_is_say_what_they_need():
    trainer = asvae_kit.build("mlp-vae", steps=0, device="cpu", **{"data.limit": 40})
    for name in ("fid", "is"):
        with pytest.raises(MetricNotApplicable, match="torch-fidelity|Inception weights"):
            trainer.evaluate([name])


def test_old_metrics_still_run():
    trainer = asvae_kit.build("mlp-asvae", steps=0, device="cpu", **{"data.limit": 60})
    out = trainer.evaluate(["reconstruction-mse", "elbo-bound", "objective"])
    assert {"recon_mse", "mean_image_mse", "elbo", "log_px", "kl", "objective_skl", "objective_l_x"} <= set(out)
    assert out["elbo"] == pytest.approx(out["log_px"] - out["kl"])


# ------------------------------------------------------------------------------------------------
# metrics you can trust: repeatable, no effect on training, the right weights

TINY = {"encoder.hidden": [16], "decoder.hidden": [16], "discriminator.hidden": [16], "latent_dim": 4, "batch_size": 8,
        "device": "cpu", "eval_size": 48, "log_every": 0}
#: every built-in metric that runs on digits (fid/is need torch-fidelity's weights)
ALL_METRICS = ["recon", "nll:k=4:n=16", "fd", "skl", "probe:max_train=200", "reconstruction-mse", "elbo-bound", "objective"]


@pytest.fixture
def quick_classifier(monkeypatch):
    """fd's project classifier trained in 20 steps (a recipe of its own, so its own cache entry)."""
    from asvae_kit.plugins import classifier

    monkeypatch.setitem(classifier.RECIPE, "steps", 20)


@pytest.mark.parametrize("ema", [None, 0.9])
def test_evaluating_twice_gives_identical_numbers_and_leaves_the_rng_alone(quick_classifier, ema):
    trainer = asvae_kit.build("mlp-asvae", steps=3, ema=ema, **TINY).fit(progress=False)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = trainer.evaluate(ALL_METRICS, split="val")
    assert torch.equal(torch.get_rng_state(), state)  # evaluate() draws from a fork of the global RNG
    torch.rand(5)  # whatever the caller's random state is...
    second = trainer.evaluate(ALL_METRICS, split="val")
    assert {"nll", "skl", "fd", "objective_skl", "elbo", "probe_acc"} <= set(first)
    assert dict(first) == dict(second)  # ...the numbers are the same, to the bit
    reseeded = trainer.evaluate(["nll:k=4:n=16:seed=1", "skl:seed=1"], split="val")
    assert reseeded["nll"] != first["nll"] and reseeded["skl"] != first["skl"]  # the seed option is what they draw from


@pytest.mark.parametrize("ema", [None, 0.9])
def test_a_mid_run_evaluation_leaves_training_bit_identical(quick_classifier, ema):
    config = {**TINY, "ema": ema, "log_every": 1, "discriminator.dropout": 0.3}  # dropout: the train/eval mode matters to the step
    unbroken = asvae_kit.build("mlp-asvae", steps=6, **config).fit(progress=False)
    trainer = asvae_kit.build("mlp-asvae", steps=6, **config).fit(3, progress=False)
    modes = {name: [m.training for m in net.modules()] for name, net in trainer.networks()}
    trainer.evaluate(ALL_METRICS)
    trainer.evaluate(["recon"], split="val")
    trainer.sample(4, seed=0)  # seeded: its own generator (unseeded, it draws from the global RNG, as torch.randn does)
    trainer.reconstruct(trainer.split_data("val").dataset.images[:2])
    assert {name: [m.training for m in net.modules()] for name, net in trainer.networks()} == modes  # modes restored
    trainer.fit(6, progress=False)
    a, b = unbroken.state_tensors(), trainer.state_tensors()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    for key in ("g_loss", "d_loss", "skl"):  # every step's losses, to the bit
        assert [row[key] for row in trainer.history] == [row[key] for row in unbroken.history], key
    if ema:
        assert trainer.ema.updates == unbroken.ema.updates == 6


def test_discriminator_metrics_use_the_raw_weights_the_discriminator_was_trained_against():
    trainer = asvae_kit.build("mlp-asvae", steps=3, ema=0.9, **TINY).fit(progress=False)
    with torch.no_grad():  # an average far from the raw weights
        for average in trainer.ema.average.values():
            for tensor in average.values():
                tensor.add_(0.5)
    with_ema = trainer.evaluate(["skl", "objective", "recon"])
    ema, trainer.ema = trainer.ema, None
    raw = trainer.evaluate(["skl", "objective", "recon"])
    trainer.ema = ema
    for key in ("skl", "objective_skl", "objective_g_loss", "objective_l_x", "objective_l_z"):
        assert with_ema[key] == raw[key], key  # skl and objective read the raw weights...
    assert with_ema["recon_mse"] != pytest.approx(raw["recon_mse"], rel=1e-6)  # ...the others the average
    assert metrics.skl.weights == "raw" and metrics.objective.weights == "raw" and not hasattr(metrics.recon, "weights")


def test_a_raw_weights_metric_sees_raw_weights_through_every_trainer_method(monkeypatch):
    import dataclasses

    from asvae_kit.plugin_manager import get_registry

    trainer = asvae_kit.build("mlp-vae", steps=2, ema=0.9, **TINY).fit(progress=False)
    z = torch.zeros(1, 4)
    raw_image = trainer.decoder(z).mean.detach()
    average_image = trainer.sample(1, z=z)
    assert not torch.equal(raw_image, average_image)

    def peek(trainer, data):
        return {"direct": float(trainer.decoder(z).mean.sum()), "sampled": float(trainer.sample(1, z=z).sum())}

    for weights, expected in (("raw", raw_image), ("average", average_image)):
        peek.weights = weights
        entry = dataclasses.replace(get_registry().get("metric", "recon"), factory=peek)
        monkeypatch.setitem(get_registry()._entries["metric"], "recon", entry)
        out = trainer.evaluate(["recon"])
        assert out["direct"] == pytest.approx(float(expected.sum()), abs=1e-6) and out["sampled"] == pytest.approx(out["direct"], abs=1e-6)
    assert torch.equal(trainer.decoder(z).mean, raw_image)  # and the raw weights are back


def test_a_metric_with_a_bad_weights_attribute_fails_to_load(tmp_path, monkeypatch):
    import sys
    import warnings

    from asvae_kit.plugin_manager import get_registry, reset_registry
    from asvae_kit.registry import metric_weights
    from plugin_helpers import install_plugin

    source = """
        import asvae_kit

        def critic(trainer, data):
            return {}

        critic.weights = "ema"

        @asvae_kit.hookimpl
        def register_metrics(register):
            register("critic", critic)
    """
    install_plugin(tmp_path, dist="bad-weights", module="bad_weights_plugin", source=source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("ASVAE_KIT_LOAD_PLUGINS", raising=False)
    reset_registry()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            record = next(r for r in get_registry().plugins if r.name == "bad_weights_plugin")
        assert record.status == "failed" and "weights = 'ema'; it must be 'average'" in record.reason
    finally:
        reset_registry()
        sys.modules.pop("bad_weights_plugin", None)
    assert metric_weights(lambda trainer, data: {}) == "average"

    def critic(trainer, data):
        return {}

    critic.weights = 1
    with pytest.raises(asvae_kit.ConfigError, match="metric 'critic' sets weights = 1; it must be 'average'.* or 'raw'"):
        metric_weights(critic)


def test_nll_se_is_the_standard_error_over_images(plugin, float64):
    # With k = 1000 each image's bound is within a few thousandths of a nat of its exact -log p(x)
    # (test_nll_converges_to_the_exact_marginal_likelihood), so the standard error over images is
    # the exact values' standard deviation / sqrt(n), whatever the importance-sampling noise.
    trainer = make_trainer("elbo")
    torch.manual_seed(0)
    x = sample_data(64)
    with torch.no_grad():
        out = metrics.nll(trainer, x, k=1000, n=64)
    exact = exact_nll(x)
    assert out["nll_se"] == pytest.approx((exact.std() / math.sqrt(64)).item(), rel=0.02)
    assert "standard error of the estimate over images" in " ".join(metrics.nll.__doc__.split())
