"""Helpers that make real entry-point plugins for the tests.

``install_plugin`` writes a module and a ``.dist-info`` folder (METADATA + entry_points.txt) into a
directory on ``sys.path``, exactly what ``pip install`` leaves behind, so ``importlib.metadata``
discovers it through the ``asvae_kit`` entry-point group: nothing is imported by hand.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path


def install_plugin(
    site: Path,
    *,
    dist: str,
    module: str,
    source: str,
    entry_name: str | None = None,
    version: str = "0.1.0",
) -> None:
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[asvae_kit]\n{entry_name or module} = {module}\n")
    sys.modules.pop(module, None)
