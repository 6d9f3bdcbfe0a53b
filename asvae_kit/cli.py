"""The ``asvae-kit`` command line: train, sample, evaluate, plot, list, describe, plugins, new-plugin, compare.

Errors print one line to stderr and exit with status 2 (``--debug`` shows the traceback); so do
mistyped arguments, with a did-you-mean for commands and choices.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from ._version import __version__
from .errors import AsvaeKitError, ConfigError
from .names import did_you_mean
from .schema import KEYS as SCHEMA_KEYS
from .schema import SCHEMA, Bool, Choice, Int, Key, Number, Specs
from .splits import SPLITS

__all__ = ["main", "make_parser", "CommandError"]


class CommandError(AsvaeKitError, ValueError):
    """A command-line request that cannot be carried out as given."""


def _kind(value: str) -> str:
    from .names import normalize_kind

    try:
        return normalize_kind(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _set_pair(text: str) -> tuple[str, Any]:
    from .config import parse_value

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE (e.g. encoder.width=64), got {text!r}")
    return key.strip(), parse_value(value)


def _int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""
    word = "positive" if minimum == 1 else "non-negative"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {word} integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {word} integer, got {value}")
        return value

    return parse


_positive = _int_at_least(1)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (exit 2), with a did-you-mean for a mistyped choice."""

    def error(self, message: str) -> None:  # type: ignore[override]
        wrong = re.search(r"invalid choice: '?([^' ]*)'? \(choose from (.*)\)", message)
        if wrong:  # choices are quoted up to Python 3.12.7, bare after
            choices = [c.strip().strip("'") for c in wrong.group(2).split(",")]
            message = f"{message}.{did_you_mean(wrong.group(1), choices)}"
        unknown = re.search(r"unrecognized arguments: (-\S+)", message)
        if unknown:
            message += "." + did_you_mean(unknown.group(1), self._option_strings())
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


    def _option_strings(self) -> set[str]:
        """Every option of this parser and of its commands' parsers."""
        parsers = [self] + [p for a in self._actions if isinstance(a, argparse._SubParsersAction) for p in a.choices.values()]
        return {o for parser in parsers for a in parser._actions for o in a.option_strings if o.startswith("--")}


#: ``--split`` choices: ``asvae_kit.splits.SPLITS``.
SPLIT_CHOICES = SPLITS


def _flag_dest(key: Key) -> str:
    """The argparse attribute of the ``train`` flag that sets ``key`` (``--batch-size``: ``batch_size``)."""
    return key.flag.lstrip("-").replace("-", "_")  # type: ignore[union-attr]


def _add_key_flag(parser: argparse.ArgumentParser, key: Key) -> None:
    """The ``train`` flag of a config key: its type, choices and help from the schema."""
    check = key.check
    options: dict[str, Any] = {"dest": _flag_dest(key), "help": f"{key.help} (config {key.name})"}
    if isinstance(check, Bool):
        options.update(action="store_const", const=True)
    elif isinstance(check, Choice) and check.nullable and len(check.choices) == 1:  # a switch setting its one value
        options.update(action="store_const", const=check.choices[0])
    elif isinstance(check, Choice):
        options["choices"] = check.choices
    elif isinstance(check, Int):
        options["type"] = _int_at_least(check.minimum)
    elif isinstance(check, Number):
        options["type"] = float
    elif isinstance(check, Specs):
        options["type"] = check.from_text
    parser.add_argument(key.flag, **options)


def _version() -> str:
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "not installed"
    return f"asvae-kit {__version__} (torch {torch_version}, Python {sys.version.split()[0]})"


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="asvae-kit", description="Train and compare ASVAE, VAE, AVB and ALI models.")
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model and write a run directory")
    p.add_argument("--preset", help="preset name (default: resnet-asvae, or the config file's 'preset'; see `asvae-kit list preset`)")
    p.add_argument("--config", help="a config file (JSON, YAML or TOML; a run's config.json reproduces that run): its keys over the preset, flags over both")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    for key in SCHEMA:  # --data, --batch-size, --steps, --lr, --seed, ...: one flag per key that has one
        if key.flag:
            _add_key_flag(p, key)
    p.add_argument("--data-dir", help="directory holding the dataset's files (else $ASVAE_KIT_DATA)")
    p.add_argument("--download", action="store_true", help="download the dataset's published files if missing")
    p.add_argument("--set", dest="sets", type=_set_pair, action="append", default=[], metavar="KEY=VALUE", help="any config key, dotted for nested ones (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out up to --steps (--lr may change the learning rate)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out that holds no asvae-kit run")
    p.add_argument("-q", "--quiet", "--no-progress", dest="quiet", action="store_true",
                   help="no progress (a bar on a terminal, else a line per --log-every steps)")
    p.add_argument("--out", help="run directory to write (required unless --print-config)")

    p = sub.add_parser("sample", help="write a grid of samples (or interpolations, or reconstructions) from a trained run")
    p.add_argument("run_dir")
    p.add_argument("-n", type=_positive, help="samples (default 64), interpolation rows (default 8) or images to reconstruct (default 32)")
    p.add_argument("-o", "--output", required=True, help="file to write, in the format its extension names: .png or .jpg grid, .pt or .npy tensor")
    p.add_argument("--seed", type=int, default=0)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--interpolate", action="store_true", help="rows of decoded spherical paths between two prior draws")
    what.add_argument("--reconstruct", action="store_true", help="held-out images (odd rows) above their reconstructions (even rows)")
    p.add_argument("--steps", type=_int_at_least(2), default=10, help="images per interpolation row (default 10)")
    p.add_argument("--split", choices=SPLIT_CHOICES, default="test",
                   help="where --reconstruct takes its images: test (default; never trained on), val (the validation slice, never trained on) or train")
    p.add_argument("--data-dir", help="directory holding the dataset's files (for --reconstruct)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: the run's, or cpu if it is missing)")

    p = sub.add_parser("evaluate", help="compute metrics of a trained run on held-out data")
    p.add_argument("run_dir")
    p.add_argument("--metrics", help="comma-separated metrics, options after colons: 'recon,nll:k=100,fd' (default: the run's config)")
    p.add_argument("--split", choices=SPLIT_CHOICES, default="test",
                   help="test (default; for final numbers: the test split or the held-out test slice), val (for tuning: the validation "
                        "slice of the training split) or train")
    p.add_argument("--data-dir", help="directory holding the dataset's files")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: the run's, or cpu if it is missing)")
    p.add_argument("--threads", type=_positive, help="CPU threads for torch")
    p.add_argument("--json", action="store_true", help="print {split, source, n_images, metrics, notes} as JSON")

    p = sub.add_parser("plot", help="plot a run's loss curves (metrics.csv) to a PNG")
    p.add_argument("run_dir")
    p.add_argument("-o", "--output", help="PNG to write (default: RUN/curves.png)")

    p = sub.add_parser("list", help="list registered components")
    p.add_argument("kind", nargs="?", type=_kind, help="encoder, decoder, discriminator, divergence, preset, dataset, metric or logger (plural accepted)")
    p.add_argument("--filter", default="*", help="fnmatch pattern, e.g. 'mlp*'")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("describe", help="describe one component")
    p.add_argument("name")
    p.add_argument("--kind", type=_kind)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("plugins", help="list loaded plugins and their status")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("new-plugin", help="write a ready plugin package: pyproject.toml, one component per kind, a README, conformance tests")
    p.add_argument("name", metavar="NAME", help="the package (and folder) name, e.g. asvae-kit-myplugin; its module is asvae_kit_myplugin")
    p.add_argument("--kind", help="comma-separated kinds to write one component of: encoder (the default), decoder, discriminator, "
                   "divergence, preset, dataset, metric, logger, or all")
    p.add_argument("--dir", default=".", help="where the folder NAME is made (default: here); it must be new or empty")

    from . import compare

    p = sub.add_parser(
        "compare", help="tune, select and compare models on val/test from a spec file (results.jsonl, report.md)",
        description=compare.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_arguments(p)
    return parser


# ---------------------------------------------------------------------------------------------


def _cmd_train(args: argparse.Namespace) -> int:
    from .builder import DEFAULT_PRESET, build_from_config, load
    from .config import load_config_file, resolve_config
    from .rundir import RunDirectory, has_checkpoint

    if args.out is None and not args.print_config:
        raise CommandError("train needs --out DIR, the run directory to write (or --print-config to only show the config)")
    out = Path(args.out) if args.out else None
    overrides: dict[str, Any] = {}
    file_config = load_config_file(args.config) if args.config else {}
    file_preset = file_config.pop("preset", None)
    for key in SCHEMA:
        value = getattr(args, _flag_dest(key)) if key.flag else None
        if value is not None:
            overrides[key.name] = value
    if args.data_dir:
        overrides["data.data_dir"] = args.data_dir
    if args.download:
        overrides["data.download"] = True
    overrides.update(dict(args.sets))
    preset = args.preset or file_preset or DEFAULT_PRESET
    if_exists = _resume_if_exists(file_config, overrides)
    if args.resume and if_exists:
        raise CommandError(
            "--resume continues a run that must exist and --resume-if-exists (config resume: if-exists) one that may not; pass one of them"
        )
    if args.resume and (args.preset or args.data or args.config):
        raise CommandError("--resume continues the run as it was configured; drop --preset/--data/--config")
    resume_overrides = {k: v for k, v in overrides.items() if k != "resume"}  # load() keeps the run's own
    if args.print_config:  # a resumed run's config is its own, with the overrides load() allows
        if out is not None and (args.resume or (if_exists and has_checkpoint(out))):
            fresh = resolve_config(preset, {**file_config, **overrides}) if if_exists else None
            config = load(out, **(resume_overrides if fresh is None else _resume_overrides(out, fresh))).config
        else:
            config = resolve_config(preset, {**file_config, **overrides})
        print(json.dumps(config, indent=2, sort_keys=True))
        return 0
    assert out is not None

    mode = "resume" if args.resume else "if-exists" if if_exists else "new"
    fresh = None
    if mode != "resume":  # config errors surface before the folder is touched
        _check_data_dir_applies(args, preset, file_config)
        fresh = resolve_config(preset, {**file_config, **overrides})
    run = RunDirectory(out, overwrite=args.overwrite)
    # the folder is checked while its lock is held (rank 0; the other ranks only read it), so a
    # second train started while a first one finishes is refused, never decides on a stale view
    with run.claimed(mode, writer=_writes_run_dir()) as resumes:
        if resumes:
            trainer = load(out, **(resume_overrides if fresh is None else _resume_overrides(out, fresh)))
            what = f"resuming {out}"
        else:
            trainer = build_from_config(fresh)  # type: ignore[arg-type]
            what = f"training {preset}" + (f" with {args.config}" if args.config else "")
        _check_processes_agree(trainer, out)
        total = trainer.config["steps"]
        say = trainer.dist.is_main  # under torchrun only rank 0 reports
        if resumes and trainer.step >= total:
            if mode == "resume":
                raise CommandError(
                    f"{out} has already finished: it is at step {trainer.step} of {total}; "
                    f"pass --steps N with N > {trainer.step} to train it further"
                )
            if say:  # --resume-if-exists on a finished run: the requeued command has nothing left to do
                print(f"{out} is already at step {trainer.step} of {total}: nothing to do", file=sys.stderr)
                _print_run_files(out)
            return 0
        if trainer.dist.enabled:
            what += f" on {trainer.dist.world_size} processes"
        if say:
            print(
                f"{what} on {trainer.config['data']['name']} {tuple(trainer.data_shape)} for {total} steps "
                f"(from step {trainer.step}) on {trainer.device}; writing {out}",
                file=sys.stderr,
            )
        trainer.fit(total, run_dir=run, progress=False if args.quiet else None)
    if say:
        last = trainer.history[-1] if trainer.history else {}
        summary = ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k not in ("step", "time_s", "steps_per_s"))
        print(f"done: step {trainer.step}; {summary}", file=sys.stderr)
        _print_run_files(out)
    return 0


def _print_run_files(out: Path) -> None:
    print(f"samples: {out / 'samples.png'}\nreconstructions: {out / 'reconstructions.png'}\nmetrics: {out / 'metrics.csv'}")


def _resume_if_exists(file_config: dict[str, Any], overrides: dict[str, Any]) -> bool:
    """Whether config ``resume`` (``--resume-if-exists``, ``--set resume=...`` or the config file)
    is ``if-exists``; checked by the schema, so a bad value is the usual one-line ConfigError."""
    key = SCHEMA_KEYS["resume"]
    value = overrides.get("resume", file_config.get("resume"))
    return key.check(value, key.what) == "if-exists"


def _writes_run_dir() -> bool:
    """Whether this process writes the run directory: the only one, or rank 0 of a torchrun launch
    (read from torchrun's variables, as ``context_from_env`` reads them, before the group exists)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return world_size <= 1 or int(os.environ.get("RANK", "0") or 0) == 0


def _check_processes_agree(trainer: Any, out: Path) -> None:
    """Under torchrun each process decided alone, from the folder, whether to resume and from which
    step: one all-reduce makes sure they all found the same (a folder not shared between nodes, or
    written to meanwhile, would have them train apart)."""
    if not trainer.dist.enabled:
        return
    import torch
    import torch.distributed as dist

    from .errors import RunDirectoryError

    # the step, and a checksum of the weights each process loaded (two checkpoints of one step differ in it)
    checksum = float(sum(t.double().sum() for t in trainer.state_tensors().values()))
    found = torch.tensor([trainer.step, -trainer.step, checksum, -checksum], dtype=torch.float64, device=trainer.device)
    dist.all_reduce(found, op=dist.ReduceOp.MAX)
    high, low = int(found[0]), -int(found[1])
    if high != low or float(found[2]) != -float(found[3]):
        at = f"at steps {low} to {high}" if high != low else f"both at step {high}, with different weights"
        raise RunDirectoryError(
            f"the {trainer.dist.world_size} processes found different runs in {out} ({at}); --out must be "
            "one folder that every process sees (a shared file system) and that nothing else writes to"
        )


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``config`` with nested mappings as dotted keys (``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, name + "."))
        else:
            flat[name] = value
    return flat


def _resume_overrides(out: Path, fresh: dict[str, Any]) -> dict[str, Any]:
    """For ``--resume-if-exists`` on a run with a checkpoint: the ``load`` overrides that take the run
    on as this command line (resolved to ``fresh``) asks -- its values of the keys ``load`` may
    change (``steps``, ``optim.lr``, ``data.*`` options...) where they differ from the run's.  Any
    other difference means the command is not the one that started the run: ``CommandError``."""
    from .builder import LOAD_OVERRIDES
    from .rundir import read_config

    missing = object()
    now, then = _flat(fresh), _flat(read_config(out))
    overrides: dict[str, Any] = {}
    changed = []
    for key in sorted(set(now) | set(then)):
        new, old = now.get(key, missing), then.get(key, missing)
        if key == "resume" or json.dumps(new, sort_keys=True, default=str) == json.dumps(old, sort_keys=True, default=str):
            continue
        if key in LOAD_OVERRIDES or (key.startswith("data.") and key != "data.name"):
            if new is not missing:
                overrides[key] = new
        elif not (key == "data_shape" and new is None) and old is not missing:  # a key the run predates is not a change
            changed.append(key)
    if changed:
        shown = ", ".join(changed[:8]) + (", ..." if len(changed) > 8 else "")
        raise CommandError(
            f"{out} holds a run configured differently from this command ({shown}); --resume-if-exists continues a run "
            "only with the command that started it: run that command, or choose another --out"
        )
    return overrides


def _check_data_dir_applies(args: argparse.Namespace, preset: str, file_config: dict[str, Any]) -> None:
    """--data-dir on a dataset that reads no files (the default digits) is a mistake worth naming."""
    if not args.data_dir:
        return
    from .config import resolve_config
    from .plugin_manager import get_registry

    name = args.data or resolve_config(preset, file_config)["data"]["name"]
    options = get_registry().get("dataset", name).options
    if "data_dir" not in options.keys and not options.accepts_any:
        raise CommandError(
            f"--data-dir applies to datasets read from files (mnist, fashion-mnist, cifar10), not to {name!r}; "
            "add --data NAME"
        )


def _device_override(args: argparse.Namespace) -> dict[str, Any]:
    return {"device": args.device} if args.device else {}


def _load_for_inference(args: argparse.Namespace):
    from .builder import load

    overrides = {**_device_override(args), "loggers": []}  # inference writes no rows: no logger packages needed
    if getattr(args, "threads", None):
        overrides["threads"] = args.threads
    if getattr(args, "data_dir", None):
        overrides["data.data_dir"] = args.data_dir
    return load(args.run_dir, **overrides)


def _cmd_sample(args: argparse.Namespace) -> int:
    from .data import images_and_labels
    from .images import check_image_path, interleave_rows, save_images, save_images_bytes
    from .memory import check_memory

    check_image_path(args.output)  # before the (slow) load
    trainer = _load_for_inference(args)
    count = (args.n or 8) * args.steps if args.interpolate else (2 * (args.n or 32) if args.reconstruct else (args.n or 64))
    check_memory(
        save_images_bytes(count, trainer.data_shape, args.output), f"sample(n={count}) written to {args.output}",
        "ask for fewer images (-n), or write a .npy/.pt tensor instead of a picture", error=ConfigError,
    )
    if args.interpolate:
        save_images(trainer.interpolate(args.n or 8, args.steps, seed=args.seed), args.output, nrow=args.steps)
    elif args.reconstruct:
        chosen = trainer.split_data(args.split)
        images, _ = images_and_labels(chosen.dataset, args.n or 32)
        print(f"reconstructing the first {len(images)} images of the {chosen.split} split: {chosen.source}", file=sys.stderr)
        save_images(interleave_rows(images, trainer.reconstruct(images).cpu()), args.output, nrow=8)
    else:
        save_images(trainer.sample(args.n or 64, seed=args.seed), args.output)
    print(args.output)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .config import parse_metric
    from .evaluation import evaluate

    metrics = [parse_metric(m) for m in args.metrics.split(",") if m.strip()] if args.metrics is not None else None
    if metrics == []:
        raise ConfigError(f"--metrics {args.metrics!r} is an empty list of metrics; give e.g. --metrics recon,fd, or leave --metrics out for the run's own")
    trainer = _load_for_inference(args)
    if not args.json:
        print(f"evaluating {args.run_dir} (step {trainer.step}) on the {args.split} split ...", file=sys.stderr)
    report = None if args.json else (lambda message: print(f"  {message}", file=sys.stderr))
    results = evaluate(trainer, metrics, args.split, report=report)
    if args.json:
        print(json.dumps(results.as_dict(), indent=2))
        return 0
    print(f"split: {results.split}: {results.source}; {results.n_images} images evaluated")
    for k, v in results.items():
        print(f"{k:24s} {v:.6g}")
    for name, why in results.notes.items():
        print(f"{name:24s} n/a: {why}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from .names import KINDS
    from .plugin_manager import get_registry

    registry = get_registry()
    kinds = [args.kind] if args.kind else list(KINDS)
    rows = []
    for kind in kinds:
        for name in registry.list(kind, args.filter):
            entry = registry.get(kind, name)
            rows.append({"kind": kind, "name": name, "description": entry.description, "provider": entry.plugin, "distribution": entry.distribution})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no {args.kind or 'component'}s match {args.filter!r}", file=sys.stderr)
        return 0
    width = max(len(r["name"]) for r in rows)
    for kind in kinds:
        kind_rows = [r for r in rows if r["kind"] == kind]
        if not kind_rows:
            continue
        if not args.kind:
            print(f"{kind}s:")
        for r in kind_rows:
            desc = r["description"] if len(r["description"]) <= 90 else r["description"][:89].rstrip() + "…"
            origin = "" if r["distribution"] == "asvae-kit" else f"  [{r['distribution'] or r['provider']}]"
            print(f"{'  ' if not args.kind else ''}{r['name']:<{width}}  {desc}{origin}")
    failed = registry.failed_plugins
    if failed:
        print(f"note: plugins that failed to load: {', '.join(failed)} (see `asvae-kit plugins`)", file=sys.stderr)
    return 0


def _cmd_describe(args: argparse.Namespace) -> int:
    from .names import KINDS
    from .plugin_manager import describe, get_registry

    registry = get_registry()
    kinds = [args.kind] if args.kind else [k for k in KINDS if registry.provider_of(k, args.name) is not None]
    infos = [describe(args.name, kind) for kind in kinds] if kinds else [describe(args.name)]
    if args.json:
        print(json.dumps(infos[0] if len(infos) == 1 else infos, indent=2, default=str))
        return 0
    for i, info in enumerate(infos):
        if i:
            print()
        _print_description(info)
    return 0


def _print_description(info: dict[str, Any]) -> None:
    print(f"{info['name']} ({info['kind']})")
    if info["aliases"]:
        print(f"  aliases:      {', '.join(info['aliases'])}")
    print(f"  provider:     {info['provider']} ({info['distribution'] or 'unknown distribution'} {info['version'] or ''})".rstrip())
    if info["description"]:
        print(f"  description:  {info['description']}")
    if info["kind"] == "preset":
        print("  config:")
        for line in json.dumps(info["config"], indent=2).splitlines():
            print("    " + line)
    elif info["config"]:
        print("  config keys (defaults):")
        for k, v in info["config"].items():
            print(f"    {k} = {json.dumps(v, default=str)}")


def _cmd_plugins(args: argparse.Namespace) -> int:
    import warnings

    from .plugin_manager import load_plugins, strict_mode
    from .registry import Registry

    registry = Registry()  # loaded leniently even in strict mode: this command reports failures
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_plugins(registry, strict=False)
    records = [r.as_dict() for r in registry.plugins]
    if strict_mode() and any(r["status"] != "ok" for r in records) and not args.json:
        print("note: ASVAE_KIT_STRICT_PLUGINS=1 is set, so the failures below stop every other command", file=sys.stderr)
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    for r in records:
        status = "ok" if r["status"] == "ok" else f"FAILED: {r['reason']}"
        print(f"{r['name']}  ({r['distribution'] or 'unknown distribution'} {r['version'] or ''})  {status}")
        if r["path"]:
            print(f"    path:  {r['path']}")
        if r["hooks"]:
            print(f"    hooks: {', '.join(r['hooks'])}")
        for kind, names in r["components"].items():
            print(f"    {kind}: {', '.join(names)}")
    return 0


def _cmd_new_plugin(args: argparse.Namespace) -> int:
    from .scaffold import parse_kinds, plugin_names, write_plugin

    folder = write_plugin(args.name, args.kind, args.dir)
    names = plugin_names(args.name)
    print(f"wrote {folder}: {', '.join(sorted(str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file()))}")
    for kind in parse_kinds(args.kind):
        print(f"  {kind:<13} {names.component(kind)}")
    print(f"next: pip install -e {folder}; asvae-kit plugins; pytest {folder} (docs/plugins.md has the contracts)")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from .plot import plot_run

    print(plot_run(args.run_dir, args.output))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import run_from_args

    return run_from_args(args)


COMMANDS = {
    "train": _cmd_train,
    "sample": _cmd_sample,
    "evaluate": _cmd_evaluate,
    "plot": _cmd_plot,
    "list": _cmd_list,
    "describe": _cmd_describe,
    "plugins": _cmd_plugins,
    "new-plugin": _cmd_new_plugin,
    "compare": _cmd_compare,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("ASVAE_KIT_DEBUG") == "1"
    from .signals import TrainingStopped
    try:
        return COMMANDS[args.command](args)
    except TrainingStopped as exc:  # SIGTERM/SIGINT: the step finished and the run was saved
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message} ({type(exc).__name__}; --debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
