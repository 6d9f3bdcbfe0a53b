"""Benchmarks of ``fused_disc_head`` (docs/design.md §4): ``pytest bench --benchmark-only``.

Implementations, each forward (``fwd``) and forward+backward (``fwd+bwd``, gradients of h, weight
and bias for a random ``grad_out``), for N in {256, 4096, 65536}, D in {256, 1024}, K = 2, S = 3
(three equal segments), float32 inputs; grouped by shape and mode:

* ``triton``  -- ``fused_disc_head(..., impl="triton")``: the fused Triton kernels (GPU only; on a
  machine without a CUDA device these cases skip, since the CPU interpreter says nothing about
  speed);
* ``eager``   -- ``fused_disc_head_reference``, plain PyTorch with autograd (the baseline);
* ``compile`` -- ``torch.compile(fused_disc_head_reference)`` (static shapes; Inductor);
* ``op-torch`` -- ``fused_disc_head(..., impl="torch")``: the registered op on its PyTorch path
  (the reference forward and the hand-written backward), what CPU users run.

Timing: every case is first run a few times outside the measurement (Triton and Inductor compile
there), then timed with ``benchmark.pedantic``.  On a GPU each timed round ends with
``torch.cuda.synchronize()``, so a round is the wall-clock time of the launched work, and
``triton.testing.do_bench`` adds the median GPU time (``extra_info["do_bench_ms"]``).

Call overhead (``test_call_overhead``, group ``fused_disc_head call overhead``): one eager
forward+backward on small CPU tensors (N=256, D=64, K=3, S=3, float32, ``impl="torch"``), where
the arithmetic is cheap and the host-side cost of a call shows:

* ``public``    -- ``fused_disc_head`` + ``torch.autograd.grad``: validation once, the eager
  ``torch.autograd.Function``;
* ``reference`` -- ``fused_disc_head_reference`` (no grad) then
  ``fused_disc_head_reference_backward`` called directly: the same arithmetic with no autograd,
  validation or dispatch (the floor);
* ``op``        -- ``torch.ops.asvae_kit.fused_disc_head`` + ``torch.autograd.grad``: the
  registered op, what compiled graphs call (it validates in the forward and the backward op).

``public - reference`` is the overhead of a call.  These use pytest-benchmark's own calibration
(``--benchmark-min-rounds`` and ``--benchmark-max-time`` apply).
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch._dynamo

from asvae_kit.kernels import (
    fused_disc_head,
    fused_disc_head_reference,
    fused_disc_head_reference_backward,
)

# One compiled function serves every shape and mode: allow the recompiles (static shapes) and make
# hitting the limit an error rather than a silent fall back to eager.
for _name, _value in (("recompile_limit", 64), ("cache_size_limit", 64),
                      ("fail_on_recompile_limit_hit", True), ("fail_on_cache_limit_hit", True)):
    if hasattr(torch._dynamo.config, _name):  # the names changed across torch versions
        setattr(torch._dynamo.config, _name, _value)

HAS_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_GPU else "cpu")
K, S = 2, 3
SHAPES = [(n, d) for n in (256, 4096, 65536) for d in (256, 1024)]
MODES = ["fwd", "fwd+bwd"]
IMPLS = ["triton", "eager", "compile", "op-torch"]

pytestmark = pytest.mark.filterwarnings(  # emitted by torch's own imports (torch._dynamo)
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


@functools.cache
def _compiled_reference():
    return torch.compile(fused_disc_head_reference, dynamic=False)


def _triton_skip_reason() -> str | None:
    if not HAS_GPU:
        return ("no CUDA GPU on this machine: the Triton kernels are only benchmarked on a GPU "
                "(under TRITON_INTERPRET=1 they run in a CPU interpreter, which says nothing about speed)")
    try:
        import triton  # noqa: F401
    except Exception as exc:
        return f"Triton is not importable ({type(exc).__name__}: {exc})"
    return None


def _impl_fn(impl):
    if impl == "triton":
        return lambda h, w, b, sizes: fused_disc_head(h, w, b, sizes, impl="triton")
    if impl == "op-torch":
        return lambda h, w, b, sizes: fused_disc_head(h, w, b, sizes, impl="torch")
    if impl == "compile":
        return _compiled_reference()
    return fused_disc_head_reference


def _inputs(N, D, requires_grad):
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(N, D, generator=gen).to(DEVICE)
    w = (torch.randn(K, D, generator=gen) / D**0.5).to(DEVICE)
    b = torch.randn(K, generator=gen).to(DEVICE)
    g = torch.randn(S, K, 3, generator=gen).to(DEVICE)
    sizes = [N // 3, N // 3, N - 2 * (N // 3)]
    return [t.requires_grad_(requires_grad) for t in (h, w, b)], g, sizes


def _rounds(N, D):
    if HAS_GPU:
        return 50
    return max(5, min(50, int(1e8 // (N * D))))  # keep the CPU run short


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("N, D", SHAPES, ids=[f"N{n}-D{d}" for n, d in SHAPES])
def test_fused_disc_head(benchmark, N, D, mode, impl):
    if impl == "triton" and (reason := _triton_skip_reason()):
        pytest.skip(reason)
    benchmark.group = f"fused_disc_head N={N} D={D} K={K} S={S} {mode}"
    benchmark.extra_info.update(N=N, D=D, K=K, S=S, mode=mode, impl=impl, dtype="float32",
                                device=str(DEVICE))
    (h, w, b), g, sizes = _inputs(N, D, requires_grad=(mode == "fwd+bwd"))
    op = _impl_fn(impl)

    if mode == "fwd":
        def step():
            with torch.no_grad():
                return op(h, w, b, sizes)
    else:
        def step():
            out = op(h, w, b, sizes)
            return torch.autograd.grad(out, (h, w, b), g)

    # Warm-up outside the measurement: compilation (Triton, Inductor) happens here.  The first
    # result is checked against the eager reference so a broken path is never timed.
    with torch.no_grad():
        got, want = op(h, w, b, sizes), fused_disc_head_reference(h, w, b, sizes)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for _ in range(3):
        step()

    if HAS_GPU:
        torch.cuda.synchronize()

        def timed():
            step()
            torch.cuda.synchronize()

        benchmark.pedantic(timed, rounds=_rounds(N, D), iterations=1, warmup_rounds=5)
        import triton.testing

        benchmark.extra_info["do_bench_ms"] = triton.testing.do_bench(step, warmup=25, rep=100)
    else:
        benchmark.pedantic(step, rounds=_rounds(N, D), iterations=1, warmup_rounds=1)


OVERHEAD_N, OVERHEAD_D, OVERHEAD_K = 256, 64, 3
OVERHEAD_CALLS = ["public", "reference", "op"]


@pytest.mark.parametrize("call", OVERHEAD_CALLS)
def test_call_overhead(benchmark, call):
    N, D, Kh = OVERHEAD_N, OVERHEAD_D, OVERHEAD_K
    benchmark.group = f"fused_disc_head call overhead N={N} D={D} K={Kh} S={S} fwd+bwd cpu"
    benchmark.extra_info.update(N=N, D=D, K=Kh, S=S, mode="fwd+bwd", call=call, impl="torch",
                                dtype="float32", device="cpu", torch_threads=torch.get_num_threads())
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(N, D, generator=gen).requires_grad_()
    w = (torch.randn(Kh, D, generator=gen) / D**0.5).requires_grad_()
    b = torch.randn(Kh, generator=gen).requires_grad_()
    g = torch.randn(S, Kh, 3, generator=gen)
    sizes = [N // 3, N // 3, N - 2 * (N // 3)]

    if call == "public":
        def step():
            out = fused_disc_head(h, w, b, sizes, impl="torch")
            return torch.autograd.grad(out, (h, w, b), g)
    elif call == "op":
        def step():
            out = torch.ops.asvae_kit.fused_disc_head(h, w, b, sizes, "torch")
            return torch.autograd.grad(out, (h, w, b), g)
    else:
        def step():
            with torch.no_grad():
                fused_disc_head_reference(h, w, b, sizes)
            return fused_disc_head_reference_backward(g, h, w, b, sizes)

    # Every route computes the same gradients (a broken path is never timed).
    want = fused_disc_head_reference_backward(g, h, w, b, sizes)
    for got, expected in zip(step(), want):
        torch.testing.assert_close(got, expected)
    benchmark(step)
