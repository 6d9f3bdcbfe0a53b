"""bench/study.py in its smoke form (the four divergences on the bundled digits, a few steps)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

STUDY = Path(__file__).resolve().parents[1] / "bench" / "study.py"


def test_study_smoke_writes_its_table_and_keeps_the_prose(tmp_path):
    doc = tmp_path / "study.md"
    doc.write_text("# Study\n\nProse before.\n\n<!-- study:smoke -->\nold table\n<!-- /study:smoke -->\n\nProse after.\n")
    out = tmp_path / "runs"
    args = [sys.executable, str(STUDY), "--smoke", "--steps", "6", "--out", str(out), "--doc", str(doc)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = doc.read_text()
    assert text.startswith("# Study\n\nProse before.") and text.rstrip().endswith("Prose after.") and "old table" not in text
    for model in ("vae", "avb", "ali", "asvae"):
        assert f"| {model} | 1 |" in text
    assert "held-out" in text and "n/a" in text  # skl is not defined for vae and avb
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["fd"] > 0 and 0 <= r["probe_acc"] <= 1 for r in rows)
    assert all((Path(r["run_dir"]) / "model.safetensors").is_file() for r in rows)
    # a second call finds every run done and only rewrites the table
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "4 already done" in proc.stderr
