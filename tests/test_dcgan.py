"""The ``dcgan`` encoder and decoder, the ``joint-dcgan`` discriminator and the ``dcgan-*`` presets.

tests/test_components.py checks every built-in network against the component contracts; this
file checks what is particular to the DCGAN networks: the layer plan per image size, gradients
reaching every weight, densities at the pixel extremes, rows that stay independent in the
discriminator (also in train mode), the optional BatchNorm and what it changes in a step, and
that each preset trains.  Widths are tiny (``width=4``) so every case is fast.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import asvae_kit
from asvae_kit.config import resolve_config
from asvae_kit.algorithm import uses_batch_statistics
from asvae_kit.errors import ConfigError, UnsupportedShapeError
from asvae_kit.plugins.blocks import dcgan_sizes

SIZES = (8, 28, 32, 64)
SHAPES = [(c, s, s) for s in SIZES for c in (1, 3)]
LATENT = 5
#: the strided layers per size: halve while even and above 4
PLAN = {8: [8, 4], 28: [28, 14, 7], 32: [32, 16, 8, 4], 64: [64, 32, 16, 8, 4]}
PRESETS = ["dcgan-vae", "dcgan-avb", "dcgan-ali", "dcgan-asvae"]
DIVERGENCE = {"vae": "elbo", "avb": "avb", "ali": "ali", "asvae": "asvae"}
TINY = {"encoder.width": 4, "decoder.width": 4, "discriminator.width": 4, "discriminator.hidden": [16, 16]}


def encoder(shape, **cfg):
    return asvae_kit.build_component("encoder", "dcgan", data_shape=shape, latent_dim=LATENT, **({"width": 4} | cfg))


def decoder(shape, **cfg):
    return asvae_kit.build_component("decoder", "dcgan", data_shape=shape, latent_dim=LATENT, **({"width": 4} | cfg))


def discriminator(shape, num_heads=2, **cfg):
    cfg = {"width": 4, "hidden": [16, 8]} | cfg
    return asvae_kit.build_component("discriminator", "joint-dcgan", data_shape=shape, latent_dim=LATENT, num_heads=num_heads, **cfg)


# -- the layer plan ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_layer_plan_halves_while_even_and_mirrors_in_the_decoder(size):
    assert dcgan_sizes(size) == PLAN[size]
    steps = len(PLAN[size]) - 1
    enc, dec = encoder((1, size, size), width=3), decoder((1, size, size), width=3)
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.stride) for m in convs] == [
        (1 if i == 0 else 3 * 2 ** (i - 1), 3 * 2**i, (4, 4), (2, 2)) for i in range(steps)
    ]
    smallest = PLAN[size][-1]
    assert enc.head.linear.in_features == 3 * 2 ** (steps - 1) * smallest * smallest
    ups = [m for m in dec.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.stride) for m in ups] == [
        (3 * 2 ** (steps - 1 - i), 1 if i == steps - 1 else 3 * 2 ** (steps - 2 - i), (4, 4), (2, 2)) for i in range(steps)
    ]
    assert dec.net.fc.out_features == 3 * 2 ** (steps - 1) * smallest * smallest


def test_default_widths_are_32_and_64_at_28x28():
    enc = asvae_kit.build_component("encoder", "dcgan", data_shape=(1, 28, 28), latent_dim=16)
    assert [m.out_channels for m in enc.modules() if isinstance(m, nn.Conv2d)] == [32, 64]
    assert asvae_kit.describe("dcgan", "encoder")["config"] == {"width": 32, "batch_norm": False}
    assert asvae_kit.describe("dcgan", "decoder")["config"] == {"width": 32, "likelihood": "bernoulli", "init_scale": 0.1, "batch_norm": False}
    assert asvae_kit.describe("joint-dcgan", "discriminator")["config"]["width"] == 32


# -- the contracts at every size and channel count -----------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_encoder_posterior_and_gradients_reach_every_parameter(shape):
    torch.manual_seed(0)
    enc = encoder(shape)
    post = enc(torch.rand(4, *shape))
    assert post.mean.shape == post.logvar.shape == (4, LATENT)
    z = post.rsample()
    assert z.shape == (4, LATENT)
    assert post.log_prob(z).shape == (4,) and post.kl_standard_normal().shape == (4,)
    (z * torch.randn_like(z)).sum().backward()
    missing = [name for name, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing}"


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "laplace"])
@pytest.mark.parametrize("shape", SHAPES)
def test_decoder_mean_and_finite_log_prob_at_the_pixel_extremes(shape, likelihood):
    torch.manual_seed(0)
    dec = decoder(shape, likelihood=likelihood)
    lik = dec(3 * torch.randn(4, LATENT))  # codes far out, logits far from 0
    assert lik.mean.shape == (4, *shape)
    assert lik.mean.min() >= 0 and lik.mean.max() <= 1
    for x in (torch.zeros(4, *shape), torch.ones(4, *shape), torch.rand(4, *shape)):
        log_p = lik.log_prob(x)
        assert log_p.shape == (4,) and torch.isfinite(log_p).all()


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("shape", SHAPES)
def test_discriminator_rows_do_not_depend_on_the_rows_stacked_with_them(shape, mode):
    torch.manual_seed(0)
    disc = discriminator(shape)
    disc.train(mode == "train")
    assert not uses_batch_statistics(disc)
    x, z = torch.rand(6, *shape), torch.randn(6, LATENT)
    stacked = disc(x, z)
    assert stacked.shape == (6, 2)
    assert disc.features(x, z).shape == (6, disc.head.in_features)
    for rows in (slice(0, 1), slice(2, 5)):
        torch.testing.assert_close(disc(x[rows], z[rows]), stacked[rows])
    # and a row's logit does change with its own x and its own z
    assert not torch.allclose(disc(x[1:2], z[:1]), stacked[:1])
    assert not torch.allclose(disc(x[:1], z[1:2]), stacked[:1])


def test_discriminator_regularisers():
    shape = (1, 28, 28)
    disc = discriminator(shape, dropout=0.3, spectral_norm=True)
    x_dropouts = [m for m in disc.x_branch.modules() if isinstance(m, nn.Dropout)]
    assert len(x_dropouts) == 2 and all(m.p == 0.3 for m in x_dropouts)  # one per convolution
    convs = [m for m in disc.x_branch.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(nn.utils.parametrize.is_parametrized(m, "weight") for m in convs)
    disc.eval()  # dropout off: rows are independent again
    x, z = torch.rand(4, *shape), torch.randn(4, LATENT)
    torch.testing.assert_close(disc(x[:1], z[:1]), disc(x, z)[:1])
    plain = discriminator(shape)
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())
    with pytest.raises(ConfigError, match=r"discriminator 'joint-dcgan': dropout must be a number in \[0, 1\), got 1.5"):
        discriminator(shape, dropout=1.5)


# -- BatchNorm: optional in the encoder and decoder, off by default --------------------------------


def test_batch_norm_is_off_by_default_and_optional():
    shape = (1, 32, 32)
    assert not uses_batch_statistics(encoder(shape)) and not uses_batch_statistics(decoder(shape))
    enc, dec = encoder(shape, batch_norm=True), decoder(shape, batch_norm=True)
    # DCGAN's placement: none on the encoder's first convolution, one before every decoder activation
    assert sum(isinstance(m, nn.BatchNorm2d) for m in enc.modules()) == 2
    assert sum(isinstance(m, nn.BatchNorm2d) for m in dec.modules()) == 3
    post = enc(torch.rand(4, *shape))
    lik = dec(post.rsample())
    assert lik.mean.shape == (4, *shape) and torch.isfinite(lik.log_prob(torch.rand(4, *shape))).all()
    with pytest.raises(ConfigError, match="batch_norm must be true or false, got 'yes'"):
        encoder(shape, batch_norm="yes")
    with pytest.raises(ConfigError, match="width must be a positive integer, got 0"):
        decoder(shape, width=0)


def test_a_batch_norm_decoder_is_decoded_per_batch():
    common = dict(data=None, data_shape=[1, 28, 28], batch_size=8, **TINY)
    assert asvae_kit.build("dcgan-asvae", **common).algorithm.decode_together
    trainer = asvae_kit.build("dcgan-asvae", **common, **{"encoder.batch_norm": True, "decoder.batch_norm": True}, log_every=1)
    assert not trainer.algorithm.decode_together
    trainer.fit(2, data=torch.rand(16, 1, 28, 28))
    assert all(math.isfinite(row["g_loss"]) and math.isfinite(row["d_loss"]) for row in trainer.history)


def test_shapes_it_cannot_serve_are_refused():
    # 16x16 would halve cleanly, but it is not a size the built-in networks promise
    with pytest.raises(UnsupportedShapeError, match=r"encoder 'dcgan' cannot serve .*\(1, 16, 16\).*28x28"):
        encoder((1, 16, 16))
    with pytest.raises(UnsupportedShapeError, match=r"discriminator 'joint-dcgan' cannot serve .*\(2, 28, 28\)"):
        discriminator((2, 28, 28))
    with pytest.raises(UnsupportedShapeError, match=r"\[B, 1, 28, 28\], got \[2, 1, 32, 32\]"):
        encoder((1, 28, 28))(torch.rand(2, 1, 32, 32))
    with pytest.raises(UnsupportedShapeError, match=r"\[B, 5\], got \[2, 4\]"):
        decoder((1, 28, 28))(torch.randn(2, 4))


# -- presets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_fits_two_steps_on_28x28_images(preset):
    variant = preset.split("-")[1]
    trainer = asvae_kit.build(preset, data=None, data_shape=[1, 28, 28], batch_size=16, log_every=1, **TINY)
    config = trainer.config
    assert (config["encoder"]["name"], config["decoder"]["name"]) == ("dcgan", "dcgan")
    assert config["discriminator"]["name"] == "joint-dcgan"
    assert config["divergence"]["name"] == DIVERGENCE[variant]
    trainer.fit(2, data=torch.rand(64, 1, 28, 28))
    assert trainer.step == 2 and len(trainer.history) == 2
    for row in trainer.history:
        losses = {k: v for k, v in row.items() if k in ("d_loss", "g_loss", "l_x", "l_z", "skl", "kl")}
        assert "g_loss" in losses and all(math.isfinite(v) for v in losses.values()), f"{preset}: {row}"


def test_presets_are_registered_and_differ_only_in_the_divergence():
    assert set(PRESETS) <= set(asvae_kit.list_components("preset"))
    configs = {p: resolve_config(p) for p in PRESETS}  # describe() shows only a preset's departures
    shared = {k: v for k, v in configs["dcgan-vae"].items() if k not in ("divergence", "optim")}
    assert shared["encoder"] == {"name": "dcgan", "width": 32}
    assert shared["data"] == {"name": "digits"}
    for p in PRESETS:
        assert {k: v for k, v in configs[p].items() if k not in ("divergence", "optim")} == shared
        assert "DCGAN" in asvae_kit.describe(p)["description"]


def test_default_preset_trains_on_the_bundled_8x8_digits():
    trainer = asvae_kit.build("dcgan-asvae", steps=1, batch_size=16, log_every=1)
    assert trainer.data_shape == (1, 8, 8)
    trainer.fit()
    assert trainer.step == 1 and math.isfinite(trainer.history[0]["g_loss"])


@pytest.mark.slow
def test_the_networks_trace_without_a_graph_break():
    """``compile: true`` compiles each network whole (``fullgraph``); Dynamo alone checks that here."""
    shape = (3, 32, 32)
    enc, dec, disc = encoder(shape, batch_norm=True), decoder(shape, likelihood="gaussian"), discriminator(shape, dropout=0.1)

    def step(x: torch.Tensor, z: torch.Tensor):
        post = enc(x)
        return post.log_prob(z), dec(post.rsample()).log_prob(x), disc.features(x, z)

    torch._dynamo.reset()
    try:
        log_q, log_p, h = torch.compile(step, backend="eager", fullgraph=True)(torch.rand(2, *shape), torch.randn(2, LATENT))
    finally:
        torch._dynamo.reset()
    assert log_q.shape == log_p.shape == (2,) and h.shape == (2, disc.head.in_features)
