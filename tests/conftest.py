"""Test-wide setup and shared fixtures.

``TRITON_INTERPRET=1`` must be set before any ``@triton.jit`` runs, so the Triton kernels execute
on CPU tensors in the interpreter (that is how CI checks them); on a CUDA machine it is left
unset, so the same tests run the compiled kernels on the GPU.  The project classifier's cache
goes to a temporary folder, never to the user's ``~/.cache``.
"""

import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from asvae_kit.plugin_manager import reset_registry  # noqa: E402

@pytest.fixture(autouse=True, scope="session")
def _classifier_cache(tmp_path_factory):
    """Keep the project classifiers the tests train out of the user's cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ASVAE_KIT_CACHE", str(tmp_path_factory.mktemp("asvae_kit_cache")))
        yield


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The linear-Gaussian plugin (tests/linear_gaussian.py) installed as an entry point of a
    fake distribution on sys.path, and the registry reloaded to find it."""
    from linear_gaussian import DISTRIBUTION, ENTRY_POINT, PLUGIN_MODULE, PLUGIN_SOURCE
    from plugin_helpers import install_plugin

    root = tmp_path_factory.mktemp("linear_gaussian_plugin")
    install_plugin(root, dist=DISTRIBUTION, module=PLUGIN_MODULE, source=PLUGIN_SOURCE, entry_name=ENTRY_POINT, version="0.1")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        mp.delenv("ASVAE_KIT_LOAD_PLUGINS", raising=False)
        reset_registry()
        try:
            yield root
        finally:
            reset_registry()
            sys.modules.pop(PLUGIN_MODULE, None)
    reset_registry()


@pytest.fixture
def plugin_installer(tmp_path, monkeypatch):
    """``install(module, source)``: make ``source`` an installed entry-point plugin (its own fake
    distribution on sys.path), reload the registry, and return the imported module."""
    import importlib

    from plugin_helpers import install_plugin

    site = tmp_path / "site-packages"
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("ASVAE_KIT_LOAD_PLUGINS", raising=False)
    installed: list[str] = []

    def install(module: str, source: str):
        install_plugin(site, dist=module.replace("_", "-"), module=module, source=source)
        installed.append(module)
        importlib.invalidate_caches()
        reset_registry()
        asvae_kit_registry = __import__("asvae_kit.plugin_manager", fromlist=["get_registry"]).get_registry()
        assert any(r.name == module and r.status == "ok" for r in asvae_kit_registry.plugins), [r.as_dict() for r in asvae_kit_registry.plugins]
        return sys.modules[module]

    yield install
    for module in installed:
        sys.modules.pop(module, None)
    reset_registry()


@pytest.fixture
def float64():
    """Run the test in float64 (parameters, data and every head statistic)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)
