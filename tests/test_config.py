"""Preset + overrides -> resolved config."""

from __future__ import annotations

import json

import pytest

import asvae_kit
from asvae_kit.config import parse_value, resolve_config
from asvae_kit.errors import ConfigError, UnknownComponentError


def test_preset_defaults_and_json():
    cfg = resolve_config("resnet-asvae")
    assert cfg["encoder"] == {"name": "resnet", "width": 32}
    assert cfg["divergence"] == {"name": "asvae", "lambda_z": 0.3} and cfg["optim"]["disc_lr"] == 5e-5  # the older recipe (docs/study.md)
    assert cfg["optim"]["lr"] == 2e-4 and cfg["optim"]["betas"] == [0.5, 0.999] and cfg["optim"]["n_critic"] == 1
    assert json.loads(json.dumps(cfg)) == cfg


def test_dotted_bare_and_mapping_overrides():
    cfg = resolve_config(
        "mlp-asvae",
        {"encoder.hidden": [8], "optim.lr": 1e-3, "data": "fashion-mnist", "data.split": "test", "divergence": {"lambda_z": 0.5}, "latent_dim": 3},
    )
    assert cfg["encoder"] == {"name": "mlp", "hidden": [8]}
    assert cfg["optim"]["lr"] == 1e-3 and cfg["optim"]["n_critic"] == 1
    assert cfg["data"] == {"name": "fashion-mnist", "split": "test"}  # a bare name replaces the entry
    assert cfg["divergence"] == {"name": "asvae", "lambda_z": 0.5}  # a mapping without name merges
    assert cfg["latent_dim"] == 3


def test_aliases_are_stored_under_the_registered_name():
    assert resolve_config("mlp-asvae", {"divergence": "vae"})["divergence"] == {"name": "elbo"}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"latnet_dim": 3}, "Did you mean 'latent_dim'"),
        ({"encoder.widht": 3}, "Did you mean 'width'"),
        ({"optim.lrr": 1e-3}, "Did you mean 'lr'"),
        ({"steps.x": 1}, "has no sub-keys"),
        ({"batch_size": 0}, "positive integer"),
        ({"optim.betas": [0.5]}, "two numbers"),
        ({"optim.lr": -1}, "positive number"),
        ({"data": {"split": "x"}, "data.name": None, "data_shape": None}, "data"),
    ],
)
def test_bad_overrides(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config("resnet-asvae", overrides)


def test_unknown_component_names_in_overrides():
    with pytest.raises(UnknownComponentError, match="Did you mean 'asvae'"):
        resolve_config("mlp-asvae", {"divergence": "asvea"})
    with pytest.raises(UnknownComponentError, match="Did you mean 'mlp-asvae'"):
        asvae_kit.build("mlp-asvea")


def test_non_json_values_are_refused():
    with pytest.raises(ConfigError, match="JSON"):
        resolve_config("mlp-asvae", {"divergence.lambda_x": float("nan")})


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("1e-4") == 1e-4 and parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2] and parse_value("gaussian") == "gaussian"


def test_whole_entry_overrides_apply_before_dotted_keys():
    cfg = resolve_config("mlp-asvae", {"encoder.hidden": [64], "encoder": "mlp-implicit"})
    assert cfg["encoder"] == {"name": "mlp-implicit", "hidden": [64]}


@pytest.mark.parametrize("key", ["discriminator.num_heads", "encoder.latent_dim", "decoder.data_shape"])
def test_builder_supplied_keys_cannot_be_set_per_component(key):
    with pytest.raises(ConfigError, match="not set per component"):
        resolve_config("mlp-asvae", {key: 1})
