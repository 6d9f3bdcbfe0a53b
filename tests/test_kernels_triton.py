"""The Triton kernels of ``fused_disc_head`` against a float64 reference (docs/design.md §4).

These run on CPU tensors in the Triton interpreter (``TRITON_INTERPRET=1``, set by conftest.py).

Tolerances.  Every comparison is against the float64 reference evaluated on the *same* input
values (bf16/fp16 inputs are exactly representable in float64), and has the form

    |got - ref| <= ACC_TOL * M + RTOL[dtype] * |ref| + ATOL[dtype]

* ``M`` is the error scale of fp32 accumulation: the same quantity computed from absolute values
  (``|h| @ |w|.T + |b|`` for the logits, and for the gradients ``|dl|`` plus the effect of the
  logit error on ``dl`` propagated through ``|w|`` and ``|h|``).  A summation error is a few ulps
  of the sum of the magnitudes, not of the (possibly cancelling) result.
* ``ACC_TOL = 2**-18`` (64 fp32 ulps of ``M``): fp32 accumulation, for every input dtype (the
  kernels always accumulate in fp32; products of bf16/fp16 values are exact in fp32).  Observed
  worst case over the generated cases: about 1.5 ulps.
* ``RTOL``/``ATOL``: rounding of the stored result.  The forward output is fp32 for every input
  dtype: ``RTOL = 1e-6`` (a few ulps for exp/log).  The gradients are stored in the input dtype:
  fp32 ``1e-6``; bf16 ``2**-7`` (one bf16 ulp: the Triton interpreter truncates fp32 -> bf16, the
  GPU rounds to nearest, half of that); fp16 ``2**-10`` (one ulp) plus ``ATOL = 2**-24``, the
  fp16 subnormal spacing, since per-row gradients of large segments fall below fp16's normal
  range (which is what a GradScaler is for).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import asvae_kit.kernels as K
from asvae_kit.kernels import fused_disc_head, fused_disc_head_reference

pytest.importorskip("triton", reason="the Triton kernels need triton (pip install 'asvae-kit[triton]')")
fdt = importlib.import_module("asvae_kit.kernels.fused_disc_head_triton")

pytestmark = [
    pytest.mark.skipif(not fdt.INTERPRETED and not torch.cuda.is_available(),
                       reason="needs TRITON_INTERPRET=1 (set in conftest.py) or a GPU"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]

DEVICE = "cuda" if not fdt.INTERPRETED else "cpu"

ACC_TOL = 2.0**-18
RTOL_OUT = 1e-6
RTOL_GRAD = {torch.float32: 1e-6, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10, torch.float64: 1e-12}
ATOL_GRAD = {torch.float32: 0.0, torch.bfloat16: 0.0, torch.float16: 2.0**-24, torch.float64: 0.0}
ACC_TOL_DTYPE = {torch.float64: 1e-13}  # float64 inputs accumulate in float64

KERNEL_SETTINGS = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI stays reproducible
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --------------------------------------------------------------------------------------------
# float64 reference and error scales


def reference64(h, w, b, sizes, grad_out):
    """float64 output and gradients of the pure reference (autograd through it)."""
    h64, w64, b64 = (t.detach().to("cpu", torch.float64).requires_grad_() for t in (h, w, b))
    out = fused_disc_head_reference(h64, w64, b64, sizes)
    grads = torch.autograd.grad(out, (h64, w64, b64), grad_out.to("cpu", torch.float64))
    return out.detach(), grads


def error_scales(h, w, b, sizes, grad_out):
    """``M`` of the module docstring for the output and the three gradients."""
    h64, w64, b64 = (t.detach().to("cpu", torch.float64) for t in (h, w, b))
    g = grad_out.to("cpu", torch.float64)
    a = h64.abs() @ w64.abs().t() + b64.abs()  # [N, K]: error scale of each logit
    m_out = torch.stack([chunk.mean(0) for chunk in a.split(sizes)])[:, :, None].expand(-1, -1, 3)
    sizes_t = torch.tensor(sizes)
    coef = (g / sizes_t[:, None, None].double()).repeat_interleave(sizes_t, dim=0)  # [N, K, 3]
    l = h64 @ w64.t() + b64
    dl = coef[..., 0] + coef[..., 1] * torch.sigmoid(l) - coef[..., 2] * torch.sigmoid(-l)
    m_dl = dl.abs() + 0.25 * (coef[..., 1].abs() + coef[..., 2].abs()) * a  # sigmoid' <= 1/4
    return m_out, m_dl @ w64.abs(), m_dl.t() @ h64.abs(), m_dl.sum(0)


def assert_within(name, got, ref, scale, *, acc_tol, rtol, atol=0.0):
    got64 = got.detach().to("cpu", torch.float64)
    assert got64.shape == ref.shape, f"{name}: shape {tuple(got64.shape)} != {tuple(ref.shape)}"
    err = (got64 - ref).abs()
    allowed = acc_tol * scale + rtol * ref.abs() + atol
    bad = ~(err <= allowed)
    if bad.any():
        i = int(torch.nonzero(bad.flatten())[0])
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {err.numel()} elements off; first at flat index {i}: "
            f"got {got64.flatten()[i].item()!r}, float64 reference {ref.flatten()[i].item()!r}, "
            f"error {err.flatten()[i].item():.3e} > allowed {allowed.flatten()[i].item():.3e}")


def check_against_fp64(h, w, b, sizes, grad_out, impl="triton", op=fused_disc_head):
    """Run the op (forward and backward through autograd) and compare with float64.

    ``op`` is the public function by default (eager: its autograd.Function); pass a compiled
    wrapper of it to check the route through the registered op."""
    dtype = h.dtype
    leaves = [t.detach().requires_grad_() for t in (h, w, b)]
    out = op(*leaves, sizes, impl=impl)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype))
    ref_out, ref_grads = reference64(h, w, b, sizes, grad_out)
    scales = error_scales(h, w, b, sizes, grad_out)
    acc_tol = ACC_TOL_DTYPE.get(dtype, ACC_TOL)
    assert_within("out", out, ref_out, scales[0], acc_tol=acc_tol,
                  rtol=RTOL_GRAD[dtype] if dtype == torch.float64 else RTOL_OUT)
    for name, got, ref, scale, leaf in zip(("grad_h", "grad_weight", "grad_bias"), grads, ref_grads,
                                            scales[1:], leaves):
        assert got.dtype == leaf.dtype and got.shape == leaf.shape
        assert_within(name, got, ref, scale, acc_tol=acc_tol, rtol=RTOL_GRAD[dtype],
                      atol=ATOL_GRAD[dtype])


# --------------------------------------------------------------------------------------------
# Generated cases


@dataclasses.dataclass(frozen=True)
class Case:
    sizes: tuple[int, ...]
    D: int
    K: int
    dtype: torch.dtype
    scale: float = 1.0  # logit scale: 10 reaches the softplus/sigmoid tails
    layout: str = "contiguous"  # or "h_transposed", "strided", "weight_transposed"
    block_n: int | None = None  # launch overrides (None: the heuristics)
    block_d: int | None = None
    max_programs: int | None = None
    seed: int = 0

    def tensors(self):
        gen = torch.Generator().manual_seed(self.seed)
        N, D, K, S = sum(self.sizes), self.D, self.K, len(self.sizes)
        h = torch.randn(N, D, generator=gen, dtype=torch.float64)
        w = torch.randn(K, D, generator=gen, dtype=torch.float64) * (self.scale / math.sqrt(D))
        b = torch.randn(K, generator=gen, dtype=torch.float64) * self.scale
        g = torch.randn(S, K, 3, generator=gen, dtype=torch.float64)
        h, w, b, g = (t.to(DEVICE) for t in (h, w, b, g))
        h, w, b = (t.to(self.dtype) for t in (h, w, b))
        # on the device already: .to(DEVICE) would make the strided layouts contiguous
        h, w, b = relayout(h, self.layout), relayout_w(w, self.layout), b
        return h, w, b, g


def relayout(h, layout):
    """The same values as ``h`` with other strides."""
    if layout in ("h_transposed", "all"):
        return h.t().contiguous().t()  # column-major
    if layout == "strided":
        N, D = h.shape
        big = torch.zeros(2 * N, 3 * D, dtype=h.dtype, device=h.device)
        big[::2, 1::3] = h
        return big[::2, 1::3]  # strides (6D, 3), storage offset 1
    return h


def relayout_w(w, layout):
    if layout in ("weight_transposed", "all"):
        return w.t().contiguous().t()
    if layout == "strided":
        K, D = w.shape
        big = torch.zeros(K, 2 * D, dtype=w.dtype, device=w.device)
        big[:, ::2] = w
        return big[:, ::2]
    return w


def _ranged(draw, classes):
    """An integer from one of ``classes`` (name -> (lo, hi)), the class drawn first, so mid-sized
    and large values are as likely as small ones (plain st.integers favours small values)."""
    lo, hi = classes[draw(st.sampled_from(list(classes)))]
    return draw(st.integers(lo, hi))


@st.composite
def cases(draw):
    S = draw(st.integers(1, 4))
    big = draw(st.integers(0, 3)) == 0  # one example in four may get segments of up to 1200 rows
    size_classes = {"one": (1, 1), "small": (2, 16), "medium": (17, 300)}
    if big:
        size_classes["large"] = (301, 1200)
    sizes = tuple(_ranged(draw, size_classes) for _ in range(S))
    D = _ranged(draw, {"tiny": (1, 8), "small": (9, 64), "medium": (65, 256), "large": (257, 600)})
    K = draw(st.sampled_from([2, 1, 3, 4]))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    scale = draw(st.sampled_from([1.0, 0.1, 10.0]))
    layout = draw(st.sampled_from(["contiguous", "contiguous", "h_transposed", "strided",
                                   "weight_transposed"]))
    N = sum(sizes)
    block_n = draw(st.sampled_from([None, 16, 32]))
    block_d = draw(st.sampled_from([None, 16, 32]))
    max_programs = draw(st.sampled_from([None, 1, 3]))
    steps = math.ceil(N / (block_n or 64)) * math.ceil(D / (block_d or 256)) * K
    if steps > 200:  # keep the interpreter fast: small blocks only on small problems
        block_n = block_d = None
    seed = draw(st.integers(0, 2**16))
    return Case(sizes, D, K, dtype, scale, layout, block_n, block_d, max_programs, seed)


@pytest.mark.slow
@KERNEL_SETTINGS
@given(case=cases())
@example(case=Case((1,), 1, 1, torch.float32))
@example(case=Case((1, 1, 1, 1), 3, 4, torch.bfloat16, layout="all"))
@example(case=Case((2500, 1, 1500), 600, 2, torch.float32, scale=1.0, seed=1))  # large N and D
@example(case=Case((1200, 37, 1), 577, 3, torch.bfloat16, scale=10.0, layout="h_transposed", seed=2))
@example(case=Case((900, 1, 1100, 5), 333, 2, torch.float16, scale=0.1, seed=3))
@example(case=Case((64, 64, 1, 63), 40, 2, torch.float32, block_n=16, block_d=16, max_programs=3))
def test_triton_matches_float64_reference(case):
    h, w, b, g = case.tensors()
    with fdt.config_override(block_n=case.block_n, block_d=case.block_d,
                             max_programs=case.max_programs):
        check_against_fp64(h, w, b, list(case.sizes), g)


# --------------------------------------------------------------------------------------------
# Focused cases


@pytest.mark.parametrize("layout", ["h_transposed", "strided", "weight_transposed", "all"])
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_non_contiguous_inputs(layout, impl):
    case = Case((5, 1, 30), 70, 3, torch.float32, layout=layout, seed=7)
    h, w, b, g = case.tensors()
    assert not (h.is_contiguous() and w.is_contiguous())
    check_against_fp64(h, w, b, list(case.sizes), g, impl=impl)


@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_route_matches_float64_reference(impl, dtype):
    """Under torch.compile the public function emits the registered op (the eager tests above go
    through the autograd.Function): same float64 contract, forward and backward."""
    torch._dynamo.reset()
    compiled = torch.compile(fused_disc_head, fullgraph=True, dynamic=False, backend="aot_eager")
    case = Case((5, 1, 30), 70, 3, dtype, layout="h_transposed", seed=13)
    h, w, b, g = case.tensors()
    check_against_fp64(h, w, b, list(case.sizes), g, impl=impl, op=compiled)


@pytest.mark.parametrize("needs", [(True, True, True), (True, False, False), (False, True, True)])
def test_eager_and_op_routes_agree_bitwise(needs):
    """The eager autograd.Function and the registered op launch the same Triton kernels."""
    case = Case((40, 1, 23), 50, 2, torch.float32, seed=14)
    h, w, b, g = case.tensors()
    results = []
    for run in (lambda *a: fused_disc_head(*a, list(case.sizes), impl="triton"),
                lambda *a: torch.ops.asvae_kit.fused_disc_head(*a, list(case.sizes), "triton")):
        leaves = [t.detach().clone().requires_grad_(need) for t, need in zip((h, w, b), needs)]
        out = run(*leaves)
        results.append((out, *torch.autograd.grad(out, [t for t in leaves if t.requires_grad], g.float())))
    for eager, op in zip(*results):
        assert torch.equal(eager, op)


def test_expanded_inputs_and_grad_out():
    """Stride-0 ``h`` rows, a strided bias and an expanded (stride-0) ``grad_out``."""
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(1, 9, generator=gen).to(DEVICE).expand(12, 9)  # views made on the device:
    w = torch.randn(2, 9, generator=gen).to(DEVICE)  # .to() would copy them contiguous
    b = torch.randn(2, 2, generator=gen).to(DEVICE)[:, 1]
    g = torch.randn(1, 2, 3, generator=gen).to(DEVICE).expand(3, 2, 3)
    assert h.stride(0) == 0 and b.stride(0) == 2 and g.stride(0) == 0
    check_against_fp64(h, w, b, [4, 4, 4], g)


@pytest.mark.parametrize("impl", [pytest.param("triton", marks=pytest.mark.slow), "torch"])
def test_float64_gradcheck(impl):
    """float64 inputs are computed in float64, so gradcheck applies to either implementation."""
    gen = torch.Generator().manual_seed(0)
    args = [torch.randn(*shape, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_()
            for shape in ((7, 4), (3, 4), (3,))]
    assert torch.autograd.gradcheck(lambda h, w, b: fused_disc_head(h, w, b, [2, 1, 4], impl=impl), args)


def test_softplus_and_sigmoid_tails_keep_relative_accuracy():
    """One row per segment with fixed logits from -80 to 80: every statistic and gradient of a
    tail value (e.g. softplus(-80) = 1.8e-35) keeps fp32 relative accuracy."""
    logits = torch.tensor([-80.0, -40.0, -20.0, -16.0, -5.0, -1e-3, 0.0, 1e-3, 5.0, 16.0, 20.0, 40.0, 80.0])
    n = logits.numel()
    h = logits[:, None].to(DEVICE)
    w = torch.ones(1, 1, device=DEVICE)
    b = torch.zeros(1, device=DEVICE)
    g = torch.zeros(n, 1, 3, device=DEVICE)
    for j in range(3):
        leaves = [t.clone().requires_grad_() for t in (h, w, b)]
        out = fused_disc_head(*leaves, [1] * n, impl="triton")
        gj = g.clone()
        gj[..., j] = 1.0
        grad_h = torch.autograd.grad(out, leaves[0], gj)[0]
        ref_out, (ref_gh, _, _) = reference64(h, w, b, [1] * n, gj)
        torch.testing.assert_close(out.double().cpu(), ref_out, rtol=1e-6, atol=0.0)
        torch.testing.assert_close(grad_h.double().cpu(), ref_gh, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_nan_and_inf_stay_in_their_segment(impl):
    h = torch.ones(9, 4, device=DEVICE)
    w = torch.full((2, 4), 0.25, device=DEVICE)
    b = torch.zeros(2, device=DEVICE)
    h[4, 2] = float("nan")  # segment 1 (rows 3..5)
    h[7, 0] = float("inf")  # segment 2 (rows 6..8), positive weights: l = +inf
    out = fused_disc_head(h, w, b, [3, 3, 3], impl=impl).cpu()
    sp1 = math.log1p(math.e)  # softplus(1)
    torch.testing.assert_close(out[0], torch.tensor([[1.0, sp1, sp1 - 1.0]] * 2))
    assert out[1].isnan().all()
    assert torch.equal(out[2, :, 0], torch.full((2,), float("inf")))
    assert torch.equal(out[2, :, 1], torch.full((2,), float("inf")))
    torch.testing.assert_close(out[2, :, 2], torch.full((2,), 2 * (sp1 - 1.0) / 3))


@pytest.mark.slow
def test_results_are_bitwise_reproducible():
    case = Case((300, 1, 211), 130, 2, torch.float32, seed=5)
    h, w, b, g = case.tensors()
    runs = []
    for _ in range(2):
        with fdt.config_override(block_n=16, max_programs=5):
            out = fdt.forward(h, w, b, list(case.sizes))
            runs.append((out, *fdt.backward(g.float(), h, w, b, list(case.sizes))))
    for first, second in zip(*runs):
        assert torch.equal(first, second)


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True),
                                   (False, True, True)])
def test_backward_computes_only_what_is_needed(needs):
    case = Case((40, 1, 23), 50, 2, torch.float32, seed=11)
    h, w, b, g = case.tensors()
    leaves = [t.detach().requires_grad_(need) for t, need in zip((h, w, b), needs)]
    out = fused_disc_head(*leaves, list(case.sizes), impl="triton")
    wanted = [i for i, need in enumerate(needs) if need]
    got = torch.autograd.grad(out, [leaves[i] for i in wanted], g.float())
    _, ref_grads = reference64(h, w, b, list(case.sizes), g)
    for i, grad in zip(wanted, got):
        torch.testing.assert_close(grad.double().cpu(), ref_grads[i], rtol=1e-5, atol=1e-6)


def test_triton_rejects_too_many_heads():
    h, w, b = torch.randn(4, 3), torch.randn(K.MAX_TRITON_HEADS + 1, 3), torch.randn(K.MAX_TRITON_HEADS + 1)
    with pytest.raises(ValueError, match=f"at most {K.MAX_TRITON_HEADS} heads.*K={K.MAX_TRITON_HEADS + 1}"):
        fused_disc_head(h, w, b, [4], impl="triton")
    # the reference takes any K
    assert fused_disc_head(h, w, b, [4], impl="torch").shape == (1, K.MAX_TRITON_HEADS + 1, 3)



# --------------------------------------------------------------------------------------------
# GPU code generation (no GPU needed): the kernels must compile for a real target, not only
# run in the interpreter, which accepts some programs the compiler rejects.


def _nvidia_toolchain_available() -> bool:
    try:
        import triton

        ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
        return os.path.exists(ptxas) or shutil.which("ptxas") is not None
    except Exception:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _nvidia_toolchain_available(), reason="Triton's NVIDIA backend (ptxas) is not installed")
def test_kernels_compile_for_sm90():
    script = textwrap.dedent("""
        import importlib
        import triton, triton.language as tl
        from triton.backends.compiler import GPUTarget
        T = importlib.import_module("asvae_kit.kernels.fused_disc_head_triton")
        assert not T.INTERPRETED

        def compile(fn, types, consts):
            sig = {n: ("constexpr" if n in consts else types.get(n, "i32")) for n in fn.arg_names}
            src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts)
            return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                  options=dict(num_warps=T._NUM_WARPS))

        for dt, K, block_n in (("fp32", 2, 16), ("bf16", 3, 64), ("fp16", 16, 32), ("fp64", 1, 16)):
            acc = "fp64" if dt == "fp64" else "fp32"
            types = {n: "*" + dt for n in ("h_ptr", "w_ptr", "b_ptr", "gh_ptr")}
            types.update(off_ptr="*i32", part_ptr="*" + acc, g_ptr="*" + acc, gw_ptr="*" + acc, gb_ptr="*" + acc)
            block_k = max(2, triton.next_power_of_2(K))
            common = dict(K=K, BLOCK_N=block_n, BLOCK_K=block_k, ACC=tl.float64 if dt == "fp64" else tl.float32)
            fwd = compile(T._fwd_kernel, types, dict(common, BLOCK_D=max(16, T._FWD_TILE // (block_n * block_k))))
            for gh, gwb in ((True, True), (True, False), (False, True)):
                bwd = compile(T._bwd_kernel, types, dict(common, BLOCK_D=max(16, T._BWD_TILE // (block_n * block_k)),
                                                         COMPUTE_GH=gh, COMPUTE_GWB=gwb))
                assert bwd.asm["cubin"]
            assert fwd.asm["cubin"]
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr
