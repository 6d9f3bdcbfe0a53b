"""``asvae_kit.kernels.fused_disc_head``: the op's contract (docs/design.md §4) -- semantics against the
reference, validation, dispatch and fallback, ``torch.library`` registration (opcheck,
torch.compile), and import hygiene.  The Triton kernels' numerics are in test_kernels_triton.py.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import asvae_kit.kernels as K
from asvae_kit.kernels import fused_disc_head, fused_disc_head_reference

fdh = sys.modules["asvae_kit.kernels.fused_disc_head"]  # the module (the package attribute is the function)
sel = sys.modules["asvae_kit.kernels.selection"]  # impl, $ASVAE_KIT_KERNELS, the Triton fallback
val = sys.modules["asvae_kit.kernels.validation"]  # the input checks

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
pytestmark = pytest.mark.filterwarnings(  # emitted by torch's own imports (torch._dynamo)
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


#: Where impl="triton" runs: CPU tensors in the interpreter (CI), CUDA tensors on a GPU machine.
TRITON_DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available() else "cuda"


def make(N=10, D=5, Kh=2, dtype=torch.float32, seed=0, requires_grad=False, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=gen).to(dtype)
    w = torch.randn(Kh, D, generator=gen).to(dtype)
    b = torch.randn(Kh, generator=gen).to(dtype)
    return tuple(t.to(device).requires_grad_(requires_grad) for t in (h, w, b))


@pytest.fixture(autouse=True)
def _clean_state(monkeypatch):
    monkeypatch.delenv("ASVAE_KIT_KERNELS", raising=False)
    sel.reset_fallback_state()
    yield
    sel.reset_fallback_state()


# --------------------------------------------------------------------------------------------
# Semantics


def test_matches_a_direct_computation():
    h, w, b = make(N=9, D=4, Kh=3, seed=1)
    sizes = [2, 3, 4]
    out = fused_disc_head(h, w, b, sizes)
    assert out.shape == (3, 3, 3) and out.dtype == torch.float32
    logits = h @ w.t() + b
    for s, rows in enumerate(logits.split(sizes)):
        expected = torch.stack([rows.mean(0), F.softplus(rows).mean(0), F.softplus(-rows).mean(0)], -1)
        torch.testing.assert_close(out[s], expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_return_float32(dtype):
    h, w, b = make(dtype=dtype)
    out = fused_disc_head(h, w, b, [4, 6])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, fused_disc_head_reference(h.float(), w.float(), b.float(), [4, 6]))


def test_float64_stays_float64():
    h, w, b = make(dtype=torch.float64)
    assert fused_disc_head(h, w, b, [10]).dtype == torch.float64


def test_gradcheck_reference_float64():
    args = [t.double().requires_grad_() for t in make(N=6, D=3, Kh=2, seed=2)]
    assert torch.autograd.gradcheck(lambda h, w, b: fused_disc_head_reference(h, w, b, [1, 2, 3]), args)


def test_gradcheck_op_float64():
    """The op's hand-written backward (impl='torch') against finite differences."""
    args = [t.double().requires_grad_() for t in make(N=6, D=3, Kh=2, seed=3)]
    assert torch.autograd.gradcheck(lambda h, w, b: fused_disc_head(h, w, b, [1, 2, 3], impl="torch"), args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("needs", [(True, True, True), (True, False, False), (False, True, False),
                                   (False, False, True)])
def test_eager_route_equals_the_op_route(dtype, needs):
    """The eager autograd.Function and the registered op (what compiled graphs call) run the same
    implementation: identical values and gradients, whichever inputs need them."""
    h, w, b = make(N=13, D=6, Kh=3, seed=12, dtype=dtype)
    g = torch.randn(3, 3, 3, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    results = []
    for run in (lambda *a: fused_disc_head(*a, [5, 1, 7], impl="torch"),
                lambda *a: torch.ops.asvae_kit.fused_disc_head(*a, [5, 1, 7], "torch")):
        leaves = [t.detach().clone().requires_grad_(need) for t, need in zip((h, w, b), needs)]
        out = run(*leaves)
        wanted = [leaf for leaf in leaves if leaf.requires_grad]
        results.append((out, *torch.autograd.grad(out, wanted, g)))
    for eager, op in zip(*results):
        assert eager.dtype == op.dtype and torch.equal(eager, op)


def test_eager_route_is_first_order_only():
    h, w, b = make(requires_grad=True)
    grad_h, = torch.autograd.grad(fused_disc_head(h, w, b, [4, 6]).sum(), h, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(grad_h.sum(), h)


def test_op_backward_matches_autograd_through_the_reference():
    h, w, b = make(N=30, D=7, Kh=3, seed=4, requires_grad=True)
    g = torch.randn(3, 3, 3)
    got = torch.autograd.grad(fused_disc_head(h, w, b, [10, 1, 19], impl="torch"), (h, w, b), g)
    want = torch.autograd.grad(fused_disc_head_reference(h, w, b, [10, 1, 19]), (h, w, b), g)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e)


def test_accepts_tuples_numpy_ints_and_integer_tensors():
    h, w, b = make()
    want = fused_disc_head(h, w, b, [4, 6])
    for sizes in [(4, 6), [np.int64(4), np.int32(6)], torch.tensor([4, 6]), torch.Size([4, 6])]:
        torch.testing.assert_close(fused_disc_head(h, w, b, sizes), want)


def test_autocast_casts_like_linear():
    h, w, b = make()  # float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused_disc_head(h, w, b, [4, 6])
    assert out.dtype == torch.float32
    expected = fused_disc_head_reference(h.bfloat16(), w.bfloat16(), b.bfloat16(), [4, 6])
    torch.testing.assert_close(out, expected)


# --------------------------------------------------------------------------------------------
# Validation: each a ValueError naming the values


@pytest.mark.parametrize(
    "sizes, match",
    [
        ([], r"segment_sizes is empty"),
        ([4, 0, 6], r"segment_sizes\[1\] = 0 is not positive"),
        ([5, -1, 6], r"segment_sizes\[1\] = -1 is not positive"),
        ([4, 5], r"segment_sizes \[4, 5\] sum to 9, but h has N=10 rows"),
        ([4, 7], r"sum to 11, but h has N=10"),
        ([4, 6.0], r"segment_sizes\[1\] = 6.0 is not an integer"),
        ([True, 9], r"segment_sizes\[0\] = True is not an integer"),
        ("46", r"must be a sequence of positive ints"),
        (10, r"must be a sequence of positive ints"),
    ],
)
def test_bad_segment_sizes(sizes, match):
    h, w, b = make()
    with pytest.raises(ValueError, match=match):
        fused_disc_head(h, w, b, sizes)


def test_bad_shapes():
    h, w, b = make(N=10, D=5, Kh=2)
    with pytest.raises(ValueError, match=r"h must be 2-D \[N, D\]; got shape \(10, 5, 1\)"):
        fused_disc_head(h[..., None], w, b, [10])
    with pytest.raises(ValueError, match=r"weight must be 2-D"):
        fused_disc_head(h, w[0], b, [10])
    with pytest.raises(ValueError, match=r"bias must be 1-D \[K\]; got shape \(2, 1\)"):
        fused_disc_head(h, w, b[:, None], [10])
    with pytest.raises(ValueError, match=r"D=5 to match h of shape \(10, 5\); got weight of shape \(2, 4\)"):
        fused_disc_head(h, w[:, :4], b, [10])
    with pytest.raises(ValueError, match=r"K=2 to match weight of shape \(2, 5\); got bias of shape \(3,\)"):
        fused_disc_head(h, w, torch.zeros(3), [10])
    with pytest.raises(ValueError, match=r"K=0, D=5"):
        fused_disc_head(h, w[:0], b[:0], [10])


def test_bad_dtypes_and_devices():
    h, w, b = make()
    with pytest.raises(ValueError, match=r"got h torch.bfloat16, weight torch.float32, bias torch.float32"):
        fused_disc_head(h.bfloat16(), w, b, [10])
    with pytest.raises(ValueError, match=r"bias torch.float64"):
        fused_disc_head(h, w, b.double(), [10])
    with pytest.raises(ValueError, match=r"h has dtype torch.int64"):
        fused_disc_head(h.long(), w.long(), b.long(), [10])
    with pytest.raises(ValueError, match=r"got h on cpu, weight on meta, bias on cpu"):
        fused_disc_head(h, w.to("meta"), b, [10])
    with pytest.raises(TypeError, match=r"weight must be a torch.Tensor, got list"):
        fused_disc_head(h, [[1.0] * 5] * 2, b, [10])


def test_direct_op_calls_are_validated_too():
    h, w, b = make()
    with pytest.raises(ValueError, match=r"sum to 9, but h has N=10"):
        torch.ops.asvae_kit.fused_disc_head(h, w, b, [4, 5], "torch")
    with pytest.raises(TypeError, match=r"weight must be a torch.Tensor"):
        torch.ops.asvae_kit.fused_disc_head(h, None, b, [10], "torch")
    with pytest.raises(ValueError, match=r"sum to 9, but h has N=10"):
        torch.ops.asvae_kit.fused_disc_head_backward(torch.zeros(2, 2, 3), h, w, b, [4, 5], "torch",
                                                     True, True)


@pytest.fixture
def validation_calls(monkeypatch):
    """Count the validation functions' calls (``validate`` is the ops' own, full check)."""
    calls = {"check_tensors": 0, "check_values": 0, "validate": 0}
    for name in calls:
        real = getattr(val, name)

        def counted(*args, _name=name, _real=real):
            calls[_name] += 1
            return _real(*args)

        monkeypatch.setattr(val, name, counted)
    return calls


@pytest.mark.parametrize("impl", ["torch", "auto", None, pytest.param("triton", marks=needs_triton)])
def test_inputs_are_validated_once_per_forward_and_backward(validation_calls, impl):
    h, w, b = make(requires_grad=True, device=TRITON_DEVICE if impl == "triton" else "cpu")
    out = fused_disc_head(h, w, b, [4, 6], impl=impl)
    torch.autograd.grad(out, (h, w, b), torch.randn(2, 2, 3, device=h.device))
    assert validation_calls == {"check_tensors": 1, "check_values": 1, "validate": 0}


def test_validated_once_under_autocast(validation_calls):
    h, w, b = make(requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused_disc_head(h, w, b, [4, 6])
    out.sum().backward()
    assert validation_calls == {"check_tensors": 1, "check_values": 1, "validate": 0}


def test_eager_calls_use_the_autograd_function_not_the_op():
    h, w, b = make(requires_grad=True)
    out = fused_disc_head(h, w, b, [4, 6])
    assert type(out.grad_fn).__name__ == "_FusedDiscHeadBackward"


# --------------------------------------------------------------------------------------------
# Choosing the implementation


@pytest.fixture
def spy(monkeypatch):
    """Count which implementation runs (reference vs Triton module loads)."""
    calls = {"torch": 0, "load_triton": 0}
    real_ref = fdh.fused_disc_head_reference

    def ref(*args, **kwargs):
        calls["torch"] += 1
        return real_ref(*args, **kwargs)

    monkeypatch.setattr(fdh, "fused_disc_head_reference", ref)
    real_load = sel._load_triton_module

    def load():
        calls["load_triton"] += 1
        return real_load()

    monkeypatch.setattr(sel, "_load_triton_module", load)
    return calls


def test_bad_impl():
    h, w, b = make()
    with pytest.raises(ValueError, match=r"impl='cuda' is not one of \('auto', 'triton', 'torch'\)"):
        fused_disc_head(h, w, b, [10], impl="cuda")


@pytest.mark.parametrize("impl", ["auto", None])
def test_auto_uses_the_reference_for_cpu_tensors(spy, impl):
    h, w, b = make()
    fused_disc_head(h, w, b, [10], impl=impl)
    assert spy == {"torch": 1, "load_triton": 0}


@needs_triton
def test_env_var_sets_the_default(spy, monkeypatch):
    h, w, b = make(device=TRITON_DEVICE)
    monkeypatch.setenv("ASVAE_KIT_KERNELS", "torch")
    fused_disc_head(h, w, b, [10])
    assert spy == {"torch": 1, "load_triton": 0}
    monkeypatch.setenv("ASVAE_KIT_KERNELS", "Triton")  # case-insensitive
    fused_disc_head(h, w, b, [10])  # in the interpreter on CPU (conftest), compiled on a GPU
    assert spy == {"torch": 1, "load_triton": 1}
    fused_disc_head(h, w, b, [10], impl="torch")  # an explicit impl wins
    assert spy["torch"] == 2
    monkeypatch.setenv("ASVAE_KIT_KERNELS", "fast")
    with pytest.raises(ValueError, match=r"ASVAE_KIT_KERNELS='fast' is not one of"):
        fused_disc_head(h, w, b, [10])


@needs_triton
def test_triton_on_cpu_without_interpreter_says_what_to_do(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    h, w, b = make()
    with pytest.raises(RuntimeError, match=r"cannot run on CPU tensors.*TRITON_INTERPRET=1.*impl='torch'"):
        fused_disc_head(h, w, b, [10], impl="triton")


def test_triton_not_installed_says_what_to_do(monkeypatch):
    monkeypatch.setattr(sel, "_triton_installed", lambda: False)
    h, w, b = make()
    with pytest.raises(RuntimeError, match=r"needs the triton package.*pip install 'asvae-kit\[triton\]'.*impl='torch'"):
        fused_disc_head(h, w, b, [10], impl="triton")


def _pretend_cuda(monkeypatch, module):
    """Make impl='auto' take its CUDA branch on CPU tensors, with ``module`` as 'Triton'."""
    monkeypatch.setattr(sel, "_auto_wants_triton", lambda h, w: True)

    def load():
        if isinstance(module, Exception):
            raise module
        return module

    monkeypatch.setattr(sel, "_load_triton_module", load)


def _broken_kernels(counter):
    def fail(*args, **kwargs):
        counter.append(1)
        raise RuntimeError("PTX assembly failed (simulated)")

    return types.SimpleNamespace(INTERPRETED=False, forward=fail, backward=fail)


def test_auto_falls_back_with_one_warning_when_the_kernel_fails(monkeypatch):
    attempts = []
    _pretend_cuda(monkeypatch, _broken_kernels(attempts))
    h, w, b = make(requires_grad=True)
    with pytest.warns(RuntimeWarning, match=r"the Triton kernel failed \(RuntimeError: PTX assembly failed.*falling back") as record:
        out = fused_disc_head(h, w, b, [3, 7])
    assert record[0].filename == __file__  # the warning points at the caller, not at the kernels
    torch.testing.assert_close(out, fused_disc_head_reference(h, w, b, [3, 7]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, and no second attempt
        out = fused_disc_head(h, w, b, [3, 7])
        out.sum().backward()
    assert attempts == [1]
    assert h.grad is not None


def test_auto_falls_back_with_one_warning_when_triton_does_not_import(monkeypatch):
    _pretend_cuda(monkeypatch, ImportError("No module named 'triton'"))
    h, w, b = make()
    with pytest.warns(RuntimeWarning, match=r"Triton could not be imported.*No module named 'triton'"):
        fused_disc_head(h, w, b, [10])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fused_disc_head(h, w, b, [10])


def test_explicit_triton_never_falls_back(monkeypatch):
    attempts = []
    module = _broken_kernels(attempts)
    monkeypatch.setattr(sel, "_require_triton", lambda h, w: module)
    h, w, b = make()
    with pytest.raises(RuntimeError, match="PTX assembly failed"):
        fused_disc_head(h, w, b, [10], impl="triton")


def test_auto_does_not_treat_out_of_memory_as_a_triton_failure(monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    _pretend_cuda(monkeypatch, types.SimpleNamespace(INTERPRETED=False, forward=oom, backward=oom))
    h, w, b = make()
    with pytest.raises(torch.OutOfMemoryError):
        fused_disc_head(h, w, b, [10])
    assert sel._State.failure is None


# --------------------------------------------------------------------------------------------
# torch.library registration


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=needs_triton), "default"])
def test_opcheck_forward(impl):
    h, w, b = make(N=11, D=6, Kh=3, seed=5, requires_grad=True, device=TRITON_DEVICE if impl == "triton" else "cpu")
    torch.library.opcheck(torch.ops.asvae_kit.fused_disc_head.default, (h, w, b, [1, 4, 6], impl))


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("needs", [(True, True), (True, False), (False, True)])
def test_opcheck_backward(impl, needs):
    h, w, b = make(N=11, D=6, Kh=3, seed=6, device=TRITON_DEVICE if impl == "triton" else "cpu")
    g = torch.randn(3, 3, 3, device=h.device)
    torch.library.opcheck(torch.ops.asvae_kit.fused_disc_head_backward.default,
                          (g, h, w, b, [1, 4, 6], impl, *needs))


def _loss(h_q, h_p, h_m, weight, bias):
    """What a divergence does: stack three batches, one op call, a linear combination."""
    h = torch.cat([h_q, h_p, h_m])
    stats = fused_disc_head(h, weight, bias, [h_q.shape[0], h_p.shape[0], h_m.shape[0]])
    disc = stats[0, 0, 2] + stats[2, 0, 1] + stats[1, 1, 2] + stats[2, 1, 1]
    skl = (stats[0, 0, 0] - stats[0, 1, 0]) + (stats[1, 1, 0] - stats[1, 0, 0])
    return disc + 0.5 * skl


def _compile_inputs(seed=7):
    gen = torch.Generator().manual_seed(seed)
    hs = [torch.randn(n, 16, generator=gen, requires_grad=True) for n in (5, 7, 6)]
    weight = torch.randn(2, 16, generator=gen, requires_grad=True)
    bias = torch.randn(2, generator=gen, requires_grad=True)
    return (*hs, weight, bias)


def _eager_and_compiled(compiled, inputs):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    want = _loss(*leaves)
    want_grads = torch.autograd.grad(want, leaves)
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    got = compiled(*leaves)
    got_grads = torch.autograd.grad(got, leaves)
    return (got, got_grads), (want, want_grads)


def test_torch_compile_no_graph_break_same_values():
    torch._dynamo.reset()
    compiled = torch.compile(_loss, fullgraph=True)  # fullgraph: a graph break is an error
    (got, got_grads), (want, want_grads) = _eager_and_compiled(compiled, _compile_inputs())
    torch.testing.assert_close(got, want)
    for a, e in zip(got_grads, want_grads):
        torch.testing.assert_close(a, e)
    explanation = torch._dynamo.explain(_loss)(*_compile_inputs())
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


def test_torch_compile_graph_calls_the_op():
    """Under torch.compile the public function emits the registered op (one opaque node), not the
    eager autograd.Function; the compiled run validates in the op, not in the public function."""
    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(_loss, fullgraph=True, backend=backend)
    compiled(*_compile_inputs(seed=11))
    assert len(graphs) == 1
    targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert any("asvae_kit.fused_disc_head" in t for t in targets), targets
    assert not any("FusedDiscHead" in t for t in targets), targets


def test_make_fx_and_fake_tensors_get_the_op():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    h, w, b = make()
    gm = make_fx(lambda h, w, b: fused_disc_head(h, w, b, [4, 6]))(h, w, b)
    assert [str(n.target) for n in gm.graph.nodes if n.op == "call_function"] == \
        ["asvae_kit.fused_disc_head.default"]
    with FakeTensorMode() as mode:
        out = fused_disc_head(*(mode.from_tensor(t) for t in (h, w, b)), [4, 6], impl="triton")
    assert out.shape == (2, 2, 3)


def test_torch_compile_dynamic_shapes():
    """Segment sizes that come from (symbolic) tensor shapes still trace without a break."""
    torch._dynamo.reset()
    compiled = torch.compile(_loss, fullgraph=True, dynamic=True, backend="aot_eager")
    for seed, sizes in ((8, (5, 7, 6)), (9, (3, 1, 4))):
        gen = torch.Generator().manual_seed(seed)
        inputs = (*[torch.randn(n, 16, generator=gen) for n in sizes],
                  torch.randn(2, 16, generator=gen), torch.randn(2, generator=gen))
        (got, got_grads), (want, want_grads) = _eager_and_compiled(compiled, inputs)
        torch.testing.assert_close(got, want)
        for a, e in zip(got_grads, want_grads):
            torch.testing.assert_close(a, e)


# --------------------------------------------------------------------------------------------
# Import hygiene


def test_importing_the_package_does_not_import_triton():
    code = ("import sys, asvae_kit, asvae_kit.kernels, torch; "
            "assert 'triton' not in sys.modules, 'triton imported'; "
            "assert hasattr(torch.ops.asvae_kit, 'fused_disc_head'); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr


def test_public_names():
    assert K.IMPLS == ("auto", "triton", "torch")
    assert K.ENV_VAR == "ASVAE_KIT_KERNELS"
    # the package's name is the op module's public function (the module itself stays reachable)
    assert K.fused_disc_head is fdh.fused_disc_head and isinstance(fdh, types.ModuleType)


def test_torch_compile_under_autocast():
    torch._dynamo.reset()
    inputs = _compile_inputs(seed=10)
    compiled = torch.compile(_loss, fullgraph=True, backend="aot_eager")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = compiled(*inputs)
        want = _loss(*inputs)
    torch.testing.assert_close(got, want)
