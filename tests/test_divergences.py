"""Closed-form checks of the estimators in ``plugins/divergences.py`` (docs/design.md §1).

The model is linear-Gaussian, so every quantity of §1 has a closed form:

    data      x ~ q(x) = N(mu, Sigma)                      (d_x = 3)
    encoder   z = A x + a + s_q eps,   q(z|x) = N(Ax + a, s_q^2 I)   (d_z = 2)
    decoder   x = B z + b + s_p eps,   p(x|z) = N(Bz + b, s_p^2 I),  p(z) = N(0, I)

Both joints q(x,z) = q(x)q(z|x) and p(x,z) = p(z)p(x|z) are Gaussian, hence KL(q||p), KL(p||q),
L_x, L_z and the optimal logits g* = log q(z|x) - log p(z), f* = log p(x|z) - log q(x) are known
exactly.  The networks are registered the way an outside author would: a plugin module and a
``.dist-info`` with an ``asvae_kit`` entry point, written to a temporary directory on sys.path.
x is carried as a [B, 1, 1, d_x] "image" (data_shape (1, 1, 3)) and flattened inside the plugin's
networks; ``sample_x=true`` makes x_p = Bz + b + s_p eps, so the decoder joint is exactly p(x,z).

Monte Carlo tolerances: an estimate is the mean of ``CHUNKS`` independent chunk estimates (or of
per-sample terms), its standard error (SE) is the spread of those divided by sqrt(n), and a check
passes when |estimate - closed form| <= Z * SE (Z = 5: a false alarm is a ~6e-7 event per
number; every test is seeded, so runs are reproducible anyway).  Each such test also checks that
its SE is small next to the quantity tested, so a wrong formula could not hide in the noise.
"""

from __future__ import annotations

import math

import pytest
import torch
from linear_gaussian import (
    CHUNK,
    CHUNKS,
    D_X,
    D_Z,
    DISTRIBUTION,
    ENTRY_POINT,
    Z,
    data_params,
    generator_params,
    make_trainer,
    sample_data,
)

import asvae_kit
from asvae_kit.errors import ConfigError
from asvae_kit.divergence import MEAN, SOFTPLUS, SOFTPLUS_NEG, head_statistics
from asvae_kit.joint_batch import JointBatch

# ------------------------------------------------------------------------------------------------
# Closed forms (differentiable torch functions of the parameters).

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_kl(m0, S0, m1, S1) -> torch.Tensor:
    """KL(N(m0, S0) || N(m1, S1))."""
    k = m0.numel()
    d = m1 - m0
    S1_inv = torch.linalg.inv(S1)
    return 0.5 * (torch.trace(S1_inv @ S0) + d @ S1_inv @ d - k + torch.logdet(S1) - torch.logdet(S0))


def gaussian_entropy(S) -> torch.Tensor:
    return 0.5 * (S.shape[0] * (1.0 + _LOG_2PI) + torch.logdet(S))


def expected_gaussian_log_prob(m, S, m1, S1) -> torch.Tensor:
    """E_{v ~ N(m, S)} log N(v; m1, S1)."""
    return -gaussian_kl(m, S, m1, S1) - gaussian_entropy(S)


def gaussian_log_prob(v, m, S) -> torch.Tensor:
    """log N(v; m, S) per row of v."""
    chol = torch.linalg.cholesky(S)
    w = torch.linalg.solve_triangular(chol, (v - m).T, upper=False)
    return -0.5 * w.pow(2).sum(0) - chol.diagonal().log().sum() - 0.5 * m.numel() * _LOG_2PI


def joints(p: dict[str, torch.Tensor]):
    """Mean and covariance over (x, z) of the encoder joint q(x,z) and the decoder joint p(x,z)."""
    mu, Sigma = data_params()
    A, a, sq = p["encoder.A"], p["encoder.a"], p["encoder.log_scale"].exp()
    B, b, sp = p["decoder.B"], p["decoder.b"], p["decoder.log_scale"].exp()
    Iz, Ix = torch.eye(D_Z), torch.eye(D_X)
    m_q = torch.cat([mu, A @ mu + a])
    C_q = torch.cat([torch.cat([Sigma, Sigma @ A.T], 1), torch.cat([A @ Sigma, A @ Sigma @ A.T + sq**2 * Iz], 1)])
    m_p = torch.cat([b, torch.zeros(D_Z)])
    C_p = torch.cat([torch.cat([B @ B.T + sp**2 * Ix, B], 1), torch.cat([B.T, Iz], 1)])
    return (m_q, C_q), (m_p, C_p)


def closed_form(p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every §1 quantity of the linear-Gaussian model, from its conditionals and its joints."""
    mu, Sigma = data_params()
    A, a, log_sq = p["encoder.A"], p["encoder.a"], p["encoder.log_scale"]
    B, b, log_sp = p["decoder.B"], p["decoder.b"], p["decoder.log_scale"]
    sq2, sp2 = (2 * log_sq).exp(), (2 * log_sp).exp()
    Iz, Ix = torch.eye(D_Z), torch.eye(D_X)

    # E_q[log p(x|z)]: under the encoder joint, r = x - Bz - b = (I - BA)x - Ba - b - s_q B eps.
    M = Ix - B @ A
    m_r = M @ mu - B @ a - b
    e_r2 = m_r @ m_r + torch.trace(M @ Sigma @ M.T + sq2 * B @ B.T)
    log_px = -0.5 * D_X * _LOG_2PI - D_X * log_sp - 0.5 * e_r2 / sp2
    # E_q(x) KL(q(z|x) || N(0, I)), q(z|x) = N(Ax + a, s_q^2 I).
    m_z = A @ mu + a
    kl_z = 0.5 * (D_Z * sq2 + m_z @ m_z + torch.trace(A @ Sigma @ A.T) - D_Z - D_Z * 2 * log_sq)
    # E_p[log q(z|x)]: under the decoder joint, s = z - Ax - a = (I - AB)z - Ab - a - s_p A eps.
    N = Iz - A @ B
    m_s = -(A @ b) - a
    e_s2 = m_s @ m_s + torch.trace(N @ N.T + sp2 * A @ A.T)
    log_qz = -0.5 * D_Z * _LOG_2PI - D_Z * log_sq - 0.5 * e_s2 / sq2
    # E_p(z) KL(p(x|z) || q(x)), p(x|z) = N(Bz + b, s_p^2 I), q(x) = N(mu, Sigma).
    Si = torch.linalg.inv(Sigma)
    kl_x = 0.5 * (sp2 * torch.trace(Si) + (b - mu) @ Si @ (b - mu) + torch.trace(B.T @ Si @ B)
                  - D_X + torch.logdet(Sigma) - D_X * 2 * log_sp)

    (m_q, C_q), (m_p, C_p) = joints(p)
    kl_qp, kl_pq = gaussian_kl(m_q, C_q, m_p, C_p), gaussian_kl(m_p, C_p, m_q, C_q)
    # The marginals p_theta(x) = N(b, BB^T + s_p^2 I) and q_phi(z) = N(A mu + a, A Sigma A^T + s_q^2 I).
    marginal_log_px = expected_gaussian_log_prob(mu, Sigma, b, B @ B.T + sp2 * Ix)
    marginal_log_qz = expected_gaussian_log_prob(torch.zeros(D_Z), Iz, m_z, A @ Sigma @ A.T + sq2 * Iz)
    return {
        "log_px": log_px,
        "kl": kl_z,
        "log_qz": log_qz,
        "kl_x": kl_x,
        "l_x": log_px - kl_z,
        "l_z": log_qz - kl_x,
        "kl_qp": kl_qp,
        "kl_pq": kl_pq,
        "skl": kl_qp + kl_pq,
        "h_qx": gaussian_entropy(Sigma),
        "h_pz": gaussian_entropy(Iz),
        "marginal_log_px": marginal_log_px,
        "marginal_log_qz": marginal_log_qz,
    }


def closed_form_gradient(trainer, objective) -> dict[str, torch.Tensor]:
    """Autograd gradient of ``objective(closed_form(params))`` w.r.t. the generator's parameters."""
    params = generator_params(trainer)
    value = objective(closed_form(params))
    grads = torch.autograd.grad(value, list(params.values()))
    return dict(zip(params, grads))


def truth(trainer) -> dict[str, float]:
    with torch.no_grad():
        return {k: float(v) for k, v in closed_form(generator_params(trainer)).items()}


# ------------------------------------------------------------------------------------------------
# Monte Carlo helpers.


def chunked(fn, chunks: int = CHUNKS, size: int = CHUNK) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Mean and standard error over ``chunks`` independent calls of ``fn(x) -> {name: tensor}``."""
    runs = [fn(sample_data(size)) for _ in range(chunks)]
    mean = {k: torch.stack([r[k] for r in runs]).mean(0) for k in runs[0]}
    se = {k: torch.stack([r[k] for r in runs]).std(0) / math.sqrt(chunks) for k in runs[0]}
    return mean, se


def per_sample(values: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error of per-sample values."""
    return float(values.mean()), float(values.std() / math.sqrt(values.numel()))


def assert_mc(name: str, estimate, se, exact, *, z: float = Z) -> None:
    estimate, se, exact = (torch.as_tensor(v, dtype=torch.float64) for v in (estimate, se, exact))
    err = (estimate - exact).abs()
    bound = z * se + 1e-9 * (1.0 + exact.abs())
    assert bool((err <= bound).all()), (
        f"{name}: Monte Carlo {estimate.tolist()} vs closed form {exact.tolist()}: "
        f"|error| {err.tolist()} exceeds {z} standard errors {(z * se).tolist()}"
    )


def generator_terms(trainer, want_grads: bool = True):
    """fn(x) -> the divergence's generator loss, its diagnostics and its gradient, for ``chunked``.

    As in ``Trainer.train_step``, the discriminator is frozen: its parameters get no gradient,
    but g and f still pass gradients to the encoder and decoder through z_q and x_p."""
    params = generator_params(trainer)
    if trainer.discriminator is not None:
        trainer.discriminator.requires_grad_(False)

    def fn(x):
        batch = JointBatch(x, trainer.encoder, trainer.decoder, trainer.latent_dim, sample_x=True)
        loss, terms = trainer.divergence.generator_loss(trainer.discriminator, batch)
        out = {"loss": loss.detach(), **{f"diag.{k}": v for k, v in terms.items()}}
        if want_grads:
            grads = torch.autograd.grad(loss, list(params.values()))
            out.update({f"grad.{k}": g for k, g in zip(params, grads)})
        return out

    return fn


# ------------------------------------------------------------------------------------------------
# The plugin and the fused op.


def test_plugin_loads_through_entry_point(plugin):
    info = asvae_kit.describe("oracle-log-ratio", "discriminator")
    assert info["provider"] == ENTRY_POINT
    assert info["distribution"] == DISTRIBUTION
    assert info["config"] == {"logits": "auto"}
    for kind in ("encoder", "decoder"):
        assert asvae_kit.describe("linear-gaussian", kind)["provider"] == ENTRY_POINT
    assert "quadratic" in asvae_kit.list_components("discriminator")


def test_fused_disc_head_keeps_float64(float64):
    """The divergences' head statistics are computed in float64 for float64 inputs (the closed-form
    tests below rely on it), and equal (mean l, mean softplus(l), mean softplus(-l)) per segment."""
    from asvae_kit.kernels import fused_disc_head

    torch.manual_seed(0)
    h = torch.randn(7, 4) * 20
    weight, bias = torch.randn(2, 4), torch.randn(2)
    out = fused_disc_head(h, weight, bias, [3, 4])
    assert out.dtype == torch.float64 and out.shape == (2, 2, 3)
    logits = h @ weight.T + bias
    for s, rows in enumerate((slice(0, 3), slice(3, 7))):
        l = logits[rows]
        expected = torch.stack([l.mean(0), torch.nn.functional.softplus(l).mean(0), torch.nn.functional.softplus(-l).mean(0)], -1)
        torch.testing.assert_close(out[s], expected, rtol=1e-13, atol=1e-13)
    # 1e-9 is far below float32 resolution at these magnitudes: a float32 round trip would fail.
    w64 = torch.tensor([[1.0 + 1e-9]])
    out = fused_disc_head(torch.tensor([[1.0]]), w64, torch.zeros(1), [1])
    assert float(out[0, 0, MEAN]) - 1.0 == pytest.approx(1e-9, rel=1e-6)


def test_head_statistics_in_float64(plugin, float64):
    """What the divergences read: ``head_statistics`` over the plugin's discriminator stays float64."""
    trainer = make_trainer("asvae")
    torch.manual_seed(0)
    batch = JointBatch(sample_data(64), trainer.encoder, trainer.decoder, D_Z, sample_x=True)
    pairs = [(batch.x, batch.z_q), (batch.x_p, batch.z_p), (batch.x, batch.z_m)]
    stats = head_statistics(trainer.discriminator, pairs)
    assert stats.dtype == torch.float64 and stats.shape == (3, 2, 3)
    for s, (x, z) in enumerate(pairs):
        logits = trainer.discriminator(x, z)
        torch.testing.assert_close(stats[s, :, MEAN], logits.mean(0), rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(stats[s, :, SOFTPLUS], torch.nn.functional.softplus(logits).mean(0), rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(stats[s, :, SOFTPLUS_NEG], torch.nn.functional.softplus(-logits).mean(0), rtol=1e-13, atol=1e-13)


# ------------------------------------------------------------------------------------------------
# §1: the two bounds and the identity.


def test_identity_and_bounds(plugin, float64):
    """L_x + L_z = -SKL - H[q(x)] - H[p(z)], and L_x <= E log p(x), L_z <= E log q(z).

    Exactly: L_x, L_z from the conditionals against SKL from the joint covariances (two independent
    routes).  By Monte Carlo: L_x and L_z estimated with the library's own densities on the
    library's joint samples (JointBatch, GaussianPosterior/GaussianLikelihood log_prob and the
    analytic KL), each per-sample term averaged over 2^18 draws."""
    trainer = make_trainer("asvae")
    cf = truth(trainer)
    rhs = -cf["skl"] - cf["h_qx"] - cf["h_pz"]
    assert cf["l_x"] + cf["l_z"] == pytest.approx(rhs, abs=1e-10)
    assert 0.5 < cf["skl"] < 3.0
    assert cf["l_x"] < cf["marginal_log_px"] - 1e-3
    assert cf["l_z"] < cf["marginal_log_qz"] - 1e-3

    torch.manual_seed(1)
    mu, Sigma = data_params()
    with torch.no_grad():
        batch = JointBatch(sample_data(1 << 18), trainer.encoder, trainer.decoder, D_Z, sample_x=True)
        l_x = batch.log_px - batch.kl  # log p(x|z_q) - KL(q(z|x)||p(z)) per sample
        x_p = batch.x_p.flatten(1)
        # log q(z_p|x_p) - [log p(x_p|z_p) - log q(x_p)]: an unbiased draw of L_z's integrand
        l_z = batch.log_qz - (batch.prior_likelihood.log_prob(batch.x_p) - gaussian_log_prob(x_p, mu, Sigma))
    for name, values, exact in (("L_x", l_x, cf["l_x"]), ("L_z", l_z, cf["l_z"]), ("L_x + L_z", l_x + l_z, rhs)):
        est, se = per_sample(values)
        assert se < 0.01 * abs(exact)
        assert_mc(name, est, se, exact)


# ------------------------------------------------------------------------------------------------
# §1: each divergence's encoder/decoder loss at the optimal discriminator.
#
# Why the gradients are those of the closed-form objective.  The generator loss is differentiated
# with the discriminator's *function* fixed at the optimum for the current (phi0, theta0); only
# the reparameterised samples z_q = z_q(phi, eps) and x_p = x_p(theta, eps') carry gradient.
#   l_x = E_q[log p_theta(x|z_q) - g*(x, z_q)],  g* = log q_phi0(z|x) - log p(z).
#     d/dphi: L_x = E_q[log p_theta(x|z_q) - log q_phi(z_q|x) + log p(z_q)] differs from l_x only
#     by log q_phi vs log q_phi0 in the density's own parameters; that difference has gradient
#     E_q[d/dphi log q_phi(z|x)] (z held fixed) = 0, the score's expectation.  So dl_x/dphi = dL_x/dphi.
#     d/dtheta: z_q does not depend on theta and g* is fixed, so dl_x/dtheta = E_q[d log p_theta] = dL_x/dtheta.
#   l_z = E_p[log q_phi(z|x_p) - f*(x_p, z)],  f* = log p_theta0(x|z) - log q(x).
#     d/dphi: only log q_phi depends on phi, exactly as in L_z (whose KL(p(x|z)||q(x)) is phi-free).
#     d/dtheta: same argument as above with the score E_p[d/dtheta log p_theta(x|z)] (x fixed) = 0.
# Hence grad G = -(lambda_x grad L_x + lambda_z grad L_z) for ASVAE and -grad L_x for AVB; ELBO's
# analytic KL is a plain differentiable function, so its gradient is -grad(E log p(x|z) - beta KL).

GENERATOR_CASES = {
    # id: (divergence entry, closed-form loss as a function of the closed forms, diagnostics checked)
    "asvae": ({"name": "asvae"}, lambda c: -(c["l_x"] + c["l_z"]), ("l_x", "l_z", "log_px", "log_qz", "skl")),
    "asvae-weighted": (
        {"name": "asvae", "lambda_x": 2.0, "lambda_z": 0.5},
        lambda c: -(2.0 * c["l_x"] + 0.5 * c["l_z"]),
        ("l_x", "l_z", "skl"),
    ),
    # the analytic KL in place of mean_q g: the same objective and gradient, without g's noise
    "asvae-analytic-kl": ({"name": "asvae", "analytic_kl": True}, lambda c: -(c["l_x"] + c["l_z"]), ("l_x", "l_z", "skl")),
    "avb": ({"name": "avb"}, lambda c: -c["l_x"], ("l_x", "log_px", "kl")),
    "elbo": ({"name": "elbo"}, lambda c: -c["l_x"], ("l_x", "log_px", "kl")),
    "elbo-beta": ({"name": "elbo", "beta": 0.5}, lambda c: -(c["log_px"] - 0.5 * c["kl"]), ("l_x", "kl")),
}


@pytest.mark.parametrize("case", list(GENERATOR_CASES))
def test_generator_loss_value_at_optimal_logits(plugin, float64, case):
    """With g*, f* as the discriminator, G equals its closed form (ASVAE: -(L_x + L_z), AVB and
    ELBO: -L_x), and the diagnostics l_x, l_z, log_px, log_qz, kl, skl equal theirs."""
    divergence, objective, diagnostics = GENERATOR_CASES[case]
    trainer = make_trainer(divergence)
    cf = truth(trainer)
    torch.manual_seed(2)
    mean, se = chunked(generator_terms(trainer, want_grads=False))
    exact = float(objective({k: torch.tensor(v) for k, v in cf.items()}))
    assert float(se["loss"]) < 0.01 * abs(exact)
    assert_mc(f"{case} loss", mean["loss"], se["loss"], exact)
    for name in diagnostics:
        assert_mc(f"{case} diagnostic {name}", mean[f"diag.{name}"], se[f"diag.{name}"], cf[name])


@pytest.mark.parametrize("case", list(GENERATOR_CASES))
def test_generator_gradient_at_optimal_logits(plugin, float64, case):
    """The autograd gradient of G w.r.t. (A, a, log s_q, B, b, log s_p), with the optimal
    discriminator frozen, equals the gradient of the closed-form loss (derivation above)."""
    divergence, objective, _ = GENERATOR_CASES[case]
    trainer = make_trainer(divergence)
    expected = closed_form_gradient(trainer, objective)
    torch.manual_seed(3)
    mean, se = chunked(generator_terms(trainer))
    scale = max(float(g.abs().max()) for g in expected.values())
    for name, exact in expected.items():
        assert float(se[f"grad.{name}"].max()) < 0.02 * scale, f"{name}: Monte Carlo too noisy to test"
        assert_mc(f"{case} d loss / d {name}", mean[f"grad.{name}"], se[f"grad.{name}"], exact)


def test_train_step_applies_the_closed_form_gradient(plugin, float64):
    """Trainer.train_step (sample_x=true, discriminator frozen for the encoder/decoder step) hands
    the optimizer the gradient of -(L_x + L_z).  Learning rates of 1e-30 keep the parameters (and
    the oracle head) in place, so the steps are independent Monte Carlo chunks."""
    trainer = make_trainer("asvae", optim={"lr": 1e-30})
    expected = closed_form_gradient(trainer, lambda c: -(c["l_x"] + c["l_z"]))
    cf = truth(trainer)
    params = generator_params(trainer)
    head = [p.detach().clone() for p in trainer.discriminator.head.parameters()]

    def fn(x):
        terms = trainer.train_step(x)
        assert trainer.discriminator.head.weight.requires_grad  # unfrozen again after the step
        return {**{f"grad.{k}": p.grad.detach().clone() for k, p in params.items()}, **terms}

    torch.manual_seed(4)
    mean, se = chunked(fn, chunks=12)
    assert trainer.step == 12
    for name, exact in expected.items():
        assert_mc(f"train_step d G / d {name}", mean[f"grad.{name}"], se[f"grad.{name}"], exact)
    for name in ("l_x", "l_z", "skl"):
        assert_mc(f"train_step {name}", mean[name], se[name], cf[name])
    for before, after in zip(head, trainer.discriminator.head.parameters()):
        torch.testing.assert_close(before, after.detach(), rtol=0, atol=1e-20)


# ------------------------------------------------------------------------------------------------
# §1: the discriminator losses are minimised by the optimal logits.


@pytest.mark.parametrize(
    "divergence, logits",
    [("asvae", "g,f"), ("avb", "g"), ("ali", "g-f"), pytest.param({"name": "asvae", "critic": "joint"}, "g-f", id="asvae-joint-g-f")],
)
def test_discriminator_loss_is_stationary_at_optimal_logits(plugin, float64, divergence, logits):
    """The optimal logits (ASVAE: g*, f*; AVB: g*; ALI and ASVAE's joint critic: g* - f* =
    log q(x,z)/p(x,z)) minimise the
    divergence's discriminator loss: its gradient w.r.t. every head weight and bias vanishes
    (within Monte Carlo error).  The same check at half the optimal logits must fail, showing
    the check can tell (a swapped label or a wrong negative batch would move the minimum)."""
    trainer = make_trainer(divergence, discriminator={"name": "oracle-log-ratio", "logits": logits})
    head = trainer.discriminator.head

    def fn(x):
        batch = JointBatch(x, trainer.encoder, trainer.decoder, D_Z, sample_x=True)
        loss, _ = trainer.divergence.discriminator_loss(trainer.discriminator, batch)
        gw, gb = torch.autograd.grad(loss, [head.weight, head.bias])
        return {"grad": torch.cat([gw.flatten(), gb])}

    torch.manual_seed(5)
    mean, se = chunked(fn, chunks=12)
    assert_mc(f"{divergence} discriminator gradient at the optimum", mean["grad"], se["grad"], torch.zeros_like(mean["grad"]))

    with torch.no_grad():
        head.weight.mul_(0.5)
    mean, se = chunked(fn, chunks=12)
    assert bool((mean["grad"].abs() > 10 * se["grad"]).any()), "the stationarity check has no power"


# ------------------------------------------------------------------------------------------------
# ALI at its optimal logit l* = log q(x,z) - log p(x,z).


def test_ali_at_optimal_logit(plugin, float64):
    """ALI's skl diagnostic (mean_q l - mean_p l) equals KL(q||p) + KL(p||q) in closed form, and
    its generator loss E_q softplus(l*) + E_p softplus(-l*) (non-saturating, labels swapped) and
    discriminator loss E_q softplus(-l*) + E_p softplus(l*) equal independent Monte Carlo
    estimates from samples of the two joint Gaussians (no closed form exists for these)."""
    trainer = make_trainer("ali", discriminator={"name": "oracle-log-ratio", "logits": "g-f"})
    cf = truth(trainer)
    gen = generator_terms(trainer, want_grads=False)

    def fn(x):
        out = gen(x)
        batch = JointBatch(x, trainer.encoder, trainer.decoder, D_Z, sample_x=True)
        d_loss, _ = trainer.divergence.discriminator_loss(trainer.discriminator, batch)
        return {**out, "d_loss": d_loss.detach()}

    torch.manual_seed(6)
    mean, se = chunked(fn, chunks=12)
    assert_mc("ali skl", mean["diag.skl"], se["diag.skl"], cf["skl"])

    # Independent route: sample each joint directly and use the joint densities.
    with torch.no_grad():
        (m_q, C_q), (m_p, C_p) = joints(generator_params(trainer))
        n = 1 << 18
        v_q = m_q + torch.randn(n, D_X + D_Z) @ torch.linalg.cholesky(C_q).T
        v_p = m_p + torch.randn(n, D_X + D_Z) @ torch.linalg.cholesky(C_p).T
        l_q = gaussian_log_prob(v_q, m_q, C_q) - gaussian_log_prob(v_q, m_p, C_p)
        l_p = gaussian_log_prob(v_p, m_q, C_q) - gaussian_log_prob(v_p, m_p, C_p)
        sp = torch.nn.functional.softplus
    for name, key, on_q, on_p in (("generator", "loss", sp(l_q), sp(-l_p)), ("discriminator", "d_loss", sp(-l_q), sp(l_p))):
        ref_q, se_q = per_sample(on_q)
        ref_p, se_p = per_sample(on_p)
        assert_mc(f"ali {name} loss", mean[key], math.hypot(float(se[key]), se_q, se_p), ref_q + ref_p)
    # A swapped-label generator loss would be the discriminator loss; they differ by far more than the noise.
    assert abs(float(mean["loss"] - mean["d_loss"])) > 20 * float(se["loss"] + se["d_loss"])


# ------------------------------------------------------------------------------------------------
# §1: a trained discriminator recovers the symmetric KL.


def train_discriminator_alone(trainer, steps: int = 800, batch_size: int = 512, lr: float = 0.03, seed: int = 7) -> None:
    """Train only ``trainer``'s discriminator on its divergence's discriminator loss (Adam, the
    trainer's discriminator optimizer, fresh samples each step, the rate decaying linearly to 1%),
    and check that the encoder and decoder did not move."""
    trainer.encoder.requires_grad_(False)
    trainer.decoder.requires_grad_(False)
    frozen = {k: v.detach().clone() for k, v in generator_params(trainer).items()}
    disc, opt = trainer.discriminator, trainer.disc_optimizer
    torch.manual_seed(seed)
    for step in range(steps):
        for group in opt.param_groups:  # linear decay to 1% of the initial rate
            group["lr"] = lr * (1.0 - 0.99 * step / steps)
        batch = JointBatch(sample_data(batch_size), trainer.encoder, trainer.decoder, D_Z, sample_x=True)
        loss, _ = trainer.divergence.discriminator_loss(disc, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for name, value in generator_params(trainer).items():
        assert torch.equal(value, frozen[name]), f"{name} moved while only the discriminator trained"


def test_trained_quadratic_discriminator_estimates_skl(plugin, float64):
    """Encoder and decoder frozen at the true parameters, only a quadratic-feature two-head
    discriminator trained (Adam, the trainer's discriminator optimizer, fresh samples each step,
    the ASVAE discriminator loss): the skl diagnostic comes within 10% of KL(q||p) + KL(p||q)."""
    trainer = make_trainer("asvae", discriminator="quadratic", optim={"disc_lr": 0.03, "betas": [0.9, 0.999]})
    train_discriminator_alone(trainer)
    disc = trainer.discriminator

    skl = truth(trainer)["skl"]
    with torch.no_grad():
        batch = JointBatch(sample_data(1 << 17), trainer.encoder, trainer.decoder, D_Z, sample_x=True)
        _, terms = trainer.divergence.generator_loss(disc, batch)
    estimate = float(terms["skl"])
    assert abs(estimate - skl) < 0.10 * skl, f"skl estimate {estimate:.4f} vs closed form {skl:.4f}"

    # The heads learned the logits of docs/design.md's table, g* and f* (to ~2% of their spread here).
    oracle = make_trainer("asvae").discriminator
    with torch.no_grad():
        for x, z in ((batch.x, batch.z_q), (batch.x_p, batch.z_p), (batch.x, batch.z_m)):
            learned, optimal = disc(x, z), oracle(x, z)
            rmse, spread = (learned - optimal).pow(2).mean(0).sqrt(), optimal.std(0)
            assert bool((rmse < 0.1 * spread).all()), f"learned logits off by {rmse.tolist()} (spread {spread.tolist()})"


# ------------------------------------------------------------------------------------------------
# ASVAE with the joint critic (critic: joint; docs/divergences.md, "one critic on the two joints").
#
# One head T, trained on segment q (label 1) against segment p (label 0), so T* = log q(x,z) -
# log p(x,z) = g* - f*: the oracle's "g-f" logits.  G = (mean_q T - mean_p T) - l_x E_q log p(x|z_q)
# - l_z E_p log q(z_p|x_p), whose value at T* is SKL - l_x R_x - l_z R_z.  Its gradient with T* frozen
# is NOT the gradient of that value: through z_q the adversarial term gives phi the gradient of
# KL(q_phi||p) only (the score term vanishes, as in AVB), through x_p it gives theta that of
# KL(p_theta||q) only, and the cross gradients of the symmetric KL are the density gradients of R_z
# (for phi) and R_x (for theta).  So the step follows the gradient, at (phi0, theta0), of
#     F(phi, theta) = KL(q_phi || p_theta0) + KL(p_theta || q_phi0) - l_x R_x(phi, theta) - l_z R_z(phi, theta).

JOINT_ORACLE = {"name": "oracle-log-ratio", "logits": "g-f"}  # T* = g* - f* = log q(x,z) - log p(x,z)


def joint_trainer(lambda_x: float = 1.0, lambda_z: float = 1.0, discriminator: str | dict = JOINT_ORACLE, **overrides):
    divergence = {"name": "asvae", "critic": "joint", "lambda_x": lambda_x, "lambda_z": lambda_z}
    return make_trainer(divergence, discriminator=discriminator, **overrides)


def joint_critic_objective(params: dict[str, torch.Tensor], lambda_x: float, lambda_z: float, adversarial: bool = True) -> torch.Tensor:
    """F(phi, theta) above (without the KL terms when the adversarial term is removed, T = 0)."""
    cf = closed_form(params)
    value = -(lambda_x * cf["log_px"] + lambda_z * cf["log_qz"])
    if adversarial:
        encoder_moves = {k: v if k.startswith("encoder.") else v.detach() for k, v in params.items()}
        decoder_moves = {k: v if k.startswith("decoder.") else v.detach() for k, v in params.items()}
        value = value + closed_form(encoder_moves)["kl_qp"] + closed_form(decoder_moves)["kl_pq"]
    return value


def gradient_of(trainer, objective) -> dict[str, torch.Tensor]:
    """Autograd gradient of ``objective(params)`` w.r.t. the generator's parameters (0 where unused)."""
    params = generator_params(trainer)
    grads = torch.autograd.grad(objective(params), list(params.values()), allow_unused=True)
    return {k: torch.zeros_like(p) if g is None else g for (k, p), g in zip(params.items(), grads)}


def remove_adversarial_term(trainer) -> None:
    """T = 0 everywhere (a zero head): no adversarial term, and no gradient through T's inputs."""
    with torch.no_grad():
        trainer.discriminator.head.weight.zero_()
        trainer.discriminator.head.bias.zero_()


@pytest.mark.parametrize("lambda_x, lambda_z", [(1.0, 1.0), (2.0, 0.5)])
def test_joint_critic_at_optimal_logit(plugin, float64, lambda_x, lambda_z):
    """With T* as the critic, the skl diagnostic (mean_q T - mean_p T) equals KL(q||p) + KL(p||q)
    in closed form, kl_qp = mean_q T and kl_pq = -mean_p T equal each direction, log_px and log_qz
    equal R_x and R_z, and G equals SKL - l_x R_x - l_z R_z."""
    trainer = joint_trainer(lambda_x, lambda_z)
    assert trainer.divergence.num_heads == 1 and trainer.discriminator.head.out_features == 1
    cf = truth(trainer)
    torch.manual_seed(8)
    mean, se = chunked(generator_terms(trainer, want_grads=False))
    assert {k for k in mean if k.startswith("diag.")} == {f"diag.{k}" for k in ("g_loss", "skl", "kl_qp", "kl_pq", "log_px", "log_qz")}
    assert float(se["diag.skl"]) < 0.01 * cf["skl"]
    for name in ("skl", "kl_qp", "kl_pq", "log_px", "log_qz"):
        assert_mc(f"joint critic diagnostic {name}", mean[f"diag.{name}"], se[f"diag.{name}"], cf[name])
    exact = cf["skl"] - lambda_x * cf["log_px"] - lambda_z * cf["log_qz"]
    assert float(se["loss"]) < 0.01 * abs(exact)
    assert_mc("joint critic loss", mean["loss"], se["loss"], exact)
    assert_mc("joint critic g_loss", mean["diag.g_loss"], se["diag.g_loss"], exact)


JOINT_GRADIENT_CASES = {
    # id: (lambda_x, lambda_z, adversarial term kept)
    "joint": (1.0, 1.0, True),
    "joint-weighted": (2.0, 0.5, True),
    # the adversarial term alone: phi gets grad KL(q_phi||p) through z_q, theta grad KL(p_theta||q) through x_p
    "joint-adversarial-only": (0.0, 0.0, True),
    # T = 0 and l_z = 0: the encoder's gradient comes only through log p(x|z_q), i.e. through z_q
    "joint-reconstruction-x-only": (1.0, 0.0, False),
    # T = 0 and l_x = 0: the decoder's gradient comes only through x_p in log q(z_p|x_p)
    "joint-reconstruction-z-only": (0.0, 1.0, False),
}


@pytest.mark.parametrize("case", list(JOINT_GRADIENT_CASES))
def test_joint_critic_gradient_at_optimal_logit(plugin, float64, case):
    """The autograd gradient of the joint critic's G, T* frozen, equals the gradient of
    F(phi, theta) (derivation above).  For the default case, the gradient of G's value
    SKL - R_x - R_z is rejected: the check can tell the two apart."""
    lambda_x, lambda_z, adversarial = JOINT_GRADIENT_CASES[case]
    trainer = joint_trainer(lambda_x, lambda_z)
    if not adversarial:
        remove_adversarial_term(trainer)
    expected = gradient_of(trainer, lambda p: joint_critic_objective(p, lambda_x, lambda_z, adversarial))
    torch.manual_seed(9)
    mean, se = chunked(generator_terms(trainer))
    scale = max(float(g.abs().max()) for g in expected.values())
    for name, exact in expected.items():
        assert float(se[f"grad.{name}"].max()) < 0.02 * scale, f"{name}: Monte Carlo too noisy to test"
        assert_mc(f"{case} d loss / d {name}", mean[f"grad.{name}"], se[f"grad.{name}"], exact)
    # Each network gets a gradient from the terms that reach it (an all-zero block would mean a lost route).
    for network in ("encoder", "decoder"):
        assert max(float(g.abs().max()) for k, g in expected.items() if k.startswith(network)) > 0.05 * scale, network
    if case == "joint":
        naive = gradient_of(trainer, lambda p: (lambda c: c["skl"] - c["log_px"] - c["log_qz"])(closed_form(p)))
        assert any(
            bool(((mean[f"grad.{k}"] - naive[k]).abs() > 20 * se[f"grad.{k}"]).any()) for k in naive
        ), "the gradient of G's value is not rejected: the check has no power"


def _hand_reconstruction_loss(trainer, batch, lambda_x: float, lambda_z: float) -> torch.Tensor:
    """-(l_x mean log p(x|z_q) + l_z mean log q(z_p|x_p)) written out from the linear-Gaussian
    parameters, the batch's noise recovered from its samples (no library density or batch code)."""
    enc, dec = trainer.encoder, trainer.decoder
    x, z_p = batch.x.flatten(1), batch.z_p
    eps_q = ((batch.z_q - (x @ enc.A.T + enc.a)) / enc.log_scale.exp()).detach()
    eps_p = ((batch.x_p.flatten(1) - (z_p @ dec.B.T + dec.b)) / dec.log_scale.exp()).detach()
    z_q = x @ enc.A.T + enc.a + enc.log_scale.exp() * eps_q
    x_p = z_p @ dec.B.T + dec.b + dec.log_scale.exp() * eps_p
    eye_x, eye_z = torch.eye(D_X), torch.eye(D_Z)
    log_px = gaussian_log_prob(x, z_q @ dec.B.T + dec.b, (2 * dec.log_scale).exp() * eye_x)  # a mean per row
    log_qz = gaussian_log_prob(z_p, x_p @ enc.A.T + enc.a, (2 * enc.log_scale).exp() * eye_z)
    return -(lambda_x * log_px.mean() + lambda_z * log_qz.mean())


def test_joint_critic_routes_gradients_to_the_right_networks(plugin, float64):
    """On one batch: the discriminator loss reaches the critic only (z_q and x_p are detached); G,
    with the critic frozen as in train_step, reaches every encoder and decoder parameter; with the
    adversarial term removed, G's gradient is exactly that of the reconstruction terms written out
    by hand, so l_x reaches the encoder only through z_q in log p(x|z_q) and l_z reaches the
    decoder only through x_p in log q(z_p|x_p)."""
    trainer = joint_trainer()
    enc_dec = list(generator_params(trainer).items())
    head = list(trainer.discriminator.head.named_parameters())
    torch.manual_seed(10)
    batch = JointBatch(sample_data(256), trainer.encoder, trainer.decoder, D_Z, sample_x=True)

    d_loss, _ = trainer.divergence.discriminator_loss(trainer.discriminator, batch)
    grads = torch.autograd.grad(d_loss, [p for _, p in enc_dec + head], allow_unused=True)
    for (name, _), g in zip(enc_dec, grads):
        assert g is None or not bool(g.any()), f"the discriminator loss sent a gradient to {name}"
    for (name, _), g in zip(head, grads[len(enc_dec):]):
        assert g is not None and bool(g.any()), f"the discriminator loss sent no gradient to the critic's {name}"

    trainer.discriminator.requires_grad_(False)
    g_loss, _ = trainer.divergence.generator_loss(trainer.discriminator, batch)
    for (name, _), g in zip(enc_dec, torch.autograd.grad(g_loss, [p for _, p in enc_dec])):
        assert bool(g.any()), f"the encoder/decoder loss sent no gradient to {name}"
    trainer.discriminator.requires_grad_(True)

    remove_adversarial_term(trainer)
    for lambda_x, lambda_z in ((1.0, 0.0), (0.0, 1.0), (2.0, 0.5)):
        trainer.divergence.lambda_x, trainer.divergence.lambda_z = lambda_x, lambda_z
        torch.manual_seed(11)
        batch = JointBatch(sample_data(256), trainer.encoder, trainer.decoder, D_Z, sample_x=True)
        g_loss, _ = trainer.divergence.generator_loss(trainer.discriminator, batch)
        got = torch.autograd.grad(g_loss, [p for _, p in enc_dec], retain_graph=True)
        want = torch.autograd.grad(_hand_reconstruction_loss(trainer, batch, lambda_x, lambda_z), [p for _, p in enc_dec])
        for (name, _), g, w in zip(enc_dec, got, want):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=lambda m: f"lambda=({lambda_x}, {lambda_z}) {name}: {m}")
        if lambda_z == 0.0:  # log p(x|z_q) alone: the decoder's density and the encoder through z_q, both non-zero
            assert all(bool(g.any()) for g in got)


def test_trained_quadratic_joint_critic_estimates_skl(plugin, float64):
    """Encoder and decoder frozen at the true parameters, only a one-head quadratic critic trained
    on the joint critic's loss: the skl diagnostic comes within 10% of KL(q||p) + KL(p||q), and the
    head learned T* = log q(x,z) - log p(x,z)."""
    trainer = joint_trainer(discriminator="quadratic", optim={"disc_lr": 0.03, "betas": [0.9, 0.999]})
    assert trainer.discriminator.head.out_features == 1
    train_discriminator_alone(trainer)
    disc = trainer.discriminator

    cf = truth(trainer)
    with torch.no_grad():
        batch = JointBatch(sample_data(1 << 17), trainer.encoder, trainer.decoder, D_Z, sample_x=True)
        _, terms = trainer.divergence.generator_loss(disc, batch)
    estimate = float(terms["skl"])
    assert abs(estimate - cf["skl"]) < 0.10 * cf["skl"], f"skl estimate {estimate:.4f} vs closed form {cf['skl']:.4f}"
    for name in ("kl_qp", "kl_pq"):  # each direction too
        assert abs(float(terms[name]) - cf[name]) < 0.10 * cf[name], f"{name} {float(terms[name]):.4f} vs closed form {cf[name]:.4f}"

    oracle = joint_trainer().discriminator
    with torch.no_grad():
        for x, z in ((batch.x, batch.z_q), (batch.x_p, batch.z_p)):
            learned, optimal = disc(x, z), oracle(x, z)
            rmse, spread = (learned - optimal).pow(2).mean(0).sqrt(), optimal.std(0)
            assert bool((rmse < 0.1 * spread).all()), f"learned logit off by {rmse.tolist()} (spread {spread.tolist()})"


# ------------------------------------------------------------------------------------------------
# The critic option in configs.

SMALL = {"encoder.hidden": [32], "decoder.hidden": [32], "discriminator.hidden": [32, 16], "latent_dim": 4, "batch_size": 16}


def test_joint_critic_builds_one_head_and_fits():
    """``divergence.critic: joint`` gives a one-head discriminator and trains; the default stays two-head."""
    trainer = asvae_kit.build("mlp-asvae", **{"divergence.critic": "joint"}, steps=2)
    assert trainer.divergence.num_heads == 1 and trainer.num_heads == 1
    assert trainer.discriminator.head.out_features == 1
    trainer.fit(progress=False)
    assert trainer.step == 2
    row = trainer.history[-1]
    assert {"d_loss", "g_loss", "skl", "kl_qp", "kl_pq", "log_px", "log_qz"} <= set(row)
    assert all(math.isfinite(v) for v in row.values()), row
    assert asvae_kit.build_component("divergence", "asvae").num_heads == 2
    assert asvae_kit.describe("asvae", "divergence")["config"]["critic"] == "two-head"


def test_joint_critic_train_step_moves_each_network():
    """The discriminator step moves the critic only, the encoder/decoder step moves the encoder and
    the decoder only, and a whole train_step moves all three."""
    trainer = asvae_kit.build("mlp-asvae", **{"divergence.critic": "joint"}, **SMALL)

    def snapshot():
        return [{n: p.detach().clone() for n, p in m.named_parameters()} for m in (trainer.encoder, trainer.decoder, trainer.discriminator)]

    def moved(before):
        return [any(not torch.equal(before[i][n], p.detach()) for n, p in m.named_parameters())
                for i, m in enumerate((trainer.encoder, trainer.decoder, trainer.discriminator))]

    torch.manual_seed(12)
    x = torch.rand(16, 1, 8, 8, device=trainer.device)
    before = snapshot()
    batch = trainer.algorithm.make_batch(x)
    trainer.algorithm.discriminator_step(batch)
    assert moved(before) == [False, False, True]
    before = snapshot()
    trainer.algorithm.generator_step(batch)
    assert moved(before) == [True, True, False]
    before = snapshot()
    terms = trainer.train_step(x)
    assert moved(before) == [True, True, True]
    assert all(math.isfinite(float(v)) for v in terms.values())


@pytest.mark.parametrize("critic, suggestion", [("join", "joint"), ("two_head", "two-head"), ("ali", None), (2, None)])
def test_a_bad_critic_is_refused_naming_the_choices(critic, suggestion):
    with pytest.raises(ConfigError) as info:
        asvae_kit.build("mlp-asvae", **{"divergence.critic": critic}, **SMALL)
    message = str(info.value)
    assert f"critic must be one of 'two-head', 'joint', got {critic!r}" in message, message
    if suggestion is not None:
        assert f"Did you mean {suggestion!r}?" in message, message


def test_analytic_kl_is_refused_with_the_joint_critic():
    with pytest.raises(ConfigError, match=r"analytic_kl=true needs critic='two-head'"):
        asvae_kit.build_component("divergence", "asvae", critic="joint", analytic_kl=True)
    assert asvae_kit.build_component("divergence", "asvae", analytic_kl=True).num_heads == 2
