"""Test-wide setup, shared fixtures, and the fast lane's module check.

``TRITON_INTERPRET=1`` must be set before any ``@triton.jit`` runs, so the Triton kernels execute
on CPU tensors in the interpreter (that is how CI checks them); on a CUDA machine it is left
unset, so the same tests run the compiled kernels on the GPU.  The project classifier's cache
goes to a temporary folder, never to the user's ``~/.cache``.

**Every module runs in the fast lane.**  While the tests that are not marked ``slow`` run, a
trace function (``sys.settrace``, 'call' events only) notes which modules of ``asvae_kit/``,
``plugins/`` and ``kernels/`` have had one of their functions called; it switches itself off
once all have, and is off during slow tests.  A session that ran the whole fast lane (``pytest``
or ``pytest -m "not slow"`` on ``tests/``, nothing failed) fails if a module was never called,
naming it.  A module without functions, or of declarations only (``MODULES_OF_DECLARATIONS``),
counts once imported; ``MODULES_RUN_ELSEWHERE`` names the fast test that runs a module that only
runs in a fresh interpreter.  The trace costs the fast tests about 15% more CPU time while it is
on (until the last module is called).  Off when another tracer (coverage, a debugger) is active.
"""

import inspect
import os
import sys
from pathlib import Path

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


# --------------------------------------------------------------------------------------------
# The fast lane's module check (module docstring)

#: Modules that only run in a fresh interpreter, and the fast test that runs them there.
MODULES_RUN_ELSEWHERE = {
    "asvae_kit.__main__": "tests/test_cli.py::test_console_script_and_module_entry",
    "asvae_kit.compare.__main__": "tests/test_compare.py::test_python_dash_m_runs_the_command",
}
#: Modules of declarations that nothing calls: they count once imported.
MODULES_OF_DECLARATIONS = {
    "asvae_kit.hookspecs",  # the hook specifications: pluggy reads their signatures
}
_COMPREHENSIONS = {"<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>"}


class _ModuleCheck:
    def __init__(self) -> None:
        import importlib.util

        self.modules: dict[str, str] = {}  # source file -> module name
        for package in ("asvae_kit", "asvae_kit.plugins", "asvae_kit.kernels"):
            for folder in importlib.util.find_spec(package).submodule_search_locations:
                for path in sorted(Path(folder).rglob("*.py")):
                    parts = path.relative_to(folder).with_suffix("").parts
                    parts = parts[:-1] if parts[-1] == "__init__" else parts
                    self.modules[str(path)] = ".".join((package, *parts))
        self.unseen = {path: module for path, module in self.modules.items()  # modules with functions
                       if module not in MODULES_RUN_ELSEWHERE and module not in MODULES_OF_DECLARATIONS
                       and _defines_functions(compile(Path(path).read_text(), path, "exec"))}
        self.complete_lane = True
        self.passed: set[str] = set()
        self.missing: list[str] = []

    def trace(self, frame, event, arg):
        code = frame.f_code
        if code.co_filename in self.unseen and code.co_flags & inspect.CO_OPTIMIZED and code.co_name not in _COMPREHENSIONS:
            self.unseen.pop(code.co_filename, None)
            if not self.unseen:
                self.switch(False)
        return None

    def switch(self, on: bool) -> None:
        tracer = self.trace if on and self.unseen else None
        sys.settrace(tracer)
        import threading

        threading.settrace(tracer)

    def never_called(self) -> list[str]:
        missing = [f"{module} (its test {test} did not run and pass)"
                   for module, test in MODULES_RUN_ELSEWHERE.items() if test not in self.passed]
        missing += sorted(self.unseen.values())  # none of their functions ran
        return missing + sorted(module for module in self.modules.values()  # the others: never imported
                                if module not in MODULES_RUN_ELSEWHERE and module not in self.unseen.values()
                                and module not in sys.modules)


def _defines_functions(code) -> bool:
    return any(inspect.iscode(c) and ((c.co_flags & inspect.CO_OPTIMIZED and c.co_name not in _COMPREHENSIONS)
                                      or _defines_functions(c)) for c in code.co_consts)


_module_check: _ModuleCheck | None = None


def pytest_configure(config):
    global _module_check
    if sys.gettrace() is None:  # not under coverage or a debugger
        _module_check = _ModuleCheck()


def pytest_collection_finish(session):
    if _module_check is None:
        return
    tests, cwd = Path(str(session.config.rootpath)) / "tests", session.config.invocation_params.dir
    whole_folder = all((cwd / a).resolve() == tests for a in session.config.args)
    markexpr = session.config.getoption("markexpr") or ""
    _module_check.complete_lane &= (whole_folder and markexpr in ("", "not slow")
                                    and not session.config.getoption("keyword")
                                    and not session.config.getoption("deselect"))


def pytest_deselected(items):
    if _module_check is not None and any(item.get_closest_marker("slow") is None for item in items):
        _module_check.complete_lane = False  # e.g. --lf: the fast lane did not run whole


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if _module_check is not None:  # traced: the fast tests of a whole fast lane
        _module_check.switch(_module_check.complete_lane and item.get_closest_marker("slow") is None)


def pytest_runtest_logreport(report):
    if _module_check is not None and report.when == "call" and report.passed:
        _module_check.passed.add(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if _module_check is None:
        return
    _module_check.switch(False)
    if _module_check.complete_lane and exitstatus == pytest.ExitCode.OK:
        _module_check.missing = _module_check.never_called()
        if _module_check.missing:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if _module_check is not None and _module_check.missing:
        terminalreporter.section("modules the fast lane never calls", red=True)
        terminalreporter.line("No test that is not marked slow called a function of these modules (tests/conftest.py):")
        for module in _module_check.missing:
            terminalreporter.line(f"  {module}")
