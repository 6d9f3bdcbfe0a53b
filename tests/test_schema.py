"""The config schema (``asvae_kit/schema.py``): each key once, with its default, check and help,
and everything derived from it; and component options read once, at registration."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from pathlib import Path

import pytest

import asvae_kit
from asvae_kit import schema
from asvae_kit.cli import SPLIT_CHOICES, main, make_parser
from asvae_kit.config import DEFAULTS, OPTIM_DEFAULTS, resolve_config
from asvae_kit.errors import ConfigError
from asvae_kit.names import must_be_one_of
from asvae_kit.plugin_manager import get_registry
from asvae_kit.splits import SPLITS, has_test_split

ROOT = Path(__file__).resolve().parents[1]
PINNED = Path(__file__).parent / "data" / "preset_configs.json"


def _builtin_presets() -> list[str]:
    registry = get_registry()
    return [n for n in registry.names("preset") if registry.get("preset", n).plugin == "asvae_kit.plugins.presets"]


# -- presets -------------------------------------------------------------------------------------


def test_every_built_in_preset_resolves_to_its_pinned_config():
    """Computed before presets held only their departures from the defaults: it must not move."""
    pinned = json.loads(PINNED.read_text())
    assert sorted(pinned) == _builtin_presets()
    for name, config in pinned.items():
        assert json.dumps(resolve_config(name), sort_keys=True) == json.dumps(config, sort_keys=True), name


def test_presets_hold_only_their_departures_from_the_defaults():
    defaults = schema.defaults()
    for name in _builtin_presets():
        preset = get_registry().get("preset", name).factory()
        for key, value in preset.items():
            if key in schema.COMPONENT_KINDS:
                continue  # a preset names its networks and divergence whole
            if key in schema.GROUPS:
                same = [sub for sub, v in value.items() if v == defaults[key][sub]]
                assert not same, f"preset {name!r} repeats the defaults of {key}.{same}"
            else:
                assert value != defaults[key], f"preset {name!r} repeats the default {key}={value!r}"


# -- the schema and what derives from it ---------------------------------------------------------


def test_defaults_and_keys_come_from_the_schema():
    assert DEFAULTS == schema.defaults() and OPTIM_DEFAULTS == DEFAULTS["optim"]
    assert len(schema.KEYS) == len(schema.SCHEMA)
    for key in schema.SCHEMA:
        assert key.help.strip(), f"{key.name} has no help"
        assert key.check is not None or key.component is not None, f"{key.name} is never checked"
    resolved = resolve_config({})
    assert set(resolved) == set(DEFAULTS) and set(resolved["optim"]) == set(OPTIM_DEFAULTS)


@pytest.mark.parametrize("key", [k for k in schema.SCHEMA if k.check is not None], ids=lambda k: k.name)
def test_each_checked_key_refuses_a_bad_value_naming_itself(key):
    with pytest.raises(ConfigError, match=re.escape(f"config {key.name!r} must be")):
        resolve_config("mlp-vae", {key.name: {"bad": True}})


def test_unknown_keys_are_named_with_did_you_mean_at_every_layer():
    for preset, overrides, message in [
        ("mlp-vae", {"stpes": 3}, "unknown config key 'stpes'. Did you mean 'steps'?"),
        ("mlp-vae", {"optim.lrr": 3}, "unknown config key 'lrr' in 'optim'. Did you mean 'lr'?"),
        ("mlp-vae", {"optim": {"betaz": [0.5, 0.9]}}, "unknown config key 'betaz' in 'optim'. Did you mean 'betas'?"),
        ({"stpes": 3}, {}, "unknown config key 'stpes' in preset '(mapping)'. Did you mean 'steps'?"),
        ({"optim": {"lrr": 1}}, {}, "unknown config key 'lrr' in 'optim'. Did you mean 'lr'?"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            resolve_config(preset, overrides)


def test_the_optim_defaults_fill_a_partial_optim_at_every_layer():
    assert resolve_config({"optim": {"lr": 1e-3}})["optim"] == {**OPTIM_DEFAULTS, "lr": 1e-3}
    assert resolve_config("mlp-ali", {"optim": {"n_critic": 2}})["optim"] == {**OPTIM_DEFAULTS, "n_critic": 2}
    with pytest.raises(ConfigError, match="config 'optim' must be a mapping, got 3"):
        resolve_config("mlp-vae", {"optim": 3})
    with pytest.raises(ConfigError, match="config 'optim' must be a mapping, got 3"):
        resolve_config({"optim": 3})


def test_train_flags_and_their_help_come_from_the_schema(capsys):
    flagged = [k for k in schema.SCHEMA if k.flag]
    assert {k.flag for k in flagged} >= {"--steps", "--batch-size", "--lr", "--seed", "--log-every", "--sample-every",
                                         "--checkpoint-every", "--device", "--threads", "--precision", "--compile", "--cuda-graphs"}
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, at hyphens too
    for key in flagged:
        assert key.flag in text and "".join(key.help.split()) in text, key.name
    argv = ["train", "--preset", "mlp-vae", "--data", "digits", "--steps", "7", "--batch-size", "5", "--lr", "0.001", "--seed", "3",
            "--log-every", "2", "--sample-every", "0", "--checkpoint-every", "4", "--device", "cpu", "--threads", "1",
            "--precision", "bf16", "--compile", "--cuda-graphs", "--logger", "csv,tensorboard", "--print-config"]
    assert main(argv) == 0
    config = json.loads(capsys.readouterr().out)
    assert (config["steps"], config["batch_size"], config["optim"]["lr"], config["seed"]) == (7, 5, 0.001, 3)
    assert (config["log_every"], config["sample_every"], config["checkpoint_every"], config["device"]) == (2, 0, 4, "cpu")
    assert (config["threads"], config["precision"], config["compile"], config["cuda_graphs"]) == (1, "bf16", True, True)
    assert config["loggers"] == ["csv", "tensorboard"] and config["data"] == {"name": "digits"}
    assert main(["train", "--preset", "mlp-vae", "--print-config"]) == 0  # unset flags leave the preset's values
    config = json.loads(capsys.readouterr().out)
    assert config["steps"] == 3000 and config["compile"] is False and config["loggers"] == ["csv"]


def test_load_overrides_and_legacy_values_come_from_the_schema():
    from asvae_kit.builder import LOAD_OVERRIDES

    assert set(LOAD_OVERRIDES) == {
        "steps", "log_every", "sample_every", "checkpoint_every", "device", "metrics", "eval_size", "diverge_factor",
        "keep_checkpoints", "loggers", "threads", "optim.lr", "optim.disc_lr", "compile", "cuda_graphs",
    }
    assert schema.legacy_defaults() == {"holdout": 0.0, "val_fraction": 0.0, "val_max": None}
    assert schema.disc_lr({"lr": 1e-3, "disc_lr": None}) == 1e-3 and schema.disc_lr({"lr": 1e-3, "disc_lr": 5e-5}) == 5e-5


# -- choice lists and the one "must be one of" wording ---------------------------------------------


def test_each_choice_list_is_defined_once():
    from asvae_kit.algorithm import PRECISIONS

    assert tuple(PRECISIONS) == schema.PRECISION_NAMES
    assert schema.KEYS["precision"].choices == schema.PRECISION_NAMES
    assert schema.KEYS["optim.schedule"].choices == schema.SCHEDULES
    assert SPLIT_CHOICES is SPLITS
    parser = make_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    flag = {o: a for a in commands["train"]._actions for o in a.option_strings}
    assert tuple(flag["--precision"].choices) == schema.PRECISION_NAMES
    for command in ("evaluate", "sample"):
        split = next(a for a in commands[command]._actions if "--split" in a.option_strings)
        assert tuple(split.choices) == SPLITS


def test_one_wording_for_a_value_outside_its_choices(tmp_path):
    assert must_be_one_of("config 'precision'", "bf61", schema.PRECISION_NAMES) == (
        "config 'precision' must be one of '32', 'bf16', '16-mixed', got 'bf61'. Did you mean 'bf16'?"
    )
    assert must_be_one_of("x", 3, ("alpha", "beta"), " Why.") == "x must be one of 'alpha', 'beta', got 3. Why."
    cases = [
        (lambda: resolve_config("mlp-vae", {"precision": "bf61"}), "config 'precision' must be one of '32', 'bf16', '16-mixed', got 'bf61'. Did you mean 'bf16'?"),
        (lambda: resolve_config("mlp-vae", {"optim.schedule": "cosin"}), "config 'optim.schedule' must be one of 'constant', 'cosine', got 'cosin'. Did you mean 'cosine'?"),
        (lambda: asvae_kit.build_component("divergence", "asvae", critic="jiont"),  # a divergence's own choices, when it is built
         "divergence 'asvae': critic must be one of 'two-head', 'joint', got 'jiont'. Did you mean 'joint'?"),
        (lambda: asvae_kit.config.load_config_file(tmp_path / "c.jsn"), "the extension must be one of '.json', '.yaml', '.yml', '.toml', got '.jsn'. Did you mean '.json'?"),
    ]
    from asvae_kit.splits import check_split

    cases.append((lambda: check_split("tset"), "split must be one of 'train', 'val', 'test', got 'tset'. Did you mean 'test'? 'val' is for tuning"))
    for call, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            call()


# -- docs/design.md's config-key tables ------------------------------------------------------------


def _split_top_level(text: str) -> list[str]:
    """``"2e-4, [0.5, 0.999]"`` -> ``["2e-4", "[0.5, 0.999]"]``: commas outside brackets."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [p.strip() for p in [*parts, current] if p.strip()]


def _doc_value(text: str):
    text = text.strip().strip("`").strip()
    if text.startswith("[") and text.endswith("]"):
        return [_doc_value(t) for t in _split_top_level(text[1:-1])]
    try:
        return json.loads(text)
    except ValueError:
        return text  # a bare name: `auto`, `mlp`


def _doc_table(lines: list[str], header: str) -> list[tuple[str, str]]:
    start = lines.index(header)
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        rows.append((cells[0], cells[1]))
    return rows


def _doc_defaults() -> dict[str, object]:
    lines = (ROOT / "docs" / "design.md").read_text(encoding="utf-8").splitlines()
    documented: dict[str, object] = {}
    for header, prefix in (("| key | default | meaning |", ""), ("| `optim` key | default | meaning |", "optim.")):
        for keys_cell, default_cell in _doc_table(lines, header):
            names = re.findall(r"`([^`]+)`", keys_cell)
            assert names, f"docs/design.md: a config-key row names no key: {keys_cell!r}"
            if names == ["optim"] and not prefix:
                assert default_cell == "see below"
                continue
            values = [_doc_value(v) for v in _split_top_level(default_cell)]
            assert len(values) == len(names), f"docs/design.md: {names} has {len(values)} defaults: {default_cell!r}"
            for name, value in zip(names, values):
                assert prefix + name not in documented, f"docs/design.md lists {prefix + name} twice"
                documented[prefix + name] = value
    return documented


def test_the_design_docs_config_tables_equal_the_schema():
    documented = _doc_defaults()
    unknown = sorted(set(documented) - set(schema.KEYS))
    assert not unknown, f"docs/design.md §3 documents keys the schema lacks: {unknown}"
    missing = sorted(set(schema.KEYS) - set(documented))
    assert not missing, f"docs/design.md §3 lacks the keys {missing}"
    for key in schema.SCHEMA:
        default = key.default["name"] if key.component else key.default  # an entry is documented by its name
        assert json.dumps(documented[key.name]) == json.dumps(default), f"docs/design.md: {key.name} defaults to {documented[key.name]!r}, the schema to {default!r}"


# -- component options, read once at registration --------------------------------------------------


def test_component_options_are_kept_on_the_entry():
    registry = get_registry()
    mlp = registry.get("encoder", "mlp").options
    assert set(mlp.context) == {"data_shape", "latent_dim"} and "hidden" in mlp.keys and not mlp.accepts_any
    assert "num_heads" in registry.get("discriminator", "joint-mlp").options.context
    nll, skl = registry.get("metric", "nll").options, registry.get("metric", "skl").options
    assert dict(nll.keys) == {"k": 1000, "n": 256, "batch": 4096, "seed": 0} and nll.weights == "average"
    assert skl.weights == "raw"
    assert registry.get("dataset", "mnist").options.keys["split"] == "train"
    assert registry.get("decoder", "resnet").options.defaults() == asvae_kit.describe("resnet", "decoder")["config"]
    entry = registry.get("metric", "recon")
    replaced = dataclasses.replace(entry, factory=lambda trainer, data, labels=None, k=3: {})
    assert dict(replaced.options.keys) == {"k": 3} and replaced.options.supplied == ("labels",)  # read from the new factory
    described = asvae_kit.describe("resnet", "decoder")["config"]
    described["width"] = 999  # a copy: the entry's defaults stay as registered
    assert registry.get("decoder", "resnet").options.keys["width"] == 32


def test_no_signature_is_read_after_registration(tmp_path, capsys, monkeypatch):
    registry = get_registry()
    factories = {id(registry.get(kind, name).factory) for kind in asvae_kit.names.KINDS for name in registry.names(kind)}
    reads: list[object] = []
    signature = inspect.signature

    def counting(fn, *args, **kwargs):
        if id(fn) in factories:
            reads.append(fn)
        return signature(fn, *args, **kwargs)

    monkeypatch.setattr(inspect, "signature", counting)
    resolve_config("resnet-asvae", {"metrics": ["nll:k=4", "fd"], "loggers": ["csv"], "encoder.width": 8})
    for kind in asvae_kit.names.KINDS:
        for name in registry.names(kind):
            if kind != "preset":
                asvae_kit.describe(name, kind)
    assert has_test_split({"name": "mnist"}, registry.get("dataset", "mnist"))
    trainer = asvae_kit.build("mlp-vae", steps=0, device="cpu", **{"data.limit": 40, "encoder.hidden": [8], "decoder.hidden": [8]})
    assert set(trainer.evaluate(["recon"], split="val")) >= {"recon_mse"}
    assert main(["train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "add --data NAME" in capsys.readouterr().err
    assert reads == []


def test_design_doc_recipe_table_equals_the_presets_recipes():
    """docs/design.md §2's recipe table says what ``RECIPES`` holds, preset by preset."""
    import re

    from asvae_kit.plugins.presets import RECIPES

    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    table = text.split("| preset | recipe |", 1)[1].split("\n\n", 1)[0]
    documented = {}
    for line in table.strip().splitlines()[1:]:
        presets, recipe = line.strip("|").split("|", 1)
        settings = {k: float(v) for k, v in re.findall(r"`([\w.]+): ([\d.e-]+)`", recipe)}
        for name in re.findall(r"`([\w-]+)`", presets):
            documented[name] = settings
    expected = {}
    for (arch, variant), recipe in RECIPES.items():
        flat = {f"{group}.{key}": float(value) for group, values in recipe.items() for key, value in values.items()}
        expected[f"{arch}-{variant}"] = flat
    assert documented == expected
