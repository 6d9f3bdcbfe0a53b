"""Names (``asvae_kit.names``): valid names, the kinds from the hookspecs, and the one did-you-mean."""

from __future__ import annotations

import pytest

from asvae_kit.hookspecs import HOOK_KINDS
from asvae_kit.names import KINDS, close_matches, did_you_mean, edit_distance, is_valid_name, normalize_kind, suggestion_text


def test_name_helpers():
    assert is_valid_name("joint-mlp") and is_valid_name("a1")
    for bad in ("Joint", "-x", "a_b", "", "a b", None):
        assert not is_valid_name(bad)
    assert edit_distance("resnet", "rsenet") == 1
    assert edit_distance("abc", "abc") == 0
    assert close_matches("asvea", ["asvae", "avb", "elbo"])[0] == "asvae"
    assert normalize_kind("Discriminators") == "discriminator"


def test_the_kinds_are_the_hookspecs_kinds():
    assert KINDS == tuple(HOOK_KINDS.values()) and "encoder" in KINDS and len(set(KINDS)) == len(KINDS)
    with pytest.raises(ValueError, match="Did you mean 'encoder'"):
        normalize_kind("encodr")


def test_did_you_mean_is_one_phrase():
    assert did_you_mean("lattent_dim", ["latent_dim", "batch_size"]) == " Did you mean 'latent_dim'?"
    assert did_you_mean("zzzz", ["latent_dim"]) == ""
    assert did_you_mean("mlp-asvea", ["mlp-asvae", "mlp-avb", "mlp-vae"], limit=2) == " Did you mean 'mlp-asvae' or 'mlp-vae'?"
    assert suggestion_text([]) == ""
