"""The built-in metrics (plugins/metrics.py) against closed forms and hand computations."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import asvae_kit
from asvae_kit.classifier import FeatureClassifier, classifier_features, frechet_distance, project_classifier
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
