"""The registry API: listing, describing, building, and the errors for unknown names."""

from __future__ import annotations

import pytest

import asvae_kit
from asvae_kit.plugin_manager import get_registry


def test_list_components_by_kind_pattern_and_plural():
    assert asvae_kit.list_components("encoder") == ["dcgan", "mlp", "mlp-implicit", "resnet"]
    assert asvae_kit.list_components("encoders") == asvae_kit.list_components("encoder")
    assert asvae_kit.list_components("preset", "mlp-*") == ["mlp-ali", "mlp-asvae", "mlp-avb", "mlp-vae"]
    assert asvae_kit.list_components("divergence") == ["ali", "asvae", "avb", "elbo"]
    everything = asvae_kit.list_components()
    assert everything == sorted(everything) and "digits" in everything and "joint-resnet" in everything
    with pytest.raises(ValueError, match="unknown component kind 'widget'"):
        asvae_kit.list_components("widget")


def test_describe_reads_config_defaults_from_the_factory():
    info = asvae_kit.describe("resnet", "decoder")
    assert info["kind"] == "decoder"
    assert info["config"] == {"width": 32, "likelihood": "bernoulli", "init_scale": 0.1}
    assert info["distribution"] == "asvae-kit"
    assert info["provider"] == "asvae_kit.plugins.decoders"
    assert "residual" in info["description"]
    preset = asvae_kit.describe("resnet-asvae")
    assert preset["kind"] == "preset" and preset["config"]["divergence"] == {"name": "asvae", "lambda_z": 0.3}
    with pytest.raises(asvae_kit.ConfigError, match="several kinds"):
        asvae_kit.describe("mlp")


def test_aliases_resolve():
    assert asvae_kit.describe("vae", "divergence")["name"] == "elbo"
    assert type(asvae_kit.build_component("divergence", "bigan")).__name__ == "ALI"


def test_build_component_checks_config_keys():
    enc = asvae_kit.build_component("encoder", "mlp", data_shape=(1, 8, 8), latent_dim=4, hidden=[16])
    assert enc(__import__("torch").rand(2, 1, 8, 8)).mean.shape == (2, 4)
    with pytest.raises(asvae_kit.ConfigError, match="Did you mean 'hidden'"):
        asvae_kit.build_component("encoder", "mlp", data_shape=(1, 8, 8), latent_dim=4, hiden=[16])


@pytest.mark.parametrize(
    "typo, expected",
    [("resnt", "resnet"), ("mpl", "mlp"), ("resnet2", "resnet"), ("mlp-implict", "mlp-implicit"), ("rsenet", "resnet")],
)
def test_typos_within_distance_two_are_suggested(typo, expected):
    with pytest.raises(asvae_kit.UnknownComponentError) as info:
        asvae_kit.build_component("encoder", typo)
    err = info.value
    assert isinstance(err, KeyError)
    assert expected in err.suggestions
    assert "Did you mean " in str(err) and repr(expected) in str(err).split("Did you mean", 1)[1]


def test_unknown_name_that_exists_under_another_kind():
    with pytest.raises(asvae_kit.UnknownComponentError) as info:
        asvae_kit.build_component("encoder", "joint-mlp")
    assert info.value.other_kinds == ["discriminator"]
    assert "registered as a discriminator" in str(info.value)
    assert info.value.failed_plugins == []


def test_unknown_name_without_neighbours_says_how_to_list():
    with pytest.raises(asvae_kit.UnknownComponentError, match="asvae-kit list dataset"):
        asvae_kit.build_component("dataset", "zzzzzzzzzz")


def test_registry_is_built_once():
    assert get_registry() is get_registry()
