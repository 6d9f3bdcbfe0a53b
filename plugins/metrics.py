"""Built-in metrics: ``recon``, ``nll``, ``fd``, ``skl``, ``probe``, ``fid``/``is`` (through
torch-fidelity when it and its weights are present), and the older ``reconstruction-mse``,
``elbo-bound`` and ``objective``.

A metric is ``fn(trainer, data, **options) -> dict[str, float]`` with ``data`` an image tensor on
the trainer's device (by default the test split: see ``asvae_kit.evaluation``); it runs under
``torch.no_grad`` with the networks in eval mode.  One that does not apply to a model raises
``MetricNotApplicable`` saying why.  Every metric that draws random numbers takes ``seed``
(default 0): ``evaluate`` runs it under torch's global RNG forked and seeded with it, so it may
draw from the global RNG and still give the same numbers every time.  ``skl`` and ``objective``
read the discriminator, so they set ``weights = "raw"``: they see the training weights the
discriminator was trained against, not the EMA average the others see.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import asvae_kit
from asvae_kit.checks import check_int
from asvae_kit.errors import ConfigError
from asvae_kit.memory import check_memory
from asvae_kit.plugins.classifier import classifier_features, frechet_distance, project_classifier
from asvae_kit.data import images_and_labels
from asvae_kit.distributions import GaussianPosterior, standard_normal_log_prob
from asvae_kit.evaluation import MetricNotApplicable
from asvae_kit.joint_batch import JointBatch

__all__ = ["recon", "nll", "fd", "skl", "probe", "fid", "inception_score", "reconstruction_mse", "elbo_bound", "objective"]

CHUNK = 256


def _chunks(data: torch.Tensor, size: int = CHUNK):
    return data.split(size)


# ---------------------------------------------------------------------------------------------
# reconstruction


def recon(trainer, data: torch.Tensor) -> dict[str, float]:
    """Per-pixel MSE and binary cross-entropy of ``reconstruct(x)`` (posterior mean through the
    decoder's mean) against x, and the MSE of predicting the mean image (a floor to beat)."""
    sq, bce = 0.0, 0.0
    for x in _chunks(data):
        r = trainer.reconstruct(x).clamp(1e-6, 1 - 1e-6)
        sq += (r - x).pow(2).sum().item()
        bce += F.binary_cross_entropy(r, x, reduction="sum").item()
    n = data.numel()
    baseline = (data - data.mean(dim=0, keepdim=True)).pow(2).mean().item()
    return {"recon_mse": sq / n, "recon_bce": bce / n, "mean_image_mse": baseline}


def reconstruction_mse(trainer, data: torch.Tensor) -> dict[str, float]:
    """Per-pixel MSE of the reconstructions beside the mean-image MSE (``recon`` without BCE)."""
    out = recon(trainer, data)
    return {"recon_mse": out["recon_mse"], "mean_image_mse": out["mean_image_mse"]}


# ---------------------------------------------------------------------------------------------
# likelihood


def _explicit_posterior(trainer, x: torch.Tensor):
    posterior = trainer.encoder(x)
    if not hasattr(posterior, "kl_standard_normal") or not hasattr(posterior, "log_prob"):
        raise MetricNotApplicable(
            f"nll needs an explicit encoder density q(z|x) for importance sampling; encoder "
            f"{trainer.config['encoder']['name']!r} returns {type(posterior).__name__} (implicit: its log_prob is only "
            "a Gaussian stand-in). Use a Gaussian encoder ('mlp', 'resnet') to get a likelihood bound."
        )
    return posterior


def _repeat_posterior(trainer, x: torch.Tensor, posterior, k: int):
    """q(z|x) for ``x`` repeated ``k`` times (sample-major), without re-encoding a Gaussian."""
    if isinstance(posterior, GaussianPosterior):
        return GaussianPosterior(posterior.mean.repeat(k, 1), posterior.logvar.repeat(k, 1))
    return trainer.encoder(x.repeat(k, *([1] * (x.dim() - 1))))


def _count(value: object, what: str) -> int:
    """A positive integer option; a whole float (``1e3`` from ``nll:k=1e3`` or YAML) counts as one."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return check_int(value, what)


def _nll_passes(k: int, n_images: int, batch: int) -> tuple[int, int]:
    """(images, samples of each) per decoder pass of ``nll``: about ``batch`` rows per pass."""
    images_per_pass = max(1, min(batch // k, n_images))
    return images_per_pass, min(k, max(1, batch // images_per_pass))


def _nll_bytes(k: int, n_images: int, batch: int, data_shape: tuple[int, ...] | None = None, latent_dim: int | None = None) -> int:
    """Bytes ``nll`` holds at its peak: the k log-weights of each pass's images in float64, four
    times (the pieces, their concatenation, and the two temporaries of ``logsumexp``), plus one
    pass's rows (repeated images, decoder outputs, codes: about four image-sized and six
    code-sized float32 tensors).  An unknown shape counts as nothing: the estimate is then a
    lower bound."""
    images, samples = _nll_passes(k, n_images, batch)
    pixels = math.prod(data_shape) if data_shape else 0
    return 32 * k * images + images * samples * 4 * (4 * pixels + 6 * (latent_dim or 1))


def check_nll_options(
    options: dict, *, data_shape: tuple[int, ...] | None = None, latent_dim: int | None = None, n_images: int | None = None, device=None
) -> None:
    """Refuse ``nll`` options that are not positive integers, or whose passes cannot fit in memory
    (``nll:k=1000000000`` needs about 30 GiB of importance weights per image), in one line with both
    figures: when the config is validated and before ``evaluate`` runs any metric (its
    ``check_options``), and again with the images' real count and shape when it runs."""
    k, n, batch = (_count(options.get(key, default), f"metric 'nll': {key}") for key, default in (("k", 1000), ("n", 256), ("batch", 4096)))
    check_memory(
        _nll_bytes(k, min(n, n_images) if n_images is not None else n, batch, data_shape, latent_dim),
        f"metric 'nll' with k={k}, n={n}, batch={batch}",
        "lower k (the default is 1000; nll:k=100 is a quick estimate) or batch",
        error=ConfigError,
        device=device,
    )


def nll(trainer, data: torch.Tensor, *, k: int = 1000, n: int = 256, batch: int = 4096, seed: int = 0) -> dict[str, float]:
    """Importance-weighted bound (IWAE, Burda et al. 2016) on -log p(x), nats per image, over the
    first ``n`` images with ``k`` samples of q(z|x) each: -log mean_k p(x|z_k) p(z_k) / q(z_k|x).
    It is an upper bound on the true NLL that tightens as ``k`` grows (k=1 is the one-sample
    ELBO).  Also reports bits per dimension and ``nll_se``, the standard error of the estimate
    over images: the standard deviation of the n per-image bounds divided by sqrt(n), i.e. how
    far the mean would move on another n images (it includes each bound's sampling noise, but it
    is not the importance-sampling error of one image's bound, which shrinks as ``k`` grows).
    With a Bernoulli decoder on grey-level pixels this is the usual Bernoulli NLL, comparable
    between Bernoulli models only.  ``seed``: the samples of q(z|x) (``evaluate`` seeds with it)."""
    options = {"k": k, "n": n, "batch": batch}
    check_nll_options(options, data_shape=tuple(data.shape[1:]), latent_dim=trainer.latent_dim, n_images=len(data), device=data.device)
    k, n, batch = _count(k, "k"), _count(n, "n"), _count(batch, "batch")
    data = data[:n]
    per_image = []
    images_per_pass, samples_per_pass = _nll_passes(k, len(data), batch)
    for x in data.split(images_per_pass):
        posterior = _explicit_posterior(trainer, x)
        log_w = []
        done = 0
        while done < k:
            kc = min(samples_per_pass, k - done)
            rep = _repeat_posterior(trainer, x, posterior, kc)
            z = rep.rsample()
            x_rep = x.repeat(kc, *([1] * (x.dim() - 1)))
            lw = trainer.decoder(z).log_prob(x_rep) + standard_normal_log_prob(z) - rep.log_prob(z)
            log_w.append(lw.view(kc, len(x)).double())
            done += kc
        log_w_all = torch.cat(log_w)
        per_image.append(-(torch.logsumexp(log_w_all, dim=0) - math.log(k)))
    values = torch.cat(per_image)
    dims = math.prod(trainer.data_shape)
    mean = values.mean().item()
    se = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"nll": mean, "nll_se": se, "nll_bits_per_dim": mean / (dims * math.log(2)), "nll_k": float(k), "nll_n": float(len(values))}


def elbo_bound(trainer, data: torch.Tensor, *, seed: int = 0) -> dict[str, float]:
    """The single-sample ELBO E_q[log p(x|z)] - KL(q(z|x)||p(z)) in nats per image; only for
    encoders with a closed-form KL (empty for implicit encoders).  ``seed``: the sample of q(z|x)
    (``evaluate`` seeds with it)."""
    total_ll, total_kl = 0.0, 0.0
    for x in _chunks(data):
        posterior = trainer.encoder(x)
        if not hasattr(posterior, "kl_standard_normal"):
            return {}
        total_ll += trainer.decoder(posterior.rsample()).log_prob(x).sum().item()
        total_kl += posterior.kl_standard_normal().sum().item()
    n = len(data)
    return {"elbo": (total_ll - total_kl) / n, "log_px": total_ll / n, "kl": total_kl / n}


# ---------------------------------------------------------------------------------------------
# samples


def _training_split(trainer, what: str):
    if trainer.config["data"].get("name") is None:
        raise MetricNotApplicable(f"{what} needs the configured data set's labelled training split, and this trainer has none (data=None)")
    images, labels = images_and_labels(trainer.split_data("train").dataset)
    if labels is None:
        raise MetricNotApplicable(
            f"{what} needs labels, and data set {trainer.config['data']['name']!r} has none "
            "(the project classifier and the linear probe are trained on labelled images)"
        )
    return images, labels


def fd(trainer, data: torch.Tensor, *, seed: int = 0) -> dict[str, float]:
    """Fréchet distance between ``data`` and as many samples (decoder means at z ~ p(z), seeded)
    in the features of the project classifier (``asvae_kit.plugins.classifier``), trained on the data
    set's training split and cached.  Not FID: comparable only between runs on the same data.
    ``fd_train`` is the same distance for real training images, the floor at this sample size."""
    images, labels = _training_split(trainer, "fd (FD on the project classifier)")
    with torch.enable_grad():
        info = project_classifier(images, labels, progress=lambda message: print(message, file=sys.stderr))
    real = classifier_features(info.model, data)
    samples = trainer.sample(len(data), seed=seed)
    fake = classifier_features(info.model, samples)
    floor_idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[: len(data)]
    floor = classifier_features(info.model, images[floor_idx])
    return {"fd": frechet_distance(real, fake), "fd_train": frechet_distance(real, floor), "sample_mean_pixel": samples.mean().item()}


def skl(trainer, data: torch.Tensor, *, seed: int = 0) -> dict[str, float]:
    """The divergence's ``skl`` statistic of the current discriminator on ``data`` (prior codes
    seeded), with the raw encoder/decoder weights the discriminator was trained against.  It
    estimates the symmetric KL between the two joints only with ``sample_x: true`` and a
    near-optimal discriminator; with x_p the decoder's mean (the default) the decoder joint is not
    p(x, z), and this is a training diagnostic of the discriminator (docs/design.md §2)."""
    generator = torch.Generator().manual_seed(seed)
    total, n = 0.0, 0
    for x in _chunks(data):
        z_p = torch.randn(len(x), trainer.latent_dim, generator=generator).to(x.device)
        z_m = torch.randn(len(x), trainer.latent_dim, generator=generator).to(x.device)
        with torch.random.fork_rng(devices=[x.device.index or 0] if x.device.type == "cuda" else []):
            torch.manual_seed(seed + n)
            batch = JointBatch(x, trainer.encoder, trainer.decoder, trainer.latent_dim, z_p=z_p, z_m=z_m, sample_x=trainer.config.get("sample_x", False))
            _, diagnostics = trainer.divergence.generator_loss(trainer.discriminator, batch)
        if "skl" not in diagnostics:
            raise MetricNotApplicable(
                f"divergence {trainer.config['divergence']['name']!r} has no symmetric-KL estimate: it needs a "
                "discriminator over both joints ('asvae' or 'ali')"
            )
        total += float(diagnostics["skl"]) * len(x)
        n += len(x)
    return {"skl": total / n}


def probe(trainer, data: torch.Tensor, *, labels: torch.Tensor | None = None, max_train: int = 5000, seed: int = 0) -> dict[str, float]:
    """Accuracy of a linear classifier (multinomial logistic regression on standardised posterior
    means) fitted on up to ``max_train`` training-split images (a random subset, drawn with
    ``seed``) and scored on ``data``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if labels is None:
        raise MetricNotApplicable("probe needs labelled evaluation images, and these have no labels")
    images, train_labels = _training_split(trainer, "probe (linear-probe accuracy)")
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:max_train]

    def codes(x: torch.Tensor):
        return torch.cat([trainer.encode(c.to(trainer.device)).cpu() for c in _chunks(x)]).double().numpy()

    train_codes = codes(images[idx])
    scaler = StandardScaler().fit(train_codes)
    model = LogisticRegression(max_iter=2000).fit(scaler.transform(train_codes), train_labels[idx].numpy())
    accuracy = float((model.predict(scaler.transform(codes(data))) == labels.cpu().numpy()).mean())
    return {"probe_acc": accuracy}


def objective(trainer, data: torch.Tensor, *, seed: int = 0) -> dict[str, float]:
    """The divergence's encoder/decoder objective terms (``g_loss``, ``l_x``, ``l_z``, ``skl``...)
    averaged over ``data``, with the current discriminator and the raw encoder/decoder weights it
    was trained against.  ``seed``: the prior codes and posterior samples (``evaluate`` seeds with it)."""
    sums: dict[str, float] = {}
    n = 0
    for x in _chunks(data):
        batch = JointBatch(x, trainer.encoder, trainer.decoder, trainer.latent_dim, sample_x=trainer.config.get("sample_x", False))
        _, diagnostics = trainer.divergence.generator_loss(trainer.discriminator, batch)
        for k, v in diagnostics.items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(x)
        n += len(x)
    return {f"objective_{k}": v / n for k, v in sums.items()}


nll.check_options = check_nll_options  # run by asvae_kit.config.check_metric_spec

# The discriminator was trained against the raw encoder/decoder weights: a metric that reads it
# must see those, not the EMA average (docs/design.md §2, "Metric").
skl.weights = "raw"
objective.weights = "raw"


# ---------------------------------------------------------------------------------------------
# torch-fidelity (optional)

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def _fidelity_inputs(trainer, data: torch.Tensor, seed: int):
    """torch-fidelity, its weights, and both image sets as uint8 RGB datasets; or why not."""
    if importlib.util.find_spec("torch_fidelity") is None:
        raise MetricNotApplicable("torch-fidelity is not installed (pip install torch-fidelity); use 'fd' (FD on the project classifier) instead")
    weights = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if not weights.is_file():
        raise MetricNotApplicable(
            f"torch-fidelity's Inception weights are not on disk ({weights}) and are not fetched here; "
            "download them there by hand to enable fid/is, or use 'fd'"
        )
    import torch_fidelity

    class _Images(torch.utils.data.Dataset):
        def __init__(self, x: torch.Tensor) -> None:
            x = (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
            self.x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i: int) -> torch.Tensor:
            return self.x[i]

    return torch_fidelity, _Images(data), _Images(trainer.sample(len(data), seed=seed))


def fid(trainer, data: torch.Tensor, *, seed: int = 0) -> dict[str, float]:
    """FID (Inception features, through torch-fidelity) between ``data`` and as many samples (seeded)."""
    tf, real, fake = _fidelity_inputs(trainer, data, seed)
    out = tf.calculate_metrics(input1=fake, input2=real, fid=True, verbose=False, cuda=trainer.device.type == "cuda")
    return {"fid": float(out["frechet_inception_distance"])}


def inception_score(trainer, data: torch.Tensor, *, seed: int = 0) -> dict[str, float]:
    """Inception Score of as many samples as ``data`` holds (seeded; through torch-fidelity)."""
    tf, _, fake = _fidelity_inputs(trainer, data, seed)
    out = tf.calculate_metrics(input1=fake, isc=True, verbose=False, cuda=trainer.device.type == "cuda")
    return {"is": float(out["inception_score_mean"]), "is_std": float(out["inception_score_std"])}


@asvae_kit.hookimpl
def register_metrics(register):
    register("recon", recon, description="Per-pixel reconstruction MSE and BCE on held-out images, with the mean-image MSE as a floor.")
    register("nll", nll, description="Importance-weighted bound on -log p(x), nats per image (k samples, default 1000; explicit encoders only); nll_se: its standard error over images.")
    register("fd", fd, description="Fréchet distance of samples to held-out images in the features of the project classifier (not FID).")
    register("skl", skl, description="The discriminator's skl statistic on held-out images, raw weights (asvae, ali); the joints' symmetric KL only with sample_x and an optimal discriminator.")
    register("probe", probe, description="Linear-probe accuracy of the posterior means (labelled data sets).")
    register("fid", fid, description="FID through torch-fidelity, when it and its Inception weights are installed.")
    register("is", inception_score, description="Inception Score through torch-fidelity, when it and its Inception weights are installed.")
    register("reconstruction-mse", reconstruction_mse, description="Per-pixel reconstruction MSE, with the mean-image MSE as a baseline.")
    register("elbo-bound", elbo_bound, description="Single-sample ELBO, log p(x|z) and KL in nats per image (Gaussian encoders only).")
    register("objective", objective, description="The divergence's encoder/decoder objective terms (l_x, l_z, skl...) on the evaluation data, raw weights.")
