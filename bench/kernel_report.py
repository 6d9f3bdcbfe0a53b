"""What ``fused_disc_head`` forward+backward costs, beyond pytest-benchmark's wall-clock tables.

For each implementation and shape (K = 2 heads, S = 3 equal segments, float32) it reports:

* ``wall_ms``: one eager call (forward, then ``torch.autograd.grad`` of h, weight and bias),
  synchronised, median over ``--repeats`` calls: what a training step pays for it;
* ``gpu_ms`` (CUDA): the same work recorded in a CUDA graph and replayed, timed with CUDA events:
  the kernels' own time, with no host cost;
* ``kernels`` (CUDA): device kernels per call, counted with ``torch.profiler``;
* ``floor_ms``: the bytes the call must move (h read by the forward and the backward, grad_h
  written, the small tensors) over the copy bandwidth measured here (``dst.copy_(src)``);
  ``floor_over_gpu`` = floor_ms / gpu_ms is the fraction of the memory floor reached.

Implementations: ``triton`` (``impl="triton"``, CUDA only), ``torch`` (``impl="torch"``, the op's
PyTorch path) and ``eager`` (``fused_disc_head_reference`` with autograd, the baseline).  Prints
one JSON document and a short summary of ratios::

    python bench/kernel_report.py [--shapes 4096x1024,65536x1024] [--impls triton,torch,eager] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Callable

import torch

from asvae_kit.kernels import fused_disc_head, fused_disc_head_reference

K, S = 2, 3


def inputs(n: int, d: int, device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor, list[int]]:
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(n, d, generator=gen).to(device).requires_grad_()
    w = (torch.randn(K, d, generator=gen) / d**0.5).to(device).requires_grad_()
    b = torch.randn(K, generator=gen).to(device).requires_grad_()
    grad_out = torch.randn(S, K, 3, generator=gen).to(device)
    return [h, w, b], grad_out, [n // 3, n // 3, n - 2 * (n // 3)]


def call(impl: str, tensors: list[torch.Tensor], grad_out: torch.Tensor, sizes: list[int]) -> Callable[[], Any]:
    """One forward+backward of ``impl`` as a function of nothing."""
    h, w, b = tensors
    if impl == "eager":
        forward = lambda: fused_disc_head_reference(h, w, b, sizes)  # noqa: E731
    else:
        forward = lambda: fused_disc_head(h, w, b, sizes, impl=impl)  # noqa: E731
    return lambda: torch.autograd.grad(forward(), (h, w, b), grad_out)


def wall_ms(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def gpu_ms(fn: Callable[[], Any], replays: int) -> float:
    """Per-call time of ``fn``'s kernels, from CUDA-graph replays timed with CUDA events."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / replays


def kernels_per_call(fn: Callable[[], Any], calls: int = 5) -> float:
    """Device kernels launched per call (``torch.profiler``; CUDA only)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA and "memcpy" not in e.name.lower() and "memset" not in e.name.lower()]
    return len(kernels) / calls


def copy_bandwidth(device: torch.device, sync: Callable[[], None], mib: int = 256) -> float:
    """Bytes per second that ``dst.copy_(src)`` moves (read plus write), best of a few."""
    src = torch.empty(mib * 2**20 // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        sync()
        start = time.perf_counter()
        dst.copy_(src)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * src.element_size() / best


def bytes_moved(n: int, d: int, element: int = 4) -> int:
    """The least a forward+backward must move: h read twice (forward, and the backward that
    recomputes the logits), grad_h written once, weight read twice and its gradient written, the
    rest negligible."""
    return element * (3 * n * d + 3 * K * d + 4 * K + 2 * S * K * 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", default="256x1024,4096x1024,65536x1024", help="comma-separated NxD")
    parser.add_argument("--impls", default="triton,torch,eager")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", help="write the JSON here too")
    args = parser.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    impls = [i for i in args.impls.split(",") if on_gpu or i != "triton"]  # Triton's interpreter says nothing about speed
    bandwidth = copy_bandwidth(device, sync)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if on_gpu else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "copy_bandwidth_gb_s": round(bandwidth / 1e9, 1), "rows": [], "summary": {},
    }
    for shape in args.shapes.split(","):
        n, d = (int(v) for v in shape.lower().split("x"))
        tensors, grad_out, sizes = inputs(n, d, device)
        floor = bytes_moved(n, d) / bandwidth * 1e3
        for impl in impls:
            fn = call(impl, tensors, grad_out, sizes)
            row: dict[str, Any] = {"impl": impl, "N": n, "D": d, "wall_ms": round(wall_ms(fn, args.repeats, sync), 4), "floor_ms": round(floor, 4)}
            if on_gpu:
                row["gpu_ms"] = round(gpu_ms(fn, args.repeats), 4)
                row["kernels"] = kernels_per_call(fn)
                row["floor_over_gpu"] = round(floor / row["gpu_ms"], 3)
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
    rows = {(r["impl"], r["N"], r["D"]): r for r in report["rows"]}
    for (impl, n, d), row in rows.items():
        base = rows.get(("eager", n, d))
        if impl != "eager" and base is not None:
            key = f"{impl}_N{n}_D{d}"
            report["summary"][f"{key}_wall_speedup_over_eager"] = round(base["wall_ms"] / row["wall_ms"], 2)
            if on_gpu:
                report["summary"][f"{key}_gpu_speedup_over_eager"] = round(base["gpu_ms"] / row["gpu_ms"], 2)
                report["summary"][f"{key}_kernels_vs_eager"] = f"{row['kernels']:g} vs {base['kernels']:g}"
                report["summary"][f"{key}_floor_over_gpu"] = row["floor_over_gpu"]
    print(json.dumps(report["summary"], indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
