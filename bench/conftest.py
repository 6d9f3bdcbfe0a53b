"""Benchmark setup: machine info for pytest-benchmark's JSON and table headers.

Run with ``pytest bench --benchmark-only`` (add ``--benchmark-json=out.json`` to keep the numbers).
The Triton interpreter is deliberately *not* enabled here: on a machine without a GPU the Triton
cases skip instead of timing the interpreter.
"""

from __future__ import annotations

import os
import platform

import torch


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch_version"] = torch.__version__
    try:
        import triton

        machine_info["triton_version"] = triton.__version__
    except Exception as exc:  # not installed or broken: say so rather than fail the run
        machine_info["triton_version"] = f"unavailable ({type(exc).__name__}: {exc})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        machine_info["device"] = torch.cuda.get_device_name()
        machine_info["device_sm_count"] = props.multi_processor_count
        machine_info["device_memory_gib"] = round(props.total_memory / 2**30, 1)
        machine_info["cuda_version"] = torch.version.cuda
    else:
        machine_info["device"] = (f"CPU only, no CUDA device ({platform.processor() or platform.machine()}, "
                                  f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()})")
