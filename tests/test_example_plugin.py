"""The example outside package, installed with pip as a user would, is found through its entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from plugin_helpers import install_plugin

pytestmark = pytest.mark.slow  # pip installs the package, then runs the command line in fresh interpreters

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "asvae-kit-example-plugin"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", "--target", str(target), str(EXAMPLE)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"could not pip-install the example plugin here: {result.stderr.strip()[-300:]}")
    return target


def _run(site, *args, extra_path=()):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), *map(str, extra_path)]))
    env.pop("ASVAE_KIT_LOAD_PLUGINS", None)
    return subprocess.run([sys.executable, "-m", "asvae_kit", *args], capture_output=True, text=True, env=env)


def test_installed_package_is_listed_described_and_built(site):
    out = _run(site, "list", "encoder")
    assert out.returncode == 0, out.stderr
    assert "wide-mlp" in out.stdout and "asvae-kit-example-plugin" in out.stdout
    info = json.loads(_run(site, "describe", "wide-mlp", "--json").stdout)
    assert info["distribution"] == "asvae-kit-example-plugin" and info["version"] == "0.2.0"
    assert info["config"] == {"width": 128, "depth": 2}
    code = (
        "import asvae_kit, torch; e = asvae_kit.build_component('encoder', 'wide-mlp', data_shape=(1, 8, 8), latent_dim=3, depth=1);"
        "print(tuple(e(torch.rand(2, 1, 8, 8)).mean.shape))"
    )
    env = dict(os.environ, PYTHONPATH=str(site))
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.strip() == "(2, 3)"


def test_a_second_package_whose_import_raises_leaves_every_command_working(site, tmp_path):
    broken = tmp_path / "broken"
    install_plugin(broken, dist="broken-pkg", module="broken_mod", source="raise RuntimeError('broken on purpose')\n", entry_name="broken", version="1.0")
    plugins = _run(site, "plugins", "--json", extra_path=[broken])
    assert plugins.returncode == 0, plugins.stderr
    records = {r["name"]: r for r in json.loads(plugins.stdout)}
    assert records["broken"]["status"] == "failed" and "broken on purpose" in records["broken"]["reason"]
    assert records["broken"]["distribution"] == "broken-pkg"
    assert records["example"]["status"] == "ok" and records["example"]["components"] == {"encoder": ["wide-mlp"], "preset": ["wide-asvae"]}
    listing = _run(site, "list", "encoder", extra_path=[broken])
    assert listing.returncode == 0 and "wide-mlp" in listing.stdout and "broken" in listing.stderr
    assert _run(site, "describe", "wide-asvae", extra_path=[broken]).returncode == 0


def test_the_installed_example_passes_its_own_conformance_tests(site, tmp_path):
    """CI runs the example's own tests (the four-line ConformanceSuite file) against the installed
    package, in a fresh interpreter, as its author would with ``pytest``."""
    env = dict(os.environ, PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1")
    env.pop("ASVAE_KIT_LOAD_PLUGINS", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    for test in ("test_outputs[encoder-wide-mlp]", "test_state_dict_round_trip[encoder-wide-mlp]", "test_preset[preset-wide-asvae]"):
        assert f"{test} PASSED" in result.stdout, f"{test} did not pass:\n{result.stdout[-3000:]}"
