"""The config schema: every config key once, with its default, its check and its help text.

``SCHEMA`` is the one list of config keys (docs/design.md §3).  Everything else derives from it:
``asvae_kit.config.DEFAULTS`` (``defaults()``), the checks of ``validate_config``, the unknown-key
check with its did-you-mean (``check_known``), the ``asvae-kit train`` flags and their help
(``Key.flag``), the keys ``load`` lets a caller change (``Key.on_load``), the values a run saved
before a key existed loads with (``Key.legacy``), and the config-key tables of docs/design.md
(tests/test_schema.py keeps them equal).  Nested keys (``optim.lr``) are dotted; ``GROUPS`` names
the keys whose value is such a mapping.

Each choice list is defined once, here or where its rule lives, and imported where it is used:
``PRECISION_NAMES``, ``SCHEDULES``; the splits are ``asvae_kit.splits.SPLITS``.

This module imports neither torch nor the plugin machinery: the command line builds its parser
from it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .checks import check_bool, check_choice, check_int, check_number, is_int, is_number
from .errors import ConfigError
from .names import did_you_mean

__all__ = [
    "Key", "SCHEMA", "KEYS", "GROUPS", "PRECISION_NAMES", "SCHEDULES", "COMPONENT_KINDS", "MISSING",
    "defaults", "check_known", "check_group", "load_overrides", "legacy_defaults", "disc_lr", "disc_clip_grad_norm",
    "Int", "Number", "Bool", "Choice", "Rule", "Specs",
]

#: ``precision`` values: float32, bfloat16 autocast, float16 autocast with loss scaling.
PRECISION_NAMES = ("32", "bf16", "16-mixed")
#: Learning-rate schedules ``optim.schedule`` may name.
SCHEDULES = ("constant", "cosine")
#: Keys whose value is a mapping of sub-keys, each a key of ``SCHEMA`` (``optim.lr``).
GROUPS = ("optim",)


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: ``Key.legacy`` of a key that every saved run has.
MISSING: Any = _Missing()


# -- checks: each is called as check(value, what) and returns the value, normalised ----------------


@dataclass(frozen=True)
class Int:
    """An integer >= ``minimum`` (``None`` too when ``nullable``)."""

    minimum: int = 1
    nullable: bool = False
    hint: str = ""

    def __call__(self, value: Any, what: str) -> Any:
        if value is None and self.nullable:
            return None
        return check_int(value, what, minimum=self.minimum, hint=self.hint)


@dataclass(frozen=True)
class Number:
    """A finite number within the bounds (``None`` too when ``nullable``; ``None`` and 0, "off",
    too when ``off``)."""

    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    expected: str | None = None
    nullable: bool = False
    off: bool = False

    def __call__(self, value: Any, what: str) -> Any:
        if value is None and (self.nullable or self.off):
            return None
        if self.off and value == 0:
            return value
        return check_number(value, what, low=self.low, high=self.high, low_inclusive=self.low_inclusive, expected=self.expected)


@dataclass(frozen=True)
class Bool:
    """``true`` or ``false``."""

    def __call__(self, value: Any, what: str) -> bool:
        return check_bool(value, what)


@dataclass(frozen=True)
class Choice:
    """One of ``choices`` (after ``str()`` when ``as_str``: ``32`` and ``"32"`` alike; ``None`` too
    when ``nullable``).  A nullable choice of one value is a switch: its ``train`` flag takes no
    argument and sets that value (``--resume-if-exists``)."""

    choices: tuple[str, ...]
    as_str: bool = False
    nullable: bool = False

    def __call__(self, value: Any, what: str) -> Any:
        if value is None and self.nullable:
            return None
        return check_choice(str(value) if self.as_str else value, self.choices, what)


@dataclass(frozen=True)
class Rule:
    """A value ``test`` accepts (``None`` too when ``nullable``), ``convert``-ed; otherwise
    ``ConfigError("{what} must be {expected}, got ...")``."""

    test: Any
    expected: str
    convert: Any = None
    nullable: bool = False

    def __call__(self, value: Any, what: str) -> Any:
        if value is None and self.nullable:
            return None
        if not self.test(value):
            raise ConfigError(f"{what} must be {self.expected}, got {value!r}")
        return self.convert(value) if self.convert else value


@dataclass(frozen=True)
class Specs:
    """A list of ``kind`` entries (metrics, loggers): names, ``"name:key=value"`` or mappings
    with ``name``; their names and options are checked against the registry by ``validate_config``."""

    kind: str

    def __call__(self, value: Any, what: str) -> Any:
        if not isinstance(value, list) or not all(isinstance(m, (str, dict)) for m in value):
            raise ConfigError(f"{what} must be a list of {self.kind} names (or {{'name': ..., **options}}), got {value!r}")
        return value

    def from_text(self, text: str) -> list[str] | None:
        """A comma-separated list, as a command-line flag gives it (``None`` for an empty one)."""
        names = [name.strip() for name in text.split(",") if name.strip()]
        return names or None


# -- the keys -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One config key: its (dotted) name, default, check and help text.

    ``component`` names the component kind of an entry key (``{"name": ..., **config}``, checked
    against the registry); ``flag`` is the ``asvae-kit train`` flag that sets the key; ``on_load``
    says ``load`` may change it (the run's schedule and placement, never its model); ``legacy`` is
    the value a run saved before the key existed loads with."""

    name: str
    default: Any
    help: str
    check: Any = None
    component: str | None = None
    flag: str | None = None
    on_load: bool = False
    legacy: Any = MISSING

    @property
    def what(self) -> str:
        """How messages name the key: ``config 'optim.lr'``."""
        return f"config {self.name!r}"

    @property
    def group(self) -> str | None:
        """``"optim"`` for ``optim.lr``; ``None`` for a top-level key."""
        return self.name.split(".", 1)[0] if "." in self.name else None

    @property
    def sub(self) -> str:
        """The key within its group (``lr`` of ``optim.lr``), or the key itself."""
        return self.name.split(".", 1)[-1]

    @property
    def choices(self) -> tuple[str, ...] | None:
        return self.check.choices if isinstance(self.check, Choice) else None


def _shape(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 3 and all(is_int(v) and v > 0 for v in value)


def _betas(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(is_number(b) and 0 <= b < 1 for b in value)


_POSITIVE = Number(low=0, low_inclusive=False)
_CLIP = Number(low=0, low_inclusive=False, nullable=True, expected="a positive number or null (no clipping)")

#: Every config key, in the order ``DEFAULTS`` and ``--print-config`` list them.
SCHEMA: tuple[Key, ...] = (
    Key("encoder", {"name": "mlp"}, "the encoder: a registered name or {name: ..., **its config}", component="encoder"),
    Key("decoder", {"name": "mlp"}, "the decoder: a registered name or {name: ..., **its config}", component="decoder"),
    Key("discriminator", {"name": "joint-mlp"}, "the discriminator over (x, z): a registered name or {name: ..., **its config}",
        component="discriminator"),
    Key("divergence", {"name": "asvae"}, "the estimator (docs/design.md §1): a registered name or {name: ..., **its config}",
        component="divergence"),
    Key("data", {"name": "digits"}, "the dataset's registered name (a config may give {name: ..., **options}; null needs data_shape)",
        component="dataset", flag="--data"),
    Key("data_shape", None, "[C, H, W] of the images; null: read from the dataset",
        Rule(_shape, "[C, H, W] of positive integers or null", convert=list, nullable=True)),
    Key("latent_dim", 32, "size of the codes z", Int(1)),
    Key("batch_size", 64, "images per step and process", Int(1), flag="--batch-size"),
    Key("steps", 2000, "total number of steps of the run", Int(0), flag="--steps", on_load=True),
    Key("optim.lr", 2e-4, "encoder/decoder learning rate (the discriminator's too while optim.disc_lr is null)", _POSITIVE,
        flag="--lr", on_load=True),
    Key("optim.betas", [0.5, 0.999], "Adam's betas, for both optimizers",
        Rule(_betas, "two numbers in [0, 1)", convert=lambda betas: [float(b) for b in betas])),
    Key("optim.n_critic", 1, "discriminator updates per step", Int(1)),
    Key("optim.disc_lr", None, "discriminator learning rate (null: optim.lr)", Number(low=0, low_inclusive=False, nullable=True),
        on_load=True),
    Key("optim.weight_decay", 0.0, "Adam's L2 weight decay", Number(low=0)),
    Key("optim.schedule", "constant", "learning-rate schedule: constant, or cosine (decaying to 0 at the run's last step)",
        Choice(SCHEDULES)),
    Key("optim.warmup_steps", 0, "steps of linear learning-rate warm-up from 0, before the schedule", Int(0)),
    Key("optim.clip_grad_norm", None, "clip the encoder/decoder gradients to this norm (null: no clipping)", _CLIP),
    Key("optim.disc_clip_grad_norm", None, "clip the discriminator's gradients to this norm (null: as optim.clip_grad_norm)", _CLIP),
    Key("seed", 0, "seed of the initialisation, the noise and the data order", Int(0), flag="--seed"),
    Key("sample_x", False, "x_p is a reparameterised sample of the decoder, not its mean", Bool()),
    Key("log_every", 50, "steps between metrics.csv rows (0: only at the end of fit)", Int(0), flag="--log-every", on_load=True),
    Key("sample_every", 500, "steps between image grids (0: only at the end of fit)", Int(0), flag="--sample-every", on_load=True),
    Key("checkpoint_every", 1000, "steps between checkpoints (0: only at the end of fit)", Int(0), flag="--checkpoint-every",
        on_load=True),
    Key("device", "auto", "cpu, cuda, cuda:N or auto (a GPU when one is visible)",
        Rule(lambda value: isinstance(value, str), "'auto', 'cpu', 'cuda' or 'cuda:N'"), flag="--device", on_load=True),
    Key("metrics", ["recon", "nll", "fd", "skl", "probe"], "what evaluate runs by default: metric names, options after colons (nll:k=100)",
        Specs("metric"), on_load=True),
    Key("eval_size", 1000, "the most images a metric sees (null: all)", Int(1, nullable=True), on_load=True),
    Key("holdout", 0.1, "fraction of a dataset without a test split kept from training as its test slice",
        Number(low=0, high=1, expected="the fraction of a data set without a test split kept out of training for evaluation, "
                                       "a number in [0, 1)"),
        # Runs from before held-out splits trained on all of a data set without a test split:
        # nothing of it is held out, so evaluating them on "test" is refused, not faked.
        legacy=0.0),
    Key("val_fraction", 0.1, "fraction of the training split kept from training as the validation slice (0: none)",
        Number(low=0, high=1, expected="the fraction of the training split kept out of training as the validation slice, "
                                       "a number in [0, 1) (e.g. 0.1; 0: none)"),
        # Runs from before validation slices trained on all of their training split: no
        # validation slice (evaluating them on "val" is refused), and "train" is what they trained on.
        legacy=0.0),
    Key("val_max", 5000, "the most images of the validation slice (null: no cap)",
        Int(1, nullable=True, hint=" (the most images of the validation slice, e.g. 5000; or null for no cap)"), legacy=None),
    Key("diverge_factor", 1000.0, "stop when a loss grows past this many times its running median (0: off)",
        Number(low=1, low_inclusive=False, off=True,
               expected="0 (off) or a number > 1 (stop when a loss grows past that many times its running median)"),
        on_load=True),
    Key("keep_checkpoints", 2, "checkpoint folders kept", Int(1), on_load=True),
    Key("resume", None, "if-exists: the same train command starts the run in --out, and resumes it from its newest checkpoint "
                        "once it has one (after a kill, a preemption or a requeue); null: start only",
        Choice(("if-exists",), nullable=True), flag="--resume-if-exists"),
    Key("loggers", ["csv"], "loggers, comma-separated on the command line: csv (the default), tensorboard, wandb (offline); "
                            "see `asvae-kit list logger`", Specs("logger"), flag="--logger", on_load=True),
    Key("ema", None, "decay in (0, 1) of an average of the encoder and decoder weights (null or 0: off)",
        Number(low=0, high=1, low_inclusive=False, off=True, expected="null/0 (off) or a decay in (0, 1), e.g. 0.999")),
    Key("threads", None, "CPU threads for torch (null: torch's default)", Int(1, nullable=True, hint=" (or null for torch's default)"),
        flag="--threads", on_load=True),
    Key("precision", "32", "32, bf16 autocast, or 16-mixed (float16 autocast with loss scaling)", Choice(PRECISION_NAMES, as_str=True),
        flag="--precision"),
    Key("compile", False, "torch.compile the losses and the networks they call", Bool(), flag="--compile", on_load=True),
    Key("cuda_graphs", False, "replay each training step from one CUDA graph (GPU only)", Bool(), flag="--cuda-graphs", on_load=True),
)

#: The keys by (dotted) name.
KEYS: dict[str, Key] = {key.name: key for key in SCHEMA}
#: config key -> the component kind its entry names (its data set under "data").
COMPONENT_KINDS: dict[str, str] = {key.name: key.component for key in SCHEMA if key.component}

_TOP = tuple(dict.fromkeys(key.name.split(".", 1)[0] for key in SCHEMA))
_IN_GROUP = {group: tuple(key.sub for key in SCHEMA if key.group == group) for group in GROUPS}


def defaults() -> dict[str, Any]:
    """A fresh config of every key's default, groups nested (``{"optim": {"lr": ...}}``)."""
    config: dict[str, Any] = {}
    for key in SCHEMA:
        holder = config.setdefault(key.group, {}) if key.group else config
        holder[key.sub] = copy.deepcopy(key.default)
    return config


def check_known(keys: Iterable[str], group: str | None = None, where: str | None = None) -> None:
    """``ConfigError`` with a did-you-mean for the first of ``keys`` the schema lacks (top-level
    keys, or the sub-keys of ``group``).  The one unknown-key check of a config."""
    known = _TOP if group is None else _IN_GROUP[group]
    if where is None:
        where = "" if group is None else f" in {group!r}"
    for key in keys:
        if key not in known:
            raise ConfigError(f"unknown config key {key!r}{where}.{did_you_mean(str(key), known)} Known keys: {', '.join(sorted(known))}.")


def check_group(value: Any, group: str) -> Mapping[str, Any]:
    """``value`` when it is a mapping (the value of a group key such as ``optim``)."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"config {group!r} must be a mapping, got {value!r}")
    return value


def load_overrides() -> tuple[str, ...]:
    """The keys ``load`` lets a caller change: where and how long to go on, never what the model is."""
    return tuple(key.name for key in SCHEMA if key.on_load)


def legacy_defaults() -> dict[str, Any]:
    """Top-level keys a run saved before they existed lacks, with the value it loads with."""
    return {key.name: key.legacy for key in SCHEMA if key.legacy is not MISSING}


def disc_lr(optim: Mapping[str, Any]) -> float:
    """The discriminator's learning rate of a resolved ``optim``: ``disc_lr``, or ``lr`` when null."""
    return optim["disc_lr"] or optim["lr"]


def disc_clip_grad_norm(optim: Mapping[str, Any]) -> float | None:
    """The discriminator's gradient clip of a resolved ``optim``: ``disc_clip_grad_norm``, or
    ``clip_grad_norm`` when null."""
    return optim["disc_clip_grad_norm"] or optim["clip_grad_norm"]
