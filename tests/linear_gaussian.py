"""A linear-Gaussian model registered as an outside plugin, shared by the closed-form tests.

The model is linear-Gaussian, so every quantity of docs/design.md §1 has a closed form:

    data      x ~ q(x) = N(mu, Sigma)                      (d_x = 3)
    encoder   z = A x + a + s_q eps,   q(z|x) = N(Ax + a, s_q^2 I)   (d_z = 2)
    decoder   x = B z + b + s_p eps,   p(x|z) = N(Bz + b, s_p^2 I),  p(z) = N(0, I)

The networks are registered the way an outside author would: a plugin module and a
``.dist-info`` with an ``asvae_kit`` entry point, written to a temporary directory on sys.path
(the ``linear_gaussian_plugin`` fixture in conftest.py).
"""

from __future__ import annotations

import math
import textwrap

import torch

import asvae_kit
# ------------------------------------------------------------------------------------------------
# The plugin, as an outside package would ship it.

PLUGIN_MODULE = "asvae_kit_closed_form_test_linear_gaussian"
ENTRY_POINT = "linear_gaussian"
DISTRIBUTION = "linear-gaussian-test"

PLUGIN_SOURCE = textwrap.dedent(
    '''
    """Linear-Gaussian encoder/decoder and two joint discriminators for asvae-kit."""

    import math

    import torch
    from torch import nn

    import asvae_kit
    from asvae_kit.distributions import GaussianLikelihood, GaussianPosterior

    _LOG_2PI = math.log(2.0 * math.pi)


    def _numel(data_shape):
        c, h, w = data_shape
        return int(c) * int(h) * int(w)


    class LinearGaussianEncoder(nn.Module):
        """q(z|x) = N(A x + a, exp(log_scale)^2 I)."""

        def __init__(self, *, data_shape, latent_dim, log_scale=0.0):
            super().__init__()
            self.A = nn.Parameter(torch.zeros(latent_dim, _numel(data_shape)))
            self.a = nn.Parameter(torch.zeros(latent_dim))
            self.log_scale = nn.Parameter(torch.tensor(float(log_scale)))

        def forward(self, x):
            mean = x.flatten(1) @ self.A.T + self.a
            return GaussianPosterior(mean, (2.0 * self.log_scale).expand_as(mean))


    class LinearGaussianDecoder(nn.Module):
        """p(x|z) = N(B z + b, exp(log_scale)^2 I), shaped as the data."""

        def __init__(self, *, data_shape, latent_dim, log_scale=0.0):
            super().__init__()
            self.data_shape = tuple(int(v) for v in data_shape)
            self.B = nn.Parameter(torch.zeros(_numel(data_shape), latent_dim))
            self.b = nn.Parameter(torch.zeros(_numel(data_shape)))
            self.log_scale = nn.Parameter(torch.tensor(float(log_scale)))

        def forward(self, z):
            mean = (z @ self.B.T + self.b).view(z.shape[0], *self.data_shape)
            return GaussianLikelihood(mean, self.log_scale.expand_as(mean))


    def _diag_gaussian_log_prob(v, mean, log_scale):
        d = v.shape[1]
        return -0.5 * ((v - mean) / log_scale.exp()).pow(2).sum(1) - d * log_scale - 0.5 * d * _LOG_2PI


    class OracleLogRatio(nn.Module):
        """features(x, z) = [g*(x, z), f*(x, z)], the optimal logits of a linear-Gaussian model:
        g* = log q(z|x) - log p(z), f* = log p(x|z) - log q(x).  The head combines them:
        logits "g,f" (identity, 2 heads), "g" or "g-f" (= log q(x,z)/p(x,z), ALI's optimum).
        The model is copied in by ``set_model`` as detached buffers: like a trained critic, this
        is a fixed function of (x, z), and no gradient reaches the encoder/decoder through it
        except through its inputs."""

        LOGITS = {"g,f": [[1.0, 0.0], [0.0, 1.0]], "g": [[1.0, 0.0]], "f": [[0.0, 1.0]], "g-f": [[1.0, -1.0]]}

        def __init__(self, *, data_shape, latent_dim, num_heads, logits="auto"):
            super().__init__()
            if logits == "auto":
                logits = {1: "g", 2: "g,f"}.get(num_heads)
            if logits not in self.LOGITS or len(self.LOGITS[logits]) != num_heads:
                raise ValueError(f"oracle-log-ratio: logits={logits!r} does not give {num_heads} head(s)")
            d_x = _numel(data_shape)
            self.head = nn.Linear(2, num_heads)
            with torch.no_grad():
                self.head.weight.copy_(torch.tensor(self.LOGITS[logits]))
                self.head.bias.zero_()
            for name, shape in (("A", (latent_dim, d_x)), ("a", (latent_dim,)), ("log_sq", ()),
                                ("B", (d_x, latent_dim)), ("b", (d_x,)), ("log_sp", ()),
                                ("mu", (d_x,)), ("chol", (d_x, d_x))):
                self.register_buffer(name, torch.zeros(shape))

        @torch.no_grad()
        def set_model(self, encoder, decoder, mu, cov):
            for mine, theirs in ((self.A, encoder.A), (self.a, encoder.a), (self.log_sq, encoder.log_scale),
                                 (self.B, decoder.B), (self.b, decoder.b), (self.log_sp, decoder.log_scale),
                                 (self.mu, mu), (self.chol, torch.linalg.cholesky(cov))):
                mine.copy_(theirs)

        def features(self, x, z):
            x = x.flatten(1)
            log_q_z_given_x = _diag_gaussian_log_prob(z, x @ self.A.T + self.a, self.log_sq)
            log_p_z = -0.5 * z.pow(2).sum(1) - 0.5 * z.shape[1] * _LOG_2PI
            log_p_x_given_z = _diag_gaussian_log_prob(x, z @ self.B.T + self.b, self.log_sp)
            w = torch.linalg.solve_triangular(self.chol, (x - self.mu).T, upper=False)
            log_q_x = -0.5 * w.pow(2).sum(0) - self.chol.diagonal().log().sum() - 0.5 * x.shape[1] * _LOG_2PI
            return torch.stack([log_q_z_given_x - log_p_z, log_p_x_given_z - log_q_x], dim=1)

        def forward(self, x, z):
            return self.head(self.features(x, z))


    class QuadraticDiscriminator(nn.Module):
        """features(x, z) = every monomial of degree 1 and 2 in u = (x, z); a trainable linear head.
        Gaussian log ratios are quadratic in (x, z), so the optimal logits are in its family."""

        def __init__(self, *, data_shape, latent_dim, num_heads):
            super().__init__()
            d = _numel(data_shape) + latent_dim
            rows, cols = torch.triu_indices(d, d)
            self.register_buffer("rows", rows)
            self.register_buffer("cols", cols)
            self.head = nn.Linear(d + rows.numel(), num_heads)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

        def features(self, x, z):
            u = torch.cat([x.flatten(1), z], dim=1)
            return torch.cat([u, u[:, self.rows] * u[:, self.cols]], dim=1)

        def forward(self, x, z):
            return self.head(self.features(x, z))


    @asvae_kit.hookimpl
    def register_encoders(register):
        register("linear-gaussian", LinearGaussianEncoder, description="z = A x + a + s_q eps")


    @asvae_kit.hookimpl
    def register_decoders(register):
        register("linear-gaussian", LinearGaussianDecoder, description="x = B z + b + s_p eps")


    @asvae_kit.hookimpl
    def register_discriminators(register):
        register("oracle-log-ratio", OracleLogRatio, description="closed-form optimal logits of a linear-Gaussian model")
        register("quadratic", QuadraticDiscriminator, description="all monomials of degree <= 2 of (x, z)")
    '''
)


# ------------------------------------------------------------------------------------------------
# The model's true parameters (chosen so that the symmetric KL of the joints is ~2.5 nats).

D_X, D_Z = 3, 2
MU = [0.3, -0.2, 0.1]
SIGMA_CHOL = [[1.0, 0.0, 0.0], [0.4, 0.8, 0.0], [-0.2, 0.3, 0.7]]
ENCODER = {"A": [[0.6, -0.3, 0.2], [0.1, 0.5, -0.4]], "a": [0.1, -0.2], "log_scale": math.log(0.7)}
DECODER = {"B": [[0.8, 0.1], [-0.2, 0.7], [0.3, -0.4]], "b": [0.2, -0.1, 0.05], "log_scale": math.log(0.6)}

Z = 5.0  # standard errors allowed between a Monte Carlo estimate and its closed form
CHUNKS, CHUNK = 20, 1 << 13  # 163,840 samples per Monte Carlo estimate


def data_params() -> tuple[torch.Tensor, torch.Tensor]:
    chol = torch.tensor(SIGMA_CHOL)
    return torch.tensor(MU), chol @ chol.T


def sample_data(n: int) -> torch.Tensor:
    """x ~ N(mu, Sigma) as a [n, 1, 1, d_x] batch of "images"."""
    mu = torch.tensor(MU)
    x = mu + torch.randn(n, D_X) @ torch.tensor(SIGMA_CHOL).T
    return x.view(n, 1, 1, D_X)


def make_trainer(divergence: str = "asvae", discriminator: str | dict = "oracle-log-ratio", **overrides):
    """A Trainer over the plugin's networks, set to the true parameters (oracle synced)."""
    config = {
        "encoder": "linear-gaussian",
        "decoder": "linear-gaussian",
        "discriminator": discriminator,
        "divergence": divergence,
        "data": None,
        "data_shape": [1, 1, D_X],
        "latent_dim": D_Z,
        "sample_x": True,
        "device": "cpu",
        "seed": 0,
    }
    trainer = asvae_kit.build(config, **overrides)
    with torch.no_grad():
        for module, values in ((trainer.encoder, ENCODER), (trainer.decoder, DECODER)):
            for name, value in values.items():
                getattr(module, name).copy_(torch.tensor(value))
    if trainer.discriminator is not None and hasattr(trainer.discriminator, "set_model"):
        trainer.discriminator.set_model(trainer.encoder, trainer.decoder, *data_params())
    return trainer


def generator_params(trainer) -> dict[str, torch.Tensor]:
    return {
        "encoder.A": trainer.encoder.A,
        "encoder.a": trainer.encoder.a,
        "encoder.log_scale": trainer.encoder.log_scale,
        "decoder.B": trainer.decoder.B,
        "decoder.b": trainer.decoder.b,
        "decoder.log_scale": trainer.decoder.log_scale,
    }
