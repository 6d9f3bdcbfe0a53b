"""``asvae-kit new-plugin`` (``asvae_kit/scaffold.py``) and the plugin guide (docs/plugins.md).

The fast tests check what the writer writes and refuses, and that every generated component
honours its kind's basic contract in this process (the module imported from the written folder,
its hooks called with a recording ``register``); the slow one pip-installs a generated package
with every kind, as a user would, and runs its own tests (the conformance suite) in a fresh
interpreter.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import math
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch

from asvae_kit import hookspecs
from asvae_kit.cli import main
from asvae_kit.errors import ConfigError
from asvae_kit.names import KINDS
from asvae_kit.scaffold import DEFAULT_KINDS, parse_kinds, plugin_names, render_plugin, write_plugin

REPO = Path(__file__).resolve().parents[1]
FOUR_LINE_TEST = 'from asvae_kit.testing import ConformanceSuite\n\nclass Test{cls}(ConformanceSuite):\n    distribution = "{dist}"\n'


# -- the writer ---------------------------------------------------------------------------------


def test_the_writer_makes_a_package_with_the_entry_point_a_readme_and_the_four_line_test(tmp_path):
    folder = write_plugin("asvae-kit-myplugin", directory=tmp_path)
    assert folder == tmp_path / "asvae-kit-myplugin"
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == ["README.md", "asvae_kit_myplugin/__init__.py", "pyproject.toml", "tests/test_conformance.py"]
    project = tomllib.loads((folder / "pyproject.toml").read_text())
    assert project["project"]["name"] == "asvae-kit-myplugin"
    assert project["project"]["dependencies"] == ["asvae-kit"]
    assert project["project"]["entry-points"]["asvae_kit"] == {"myplugin": "asvae_kit_myplugin"}
    assert project["tool"]["setuptools"]["packages"] == ["asvae_kit_myplugin"]
    assert (folder / "tests" / "test_conformance.py").read_text() == FOUR_LINE_TEST.format(cls="Myplugin", dist="asvae-kit-myplugin")
    source = (folder / "asvae_kit_myplugin" / "__init__.py").read_text()
    assert DEFAULT_KINDS == ("encoder",) and "def register_encoders(register)" in source and "register_decoders" not in source
    compile(source, "generated", "exec")
    assert "myplugin-encoder" in (folder / "README.md").read_text()


def test_every_kind_compiles_alone_and_together():
    for kinds in [*([k] for k in KINDS), list(KINDS)]:
        files = render_plugin("asvae-kit-k", kinds)
        source = files["asvae_kit_k/__init__.py"]
        compile(source, f"generated {kinds}", "exec")
        for kind in KINDS:
            assert (f"{[h for h, k in hookspecs.HOOK_KINDS.items() if k == kind][0]}(register)" in source) == (kind in kinds)


def test_the_command_writes_the_folder_then_refuses_it_in_one_line(tmp_path, capsys):
    assert main(["new-plugin", "asvae-kit-cli-made", "--kind", "decoders,metric", "--dir", str(tmp_path / "new" / "parent")]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "new" / "parent" / "asvae-kit-cli-made"
    assert f"wrote {folder}" in out and "cli-made-decoder" in out and "cli-made-metric" in out and "pip install -e" in out
    assert "def register_metrics(register)" in (folder / "asvae_kit_cli_made" / "__init__.py").read_text()
    before = {p: p.read_text() for p in folder.rglob("*") if p.is_file()}
    assert main(["new-plugin", "asvae-kit-cli-made", "--dir", str(tmp_path / "new" / "parent")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not empty" in err and "choose another --dir or NAME" in err
    assert {p: p.read_text() for p in folder.rglob("*") if p.is_file()} == before  # nothing overwritten


def test_an_empty_folder_is_used_and_a_file_or_a_non_empty_folder_refused(tmp_path):
    (tmp_path / "asvae-kit-empty").mkdir()
    assert (write_plugin("asvae-kit-empty", directory=tmp_path) / "pyproject.toml").is_file()
    (tmp_path / "asvae-kit-busy").mkdir()
    (tmp_path / "asvae-kit-busy" / ".git").mkdir()
    with pytest.raises(ConfigError, match=r"asvae-kit-busy is not empty \(\.git\)"):
        write_plugin("asvae-kit-busy", directory=tmp_path)
    (tmp_path / "asvae-kit-file").write_text("")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        write_plugin("asvae-kit-file", directory=tmp_path)


@pytest.mark.parametrize(
    "name, fix",
    [
        ("My_Plugin", "'asvae-kit-my-plugin'"),
        ("1plugin", "'asvae-kit-plugin'"),
        ("foo/bar", "--dir says where it goes"),
        ("asvae-kit--x", "single hyphens"),
        ("plugin-", "starting with a letter"),
        ("", "lowercase letters"),
        ("asvae-kit", "a package asvae-kit uses"),
        ("json", "e.g. 'asvae-kit-json'"),
        ("class", "choose another"),
    ],
)
def test_a_bad_name_is_one_line_with_the_fix(name, fix, tmp_path):
    with pytest.raises(ConfigError) as info:
        write_plugin(name, directory=tmp_path)
    message = str(info.value)
    assert "\n" not in message and repr(name) in message and fix in message
    assert list(tmp_path.iterdir()) == []


def test_names_are_derived_from_the_package_name():
    names = plugin_names("asvae-kit-my-nets")
    assert (names.module, names.entry_point, names.short, names.classes) == ("asvae_kit_my_nets", "my_nets", "my-nets", "MyNets")
    assert names.component("encoder") == "my-nets-encoder"
    assert plugin_names("coolnets").component("metric") == "coolnets-metric"
    assert plugin_names("asvae-kit-3d").classes == "Plugin3d"


def test_kinds_are_checked_normalised_and_ordered():
    assert parse_kinds(None) == ("encoder",)
    assert parse_kinds("metric, Encoders,metric") == ("encoder", "metric")
    assert parse_kinds(["logger", "decoder"]) == ("decoder", "logger")
    assert parse_kinds("all") == KINDS
    with pytest.raises(ConfigError, match=r"--kind: unknown component kind 'encodr'.*Did you mean 'encoder'\?"):
        parse_kinds("encodr,decoder")
    with pytest.raises(ConfigError, match="names no kind"):
        parse_kinds(" , ")
    assert main(["new-plugin", "asvae-kit-never", "--kind", "critic"]) == 2


# -- the generated components, in this process --------------------------------------------------


@pytest.fixture
def generated(tmp_path, monkeypatch):
    """The module of a generated package with every kind, imported from its folder, and what its
    hooks register: ``{kind: (name, factory, options)}``."""
    folder = write_plugin("asvae-kit-scaffoldcheck", kinds="all", directory=tmp_path)
    monkeypatch.syspath_prepend(str(folder))
    module = importlib.import_module("asvae_kit_scaffoldcheck")
    registered: dict[str, tuple[str, Any, dict[str, Any]]] = {}
    try:
        for hook, kind in hookspecs.HOOK_KINDS.items():
            def register(name, factory, *, description="", aliases=(), _kind=kind):
                assert _kind not in registered and description and aliases == ()
                registered[_kind] = (name, factory, {"description": description})
            getattr(module, hook)(register=register)
        yield registered
    finally:
        sys.modules.pop("asvae_kit_scaffoldcheck", None)


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def test_generated_networks_honour_their_contracts(generated):
    torch.manual_seed(0)
    shape, latent = (3, 8, 8), 4
    assert [generated[k][0] for k in KINDS] == [f"scaffoldcheck-{k}" for k in KINDS]
    encoder = generated["encoder"][1](data_shape=shape, latent_dim=latent)
    decoder = generated["decoder"][1](data_shape=shape, latent_dim=latent)
    critic = generated["discriminator"][1](data_shape=shape, latent_dim=latent, num_heads=2)
    for batch in (1, 2, 5):
        x = torch.rand(batch, *shape)
        q = encoder(x)
        z = q.rsample()
        assert q.mean.shape == z.shape == (batch, latent) and q.log_prob(z).shape == q.kl_standard_normal().shape == (batch,)
        p = decoder(z)
        assert p.mean.shape == (batch, *shape) and 0 <= p.mean.min() and p.mean.max() <= 1
        for pixels in (torch.zeros_like(x), torch.ones_like(x), x):
            assert p.log_prob(pixels).shape == (batch,) and _finite(p.log_prob(pixels))
        h = critic.features(x, z)
        assert h.shape[0] == batch and critic.head.out_features == 2
        assert torch.equal(critic(x, z), critic.head(h))
    # gradients reach every parameter; a deep copy (what the EMA makes) gives the same outputs
    x = torch.rand(3, *shape)
    z = encoder(x).mean
    loss = -decoder(z).log_prob(x).sum() + critic(x, z).sum()
    loss.backward()
    outputs = [(encoder, lambda m: m(x).mean), (decoder, lambda m: m(z).mean), (critic, lambda m: m(x, z))]
    for net, output in outputs:
        assert all(p.grad is not None and _finite(p.grad) for p in net.parameters())
        assert torch.equal(output(net), output(copy.deepcopy(net)))
    with pytest.raises(ConfigError, match="encoder 'scaffoldcheck-encoder': hidden must be a positive integer, got 0"):
        generated["encoder"][1](data_shape=shape, latent_dim=latent, hidden=0)


def test_generated_divergence_trains_with_the_generated_networks(generated):
    from asvae_kit.divergence import check_divergence, check_head_count
    from asvae_kit.joint_batch import JointBatch

    torch.manual_seed(0)
    shape, latent = (1, 8, 8), 3
    divergence = generated["divergence"][1]()
    heads = check_divergence(divergence, "scaffoldcheck-divergence")
    encoder = generated["encoder"][1](data_shape=shape, latent_dim=latent)
    decoder = generated["decoder"][1](data_shape=shape, latent_dim=latent)
    critic = generated["discriminator"][1](data_shape=shape, latent_dim=latent, num_heads=heads)
    check_head_count(critic, heads, "scaffoldcheck-divergence")
    batch = JointBatch(torch.rand(6, *shape), encoder, decoder, latent)
    d_loss, d_terms = divergence.discriminator_loss(critic, batch)
    g_loss, g_terms = divergence.generator_loss(critic, batch)
    assert d_loss.dim() == g_loss.dim() == 0 and _finite(d_loss) and _finite(g_loss)
    assert set(d_terms) == {"d_loss"} and {"g_loss", "log_px", "kl"} <= set(g_terms)
    assert all(not t.requires_grad for t in (*d_terms.values(), *g_terms.values()))
    g_loss.backward()
    assert all(p.grad is not None for p in (*encoder.parameters(), *decoder.parameters()))
    with pytest.raises(ConfigError, match="beta must be a non-negative number, got -1"):
        generated["divergence"][1](beta=-1)


def test_generated_dataset_metric_and_logger_honour_their_contracts(generated, tmp_path):
    import asvae_kit
    from asvae_kit.evaluation import MetricNotApplicable

    data = generated["dataset"][1]()
    assert data.data_shape == (1, 8, 8) and len(data) == 512
    image, label = data[0]
    assert image.shape == (1, 8, 8) and 0 <= image.min() and image.max() == 1 and 0 <= int(label) <= 3
    assert set(data.labels.tolist()) == {0, 1, 2, 3}
    colour = generated["dataset"][1](n=7, size=16, channels=3, seed=1)
    assert colour.data_shape == (3, 16, 16) and torch.equal(colour.images, generated["dataset"][1](n=7, size=16, channels=3, seed=1).images)
    with pytest.raises(ConfigError, match="channels must be 1 or 3, got 2"):
        generated["dataset"][1](channels=2)

    trainer = asvae_kit.build(
        {"encoder": {"name": "mlp", "hidden": [16]}, "decoder": {"name": "mlp", "hidden": [16]}, "divergence": "elbo",
         "data": "digits", "latent_dim": 4, "loggers": []}
    )
    metric = generated["metric"][1]
    value = metric(trainer, data.images[:40])
    assert list(value) == ["scaffoldcheck_active_units"] and 0 <= value["scaffoldcheck_active_units"] <= 1
    with pytest.raises(MetricNotApplicable, match="needs at least 2 images"):
        metric(trainer, data.images[:1])

    logger = generated["logger"][1]()
    for start, rows in ((0, (1, 2, 3)), (2, (3,))):  # the second start resumes from step 2: row 3 is dropped
        logger.start(tmp_path, {}, start, "run-id")
        for step in rows:
            logger.log_row({"step": step, "loss": 0.5})
        logger.log_images("samples", torch.rand(2, 1, 8, 8), rows[-1])
        logger.close()
    assert [json.loads(line)["step"] for line in (tmp_path / "rows.jsonl").read_text().splitlines()] == [1, 2, 3]
    with pytest.raises(ConfigError, match="plain file name"):
        generated["logger"][1](filename="../escape.jsonl")


def test_generated_preset_trains_through_the_registry_as_an_installed_plugin(tmp_path, plugin_installer):
    import asvae_kit
    from asvae_kit.plugin_manager import get_registry

    source = render_plugin("asvae-kit-presetcheck", "all")["asvae_kit_presetcheck/__init__.py"]
    plugin_installer("asvae_kit_presetcheck", source)
    record = next(r for r in get_registry().plugins if r.name == "asvae_kit_presetcheck")
    assert record.components == {k: [f"presetcheck-{k}"] for k in KINDS}
    assert asvae_kit.describe("presetcheck-encoder")["config"] == {"hidden": 128}
    trainer = asvae_kit.build("presetcheck-preset", steps=2, batch_size=8)
    assert trainer.config["encoder"]["name"] == "presetcheck-encoder" and trainer.config["data"]["name"] == "presetcheck-dataset"
    trainer.fit(run_dir=tmp_path / "run", progress=False)
    assert trainer.step == 2 and all(math.isfinite(v) for v in trainer.history[-1].values())
    assert json.loads((tmp_path / "run" / "rows.jsonl").read_text().splitlines()[-1])["step"] == 2
    assert "presetcheck_active_units" in trainer.evaluate(["presetcheck-metric"], split="val")


# -- the guide ------------------------------------------------------------------------------------


def test_every_hookspec_is_in_the_guide_with_its_signature():
    guide = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    specs = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "asvae_kit_spec")]
    assert sorted(specs) == sorted(hookspecs.HOOK_KINDS)
    for name in specs:
        signature = f"{name}({', '.join(inspect.signature(getattr(hookspecs, name)).parameters)})"
        assert f"def {signature}" in guide, f"docs/plugins.md lacks the hook {signature}"
    assert 'register(name, factory, *, description="", aliases=())' in guide
    for words in ("ASVAE_KIT_LOAD_PLUGINS", "ASVAE_KIT_STRICT_PLUGINS", "asvae-kit plugins", "asvae-kit new-plugin", "[project.entry-points.asvae_kit]"):
        assert words in guide, words
    assert "(docs/plugins.md)" in (REPO / "README.md").read_text(encoding="utf-8")


def test_the_guide_names_every_clause_of_the_conformance_suite():
    from asvae_kit.testing import CLAUSES

    guide = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    contracts = guide.split("## 4. The contracts, kind by kind", 1)[1].split("\n## 5.", 1)[0]
    missing = [clause for clause in CLAUSES if f"[{clause}]" not in contracts]
    assert not missing, f"docs/plugins.md §4 does not describe the clauses {missing}"


def _guide_examples() -> dict[str, dict[str, Any]]:
    """Each Python block of the guide's §3 run as its own module: {kind: {name: factory}}."""
    guide = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    section = guide.split("## 3. The hooks", 1)[1].split("\n## 4.", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```python\n")[1:]]
    assert len(blocks) == len(hookspecs.HOOK_KINDS)
    found: dict[str, dict[str, Any]] = {}
    for i, block in enumerate(blocks):
        namespace: dict[str, Any] = {"__name__": f"guide_example_{i}"}
        exec(compile(block, f"docs/plugins.md example {i}", "exec"), namespace)
        for hook, kind in hookspecs.HOOK_KINDS.items():
            if hook in namespace:
                assert hasattr(namespace[hook], "asvae_kit_impl"), f"{hook} lacks @asvae_kit.hookimpl"
                namespace[hook](register=lambda name, factory, *, description="", aliases=(), _kind=kind: found.setdefault(_kind, {}).__setitem__(name, factory))
    return found


def test_the_guides_hook_examples_work(capsys):
    import asvae_kit
    from asvae_kit.divergence import check_divergence
    from asvae_kit.joint_batch import JointBatch
    from asvae_kit.registry import read_options

    examples = _guide_examples()
    assert sorted(examples) == sorted(KINDS)
    torch.manual_seed(0)
    shape, latent = (1, 8, 8), 4
    encoder = examples["encoder"]["tiny"](data_shape=shape, latent_dim=latent)
    decoder = examples["decoder"]["tiny-gaussian"](data_shape=shape, latent_dim=latent)
    divergence = examples["divergence"]["smoothed-ali"]()
    critic = examples["discriminator"]["tiny-critic"](data_shape=shape, latent_dim=latent, num_heads=check_divergence(divergence, "smoothed-ali"))
    batch = JointBatch(torch.rand(5, *shape), encoder, decoder, latent)
    losses = [divergence.discriminator_loss(critic, batch), divergence.generator_loss(critic, batch)]
    assert all(_finite(loss) for loss, _ in losses) and "skl" in losses[1][1]
    assert decoder(torch.randn(5, latent)).log_prob(torch.ones(5, *shape)).shape == (5,)
    data = examples["dataset"]["stripes"]()
    assert data.data_shape == shape and set(data.labels.tolist()) == {0, 1}
    assert examples["preset"]["tiny-ali"]()["divergence"] == "ali"
    trainer = asvae_kit.build(examples["preset"]["tiny-ali"](), steps=1, batch_size=8, loggers=[])
    trainer.fit(progress=False)
    with torch.no_grad():
        for name, fn in examples["metric"].items():
            assert all(math.isfinite(v) for v in fn(trainer, data.images[:16]).values()), name
    assert read_options(examples["metric"]["critic-gap"], "metric").weights == "raw"
    logger = examples["logger"]["print"](every=2)
    logger.start(Path("run"), {}, 0, "id")
    for step in (1, 2, 3):
        logger.log_row({"step": step, "loss": 1.0})
    logger.close()
    assert capsys.readouterr().err.splitlines() == ["run id in run, from step 0", "step=2, loss=1", "3 rows"]


# -- the generated package, installed -----------------------------------------------------------


@pytest.mark.slow
def test_a_generated_package_installs_is_listed_and_passes_its_own_tests(tmp_path):
    """``new-plugin`` output, pip-installed into a fresh virtual environment: ``asvae-kit plugins`` and
    ``list`` show it, and ``pytest NAME`` (the conformance suite over its eight components) passes."""
    made = subprocess.run(
        [sys.executable, "-m", "asvae_kit", "new-plugin", "asvae-kit-freshplugin", "--kind", "all", "--dir", str(tmp_path)],
        capture_output=True, text=True,
    )
    assert made.returncode == 0, made.stderr
    # a fresh virtual environment that sees this one's packages (asvae-kit, torch, pytest) through a
    # .pth line, so that nothing is downloaded, and into which the plugin is pip-installed as a user would
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    python = str(venv / "bin" / "python")
    site_dir = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    import sysconfig

    parent = sysconfig.get_paths()["purelib"]
    Path(site_dir, "_asvae_parent.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
           "-e", str(tmp_path / "asvae-kit-freshplugin")]  # this pip, acting on the new environment
    installed = subprocess.run(pip, capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr[-2000:]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    for name in ("ASVAE_KIT_LOAD_PLUGINS", "PYTHONPATH", "VIRTUAL_ENV"):
        env.pop(name, None)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([python, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)

    plugins = run("-m", "asvae_kit", "plugins", "--json")
    assert plugins.returncode == 0, plugins.stderr
    record = {r["name"]: r for r in json.loads(plugins.stdout)}["freshplugin"]
    assert record["status"] == "ok" and record["distribution"] == "asvae-kit-freshplugin" and record["version"] == "0.1.0"
    assert record["components"] == {k: [f"freshplugin-{k}"] for k in KINDS}
    listing = run("-m", "asvae_kit", "list")
    assert listing.returncode == 0 and listing.stdout.count("[asvae-kit-freshplugin]") == len(KINDS), listing.stdout
    tests = run("-m", "pytest", "-v", "-p", "no:cacheprovider", "asvae-kit-freshplugin")
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    for test in (
        "test_outputs[encoder-freshplugin-encoder]", "test_densities_finite[decoder-freshplugin-decoder]",
        "test_rows_independent[discriminator-freshplugin-discriminator]", "test_divergence_trains[divergence-freshplugin-divergence]",
        "test_dataset_images[dataset-freshplugin-dataset]", "test_metric_values[metric-freshplugin-metric]",
        "test_logger_lifecycle[logger-freshplugin-logger]", "test_preset[preset-freshplugin-preset]",
    ):
        assert f"{test} PASSED" in tests.stdout, f"{test} did not pass:\n{tests.stdout[-3000:]}"
