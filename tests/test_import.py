"""`import asvae_kit` stays light: no Triton, no scikit-learn, no plugin module."""

from __future__ import annotations

import subprocess
import sys


def test_import_time_does_not_load_heavy_or_plugin_modules():
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", "import asvae_kit"], capture_output=True, text=True, check=True)
    modules = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "asvae_kit" in modules
    for banned in ("triton", "sklearn", "asvae_kit.plugins", "asvae_kit.kernels", "torch"):
        hits = [m for m in modules if m == banned or m.startswith(banned + ".")]
        assert not hits, f"`import asvae_kit` imported {hits}"


def test_kernels_package_does_not_import_triton():
    code = "import sys, asvae_kit.kernels; assert 'triton' not in sys.modules, sorted(m for m in sys.modules if 'triton' in m)"
    subprocess.run([sys.executable, "-c", code], check=True)
