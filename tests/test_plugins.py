"""Plugin discovery through entry points, fault isolation, strict mode and the allow-list."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import asvae_kit
from asvae_kit.plugin_manager import PluginLoadWarning
from asvae_kit.plugin_manager import get_registry, reset_registry

from plugin_helpers import install_plugin

GOOD = """
    import torch
    from torch import nn
    import asvae_kit
    from asvae_kit.distributions import GaussianPosterior

    class TinyEncoder(nn.Module):
        def __init__(self, *, data_shape, latent_dim, scale=2.0):
            super().__init__()
            c, h, w = data_shape
            self.scale = scale
            self.linear = nn.Linear(c * h * w, 2 * latent_dim)

        def forward(self, x):
            mean, logvar = self.linear(x.flatten(1)).chunk(2, dim=-1)
            return GaussianPosterior(mean * self.scale, logvar)

    @asvae_kit.hookimpl
    def register_encoders(register):
        register("tiny", TinyEncoder, description="A one-layer encoder from an outside package.", aliases=("tiny-enc",))

    @asvae_kit.hookimpl
    def register_presets(register):
        register("tiny-asvae", lambda: {"encoder": {"name": "tiny", "scale": 1.0}, "decoder": "mlp",
                                        "discriminator": "joint-mlp", "divergence": "asvae",
                                        "latent_dim": 4, "batch_size": 16, "steps": 2},
                 description="ASVAE with the tiny encoder.")
"""

BROKEN = {
    "import-error": """
        import asvae_kit
        raise ImportError("this plugin needs a package that is not installed")
    """,
    "misspelt-hook": """
        import asvae_kit
        @asvae_kit.hookimpl
        def register_encoderz(register):
            pass
    """,
    "duplicate-name": """
        import asvae_kit
        @asvae_kit.hookimpl
        def register_encoders(register):
            register("mlp", lambda **kw: None)
    """,
    "invalid-name": """
        import asvae_kit
        @asvae_kit.hookimpl
        def register_decoders(register):
            register("Bad_Name", lambda **kw: None)
    """,
    "raising-hook": """
        import asvae_kit
        @asvae_kit.hookimpl
        def register_metrics(register):
            register("fine-metric", lambda trainer, data: {})
            raise RuntimeError("boom in the hook")
    """,
}

REASONS = {
    "import-error": "not installed",
    "misspelt-hook": "register_encoderz",
    "duplicate-name": "duplicate encoder 'mlp'",
    "invalid-name": "Bad_Name",
    "raising-hook": "boom in the hook",
}


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    monkeypatch.delenv("ASVAE_KIT_STRICT_PLUGINS", raising=False)
    monkeypatch.delenv("ASVAE_KIT_LOAD_PLUGINS", raising=False)
    reset_registry()
    yield
    reset_registry()


@pytest.fixture
def site(tmp_path, monkeypatch):
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    return path


def _install_good(site):
    install_plugin(site, dist="asvae-kit-tiny", module="asvae_tiny_plugin", source=GOOD, version="1.2.3")


def _install_broken(site, which):
    module = "asvae_broken_" + which.replace("-", "_")
    install_plugin(site, dist=f"broken-{which}", module=module, source=BROKEN[which], entry_name=which)


def test_outside_plugin_is_discovered_listed_described_and_built(site):
    _install_good(site)
    assert "tiny" in asvae_kit.list_components("encoder")
    assert "tiny-asvae" in asvae_kit.list_components("presets")
    info = asvae_kit.describe("tiny", "encoder")
    assert info["distribution"] == "asvae-kit-tiny"
    assert info["version"] == "1.2.3"
    assert info["provider"] == "asvae_tiny_plugin"
    assert info["config"] == {"scale": 2.0}
    enc = asvae_kit.build_component("encoder", "tiny-enc", data_shape=(1, 8, 8), latent_dim=3, scale=0.5)
    post = enc(torch.rand(5, 1, 8, 8))
    assert post.mean.shape == (5, 3) and enc.scale == 0.5
    # the preset builds and trains through the outside encoder
    trainer = asvae_kit.build("tiny-asvae", **{"encoder.scale": 3.0})
    assert trainer.config["encoder"] == {"name": "tiny", "scale": 3.0}
    assert type(trainer.encoder).__name__ == "TinyEncoder"
    trainer.fit()
    assert trainer.step == 2
    record = next(r for r in get_registry().plugins if r.name == "asvae_tiny_plugin")
    assert record.status == "ok"
    assert record.components == {"encoder": ["tiny"], "preset": ["tiny-asvae"]}
    assert record.hooks == ["register_encoders", "register_presets"]


def test_the_plugin_module_is_not_imported_until_the_registry_is_used(site):
    import sys

    _install_good(site)
    assert "asvae_tiny_plugin" not in sys.modules
    asvae_kit.list_components()
    assert "asvae_tiny_plugin" in sys.modules


@pytest.mark.parametrize("which", sorted(BROKEN))
def test_a_broken_plugin_is_skipped_with_one_warning_and_recorded(site, which, capsys):
    _install_good(site)
    _install_broken(site, which)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = asvae_kit.list_components()
    plugin_warnings = [w for w in caught if issubclass(w.category, PluginLoadWarning)]
    assert len(plugin_warnings) == 1
    assert which in str(plugin_warnings[0].message)
    # everything else keeps working, the good outside plugin included
    assert "tiny" in names and "asvae" in names
    assert "fine-metric" not in names  # a failing plugin contributes nothing
    assert asvae_kit.describe("asvae", "divergence")["kind"] == "divergence"
    record = next(r for r in get_registry().plugins if r.name == which)
    assert record.status == "failed"
    assert REASONS[which] in record.reason
    assert record.distribution == f"broken-{which}"
    assert "\n" not in record.reason
    # the CLI shows it as failed in `plugins --json` and keeps listing / describing
    from asvae_kit.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["plugins", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        failed = {r["name"]: r for r in out if r["status"] == "failed"}
        assert set(failed) == {which} and REASONS[which] in failed[which]["reason"]
        assert main(["list", "encoder"]) == 0
        listing = capsys.readouterr()
        assert "tiny" in listing.out and which in listing.err
        assert main(["describe", "tiny", "--kind", "encoder"]) == 0


def test_duplicate_error_names_both_providers(site):
    _install_broken(site, "duplicate-name")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        get_registry()
    record = next(r for r in get_registry().plugins if r.name == "duplicate-name")
    assert "asvae_kit.plugins.encoders" in record.reason and "duplicate-name" in record.reason


@pytest.mark.parametrize("which", sorted(BROKEN))
def test_strict_mode_raises_naming_the_plugin_and_plugins_still_lists_it(site, which, monkeypatch, capsys):
    _install_broken(site, which)
    monkeypatch.setenv("ASVAE_KIT_STRICT_PLUGINS", "1")
    with pytest.raises(asvae_kit.PluginError) as info:
        asvae_kit.list_components()
    assert REASONS[which] in str(info.value) and f"plugin {which!r}" in str(info.value)
    assert "ASVAE_KIT_STRICT_PLUGINS" in str(info.value)
    from asvae_kit.cli import main

    reset_registry()
    assert main(["plugins", "--json"]) == 0
    failed = [r for r in json.loads(capsys.readouterr().out) if r["status"] == "failed"]
    assert [r["name"] for r in failed] == [which]


def test_allow_list_loads_only_the_named_entry_points(site, monkeypatch):
    _install_good(site)
    _install_broken(site, "raising-hook")
    monkeypatch.setenv("ASVAE_KIT_LOAD_PLUGINS", "asvae_tiny_plugin")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginLoadWarning)  # the broken one is not even tried
        assert "tiny" in asvae_kit.list_components("encoder")
    assert [r.name for r in get_registry().plugins if not r.builtin] == ["asvae_tiny_plugin"]


def test_empty_allow_list_loads_no_entry_points_but_all_builtins(site, monkeypatch):
    _install_good(site)
    monkeypatch.setenv("ASVAE_KIT_LOAD_PLUGINS", "")
    assert "tiny" not in asvae_kit.list_components("encoder")
    assert {"mlp", "mlp-implicit", "resnet"} <= set(asvae_kit.list_components("encoder"))
    assert all(r.builtin for r in get_registry().plugins)


def test_unknown_name_mentions_failed_plugins(site):
    _install_broken(site, "import-error")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(asvae_kit.UnknownComponentError) as info:
            asvae_kit.build_component("encoder", "from-the-broken-one", data_shape=(1, 8, 8), latent_dim=2)
    assert info.value.failed_plugins == ["import-error"]
    assert "import-error" in str(info.value)


def test_builtins_register_through_the_same_hooks():
    records = [r for r in get_registry().plugins if r.builtin]
    assert {r.name for r in records} >= {"asvae_kit.plugins.encoders", "asvae_kit.plugins.divergences"}
    hooks = {h for r in records for h in r.hooks}
    assert hooks == {
        "register_encoders",
        "register_decoders",
        "register_discriminators",
        "register_divergences",
        "register_presets",
        "register_datasets",
        "register_metrics",
        "register_loggers",
    }
    assert all(r.status == "ok" and r.distribution == "asvae-kit" for r in records)


HALF_DIVERGENCE = """
    import asvae_kit

    class HalfDivergence:
        num_heads = 1

        def discriminator_loss(self, discriminator, batch):
            raise AssertionError("never reached: the builder refuses this divergence")

    @asvae_kit.hookimpl
    def register_divergences(register):
        register("half", HalfDivergence, description="lacks generator_loss")
"""


def test_a_divergence_without_the_protocol_fails_at_build_naming_what_it_lacks(site):
    install_plugin(site, dist="asvae-kit-half", module="asvae_half_plugin", source=HALF_DIVERGENCE)
    with pytest.raises(asvae_kit.errors.PluginError, match=r"'half'.*HalfDivergence.*no generator_loss") as info:
        asvae_kit.build("mlp-asvae", divergence="half", data={"name": "digits"}, steps=1)
    assert "asvae_kit.divergence.Divergence" in str(info.value)
