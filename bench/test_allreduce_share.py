"""The all-reduce's share of a data-parallel step at two processes (issue 20's yardstick):
``bench/allreduce_share.py`` under torchrun (gloo, one thread per process), its figures in the
benchmark's ``extra_info``.  No target: the share depends on the machine's interconnect; this
records it beside the step time, so a change to how gradients travel shows up.

    OMP_NUM_THREADS=1 pytest bench/test_allreduce_share.py --benchmark-only
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("allreduce_share.py")


def _run(out: Path, *args: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT), *args, "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def test_allreduce_share_of_a_two_process_step(benchmark, tmp_path):
    report = benchmark.pedantic(_run, args=(tmp_path / "share.json",), rounds=1, iterations=1)
    benchmark.extra_info.update(report)
    assert report["processes"] == 2 and report["elements_reduced_per_step"] > 0
    assert 0 < report["allreduce_share_median"] < 1
