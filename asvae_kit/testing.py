"""The plugin conformance suite: ``ConformanceSuite``, a pytest base class that holds every
component a distribution registers to the contracts of docs/design.md §2.

A plugin author writes four lines::

    from asvae_kit.testing import ConformanceSuite

    class TestMyPlugin(ConformanceSuite):
        distribution = "asvae-kit-myplugin"

and pytest runs every clause below on every component that distribution registers, by kind.  A
failure is one line naming the component, its kind and the clause it broke::

    encoder 'wide-mlp' [clause: state-dict round trip]: a tensor kept as a plain attribute (self.scale) is not in state_dict; ...

The clauses (``CLAUSES`` holds them in words; each is a ``check_*`` function here that raises
``ConformanceError``, so a test may also call one directly):

- every distribution: its plugins load and register at least one component;
- encoders, decoders, discriminators: they build with their defaults for every standard shape
  (8, 28, 32, 64 pixels × 1, 3 channels, plus ``shapes``) they claim (``UnsupportedShapeError``
  means "not claimed"); outputs have the contract's types, shapes and ranges for batch sizes 1, 2
  and 3; densities are finite at pixel values 0, 1 and random ones; gradients reach every parameter
  (and the inputs the other networks train through) and are finite; the state dict round-trips
  (a tensor kept as a plain attribute is named); a deep copy, what the EMA makes, gives the same
  outputs and shares no tensor; the same seed gives the same outputs; a discriminator's rows
  depend on their own (x, z) only; slow: under ``torch.compile`` and under bfloat16 autocast;
- divergences: two training steps with the built-in MLP networks log finite losses; one that
  claims an ``skl`` (its description names it, or its diagnostics hold one) logs a finite one and
  the ``skl`` metric reads it; slow: the same two steps at ``precision="bf16"``;
- datasets: images ``[C, H, W]`` in [0, 1] of the declared ``data_shape`` (integer labels where
  claimed), readable by the trainer, without touching the network;
- metrics: finite numbers, the same ones twice, or ``MetricNotApplicable``;
- loggers: open, take rows and images, close, and open again as a resumed ``fit`` does;
- presets (slow): ``fit`` two steps, save and load to identical samples, and the same losses and
  samples again under the same seed.

Importing this module imports pytest only when the suite runs (``import asvae_kit`` never
imports it at all): the check functions work without pytest.  Components come from the
process-wide registry (``asvae_kit.plugin_manager.get_registry``), selected by their
distribution's name (``"asvae-kit"`` for the built-ins) or by their plugin's module name or
prefix (``"asvae_kit.plugins"``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import re
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from .errors import ConfigError, DataError, UnsupportedShapeError
from .names import KINDS
from .plugin_manager import get_registry
from .registry import ComponentEntry, PluginRecord

__all__ = [
    "ConformanceSuite", "ConformanceError", "ConformanceSkip", "CLAUSES", "STANDARD_SHAPES", "NETWORK_KINDS",
    "Settings", "select_components", "check_plugin_loads", "check_network_shapes", "check_network_outputs",
    "check_network_densities", "check_network_gradients", "check_network_state_dict", "check_network_deepcopy",
    "check_network_seed", "check_discriminator_rows", "check_network_compile", "check_network_bf16",
    "check_divergence_trains", "check_divergence_skl", "check_divergence_bf16", "check_dataset", "check_metric",
    "check_logger", "check_preset",
]

#: The image shapes (C, H, W) the suite tries on every network: 1 or 3 channels at 8, 28, 32 and 64
#: pixels, the shapes the built-ins serve (``asvae_kit.plugins.shapes``), smallest first.
STANDARD_SHAPES: tuple[tuple[int, int, int], ...] = tuple(
    sorted(((c, s, s) for s in (8, 28, 32, 64) for c in (1, 3)), key=lambda shape: (shape[1], shape[0]))
)
NETWORK_KINDS = ("encoder", "decoder", "discriminator")

#: Every clause by the name its failures carry, in words.
CLAUSES: dict[str, str] = {
    "plugin loads": "the distribution's plugins load without error and register at least one component",
    "shapes": "a network builds with its defaults for every standard shape it claims, serves each, and raises UnsupportedShapeError for the others",
    "outputs": "outputs have the contract's types, shapes and ranges for batch sizes 1, 2 and 3, in train and eval mode (docs/design.md §2)",
    "densities": "log_prob, KL, codes and logits are finite at pixel values 0, 1 and random ones",
    "gradients": "a backward pass gives every parameter a finite gradient, and reaches the inputs the other networks train through",
    "state-dict round trip": "no tensor is kept as a plain attribute, and a network built with another seed and given this one's state dict (saved and loaded) gives the same outputs",
    "deep copy": "copy.deepcopy (what the EMA makes) gives the same outputs and shares no tensor with the original",
    "same seed": "two networks built and run under the same torch seed give the same outputs",
    "rows independent": "a discriminator's row depends on its own (x, z) only: no batch statistics",
    "torch.compile": "the network compiled as compile=true compiles it gives the eager outputs, and trains",
    "bf16": "under bfloat16 autocast outputs are finite, densities float32, and gradients finite",
    "two training steps": "two training steps with the built-in MLP networks log finite losses",
    "skl": "a divergence that claims an skl logs a finite one, and the skl metric reads it",
    "images": "a dataset yields finite images [C, H, W] in [0, 1] of its data_shape (integer labels where claimed), readable by the trainer, without touching the network",
    "metric values": "a metric returns finite numbers, the same ones twice, or raises MetricNotApplicable",
    "logger lifecycle": "a logger opens on a run directory, takes rows and images, closes, and opens again for a resumed fit",
    "fit two steps": "a preset trains two steps (on small digits where its networks serve 8x8 images) with finite losses",
    "save and load": "a saved and loaded preset run gives the same samples",
    "deterministic": "the preset trained again under the same seed gives the same losses and samples",
}


class ConformanceError(AssertionError):
    """A component broke a contract clause; the message is one line naming both."""

    def __init__(self, kind: str, name: str, clause: str, detail: str) -> None:
        self.kind, self.name, self.clause = kind, name, clause
        super().__init__(_one_line(f"{kind} {name!r} [clause: {clause}]: {detail}"))


class ConformanceSkip(Exception):
    """The clause does not apply (a dataset without its files, a logger without its package...)."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _describe(exc: BaseException) -> str:
    return _one_line(f"{type(exc).__name__}: {exc}") if str(exc) else type(exc).__name__


@dataclass(frozen=True)
class Settings:
    """What the clauses run with: the suite's class attributes (``ConformanceSuite``)."""

    latent_dim: int = 4
    batch_sizes: tuple[int, ...] = (1, 2, 3)
    shapes: tuple[tuple[int, int, int], ...] = STANDARD_SHAPES
    num_heads: tuple[int, ...] = (1, 2)
    device: str = "cpu"
    #: ``torch.compile``'s backend for clause "torch.compile" (``None``: torch's default, Inductor,
    #: as ``compile: true`` uses; ``"aot_eager"`` traces the same graphs without generating code)
    compile_backend: str | None = None
    #: kind -> name -> config keys the component is built with (its defaults otherwise)
    component_config: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)

    def config(self, entry: ComponentEntry) -> dict[str, Any]:
        return dict(self.component_config.get(entry.kind, {}).get(entry.name, {}))


DEFAULT_SETTINGS = Settings()


class _Check:
    """One clause's run on one component: ``fail`` raises its ``ConformanceError``."""

    def __init__(self, entry: ComponentEntry, clause: str) -> None:
        self.entry, self.clause = entry, clause

    def fail(self, detail: str, cause: BaseException | None = None) -> ConformanceError:
        error = ConformanceError(self.entry.kind, self.entry.name, self.clause, detail)
        if cause is not None:
            error.__cause__ = cause
        return error

    @contextlib.contextmanager
    def running(self, what: str) -> Iterator[None]:
        """A component's exception inside becomes this clause's failure, ``what`` saying when."""
        try:
            yield
        except (ConformanceError, ConformanceSkip):
            raise
        except Exception as exc:
            raise self.fail(f"{what} raised {_describe(exc)}", exc) from exc


# ---------------------------------------------------------------------------------------------
# selecting components


def _normalise(name: str | None) -> str:
    return re.sub(r"[-_.]+", "-", name or "").lower()


def _matches(distribution: str, dist: str | None, plugin: str) -> bool:
    return _normalise(dist) == _normalise(distribution) or plugin == distribution or plugin.startswith(distribution + ".")


def select_components(distribution: str, kinds: Sequence[str] | None = None) -> list[ComponentEntry]:
    """The registered components of ``distribution`` (its name, or a plugin module or prefix such
    as ``"asvae_kit.plugins"``) of ``kinds`` (all when ``None``), by kind then name."""
    registry = get_registry()
    out = []
    for kind in kinds or KINDS:
        for name in registry.names(kind):
            entry = registry.get(kind, name)
            if _matches(distribution, entry.distribution, entry.plugin):
                out.append(entry)
    return out


def check_plugin_loads(distribution: str | None) -> None:
    """Clause "plugin loads": ``distribution``'s plugins loaded and registered components."""
    if not distribution:
        raise ConformanceError("distribution", str(distribution), "plugin loads", "set the suite's `distribution` to the name of the package under test")
    records: list[PluginRecord] = [r for r in get_registry().plugins if _matches(distribution, r.distribution, r.name)]
    if not records:
        raise ConformanceError(
            "distribution", distribution, "plugin loads",
            "no loaded plugin comes from it: install the package (pip install -e .) with an entry point in the "
            "'asvae_kit' group, and check that ASVAE_KIT_LOAD_PLUGINS does not leave it out",
        )
    for record in records:
        if record.status != "ok":
            raise ConformanceError("distribution", distribution, "plugin loads", f"plugin {record.name!r} failed to load: {record.reason}")
    if not any(record.components for record in records):
        raise ConformanceError("distribution", distribution, "plugin loads", "its plugins register no component")


# ---------------------------------------------------------------------------------------------
# networks: inputs, outputs, comparisons


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """torch's CPU (and CUDA) generators forked and seeded, as they were afterwards."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class _Net:
    """Building and running one network component (encoder, decoder or discriminator)."""

    def __init__(self, check: _Check, settings: Settings) -> None:
        self.check, self.settings = check, settings
        self.entry = check.entry
        self.kind = self.entry.kind
        self.device = torch.device(settings.device)

    def make(self, shape: tuple[int, int, int], num_heads: int | None = None, seed: int = 0) -> Any:
        """The factory's result for ``shape`` (discriminators: ``num_heads``, default the
        largest), built under ``seed``; its exceptions pass through."""
        context: dict[str, Any] = {"data_shape": shape, "latent_dim": self.settings.latent_dim}
        if self.kind == "discriminator":
            context["num_heads"] = num_heads or max(self.settings.num_heads)
        with _seeded(seed):
            return self.entry.factory(**context, **self.settings.config(self.entry))

    def build(self, shape: tuple[int, int, int], num_heads: int | None = None, seed: int = 0, check: _Check | None = None) -> nn.Module:
        """The network for ``shape`` on the suite's device; any exception is ``check``'s failure."""
        check = check or self.check
        try:
            module = self.make(shape, num_heads, seed)
        except Exception as exc:
            hint = "; a network that cannot serve a shape raises UnsupportedShapeError" if check.clause == "shapes" and not isinstance(exc, UnsupportedShapeError) else ""
            raise check.fail(f"building it for data_shape {shape} raised {_describe(exc)}{hint}", exc) from exc
        if not isinstance(module, nn.Module):
            raise check.fail(f"its factory returned {type(module).__name__}, not a torch.nn.Module")
        return module.to(self.device)

    def claimed(self, first_only: bool = False) -> list[tuple[int, int, int]]:
        """The shapes it builds for, smallest first (``first_only``: the smallest alone); clause
        "shapes" fails when it claims none, or fails to build other than by ``UnsupportedShapeError``."""
        shapes_check = _Check(self.entry, "shapes")
        shapes = []
        for shape in self.settings.shapes:
            try:
                self.make(shape)
            except UnsupportedShapeError as exc:
                if not str(exc):
                    raise shapes_check.fail(f"it raised UnsupportedShapeError for {shape} without a message; name the shapes it serves") from exc
                continue
            except Exception:
                self.build(shape, check=shapes_check)  # fails, naming the exception
            shapes.append(shape)
            if first_only:
                break
        if not shapes:
            tried = ", ".join("x".join(map(str, s)) for s in self.settings.shapes)
            raise shapes_check.fail(f"it serves none of the shapes tried ({tried}); set the suite's `shapes` to those it serves")
        return shapes

    def smallest(self) -> tuple[int, int, int]:
        return self.claimed(first_only=True)[0]

    def inputs(self, shape: tuple[int, int, int], batch: int, pixels: str = "random", seed: int = 1) -> dict[str, torch.Tensor]:
        """x (``pixels``: random, zeros or ones) and z for a batch, drawn from their own generator."""
        g = torch.Generator().manual_seed(seed)
        x = {"random": torch.rand(batch, *shape, generator=g), "zeros": torch.zeros(batch, *shape), "ones": torch.ones(batch, *shape)}[pixels]
        z = torch.randn(batch, self.settings.latent_dim, generator=g)
        return {"x": x.to(self.device), "z": z.to(self.device), "x_eval": torch.rand(batch, *shape, generator=g).to(self.device)}

    def outputs(self, module: nn.Module, inp: dict[str, torch.Tensor], seed: int = 2, sampled: bool = True) -> dict[str, torch.Tensor]:
        """Every output the contract names, as tensors; ``sampled=False``: the deterministic ones."""
        out: dict[str, torch.Tensor] = {}
        with _seeded(seed):
            if self.kind == "encoder":
                posterior = module(inp["x"])
                out["mean"] = posterior.mean
                z = posterior.rsample() if sampled else posterior.mean
                if sampled:
                    out["rsample"] = z
                if callable(getattr(posterior, "log_prob", None)):
                    out["log_prob"] = posterior.log_prob(z)
                if callable(getattr(posterior, "kl_standard_normal", None)):
                    out["kl"] = posterior.kl_standard_normal()
            elif self.kind == "decoder":
                likelihood = module(inp["z"])
                out["mean"] = likelihood.mean
                out["log_prob"] = likelihood.log_prob(inp["x_eval"])
                if sampled and getattr(likelihood, "has_rsample", hasattr(likelihood, "rsample")):
                    out["rsample"] = likelihood.rsample()
            else:
                out["features"] = module.features(inp["x"], inp["z"])
                out["logits"] = module(inp["x"], inp["z"])
        return out

    def loss(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(v.float().sum() for v in out.values())  # type: ignore[return-value]


def _first_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float = 1e-5, atol: float = 1e-6) -> str | None:
    """Which output of ``b`` differs from ``a``'s (and by how much), or ``None``."""
    for key in a:
        x, y = a[key].detach().float().cpu(), b.get(key)
        if y is None or x.shape != y.shape:
            return f"{key}: missing or of another shape"
        y = y.detach().float().cpu()
        if not torch.allclose(x, y, rtol=rtol, atol=atol, equal_nan=True):
            return f"{key}: off by up to {(x - y).abs().nan_to_num(nan=math.inf).max().item():.3g}"
    return None


def _tensor_attributes(module: nn.Module) -> list[str]:
    """``self.path`` of every leaf tensor a module or submodule keeps as a plain attribute (or in a
    plain list, tuple or dict attribute): state that ``state_dict``, ``.to()`` and the optimizers miss.
    References to registered parameters and buffers (``nn.LSTM``'s ``_flat_weights``) are not state."""
    registered = {id(t) for t in module.parameters()} | {id(t) for t in module.buffers()}
    found = []
    for prefix, sub in module.named_modules():
        for key, value in vars(sub).items():
            if key in ("_parameters", "_buffers", "_modules") or key.startswith("__"):
                continue
            items: list[tuple[str, Any]] = [("", value)]
            if isinstance(value, (list, tuple)):
                items = [(f"[{i}]", v) for i, v in enumerate(value)]
            elif isinstance(value, dict):
                items = [(f"[{k!r}]", v) for k, v in value.items()]
            for suffix, item in items:
                # a tensor computed from parameters (old-style weight_norm's weight) is derived, not state
                if isinstance(item, torch.Tensor) and id(item) not in registered and (isinstance(item, nn.Parameter) or item.grad_fn is None):
                    found.append("self." + ".".join(p for p in (prefix, key) if p) + suffix)
    return found


# ---------------------------------------------------------------------------------------------
# networks: the clauses


def _tensor(check: _Check, value: Any, what: str, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise check.fail(f"{what} is a {type(value).__name__}, not a tensor")
    if not value.is_floating_point():
        raise check.fail(f"{what} has dtype {value.dtype}, not a float")
    if tuple(value.shape) != shape:
        raise check.fail(f"{what} has shape {list(value.shape)}, expected {list(shape)}")
    return value


def _contract_outputs(net: _Net, module: nn.Module, shape: tuple[int, int, int], batch: int, where: str, heads: int | None = None) -> None:
    """The output contract of docs/design.md §2 for one batch (``heads``: the discriminator's
    ``num_heads``, when known)."""
    check, latent = net.check, net.settings.latent_dim
    inp = net.inputs(shape, batch)
    with check.running(f"{where}: forward"):
        if net.kind == "encoder":
            posterior = module(inp["x"])
            for attr in ("rsample", "mean"):
                if not hasattr(posterior, attr):
                    raise check.fail(f"{where}: forward returned a {type(posterior).__name__} without .{attr} (return a posterior, e.g. asvae_kit.distributions.GaussianPosterior)")
            _tensor(check, posterior.mean, f"{where}: posterior.mean", (batch, latent))
            z = _tensor(check, posterior.rsample(), f"{where}: posterior.rsample()", (batch, latent))
            if callable(getattr(posterior, "log_prob", None)):
                _tensor(check, posterior.log_prob(z), f"{where}: posterior.log_prob(z)", (batch,))
            if callable(getattr(posterior, "kl_standard_normal", None)):
                kl = _tensor(check, posterior.kl_standard_normal(), f"{where}: posterior.kl_standard_normal()", (batch,))
                if (kl < -1e-4 * (1 + kl.abs())).any():
                    raise check.fail(f"{where}: posterior.kl_standard_normal() is negative ({kl.min().item():.3g}); a KL divergence is >= 0")
        elif net.kind == "decoder":
            likelihood = module(inp["z"])
            for attr in ("mean", "log_prob"):
                if not hasattr(likelihood, attr):
                    raise check.fail(f"{where}: forward returned a {type(likelihood).__name__} without .{attr} (return a likelihood, e.g. asvae_kit.distributions.BernoulliLikelihood)")
            mean = _tensor(check, likelihood.mean, f"{where}: likelihood.mean", (batch, *shape))
            if mean.min().item() < 0 or mean.max().item() > 1:
                raise check.fail(f"{where}: likelihood.mean lies in [{mean.min().item():.3g}, {mean.max().item():.3g}], not in [0, 1] (an image)")
            _tensor(check, likelihood.log_prob(inp["x"]), f"{where}: likelihood.log_prob(x)", (batch,))
            has_rsample = getattr(likelihood, "has_rsample", hasattr(likelihood, "rsample"))
            if not isinstance(has_rsample, bool):
                raise check.fail(f"{where}: likelihood.has_rsample is {has_rsample!r}, not a bool")
            if has_rsample:
                _tensor(check, likelihood.rsample(), f"{where}: likelihood.rsample()", (batch, *shape))
        else:
            head = getattr(module, "head", None)
            if not isinstance(head, nn.Linear):
                raise check.fail(f"{where}: it has no `head` nn.Linear (it has {type(head).__name__})")
            if heads is not None and head.out_features != heads:
                raise check.fail(f"{where}: built with num_heads={heads}, its head has {head.out_features} output(s)")
            if not callable(getattr(module, "features", None)):
                raise check.fail(f"{where}: it has no features(x, z) method")
            h = module.features(inp["x"], inp["z"])
            if not isinstance(h, torch.Tensor) or h.dim() != 2 or h.shape[0] != batch:
                raise check.fail(f"{where}: features(x, z) gave {list(getattr(h, 'shape', []))} ({type(h).__name__}), expected [B, D] with B={batch}")
            if h.shape[1] != head.in_features:
                raise check.fail(f"{where}: features(x, z) has {h.shape[1]} columns, its head takes {head.in_features}")
            logits = _tensor(check, module(inp["x"], inp["z"]), f"{where}: forward(x, z)", (batch, head.out_features))
            was = module.training
            module.eval()
            try:
                same = torch.allclose(module(inp["x"], inp["z"]), module.head(module.features(inp["x"], inp["z"])), rtol=1e-5, atol=1e-6)
            finally:
                module.train(was)
            if not same:
                raise check.fail(f"{where}: forward(x, z) is not head(features(x, z)) (the divergences read the head through features)")
            del logits


def check_network_shapes(entry: ComponentEntry, settings: Settings = DEFAULT_SETTINGS) -> None:
    """Clause "shapes": every claimed standard shape builds, serves a batch and has finite densities."""
    net = _Net(_Check(entry, "shapes"), settings)
    for shape in net.claimed():
        module = net.build(shape)
        heads = max(settings.num_heads) if entry.kind == "discriminator" else None
        _contract_outputs(net, module, shape, 2, f"at data_shape {shape}", heads)
        _finite_outputs(net, module, shape, f"at data_shape {shape}")


def check_network_outputs(entry: ComponentEntry, settings: Settings = DEFAULT_SETTINGS) -> None:
    """Clause "outputs": types, shapes and ranges at the smallest claimed shape, each batch size,
    in train and eval mode (discriminators: each head count)."""
    net = _Net(_Check(entry, "outputs"), settings)
    shape = net.smallest()
    for heads in settings.num_heads if entry.kind == "discriminator" else (None,):
        module = net.build(shape, heads)
        for mode in ("train", "eval"):  # training steps, then sampling, reconstruction and metrics
            module.train(mode == "train")
            for batch in settings.batch_sizes:
                where = f"{mode} mode, data_shape {shape}, batch {batch}" + (f", num_heads {heads}" if heads else "")
                _contract_outputs(net, module, shape, batch, where, heads)


def _finite_outputs(net: _Net, module: nn.Module, shape: tuple[int, int, int], where: str) -> None:
    for pixels in ("zeros", "ones", "random"):
        inp = net.inputs(shape, 2, pixels)
        if net.kind == "decoder":
            inp["x_eval"] = inp["x"]  # the pixel values go to log_prob
        with net.check.running(f"{where}, pixels {pixels}"):
            out = net.outputs(module, inp)
        for key, value in out.items():
            if not torch.isfinite(value).all():
                what = "log p(x|z)" if net.kind == "decoder" and key == "log_prob" else key
                raise net.check.fail(f"{where}: {what} is not finite at pixel values {pixels.replace('zeros', '0').replace('ones', '1')}")


def check_network_densities(entry: ComponentEntry, settings: Settings = DEFAULT_SETTINGS) -> None:
    """Clause "densities": outputs and densities finite at pixel values 0, 1 and random ones."""
    net = _Net(_Check(entry, "densities"), settings)
    shape = net.smallest()
    _finite_outputs(net, net.build(shape), shape, f"data_shape {shape}")


def _gradients(net: _Net, module: nn.Module, shape: tuple[int, int, int], where: str) -> None:
    check = net.check
    inp = net.inputs(shape, 2)
    for key in ("x", "z"):
        inp[key].requires_grad_(True)
    module.zero_grad(set_to_none=True)
    with check.running(f"{where}: forward and backward"):
        net.loss(net.outputs(module, inp)).backward()
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            raise check.fail(f"{where}: parameter {name!r} gets no gradient (unused, or detached from the outputs)")
        if not torch.isfinite(p.grad).all():
            raise check.fail(f"{where}: parameter {name!r} has a non-finite gradient")
    needs = {"decoder": ("z",), "discriminator": ("x", "z")}.get(net.kind, ())
    for key in needs:
        grad = inp[key].grad
        if grad is None or not torch.isfinite(grad).all():
            why = "the encoder learns through log p(x|z)" if net.kind == "decoder" else "the encoder and decoder learn through its inputs"
            raise check.fail(f"{where}: no finite gradient reaches its input {key} ({why})")
    if net.kind == "encoder":
        module.zero_grad(set_to_none=True)
        with check.running(f"{where}: posterior.rsample()"), _seeded(3):
            z = module(inp["x"].detach()).rsample()
        if z.requires_grad:
            with check.running(f"{where}: rsample().backward()"):
                z.float().sum().backward()
        if not z.requires_grad or all(p.grad is None or not p.grad.any() for p in module.parameters()):
            raise check.fail(f"{where}: no gradient reaches the parameters through posterior.rsample() (it must be reparameterised)")
    module.zero_grad(set_to_none=True)


def check_network_gradients(entry: ComponentEntry, settings: Settings = DEFAULT_SETTINGS) -> None:
    """Clause "gradients": finite gradients on every parameter (and the inputs others train through)."""
    net = _Net(_Check(entry, "gradients"), settings)
    shape = net.smallest()
    _gradients(net, net.build(shape), shape, f"data_shape {shape}")


def check_network_state_dict(entry: ComponentEntry, settings: Settings = DEFAULT_SETTINGS) -> None:
    """Clause "state-dict round trip": no plain tensor attributes (also after a forward pass), and
    a network built with another seed, given this one's state dict through ``torch.save`` and
    ``torch.load(weights_only=True)``, gives the same outputs."""
    check = _Check(entry, "state-dict round trip")
    net = _Net(check, settings)
    shape = net.smallest()
    module, other = net.build(shape, seed=0), net.build(shape, seed=1)
    inp = net.inputs(shape, 2)
    with check.running("a forward pass"):
        expected = net.outputs(module, inp)
    for found in (_tensor_attributes(module), _tensor_attributes(other)):
        if found:
            raise check.fail(
                f"a tensor kept as a plain attribute ({', '.join(found)}) is not in state_dict; make it an nn.Parameter or "
                "register_buffer(...) (a checkpoint, .to(device) and the EMA miss it)"
            )
    buffer = io.BytesIO()
    with check.running("saving and loading its state_dict"):
        torch.save(module.state_dict(), buffer)
        buffer.seek(0)
        other.load_state_dict(torch.load(buffer, weights_only=True))
    with check.running("a forward pass after load_state_dict"):
        got = net.outputs(other, inp)
    diff = _first_difference(expected, got)
    if diff:
        raise check.fail(f"a copy built with another seed and given its state_dict gives other outputs ({diff}): some state is not in state_dict")


def check_network_deepcopy(entry: ComponentEntry, settings: Settings = DEFAULT_SETTINGS) -> None:
    """Clause "deep copy": ``copy.deepcopy`` works, gives the same outputs, shares no tensor."""
    check = _Check(entry, "deep copy")
    net = _Net(check, settings)
    shape = net.smallest()
    module = net.build(shape)
    inp = net.inputs(shape, 2)
    with check.running("a forward pass"):
        expected = net.outputs(module, inp)
    with check.running("copy.deepcopy"):
        twin = copy.deepcopy(module)
    with check.running("the copy's forward pass"):
        got = net.outputs(twin, inp)
    diff = _first_difference(expected, got)
    if diff:
        raise check.fail(f"copy.deepcopy (what the EMA average is) gives other outputs than the original ({diff})")
    with torch.no_grad():
        for p in list(twin.parameters()) + [b for b in twin.buffers() if b.is_floating_point()]:
            p.add_(0.5)
    with check.running("a forward pass"):
        again = net.outputs(module, inp)
    if _first_difference(expected, again) is not None:
        raise check.fail("changing the deep copy's weights changes the original's outputs: they share tensors (the EMA average would move the training weights)")


def check_network_seed(entry: ComponentEntry, settings: Settings = DEFAULT_SETTINGS) -> None:
    """Clause "same seed": built and run twice under the same torch seed, the same outputs."""
    check = _Check(entry, "same seed")
    net = _Net(check, settings)
    shape = net.smallest()
    runs = []
    for _ in range(2):
        module = net.build(shape, seed=7)
        with check.running("a forward pass"):
            runs.append(net.outputs(module, net.inputs(shape, 2), seed=8))
    diff = _first_difference(runs[0], runs[1])
    if diff:
        raise check.fail(f"two networks built and run under the same torch seed differ ({diff}): draw random numbers from torch only")


def check_discriminator_rows(entry: ComponentEntry, settings: Settings = DEFAULT_SETTINGS) -> None:
    """Clause "rows independent": no BatchNorm, and (in eval mode) the features of a stacked
    batch are the features of its parts."""
    check = _Check(entry, "rows independent")
    net = _Net(check, settings)
    shape = net.smallest()
    module = net.build(shape)
    norms = [name for name, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        raise check.fail(f"it has BatchNorm ({', '.join(norms)}): the divergences stack several segments into one features call, so a row must depend on its own (x, z) only")
    inp = net.inputs(shape, 3)
    module.eval()
    with check.running("features(x, z)"), torch.no_grad():
        whole = module.features(inp["x"], inp["z"])
        parts = torch.cat([module.features(inp["x"][:1], inp["z"][:1]), module.features(inp["x"][1:], inp["z"][1:])])
    if not torch.allclose(whole, parts, rtol=1e-4, atol=1e-5):
        raise check.fail("features of a stacked batch differ from the features of its parts: a row depends on the other rows (batch statistics)")


def _compile(module: nn.Module, kind: str, backend: str | None) -> None:
    """Compile ``module`` as ``AlgorithmStep.compile_networks`` does for ``compile: true``."""
    import types

    options = {"backend": backend} if backend else {}
    if kind == "discriminator":
        module.features = types.MethodType(torch.compile(type(module).features, **options), module)  # type: ignore[method-assign]
    else:
        module.compile(**options)


def check_network_compile(entry: ComponentEntry, settings: Settings = DEFAULT_SETTINGS) -> None:
    """Clause "torch.compile": compiled as the trainer compiles it, the eval outputs equal eager's,
    and a training forward and backward gives finite gradients."""
    import torch._dynamo

    check = _Check(entry, "torch.compile")
    net = _Net(check, settings)
    shape = net.smallest()
    module = net.build(shape)
    inp = net.inputs(shape, 2)
    module.eval()
    try:
        with check.running("the eager forward pass"), torch.no_grad():
            expected = net.outputs(module, inp, sampled=False)
        with check.running("torch.compile and the compiled forward pass"), torch.no_grad():
            _compile(module, entry.kind, settings.compile_backend)
            got = net.outputs(module, inp, sampled=False)
        diff = _first_difference(expected, got, rtol=1e-4, atol=1e-5)
        if diff:
            raise check.fail(f"compiled, it gives other outputs than eager ({diff})")
        module.train()
        _gradients(net, module, shape, f"compiled, data_shape {shape}")
    finally:
        torch._dynamo.reset()


def check_network_bf16(entry: ComponentEntry, settings: Settings = DEFAULT_SETTINGS) -> None:
    """Clause "bf16": under bfloat16 autocast (``precision: bf16``) the outputs are finite, the
    densities float32 (summed over pixels, half precision loses them), the gradients finite."""
    check = _Check(entry, "bf16")
    net = _Net(check, settings)
    shape = net.smallest()
    module = net.build(shape)
    with torch.autocast(net.device.type, dtype=torch.bfloat16):
        _contract_outputs(net, module, shape, 2, "under bf16 autocast")
        with check.running("under bf16 autocast: forward"):
            out = net.outputs(module, net.inputs(shape, 2))
        for key, value in out.items():
            if not torch.isfinite(value.float()).all():
                raise check.fail(f"under bf16 autocast: {key} is not finite")
            if key in ("log_prob", "kl") and value.dtype in (torch.float16, torch.bfloat16):
                raise check.fail(f"under bf16 autocast: {key} is {value.dtype}; sum densities in float32 (asvae_kit.distributions does)")
        _gradients(net, module, shape, "under bf16 autocast")


# ---------------------------------------------------------------------------------------------
# training: divergences and presets

#: The built-in MLP networks, shrunk, on a slice of the bundled digits: what divergences train with.
TINY_RUN: dict[str, Any] = {
    "encoder": {"name": "mlp", "hidden": [32]},
    "decoder": {"name": "mlp", "hidden": [32]},
    "discriminator": {"name": "joint-mlp", "hidden": [32]},
    "data": {"name": "digits", "limit": 128},
    "latent_dim": 4,
}
#: Overrides that keep any run to two small steps on the CPU, writing nothing it is not asked to.
SHORT: dict[str, Any] = {
    "batch_size": 8, "steps": 2, "log_every": 1, "sample_every": 0, "checkpoint_every": 0, "loggers": [], "metrics": [],
    "eval_size": 32, "device": "cpu",
}
_TIMING = ("step", "time_s", "steps_per_s")


def _finite_rows(check: _Check, history: list[dict[str, float]], steps: int = 2) -> None:
    if len(history) != steps:
        raise check.fail(f"{steps} steps at log_every=1 logged {len(history)} rows")
    for row in history:
        terms = {k: v for k, v in row.items() if k not in _TIMING}
        if not terms:
            raise check.fail(f"step {row.get('step')} logged no loss term")
        bad = [k for k, v in terms.items() if not math.isfinite(float(v))]
        if bad:
            raise check.fail(f"step {row.get('step')} logged non-finite {', '.join(bad)} ({', '.join(f'{k}={terms[k]}' for k in bad)})")


def _divergence_run(check: _Check, settings: Settings, **extra: Any) -> Any:
    import asvae_kit

    config = {**TINY_RUN, "divergence": {"name": check.entry.name, **settings.config(check.entry)}, **SHORT, **extra}
    with check.running("building a trainer with the built-in MLP networks"):
        trainer = asvae_kit.build(config)
    with check.running("two training steps"):
        trainer.fit(progress=False)
    _finite_rows(check, trainer.history)
    return trainer


def check_divergence_trains(entry: ComponentEntry, settings: Settings = DEFAULT_SETTINGS) -> None:
    """Clause "two training steps": with the built-in MLP networks, finite logged losses."""
    _divergence_run(_Check(entry, "two training steps"), settings)


def check_divergence_skl(entry: ComponentEntry, settings: Settings = DEFAULT_SETTINGS) -> None:
    """Clause "skl": a divergence that claims an skl (its description names ``skl``, or its
    diagnostics hold one) logs a finite one each step, and the ``skl`` metric reads it."""
    check = _Check(entry, "skl")
    trainer = _divergence_run(check, settings)
    claimed = re.search(r"\bskl\b", entry.description, re.IGNORECASE) is not None
    logged = [row.get("skl") for row in trainer.history]
    if all(v is None for v in logged):
        if claimed:
            raise check.fail("its description claims an skl, but its generator_loss diagnostics hold no 'skl'")
        raise ConformanceSkip(f"divergence {entry.name!r} claims no skl (its description does not name one, its diagnostics hold none)")
    if any(v is None or not math.isfinite(float(v)) for v in logged):
        raise check.fail(f"it logged skl {logged} over two steps; every step's must be a finite number")
    with check.running("the skl metric"):
        value = trainer.evaluate(["skl"], split="test")["skl"]
    if not math.isfinite(value):
        raise check.fail(f"the skl metric gives {value}")


def check_divergence_bf16(entry: ComponentEntry, settings: Settings = DEFAULT_SETTINGS) -> None:
    """Clause "bf16" of a divergence: two steps at ``precision="bf16"`` log finite losses."""
    _divergence_run(_Check(entry, "bf16"), settings, precision="bf16")


def _samples(trainer: Any) -> torch.Tensor:
    return trainer.sample(4, seed=0)


def check_preset(entry: ComponentEntry, run_dir: Path, settings: Settings = DEFAULT_SETTINGS) -> None:
    """Clauses "fit two steps", "save and load" and "deterministic" of a preset, in that order.

    The preset runs on a slice of the bundled ``digits`` (8x8) where its networks serve that
    shape, else on its own data (skipped when that cannot be built offline), with ``SHORT``."""
    import asvae_kit

    check = _Check(entry, "fit two steps")
    overrides = {**SHORT, "data": dict(TINY_RUN["data"]), **settings.config(entry)}
    with check.running("its config"):
        config = entry.factory()
    if not isinstance(config, Mapping):
        raise check.fail(f"its factory returned {type(config).__name__}, not a config mapping")

    def build() -> Any:
        with check.running("building it"):
            return asvae_kit.build(entry.name, **overrides)

    try:
        trainer = build()
    except ConformanceError as exc:
        if not isinstance(exc.__cause__, UnsupportedShapeError) or "data" in settings.config(entry):
            raise
        del overrides["data"]  # its networks do not serve 8x8 digits: its own data
        try:
            trainer = asvae_kit.build(entry.name, **overrides)
        except (DataError, ConfigError) as exc2:
            raise ConformanceSkip(f"preset {entry.name!r} needs its own data, which cannot be built here ({_describe(exc2)}); give it data in component_config") from exc2
        except Exception as exc2:
            raise check.fail(f"building it raised {_describe(exc2)}", exc2) from exc2
    with check.running("fit"):
        trainer.fit(run_dir=run_dir, progress=False)
    _finite_rows(check, trainer.history)
    with check.running("sampling"):
        expected = _samples(trainer)

    check.clause = "save and load"
    with check.running("asvae_kit.load of its run directory"):
        loaded = asvae_kit.load(run_dir)
        got = _samples(loaded)
    if loaded.step != trainer.step:
        raise check.fail(f"the loaded run is at step {loaded.step}, the saved one at {trainer.step}")
    diff = _first_difference({"samples": expected}, {"samples": got})
    if diff:
        raise check.fail(f"the loaded run samples other images than the saved one ({diff})")

    check.clause = "deterministic"
    again = build()
    with check.running("fit"):
        again.fit(progress=False)
    for a, b in zip(trainer.history, again.history):
        diff = _first_difference({k: torch.tensor(float(v)) for k, v in a.items() if k not in _TIMING}, {k: torch.tensor(float(v)) for k, v in b.items() if k not in _TIMING})
        if diff:
            raise check.fail(f"trained again under seed {trainer.config['seed']}, step {a.get('step')} logs other losses ({diff})")
    diff = _first_difference({"samples": expected}, {"samples": _samples(again)})
    if diff:
        raise check.fail(f"trained again under seed {trainer.config['seed']}, it samples other images ({diff})")


# ---------------------------------------------------------------------------------------------
# datasets, metrics, loggers

#: Option names that say a dataset reads files or the network: without config, a ``DataError``
#: or ``ConfigError`` from such a dataset skips its clause instead of failing it.
FILE_OPTIONS = ("data_dir", "path", "root", "download", "file", "files", "url", "folder")


class _NetworkBlocked(OSError):
    pass


@contextlib.contextmanager
def _no_network(attempts: list[str]) -> Iterator[None]:
    """Every socket connection and name lookup fails (and is noted in ``attempts``) inside."""
    originals = (socket.socket.connect, socket.create_connection, socket.getaddrinfo)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        target = next((a for a in args if not isinstance(a, socket.socket)), "?")
        target = f"{target[0]}:{target[1]}" if isinstance(target, tuple) and len(target) >= 2 else str(target)
        attempts.append(target)
        raise _NetworkBlocked(f"the conformance suite blocks the network (tried {target})")

    socket.socket.connect, socket.create_connection, socket.getaddrinfo = refuse, refuse, refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.socket.connect, socket.create_connection, socket.getaddrinfo = originals  # type: ignore[method-assign]


def _label_ok(label: Any) -> bool:
    if isinstance(label, bool):
        return False
    if isinstance(label, int):
        return True
    return isinstance(label, torch.Tensor) and label.numel() == 1 and not label.is_floating_point() and label.dtype != torch.bool


def check_dataset(entry: ComponentEntry, settings: Settings = DEFAULT_SETTINGS) -> None:
    """Clause "images": built with its defaults (``limit=16`` when it takes ``limit``) and no
    network, its items are finite float images of ``data_shape`` in [0, 1], integer labels where
    it has labels, and the trainer reads a batch of them."""
    from .data import images_and_labels

    check = _Check(entry, "images")
    config = settings.config(entry)
    if "limit" in entry.options.keys and "limit" not in config:
        config["limit"] = 16
    attempts: list[str] = []
    configured = bool(settings.config(entry))
    with _no_network(attempts):
        try:
            dataset = entry.factory(**config)
        except (DataError, ConfigError) as exc:
            if attempts:
                raise check.fail(f"building it tried to reach the network ({attempts[0]}) without download=True") from exc
            if configured or not any(k in entry.options.keys for k in FILE_OPTIONS):
                raise check.fail(f"building it raised {_describe(exc)}", exc) from exc
            raise ConformanceSkip(f"dataset {entry.name!r} cannot be built offline without its files ({_describe(exc)}); give it some in component_config") from exc
        except Exception as exc:
            if attempts:
                raise check.fail(f"building it tried to reach the network ({attempts[0]}) without download=True") from exc
            raise check.fail(f"building it raised {_describe(exc)}", exc) from exc
        if attempts:
            raise check.fail(f"building it tried to reach the network ({attempts[0]}) without download=True")
        shape = getattr(dataset, "data_shape", None)
        try:
            shape = tuple(int(v) for v in shape)  # type: ignore[union-attr]
            assert len(shape) == 3 and min(shape) > 0
        except Exception:
            raise check.fail(f"its data_shape is {shape!r}, not (C, H, W) of positive integers") from None
        with check.running("len(dataset)"):
            n = len(dataset)
        if n < 1:
            raise check.fail("it holds no images")
        labelled = getattr(dataset, "labels", None) is not None
        for i in sorted({*range(min(n, 8)), n - 1}):
            with check.running(f"dataset[{i}]"):
                item = dataset[i]
            pair = isinstance(item, (tuple, list))
            image = item[0] if pair else item
            if not isinstance(image, torch.Tensor) or not image.is_floating_point():
                raise check.fail(f"item {i}'s image is a {type(image).__name__}{'' if not isinstance(image, torch.Tensor) else f' of {image.dtype}'}, not a float tensor")
            if tuple(image.shape) != shape:
                raise check.fail(f"item {i}'s image has shape {list(image.shape)}, its data_shape says {list(shape)}")
            if not torch.isfinite(image).all():
                raise check.fail(f"item {i}'s image is not finite")
            lo, hi = image.min().item(), image.max().item()
            if lo < 0 or hi > 1:
                raise check.fail(f"item {i}'s pixels lie in [{lo:.4g}, {hi:.4g}], not in [0, 1]")
            if labelled and not pair:
                raise check.fail(f"it has labels, but item {i} is an image alone, not an (image, label) pair")
            if pair and (len(item) != 2 or not _label_ok(item[1])):
                label = item[1] if len(item) > 1 else None
                raise check.fail(f"item {i} is a {len(item)}-tuple with label {label!r}; items are images or (image, integer label) pairs")
        with check.running("reading a batch as the trainer does (asvae_kit.data.images_and_labels)"):
            images, _ = images_and_labels(dataset, min(n, 8))
        if tuple(images.shape[1:]) != shape:
            raise check.fail(f"a batch read as the trainer reads it has shape {list(images.shape)}")


_METRIC_TRAINERS: dict[Any, Any] = {}


def _metric_trainer(settings: Settings) -> Any:
    """A tiny asvae trainer on digits, trained two steps: what metrics are evaluated on (cached)."""
    import asvae_kit

    key = settings.device
    if key not in _METRIC_TRAINERS:
        trainer = asvae_kit.build({**TINY_RUN, "divergence": "asvae", **SHORT, "device": settings.device})
        trainer.fit(progress=False)
        _METRIC_TRAINERS[key] = trainer
    return _METRIC_TRAINERS[key]


def check_metric(entry: ComponentEntry, settings: Settings = DEFAULT_SETTINGS) -> None:
    """Clause "metric values": on a tiny trained asvae model's test split, ``evaluate`` gives
    finite numbers, the same ones twice, or the metric raises ``MetricNotApplicable``."""
    from .evaluation import MetricNotApplicable

    check = _Check(entry, "metric values")
    trainer = _metric_trainer(settings)
    spec = {"name": entry.name, **settings.config(entry)}
    values = []
    for _ in range(2):
        try:
            values.append(dict(trainer.evaluate([spec], split="test")))
        except MetricNotApplicable as exc:
            if values:
                raise check.fail("it raised MetricNotApplicable the second time only", exc) from exc
            raise ConformanceSkip(f"metric {entry.name!r} does not apply to the test model: {_one_line(str(exc))}") from exc
        except Exception as exc:
            raise check.fail(f"evaluate raised {_describe(exc)}", exc) from exc
    if not values[0]:
        raise check.fail("it returned no values")
    bad = {k: v for k, v in values[0].items() if not math.isfinite(v)}
    if bad:
        raise check.fail(f"it returned non-finite values {bad}")
    if values[0] != values[1]:
        changed = next(k for k in values[0] if values[0][k] != values[1].get(k))
        raise check.fail(f"evaluated twice it gives other numbers ({changed}: {values[0][changed]} then {values[1].get(changed)}); draw random numbers from torch (evaluate seeds it)")


def check_logger(entry: ComponentEntry, run_dir: Path, settings: Settings = DEFAULT_SETTINGS) -> None:
    """Clause "logger lifecycle": built with its defaults (a ``ConfigError`` there, a missing
    package, skips), it starts on ``run_dir``, takes two rows and an image grid, closes, and
    does all that again from step 2 as a resumed ``fit`` does."""
    check = _Check(entry, "logger lifecycle")
    try:
        logger = entry.factory(**settings.config(entry))
    except ConfigError as exc:
        raise ConformanceSkip(f"logger {entry.name!r} cannot be built here ({_describe(exc)})") from exc
    except Exception as exc:
        raise check.fail(f"building it raised {_describe(exc)}", exc) from exc
    missing = [m for m in ("start", "log_row", "log_images", "close") if not callable(getattr(logger, m, None))]
    if missing:
        raise check.fail(f"it has no {', '.join(missing)} (a logger has start, log_row, log_images and close)")
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {**TINY_RUN, "divergence": {"name": "asvae"}, **SHORT}
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for start, what in ((0, "a new run"), (2, "a resumed run")):
        with check.running(f"start({what})"):
            logger.start(run_dir, config, start, "conformance-run")
        for step in (start + 1, start + 2):
            with check.running(f"log_row (step {step}, {what})"):
                logger.log_row({"step": step, "d_loss": 1.25, "g_loss": -0.5, "time_s": 0.01 * step, "steps_per_s": 100.0})
        with check.running(f"log_images ({what})"):
            logger.log_images("samples", images, start + 2)
        with check.running(f"close ({what})"):
            logger.close()


# ---------------------------------------------------------------------------------------------
# the pytest base class


def _clause(*kinds: str, slow: bool = False) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Mark a suite method as a clause test over the components of ``kinds``."""

    def mark(fn: Callable[..., None]) -> Callable[..., None]:
        fn._conformance = (kinds, slow)  # type: ignore[attr-defined]
        return fn

    return mark


def _run(fn: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """Run a check; its failure is pytest's failure, in one line (a component's own exception
    keeps its traceback), its skip pytest's skip."""
    import pytest

    __tracebackhide__ = True
    failure = skip = None
    try:
        fn(*args, **kwargs)
    except ConformanceSkip as exc:
        skip = str(exc)
    except ConformanceError as exc:
        if exc.__cause__ is not None:
            raise
        failure = str(exc)
    if skip is not None:  # outside the except clause: pytest shows no chained exception
        pytest.skip(skip)
    if failure is not None:
        pytest.fail(failure, pytrace=False)


class ConformanceSuite:
    """Subclass it as ``Test...`` and set ``distribution``: pytest then runs every clause on every
    component that distribution registers (see this module's docstring).

    Class attributes an author may set:

    - ``distribution``: the package's distribution name (``"asvae-kit-myplugin"``), or a plugin
      module or prefix (``"asvae_kit.plugins"`` for the built-ins);
    - ``component_config``: ``{kind: {name: {key: value}}}``, config a component is built with
      instead of its defaults (files for a dataset, cheaper options for a metric);
    - ``shapes``: the image shapes (C, H, W) networks are tried at (default ``STANDARD_SHAPES``);
      a network must serve at least one;
    - ``latent_dim``, ``batch_sizes``, ``num_heads``, ``device``: what networks run with;
    - ``compile_backend``: ``torch.compile``'s backend (``None``: Inductor, as the trainer);
    - ``component_config_for(kind, name, tmp_path)``, a method: config for a dataset, logger or
      preset that needs files made for the test (return ``None`` to use ``component_config``);
    - ``exclude``: ``{kind: {name: reason}}``, components whose clauses are skipped, with why;
    - ``slow_components``: ``{kind: [names]}``, components whose every clause is marked slow.

    Clauses marked slow (``pytest -m "not slow"`` leaves them out): every claimed shape,
    ``torch.compile``, bf16, metrics named in ``slow_components``, and presets.
    """

    distribution: str | None = None
    component_config: Mapping[str, Mapping[str, Mapping[str, Any]]] = {}
    shapes: Sequence[tuple[int, int, int]] = STANDARD_SHAPES
    latent_dim: int = 4
    batch_sizes: Sequence[int] = (1, 2, 3)
    num_heads: Sequence[int] = (1, 2)
    device: str = "cpu"
    compile_backend: str | None = None
    exclude: Mapping[str, Mapping[str, str]] = {}
    slow_components: Mapping[str, Sequence[str]] = {}

    @classmethod
    def settings(cls) -> Settings:
        """The class attributes as the checks take them."""
        return Settings(
            latent_dim=cls.latent_dim, batch_sizes=tuple(cls.batch_sizes), shapes=tuple(tuple(s) for s in cls.shapes),  # type: ignore[misc]
            num_heads=tuple(cls.num_heads), device=cls.device, compile_backend=cls.compile_backend,
            component_config=cls.component_config,
        )

    def component_config_for(self, kind: str, name: str, tmp_path: Path) -> Mapping[str, Any] | None:
        """Config for the ``kind`` component ``name`` that needs files (a folder of images for a
        dataset): write them under ``tmp_path`` and return the keys; ``None``: ``component_config``."""
        return None

    def _settings_with_files(self, component: ComponentEntry, tmp_path: Path) -> Settings:
        settings = self.settings()
        config = self.component_config_for(component.kind, component.name, tmp_path)
        if config is None:
            return settings
        merged = {k: dict(v) for k, v in settings.component_config.items()}
        merged.setdefault(component.kind, {})[component.name] = dict(config)
        return replace(settings, component_config=merged)

    def pytest_generate_tests(self, metafunc: Any) -> None:
        """Parametrise each clause test over the distribution's components of its kinds."""
        import pytest

        spec = getattr(metafunc.function, "_conformance", None)
        if spec is None or "component" not in metafunc.fixturenames:
            return
        kinds, slow = spec
        if not any(line.split(":")[0].strip() == "slow" for line in metafunc.config.getini("markers")):
            metafunc.config.addinivalue_line("markers", "slow: the conformance suite's slower clauses (asvae_kit.testing)")
        entries = select_components(self.distribution, kinds) if self.distribution else []
        params = []
        for entry in entries:
            marks = []
            if slow or entry.name in self.slow_components.get(entry.kind, ()):
                marks.append(pytest.mark.slow)
            reason = self.exclude.get(entry.kind, {}).get(entry.name)
            if reason:
                marks.append(pytest.mark.skip(reason=f"{entry.kind} {entry.name!r} excluded: {reason}"))
            params.append(pytest.param(entry, id=f"{entry.kind}-{entry.name}", marks=marks))
        if not params:
            what = " or ".join(kinds)
            marks = [pytest.mark.skip(reason=f"{self.distribution!r} registers no {what}")] + ([pytest.mark.slow] if slow else [])
            params = [pytest.param(None, id=f"no-{kinds[0]}", marks=marks)]
        metafunc.parametrize("component", params)

    # -- every distribution --------------------------------------------------------------------
    def test_plugin_loads(self) -> None:
        _run(check_plugin_loads, self.distribution)

    # -- networks ------------------------------------------------------------------------------
    @_clause(*NETWORK_KINDS, slow=True)
    def test_every_claimed_shape(self, component: ComponentEntry) -> None:
        _run(check_network_shapes, component, self.settings())

    @_clause(*NETWORK_KINDS)
    def test_outputs(self, component: ComponentEntry) -> None:
        _run(check_network_outputs, component, self.settings())

    @_clause(*NETWORK_KINDS)
    def test_densities_finite(self, component: ComponentEntry) -> None:
        _run(check_network_densities, component, self.settings())

    @_clause(*NETWORK_KINDS)
    def test_gradients(self, component: ComponentEntry) -> None:
        _run(check_network_gradients, component, self.settings())

    @_clause(*NETWORK_KINDS)
    def test_state_dict_round_trip(self, component: ComponentEntry) -> None:
        _run(check_network_state_dict, component, self.settings())

    @_clause(*NETWORK_KINDS)
    def test_deep_copy(self, component: ComponentEntry) -> None:
        _run(check_network_deepcopy, component, self.settings())

    @_clause(*NETWORK_KINDS)
    def test_same_seed(self, component: ComponentEntry) -> None:
        _run(check_network_seed, component, self.settings())

    @_clause("discriminator")
    def test_rows_independent(self, component: ComponentEntry) -> None:
        _run(check_discriminator_rows, component, self.settings())

    @_clause(*NETWORK_KINDS, slow=True)
    def test_torch_compile(self, component: ComponentEntry) -> None:
        _run(check_network_compile, component, self.settings())

    @_clause(*NETWORK_KINDS, slow=True)
    def test_bf16(self, component: ComponentEntry) -> None:
        _run(check_network_bf16, component, self.settings())

    # -- divergences ---------------------------------------------------------------------------
    @_clause("divergence")
    def test_divergence_trains(self, component: ComponentEntry) -> None:
        _run(check_divergence_trains, component, self.settings())

    @_clause("divergence")
    def test_divergence_skl(self, component: ComponentEntry) -> None:
        _run(check_divergence_skl, component, self.settings())

    @_clause("divergence", slow=True)
    def test_divergence_bf16(self, component: ComponentEntry) -> None:
        _run(check_divergence_bf16, component, self.settings())

    # -- data, metrics, loggers, presets -------------------------------------------------------
    @_clause("dataset")
    def test_dataset_images(self, component: ComponentEntry, tmp_path: Path) -> None:
        _run(check_dataset, component, self._settings_with_files(component, tmp_path))

    @_clause("metric")
    def test_metric_values(self, component: ComponentEntry) -> None:
        _run(check_metric, component, self.settings())

    @_clause("logger")
    def test_logger_lifecycle(self, component: ComponentEntry, tmp_path: Path) -> None:
        _run(check_logger, component, tmp_path / "run", self._settings_with_files(component, tmp_path))

    @_clause("preset", slow=True)
    def test_preset(self, component: ComponentEntry, tmp_path: Path) -> None:
        _run(check_preset, component, tmp_path / "run", self._settings_with_files(component, tmp_path))
