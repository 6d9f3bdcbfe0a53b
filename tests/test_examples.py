"""The runnable examples in ``examples/``, in their smoke form, as a user would run them."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(EXAMPLES / script), "--smoke", "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_compare_divergences(tmp_path):
    result = _run("compare_divergences.py", tmp_path)
    table = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert list(table) == ["mlp-vae", "mlp-avb", "mlp-ali", "mlp-asvae"]
    assert "skl" in table["mlp-asvae"] and "skl" in table["mlp-vae"]["notes"]
    assert all(preset in result.stdout for preset in table)


@pytest.mark.slow
def test_train_evaluate_sample(tmp_path):
    result = _run("train_evaluate_sample.py", tmp_path)
    out = tmp_path / "out"
    for name in ("example-samples.png", "example-interpolations.png", "example-reconstructions.png", "config.json", "metrics.csv"):
        assert (out / name).is_file(), name
    assert "recon_mse" in result.stdout and "Trainer(divergence='asvae'" in result.stdout


def test_the_example_plugin_says_what_it_holds():
    meta = tomllib.loads((EXAMPLES / "asvae-kit-example-plugin" / "pyproject.toml").read_text())
    source = (EXAMPLES / "asvae-kit-example-plugin" / "asvae_example_plugin" / "__init__.py").read_text()
    description = meta["project"]["description"]
    assert "Gaussian" in description and "GaussianPosterior" in source and "Laplace" not in description
