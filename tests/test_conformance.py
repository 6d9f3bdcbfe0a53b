"""The plugin conformance suite (``asvae_kit.testing``): the built-ins pass it, and every clause
fails on a component broken for it (tests/conformance_broken.py), with one line naming the
component, its kind and the clause."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from asvae_kit import testing
from asvae_kit.plugin_manager import PluginLoadWarning, get_registry, reset_registry
from asvae_kit.testing import CLAUSES, ConformanceError, ConformanceSkip, ConformanceSuite, Settings
from conformance_broken import BROKEN, DISTRIBUTION, MODULE
from plugin_helpers import install_plugin

pytest_plugins = ["pytester"]


# -- (a) the built-ins pass the suite ---------------------------------------------------------


class TestBuiltins(ConformanceSuite):
    """The suite over ``asvae_kit.plugins``.  ``fd`` trains the project classifier (1500 steps),
    so it runs with the slow tests; ``torch.compile`` traces with ``aot_eager`` (Inductor's code
    generation for every built-in network would cost minutes on CI's 2 cores; tests/test_compile.py
    runs Inductor on a whole step)."""

    distribution = "asvae_kit.plugins"
    slow_components = {"metric": ["fd"]}
    compile_backend = "aot_eager"

    def component_config_for(self, kind: str, name: str, tmp_path: Path):
        """Files for the two built-in datasets that read a path (the others need published files)."""
        if (kind, name) == ("dataset", "tensor"):
            np.save(tmp_path / "images.npy", np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8))
            return {"path": str(tmp_path / "images.npy")}
        if (kind, name) == ("dataset", "image-folder"):
            from PIL import Image

            for i in range(3):
                Image.fromarray(np.full((10, 12), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
            return {"path": str(tmp_path), "size": 8}
        return None


def test_the_built_ins_are_selected_by_distribution_name_or_package():
    by_package = testing.select_components("asvae_kit.plugins")
    assert by_package == testing.select_components("asvae-kit") == testing.select_components("ASVAE_KIT")
    assert {(e.kind, e.name) for e in by_package} >= {("encoder", "mlp"), ("divergence", "asvae"), ("logger", "csv"), ("preset", "mlp-vae")}
    assert [e.name for e in testing.select_components("asvae_kit.plugins.decoders")] == ["dcgan", "mlp", "resnet"]


# -- (b) every clause fails on a component broken for it --------------------------------------


@pytest.fixture(scope="module")
def broken_plugin(tmp_path_factory):
    """tests/conformance_broken.py installed as the entry point of its own distribution."""
    site = tmp_path_factory.mktemp("conformance_site")
    info = site / f"{DISTRIBUTION.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DISTRIBUTION}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[asvae_kit]\n{MODULE} = {MODULE}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(site))
        mp.delenv("ASVAE_KIT_LOAD_PLUGINS", raising=False)
        mp.delenv("ASVAE_KIT_STRICT_PLUGINS", raising=False)
        reset_registry()
        try:
            testing.check_plugin_loads(DISTRIBUTION)
            yield
        finally:
            reset_registry()
    reset_registry()


def _check(clause: str, kind: str):
    """The check function of ``clause`` for a component of ``kind``."""
    if kind == "preset":
        return lambda entry, tmp_path: testing.check_preset(entry, tmp_path / "run")
    if kind == "logger":
        return lambda entry, tmp_path: testing.check_logger(entry, tmp_path / "run")
    functions = {
        "shapes": testing.check_network_shapes,
        "outputs": testing.check_network_outputs,
        "densities": testing.check_network_densities,
        "gradients": testing.check_network_gradients,
        "state-dict round trip": testing.check_network_state_dict,
        "deep copy": testing.check_network_deepcopy,
        "same seed": testing.check_network_seed,
        "rows independent": testing.check_discriminator_rows,
        "torch.compile": lambda entry: testing.check_network_compile(entry, Settings(compile_backend="aot_eager")),
        "bf16": testing.check_divergence_bf16 if kind == "divergence" else testing.check_network_bf16,
        "two training steps": testing.check_divergence_trains,
        "skl": testing.check_divergence_skl,
        "images": testing.check_dataset,
        "metric values": testing.check_metric,
    }
    return lambda entry, tmp_path: functions[clause](entry)


#: torch.compile traces for seconds, and a preset trains three times: with the slow tests.
_SLOW_CLAUSES = {"torch.compile", "fit two steps", "save and load", "deterministic"}


@pytest.mark.parametrize(
    "kind, name",
    [pytest.param(kind, name, id=f"{kind}-{name}", marks=[pytest.mark.slow] if clause in _SLOW_CLAUSES else [])
     for (kind, name), (clause, _) in sorted(BROKEN.items())],
)
def test_a_broken_component_fails_its_clause_in_one_line(broken_plugin, kind, name, tmp_path):
    clause, phrase = BROKEN[(kind, name)]
    entry = get_registry().get(kind, name)
    assert entry.distribution == DISTRIBUTION
    with pytest.raises(ConformanceError) as info:
        _check(clause, kind)(entry, tmp_path)
    message = str(info.value)
    assert message.startswith(f"{kind} {name!r} [clause: {clause}]: "), message
    assert phrase in message, message
    assert "\n" not in message
    assert (info.value.kind, info.value.name, info.value.clause) == (kind, name, clause)


def test_every_clause_has_a_broken_component():
    broken_clauses = {clause for clause, _ in BROKEN.values()}
    assert set(CLAUSES) - broken_clauses == {"plugin loads"}  # its failing cases are below
    assert broken_clauses <= set(CLAUSES)


def test_the_clauses_a_fixture_does_not_break_pass(broken_plugin):
    """The fixtures break one clause each: the rest of the contract still holds for them, so the
    failures above come from the clause under test, not from a component broken everywhere."""
    registry = get_registry()
    testing.check_network_outputs(registry.get("encoder", "plain-attr"))  # a plain attribute is invisible here
    testing.check_network_state_dict(registry.get("encoder", "squeeze"))
    testing.check_network_outputs(registry.get("discriminator", "batch-centred"))
    testing.check_network_outputs(registry.get("decoder", "bf16-density"))
    testing.check_divergence_trains(registry.get("divergence", "float32-only"))
    testing.check_divergence_trains(registry.get("divergence", "no-skl"))


def test_the_plugin_loads_clause_fails_for_a_package_missing_or_failing(monkeypatch, tmp_path):
    with pytest.raises(ConformanceError, match=r"^distribution 'asvae-kit-nowhere' \[clause: plugin loads\]: no loaded plugin comes from it"):
        testing.check_plugin_loads("asvae-kit-nowhere")
    with pytest.raises(ConformanceError, match=r"\[clause: plugin loads\]: set the suite's `distribution`"):
        testing.check_plugin_loads(None)
    install_plugin(tmp_path, dist="asvae-kit-raises", module="asvae_kit_raises_on_import", source="raise RuntimeError('broken on purpose')\n", entry_name="raises")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("ASVAE_KIT_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("ASVAE_KIT_STRICT_PLUGINS", raising=False)
    reset_registry()
    try:
        with pytest.warns(PluginLoadWarning):
            get_registry()
        with pytest.raises(ConformanceError, match=r"^distribution 'asvae-kit-raises' \[clause: plugin loads\]: plugin 'raises' failed to load: RuntimeError: broken on purpose$"):
            testing.check_plugin_loads("asvae-kit-raises")
    finally:
        reset_registry()


def test_a_dataset_that_needs_its_files_is_skipped_with_the_reason():
    with pytest.raises(ConformanceSkip, match=r"dataset 'mnist' cannot be built offline without its files \(DataError: .*ASVAE_KIT_DATA"):
        testing.check_dataset(get_registry().get("dataset", "mnist"), Settings())


# -- the four-line test file of an unseen package, run by pytest ------------------------------

E2E_PLUGIN = textwrap.dedent(
    """
    import torch
    from torch import nn

    import asvae_kit
    from asvae_kit.distributions import GaussianPosterior


    class Encoder(nn.Module):
        def __init__(self, *, data_shape, latent_dim, hidden: int = 16):
            super().__init__()
            c, h, w = data_shape
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim))

        def forward(self, x):
            mean, logvar = self.net(x).chunk(2, dim=-1)
            return GaussianPosterior(mean, logvar.clamp(-8, 8))


    class ScaledEncoder(Encoder):
        def __init__(self, *, data_shape, latent_dim, hidden: int = 16):
            super().__init__(data_shape=data_shape, latent_dim=latent_dim, hidden=hidden)
            self.scale = torch.rand(latent_dim) + 0.5

        def forward(self, x):
            posterior = super().forward(x)
            return GaussianPosterior(posterior.mean * self.scale, posterior.logvar)


    @asvae_kit.hookimpl
    def register_encoders(register):
        register("e2e-good", Encoder)
        register("e2e-scaled", ScaledEncoder)
    """
)


def test_a_four_line_test_file_judges_an_unseen_package(pytester, plugin_installer):
    plugin_installer("asvae_kit_e2e_plugin", E2E_PLUGIN)
    pytester.makepyfile(
        test_e2e="""
        from asvae_kit.testing import ConformanceSuite

        class TestE2E(ConformanceSuite):
            distribution = "asvae-kit-e2e-plugin"
        """
    )
    result = pytester.runpytest_inprocess("-m", "not slow", "-p", "no:cacheprovider", "-rfs", "-vv")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 1 and outcomes.get("passed") == 12, result.stdout.str()
    failed = [line for line in result.outlines if line.startswith("FAILED")]
    assert failed == [
        "FAILED test_e2e.py::TestE2E::test_state_dict_round_trip[encoder-e2e-scaled] - Failed: encoder 'e2e-scaled' [clause: state-dict round trip]: "
        "a tensor kept as a plain attribute (self.scale) is not in state_dict; make it an nn.Parameter or register_buffer(...) "
        "(a checkpoint, .to(device) and the EMA miss it)"
    ], result.stdout.str()
    assert any("'asvae-kit-e2e-plugin' registers no divergence" in line for line in result.outlines)


@pytest.mark.slow
def test_importing_the_suite_does_not_import_pytest_and_asvae_kit_does_not_import_the_suite():
    code = (
        "import sys, asvae_kit; assert 'asvae_kit.testing' not in sys.modules;"
        "import asvae_kit.testing; assert 'pytest' not in sys.modules, 'pytest imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_parametrisation_marks_slow_and_excluded_components_and_skips_missing_kinds():
    """``pytest_generate_tests`` on a fake metafunc: ids by kind and name, ``slow_components``
    marked slow, ``exclude`` skipped with its reason, a kind the distribution lacks one skip."""
    from types import SimpleNamespace

    class Suite(ConformanceSuite):
        distribution = "asvae-kit"
        slow_components = {"metric": ["fd"]}
        exclude = {"metric": {"nll": "too slow here"}}

    def params_of(method):
        calls = []
        config = SimpleNamespace(getini=lambda name: ["slow: registered"], addinivalue_line=lambda *a: None)
        metafunc = SimpleNamespace(function=method, fixturenames=["component"], config=config, parametrize=lambda name, params: calls.append(params))
        Suite().pytest_generate_tests(metafunc)
        return {p.id: [m.name for m in p.marks] for p in calls[0]}

    metrics = params_of(Suite.test_metric_values)
    assert metrics["metric-fd"] == ["slow"] and metrics["metric-nll"] == ["skip"] and metrics["metric-recon"] == []
    assert all(marks == ["slow"] for marks in params_of(Suite.test_preset).values())
    Suite.distribution = "asvae_kit.plugins.loggers"
    assert params_of(Suite.test_metric_values) == {"no-metric": ["skip"]}


def test_registered_tensors_referenced_from_plain_attributes_are_not_flagged():
    """``nn.LSTM`` keeps its registered weights in a plain list too; a derived tensor (old-style
    weight_norm's ``weight``) is recomputed from parameters: neither is state the dict misses."""
    lstm = torch.nn.Sequential(torch.nn.LSTM(3, 4))
    assert testing._tensor_attributes(lstm) == []
    linear = torch.nn.Linear(3, 4)
    linear.cache = linear.weight * 2
    linear.scale = torch.ones(4)
    assert testing._tensor_attributes(linear) == ["self.scale"]


def test_torch_is_left_as_it_was():
    """The checks fork torch's RNG: running one leaves the caller's random stream untouched."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    testing.check_network_seed(get_registry().get("encoder", "mlp"))
    assert torch.equal(torch.rand(3), expected)
