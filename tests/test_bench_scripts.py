"""The benchmark scripts in ``bench/`` still run (tiny, on CPU), so a GPU session finds them working.

Their figures mean nothing here; the GPU-only parts (CUDA-graph variants, GPU time, kernel
counts) are covered by ``bench/gpu.sh`` on a GPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each runs a script in a fresh interpreter

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run(tmp_path: Path, script: str, *args: str) -> dict:
    out = tmp_path / "out.json"
    result = subprocess.run([sys.executable, str(BENCH / script), *args, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def test_step_compare_times_the_library_beside_the_handwritten_loop(tmp_path):
    report = _run(tmp_path, "step_compare.py", "--device", "cpu", "--steps", "2", "--repeats", "1", "--batch", "4")
    assert len(report["library"]) == len(report["handwritten"]) == 1 and "library-graphs" not in report  # CPU: no graphs
    assert report["summary"]["library_over_handwritten"] > 0


def test_kernel_report_gives_wall_time_and_the_memory_floor(tmp_path):
    report = _run(tmp_path, "kernel_report.py", "--device", "cpu", "--shapes", "96x32", "--repeats", "2")
    assert [row["impl"] for row in report["rows"]] == ["torch", "eager"]  # triton is GPU-only here
    assert all(row["wall_ms"] > 0 and row["floor_ms"] > 0 for row in report["rows"])
    assert report["copy_bandwidth_gb_s"] > 0 and "torch_N96_D32_wall_speedup_over_eager" in report["summary"]


def test_allreduce_share_times_the_two_process_step(tmp_path):
    import os

    out = tmp_path / "share.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(BENCH / "allreduce_share.py"),
           "--steps", "2", "--warmup", "1", "--batch", "4", "--size", "8", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["processes"] == 2 and report["steps"] == 2 and 0 < report["allreduce_share_median"] < 1
