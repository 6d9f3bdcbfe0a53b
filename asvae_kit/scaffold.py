"""``asvae-kit new-plugin NAME``: write a ready plugin package (docs/plugins.md).

``write_plugin("asvae-kit-myplugin", kinds=("encoder", "metric"))`` writes the folder
``asvae-kit-myplugin/`` with

    pyproject.toml                  the ``asvae_kit`` entry point, ``dependencies = ["asvae-kit"]``
    README.md                       what it registers, how to install, test and publish it
    asvae_kit_myplugin/__init__.py  one working component per kind asked, and its hooks
    tests/test_conformance.py       the conformance suite (``asvae_kit.testing.ConformanceSuite``)

Component names are the plugin's short name (NAME less a leading ``asvae-kit-``) and the kind:
``myplugin-encoder``, ``myplugin-metric``.  Each template is small and honours its kind's contract
(docs/design.md §2), so the package passes its own tests as written.  Nothing is written into a
folder that already holds anything.
"""

from __future__ import annotations

import json
import keyword
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Iterable, Sequence

from .errors import ConfigError
from .hookspecs import HOOK_KINDS
from .names import KINDS, normalize_kind

__all__ = ["PluginNames", "plugin_names", "parse_kinds", "render_plugin", "write_plugin", "DEFAULT_KINDS"]

#: What ``new-plugin`` writes when ``--kind`` is not given.
DEFAULT_KINDS: tuple[str, ...] = ("encoder",)

_NAME_RE = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")
_PREFIXES = ("asvae-kit-", "asvae_kit_")
#: Module names a plugin must not take: they would shadow what asvae-kit itself imports.
_TAKEN = {"asvae_kit", "torch", "pluggy", "numpy", "einops", "safetensors", "tqdm", "sklearn", "pytest", "tests", "test"}


@dataclass(frozen=True)
class PluginNames:
    """The names a plugin package is known by, all derived from NAME."""

    #: the distribution (``pip install`` name) and folder: ``asvae-kit-myplugin``
    distribution: str
    #: the importable module: ``asvae_kit_myplugin``
    module: str
    #: the entry-point name in the ``asvae_kit`` group (what ``ASVAE_KIT_LOAD_PLUGINS`` lists): ``myplugin``
    entry_point: str
    #: the prefix of every component name, kebab-case: ``myplugin``
    short: str
    #: the prefix of its class names: ``Myplugin``
    classes: str

    def component(self, kind: str) -> str:
        """The registered name of the ``kind`` component: ``myplugin-encoder``."""
        return f"{self.short}-{kind}"


def _suggest(name: str) -> str:
    cleaned = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")
    cleaned = re.sub(r"^[0-9-]+", "", cleaned) or "myplugin"
    return cleaned if cleaned.startswith(_PREFIXES[0]) else _PREFIXES[0] + cleaned


def plugin_names(name: str) -> PluginNames:
    """The names derived from the package name ``name``; ``ConfigError`` (one line, with the fix)
    for a name that cannot be a package: lowercase letters, digits and single hyphens (or
    underscores), starting with a letter, and not a module asvae-kit itself imports."""
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        hint = " (NAME is the folder's name; --dir says where it goes)" if isinstance(name, str) and ("/" in name or "\\" in name) else ""
        raise ConfigError(
            f"plugin name {name!r} is not a valid package name: use lowercase letters, digits and single hyphens, "
            f"starting with a letter, e.g. {_suggest(name)!r}{hint}"
        )
    module = name.replace("-", "_")
    if module in _TAKEN or module in sys.stdlib_module_names or keyword.iskeyword(module):
        raise ConfigError(
            f"plugin name {name!r} would make the module {module!r}, which shadows {'a module of Python' if module in sys.stdlib_module_names else 'a package asvae-kit uses'}; "
            f"choose another, e.g. {_PREFIXES[0] + name.replace('_', '-')!r}"
        )
    short = name
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            short = name[len(prefix):]
            break
    short = short.replace("_", "-")
    classes = "".join(part.capitalize() for part in short.split("-"))
    if classes[:1].isdigit():
        classes = "Plugin" + classes
    return PluginNames(distribution=name, module=module, entry_point=short.replace("-", "_"), short=short, classes=classes)


def parse_kinds(kinds: str | Iterable[str] | None) -> tuple[str, ...]:
    """The component kinds asked for, singular, in asvae-kit's order, without repeats: from
    ``"encoder,decoder"``, a sequence of kinds, ``"all"`` or ``None`` (``DEFAULT_KINDS``).  Plurals are
    accepted; ``ConfigError`` names an unknown kind, the kinds and a did-you-mean."""
    if kinds is None:
        return DEFAULT_KINDS
    words = kinds.split(",") if isinstance(kinds, str) else [str(k) for k in kinds]
    words = [w.strip() for w in words if w.strip()]
    if not words:
        raise ConfigError(f"--kind {kinds!r} names no kind; give one or more of {', '.join(KINDS)} (comma-separated), or 'all'")
    if any(w.lower() == "all" for w in words):
        return KINDS
    chosen = set()
    for word in words:
        try:
            chosen.add(normalize_kind(word))
        except ValueError as exc:
            raise ConfigError(f"--kind: {exc}") from None
    return tuple(k for k in KINDS if k in chosen)


# ---------------------------------------------------------------------------------------------
# The templates: ``$name`` fields are filled with ``string.Template`` (the code has no dollar signs).

_IMPORTS = {
    "encoder": ["import torch", "from torch import nn", "from asvae_kit.checks import check_int", "from asvae_kit.distributions import GaussianPosterior"],
    "decoder": ["import torch", "from torch import nn", "from asvae_kit.checks import check_int", "from asvae_kit.distributions import BernoulliLikelihood"],
    "discriminator": ["import torch", "from torch import nn", "from asvae_kit.checks import check_int"],
    "divergence": [
        "import torch", "from torch import nn", "from asvae_kit.checks import check_number",
        "from asvae_kit.divergence import MEAN, SOFTPLUS, SOFTPLUS_NEG, head_statistics", "from asvae_kit.joint_batch import JointBatch",
    ],
    "preset": ["from typing import Any"],
    "dataset": ["import torch", "from asvae_kit.checks import check_int", "from asvae_kit.data import ImageDataset", "from asvae_kit.errors import ConfigError"],
    "metric": ["import torch", "from asvae_kit.checks import check_number", "from asvae_kit.evaluation import MetricNotApplicable"],
    "logger": [
        "import json", "from pathlib import Path", "from typing import Any", "import torch", "from asvae_kit.errors import ConfigError",
    ],
}

_CODE = {
    "encoder": '''
class ${classes}Encoder(nn.Module):
    """q(z|x): a diagonal Gaussian whose mean and log-variance come from a one-hidden-layer MLP.

    It serves every image shape (C, H, W); a network that cannot serve a shape raises
    ``asvae_kit.errors.UnsupportedShapeError`` naming the shapes it can.
    """

    def __init__(self, *, data_shape: tuple[int, int, int], latent_dim: int, hidden: int = 128) -> None:
        super().__init__()
        hidden = check_int(hidden, "encoder '${encoder}': hidden")
        c, h, w = data_shape
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim))

    def forward(self, x: torch.Tensor) -> GaussianPosterior:
        mean, logvar = self.net(x).chunk(2, dim=-1)
        return GaussianPosterior(mean, logvar.clamp(-12.0, 8.0))  # a clamped log-variance keeps densities finite
''',
    "decoder": '''
class ${classes}Decoder(nn.Module):
    """p(x|z): independent Bernoulli pixels whose logits come from a one-hidden-layer MLP (its
    ``.mean`` is the image, in [0, 1])."""

    def __init__(self, *, data_shape: tuple[int, int, int], latent_dim: int, hidden: int = 128) -> None:
        super().__init__()
        hidden = check_int(hidden, "decoder '${decoder}': hidden")
        self.data_shape = tuple(int(v) for v in data_shape)
        c, h, w = self.data_shape
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, c * h * w))

    def forward(self, z: torch.Tensor) -> BernoulliLikelihood:
        return BernoulliLikelihood(self.net(z).view(z.shape[0], *self.data_shape))
''',
    "discriminator": '''
class ${classes}Discriminator(nn.Module):
    """A joint critic over (x, z): an MLP on [flatten(x), z].  Each row depends on its own (x, z)
    only (no batch statistics such as BatchNorm): divergences stack several segments in one call."""

    def __init__(self, *, data_shape: tuple[int, int, int], latent_dim: int, num_heads: int, hidden: int = 128) -> None:
        super().__init__()
        hidden = check_int(hidden, "discriminator '${discriminator}': hidden")
        c, h, w = data_shape
        self.trunk = nn.Sequential(
            nn.Linear(c * h * w + latent_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2)
        )
        self.head = nn.Linear(hidden, num_heads)  # num_heads comes from the divergence

    def features(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.trunk(torch.cat([x.flatten(1), z], dim=1))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x, z))
''',
    "divergence": '''
class ${classes}Divergence:
    """An AVB-style estimator with a weight on its KL term (a beta-AVB).

    Head 0 tells the encoder joint (x, z_q) from the product of marginals (x, z_m), so at its
    optimum it estimates log q(z|x) - log p(z), whose mean over q is KL(q(z|x) || p(z)).  The
    encoder and decoder maximise E_q[log p(x|z)] - beta * that estimate.  It works with implicit
    encoders too, as it never asks for a density of q.
    """

    num_heads = 1

    def __init__(self, beta: float = 1.0) -> None:
        self.beta = float(check_number(beta, "divergence '${divergence}': beta", low=0, expected="a non-negative number"))

    def discriminator_loss(self, discriminator: nn.Module, batch: JointBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = head_statistics(discriminator, [(batch.x, batch.z_q.detach()), (batch.x, batch.z_m)])
        loss = s[0, 0, SOFTPLUS_NEG] + s[1, 0, SOFTPLUS]  # label 1 for (x, z_q), 0 for (x, z_m)
        return loss, {"d_loss": loss.detach()}

    def generator_loss(self, discriminator: nn.Module | None, batch: JointBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = head_statistics(discriminator, [(batch.x, batch.z_q)])
        log_px = batch.log_px.mean()
        kl = s[0, 0, MEAN]
        loss = -(log_px - self.beta * kl)
        return loss, {"g_loss": loss.detach(), "log_px": log_px.detach(), "kl": kl.detach()}
''',
    "preset": '''
def ${snake}_preset() -> dict[str, Any]:
    """A small, complete config; the keys it leaves out take the builder's defaults."""
    return {
        "encoder": ${preset_encoder},
        "decoder": ${preset_decoder},
        "discriminator": ${preset_discriminator},
        "divergence": ${preset_divergence},
        "data": ${preset_data},
        "latent_dim": 8,
        "batch_size": 64,
        "steps": 500,${preset_extra}
    }
''',
    "dataset": '''
def ${snake}_dataset(n: int = 512, size: int = 8, channels: int = 1, seed: int = 0) -> ImageDataset:
    """``n`` synthetic images [channels, size, size] in [0, 1]: a bright square on a dark background,
    labelled by the quadrant it sits in (0-3).  Made from ``seed``; nothing is downloaded."""
    what = "dataset '${dataset}'"
    n, size, seed = check_int(n, f"{what}: n"), check_int(size, f"{what}: size", minimum=4), check_int(seed, f"{what}: seed", minimum=0)
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ConfigError(f"{what}: channels must be 1 or 3, got {channels!r}")
    generator = torch.Generator().manual_seed(seed)
    side = size // 4
    top = torch.randint(0, size - side + 1, (n,), generator=generator)
    left = torch.randint(0, size - side + 1, (n,), generator=generator)
    index = torch.arange(size)
    rows = (index >= top[:, None]) & (index < top[:, None] + side)
    cols = (index >= left[:, None]) & (index < left[:, None] + side)
    images = (rows[:, :, None] & cols[:, None, :]).float().unsqueeze(1).repeat(1, channels, 1, 1)
    labels = 2 * (2 * top + side > size).long() + (2 * left + side > size).long()
    return ImageDataset(images, labels, name="${dataset}")  # it has the data_shape attribute (C, H, W)
''',
    "metric": '''
def ${snake}_active_units(trainer, data: torch.Tensor, *, threshold: float = 0.01) -> dict[str, float]:
    """The fraction of latent dimensions in use: those whose posterior mean varies across the
    images by more than ``threshold`` (Burda et al. 2016).  It draws no random numbers, so it
    takes no ``seed``; it runs under ``torch.no_grad`` with the networks in eval mode."""
    threshold = check_number(threshold, "metric '${metric}': threshold", low=0)
    if data.shape[0] < 2:
        raise MetricNotApplicable(f"metric '${metric}' needs at least 2 images to see codes vary, got {data.shape[0]}")
    codes = torch.cat([trainer.encode(chunk) for chunk in data.split(1024)])  # posterior means [N, latent_dim]
    return {"${snake}_active_units": (codes.var(dim=0) > threshold).float().mean().item()}
''',
    "logger": '''
class ${classes}Logger:
    """Every logged row as one JSON line in ``RUN/<filename>``."""

    def __init__(self, filename: str = "rows.jsonl") -> None:
        if not isinstance(filename, str) or not filename or Path(filename).name != filename:
            raise ConfigError(f"logger '${logger}': filename must be a plain file name (written in the run directory), got {filename!r}")
        self.filename = filename
        self._path: Path | None = None

    def start(self, run_dir: Path, config: dict[str, Any], step: int, run_id: str) -> None:
        self._path = Path(run_dir) / self.filename
        if self._path.exists():  # a resumed run: drop rows logged after the checkpoint it goes on from
            kept = [line for line in self._path.read_text(encoding="utf-8").splitlines() if line and json.loads(line)["step"] <= step]
            self._path.write_text("".join(line + "\\n" for line in kept), encoding="utf-8")

    def log_row(self, row: dict[str, float]) -> None:
        if self._path is not None:
            with self._path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\\n")

    def log_images(self, name: str, images: torch.Tensor, step: int) -> None:
        pass  # the run directory already keeps the sample and reconstruction grids

    def close(self) -> None:
        self._path = None
''',
}

_DESCRIPTIONS = {
    "encoder": "Gaussian MLP encoder (one hidden layer)",
    "decoder": "Bernoulli MLP decoder (one hidden layer)",
    "discriminator": "Joint MLP critic over [flatten(x), z]",
    "divergence": "AVB with a weight beta on its adversarial KL estimate",
    "preset": "A small complete config",
    "dataset": "Synthetic squares labelled by quadrant (offline)",
    "metric": "Fraction of active latent dimensions",
    "logger": "Every logged row as a JSON line in the run directory",
}

_FACTORY = {
    "encoder": "${classes}Encoder",
    "decoder": "${classes}Decoder",
    "discriminator": "${classes}Discriminator",
    "divergence": "${classes}Divergence",
    "preset": "${snake}_preset",
    "dataset": "${snake}_dataset",
    "metric": "${snake}_active_units",
    "logger": "${classes}Logger",
}

_HOOKS = {kind: hook for hook, kind in HOOK_KINDS.items()}

_MODULE_HEAD = '''"""The asvae-kit plugin ${distribution}.

${listing}

Found through the entry point ``${entry_point} = "${module}"`` (group ``asvae_kit``) in
pyproject.toml; ``asvae-kit plugins`` lists it once the package is installed.  The contracts each
kind honours are in asvae-kit's docs/plugins.md; tests/test_conformance.py checks them.
"""

from __future__ import annotations

'''

_PYPROJECT = '''[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "${distribution}"
version = "0.1.0"
description = "asvae-kit plugin: ${summary}"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["asvae-kit"]

[project.optional-dependencies]
test = ["pytest>=8"]

# asvae-kit finds the plugin through this group: no import by hand.
[project.entry-points.asvae_kit]
${entry_point} = "${module}"

[tool.setuptools]
packages = ["${module}"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

_README = '''# ${distribution}

An [asvae-kit](https://pypi.org/project/asvae-kit/) plugin. It registers:

${table}

## Install and check

```bash
${commands}
```

The plugin is `${module}/__init__.py` plus one entry point in `pyproject.toml`:

```toml
[project.entry-points.asvae_kit]
${entry_point} = "${module}"
```

`tests/test_conformance.py` runs asvae-kit's conformance suite (`asvae_kit.testing.ConformanceSuite`)
over every component this distribution registers: a failure names the component, its kind and the
contract clause it broke. asvae-kit's `docs/plugins.md` has every hook, the contracts, the naming
rules and how to publish (`python -m build`, then `twine upload dist/*`).
'''

_TEST = '''from asvae_kit.testing import ConformanceSuite

class Test${classes}(ConformanceSuite):
    distribution = "${distribution}"
'''


def _commands(names: PluginNames) -> str:
    """The README's install-and-check commands, their comments aligned."""
    lines = [
        (f"pip install -e {names.distribution}", "from the folder above this one"),
        ("asvae-kit plugins", f"{names.entry_point}  ({names.distribution} 0.1.0)  ok"),
        ("asvae-kit list", f"its components, marked [{names.distribution}]"),
        (f"pytest {names.distribution}", "the conformance suite over every component"),
    ]
    width = max(len(command) for command, _ in lines) + 2
    return "\n".join(f"{command.ljust(width)}# {comment}" for command, comment in lines)


def _fields(names: PluginNames, kinds: Sequence[str]) -> dict[str, str]:
    fields = {
        "distribution": names.distribution,
        "module": names.module,
        "entry_point": names.entry_point,
        "classes": names.classes,
        "snake": names.short.replace("-", "_"),
        "summary": ", ".join(f"{names.component(k)} ({k})" for k in kinds),
        "listing": "\n".join(f"- ``{names.component(k)}`` ({k}): {_DESCRIPTIONS[k]}" for k in kinds),
        "table": "\n".join(f"- `{names.component(k)}` ({k}): {_DESCRIPTIONS[k]}" for k in kinds),
        "commands": _commands(names),
    }
    fields.update({kind: names.component(kind) for kind in KINDS})

    def own(kind: str, builtin: str) -> str:
        return _q(names.component(kind)) if kind in kinds else builtin

    fields.update(
        preset_encoder=own("encoder", '{"name": "mlp", "hidden": [64]}'),
        preset_decoder=own("decoder", '{"name": "mlp", "hidden": [64]}'),
        preset_discriminator=own("discriminator", '{"name": "joint-mlp", "hidden": [64, 64]}'),
        preset_divergence=own("divergence", '"asvae"'),
        preset_data=own("dataset", '"digits"'),
        preset_extra="".join(
            [f'\n        "loggers": ["csv", {_q(names.component("logger"))}],' if "logger" in kinds else "",
             f'\n        "metrics": ["recon", {_q(names.component("metric"))}],' if "metric" in kinds else ""]
        ),
    )
    return fields


def _imports(kinds: Sequence[str]) -> str:
    """The import block the templates of ``kinds`` need: standard library, torch, asvae-kit, with
    ``from`` imports of one module merged."""
    plain: set[str] = set()
    names: dict[str, set[str]] = {}
    for kind in kinds:
        for line in _IMPORTS[kind]:
            words = line.replace(",", " ").split()
            if words[0] == "import":
                plain.add(words[1])
            else:
                names.setdefault(words[1], set()).update(words[3:])
    plain.add("asvae_kit")
    groups: list[list[str]] = [[], [], []]
    for module in sorted(plain | set(names), key=lambda m: (m not in plain, m)):
        top = module.split(".")[0]
        group = groups[2 if top == "asvae_kit" else 1 if top == "torch" else 0]
        if module in plain:
            group.append(f"import {module}")
        if module in names:
            group.append(f"from {module} import {', '.join(sorted(names[module], key=lambda n: (not n.isupper(), n)))}")
    return "\n\n".join("\n".join(group) for group in groups if group)


def _module_source(names: PluginNames, kinds: Sequence[str], fields: dict[str, str]) -> str:
    parts = [Template(_MODULE_HEAD).substitute(fields) + _imports(kinds)]
    parts += [Template(_CODE[kind]).substitute(fields).strip("\n") for kind in kinds]
    for kind in kinds:
        factory = Template(_FACTORY[kind]).substitute(fields)
        parts.append(
            f"@asvae_kit.hookimpl\ndef {_HOOKS[kind]}(register) -> None:\n"
            f"    register({_q(names.component(kind))}, {factory}, description={_q(_DESCRIPTIONS[kind] + '.')})"
        )
    return "\n\n\n".join(parts) + "\n"


def _q(text: str) -> str:
    """``text`` as a double-quoted Python string literal."""
    return json.dumps(text, ensure_ascii=False)


def render_plugin(name: str, kinds: str | Iterable[str] | None = None) -> dict[str, str]:
    """The files of the plugin package ``name`` with one component per kind in ``kinds``, as
    ``{path relative to the package folder: text}``; names and kinds are checked first."""
    names = plugin_names(name)
    chosen = parse_kinds(kinds)
    fields = _fields(names, chosen)
    return {
        "pyproject.toml": Template(_PYPROJECT).substitute(fields),
        "README.md": Template(_README).substitute(fields),
        f"{names.module}/__init__.py": _module_source(names, chosen, fields),
        "tests/test_conformance.py": Template(_TEST).substitute(fields),
    }


def write_plugin(name: str, kinds: str | Iterable[str] | None = None, directory: str | Path = ".") -> Path:
    """Write the plugin package ``name`` (see ``render_plugin``) into ``directory/name`` and return
    that folder.  ``ConfigError`` for a bad name or kind, or when the folder exists and is not empty
    (or is a file): nothing is ever overwritten."""
    files = render_plugin(name, kinds)
    target = Path(directory) / name
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise ConfigError(f"{target} exists and is not a folder; choose another NAME or --dir")
        entries = sorted(p.name for p in target.iterdir())
        if entries:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise ConfigError(
                f"{target} is not empty ({shown}); new-plugin writes only into a new or empty folder: choose another --dir or NAME, "
                "or remove the folder"
            )
    for relative, text in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return target
