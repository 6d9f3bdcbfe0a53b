"""The real data sets in ``../shared/data`` (read in place, never copied) and skip markers for
the tests that need them: without the folder those tests skip and every other test runs."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

needs_fashion = pytest.mark.skipif(not (SHARED_DATA / "fashion-mnist").is_dir(), reason="../shared/data/fashion-mnist not present")
needs_mnist = pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason="../shared/data/mnist not present")
