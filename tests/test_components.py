"""Built-in networks serve every promised shape and refuse the others; distributions are right."""

from __future__ import annotations

import math

import pytest
import torch

import asvae_kit
from asvae_kit import distributions as D
from asvae_kit.errors import ConfigError, UnsupportedShapeError

SHAPES = [(1, 8, 8), (3, 8, 8), (1, 28, 28), (3, 28, 28), (1, 32, 32), (3, 32, 32), (1, 64, 64), (3, 64, 64)]
SMALL = {"mlp": {"hidden": [16]}, "resnet": {"width": 4}, "dcgan": {"width": 4}, "mlp-implicit": {"hidden": [16], "noise_dim": 3}}
DISC_SMALL = {"joint-mlp": {}, "joint-resnet": {"width": 4}, "joint-dcgan": {"width": 4}}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["mlp", "mlp-implicit", "resnet", "dcgan"])
def test_encoders_serve_every_supported_shape(name, shape):
    enc = asvae_kit.build_component("encoder", name, data_shape=shape, latent_dim=5, **SMALL[name])
    post = enc(torch.rand(3, *shape))
    z = post.rsample()
    assert z.shape == (3, 5) and post.mean.shape == (3, 5)
    assert post.log_prob(z).shape == (3,)
    z.sum().backward()  # reparameterised: gradients reach the weights
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["mlp", "resnet", "dcgan"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "laplace"])
def test_decoders_serve_every_supported_shape(name, shape, likelihood):
    dec = asvae_kit.build_component("decoder", name, data_shape=shape, latent_dim=5, likelihood=likelihood, **SMALL[name])
    lik = dec(torch.randn(3, 5))
    assert lik.mean.shape == (3, *shape)
    assert lik.mean.min() >= 0 and lik.mean.max() <= 1
    assert lik.log_prob(torch.rand(3, *shape)).shape == (3,)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["joint-mlp", "joint-resnet", "joint-dcgan"])
def test_discriminators_serve_every_supported_shape(name, shape):
    cfg = {"hidden": [16, 8]} | DISC_SMALL[name]
    disc = asvae_kit.build_component("discriminator", name, data_shape=shape, latent_dim=5, num_heads=2, **cfg)
    x, z = torch.rand(3, *shape), torch.randn(3, 5)
    h = disc.features(x, z)
    assert h.shape == (3, disc.head.in_features)
    assert disc(x, z).shape == (3, 2)
    torch.testing.assert_close(disc(x, z), disc.head(h))
    # rows are independent: stacking segments cannot change a row's logit
    torch.testing.assert_close(disc(x[:1], z[:1]), disc(x, z)[:1])


@pytest.mark.parametrize("shape", [(1, 16, 16), (2, 8, 8), (1, 28, 32), (4, 64, 64), (1, 7, 7)])
@pytest.mark.parametrize(
    "kind, name, extra",
    [("encoder", "mlp", {}), ("encoder", "mlp-implicit", {}), ("encoder", "resnet", {}), ("encoder", "dcgan", {}),
     ("decoder", "mlp", {}), ("decoder", "resnet", {}), ("decoder", "dcgan", {}),
     ("discriminator", "joint-mlp", {"num_heads": 1}), ("discriminator", "joint-resnet", {"num_heads": 1}),
     ("discriminator", "joint-dcgan", {"num_heads": 1})],
)
def test_unsupported_shapes_are_refused_with_what_is_served(kind, name, extra, shape):
    with pytest.raises(UnsupportedShapeError) as info:
        asvae_kit.build_component(kind, name, data_shape=shape, latent_dim=4, **extra)
    message = str(info.value)
    assert str(shape).replace(" ", "") in message.replace(" ", "")
    assert "28x28" in message and "64x64" in message


def test_wrong_input_shape_at_forward_time():
    enc = asvae_kit.build_component("encoder", "mlp", data_shape=(1, 8, 8), latent_dim=4)
    with pytest.raises(UnsupportedShapeError, match=r"\[B, 1, 8, 8\]"):
        enc(torch.rand(2, 1, 28, 28))
    dec = asvae_kit.build_component("decoder", "mlp", data_shape=(1, 8, 8), latent_dim=4)
    with pytest.raises(UnsupportedShapeError, match=r"\[B, 4\]"):
        dec(torch.randn(2, 5))


def test_bad_config_values():
    with pytest.raises(ConfigError, match="likelihood must be one of 'bernoulli', 'gaussian', 'laplace', got 'bernouli'. Did you mean 'bernoulli'"):
        asvae_kit.build_component("decoder", "mlp", data_shape=(1, 8, 8), latent_dim=4, likelihood="bernouli")
    with pytest.raises(ConfigError, match="width must be a positive integer"):
        asvae_kit.build_component("encoder", "resnet", data_shape=(1, 8, 8), latent_dim=4, width=0)
    with pytest.raises(ConfigError, match="lambda_x"):
        asvae_kit.build_component("divergence", "asvae", lambda_x=-1)


# -- distributions against torch.distributions, in float64 -------------------------------------


def test_gaussian_posterior_matches_torch_distributions():
    torch.manual_seed(0)
    mean, logvar = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    post = D.GaussianPosterior(mean, logvar)
    ref = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    z = torch.randn(6, 3, dtype=torch.float64)
    torch.testing.assert_close(post.log_prob(z), ref.log_prob(z).sum(-1))
    prior = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    torch.testing.assert_close(post.kl_standard_normal(), torch.distributions.kl_divergence(ref, prior).sum(-1))
    samples = D.GaussianPosterior(mean[:1].expand(200000, 3), logvar[:1].expand(200000, 3)).rsample()
    torch.testing.assert_close(samples.mean(0), mean[0], atol=0.02, rtol=0)
    torch.testing.assert_close(samples.var(0), torch.exp(logvar[0]), atol=0.05, rtol=0.02)


def test_likelihoods_match_torch_distributions():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 3, 3, dtype=torch.float64)
    logits = torch.randn(4, 1, 3, 3, dtype=torch.float64)
    bern = D.BernoulliLikelihood(logits)
    # the BCE form (not ContinuousBernoulli, whose normaliser differs)
    expected = (x * torch.nn.functional.logsigmoid(logits) + (1 - x) * torch.nn.functional.logsigmoid(-logits)).flatten(1).sum(1)
    torch.testing.assert_close(bern.log_prob(x), expected)
    mean, log_scale = torch.rand(4, 1, 3, 3, dtype=torch.float64), torch.randn(4, 1, 3, 3, dtype=torch.float64) * 0.3
    gauss = D.GaussianLikelihood(mean, log_scale)
    torch.testing.assert_close(gauss.log_prob(x), torch.distributions.Normal(mean, log_scale.exp()).log_prob(x).flatten(1).sum(1))
    lap = D.LaplaceLikelihood(mean, log_scale)
    torch.testing.assert_close(lap.log_prob(x), torch.distributions.Laplace(mean, log_scale.exp()).log_prob(x).flatten(1).sum(1))
    draws = D.LaplaceLikelihood(torch.zeros(200000, 1), torch.full((200000, 1), math.log(0.5))).rsample()
    assert abs(draws.abs().mean().item() - 0.5) < 0.01  # E|x| = b for Laplace(0, b)
    with pytest.raises(NotImplementedError, match="gaussian"):
        bern.rsample()


def test_implicit_posterior_density_is_gaussian_around_its_mean():
    z, mean = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    post = D.ImplicitPosterior(z, mean, torch.tensor([0.1, -0.2], dtype=torch.float64))
    assert post.rsample() is z
    ref = torch.distributions.Normal(mean, torch.exp(torch.tensor([0.1, -0.2], dtype=torch.float64)))
    torch.testing.assert_close(post.log_prob(z), ref.log_prob(z).sum(-1))
    assert not hasattr(post, "kl_standard_normal")
