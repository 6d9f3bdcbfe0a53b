"""Triton kernels for the fused discriminator head (docs/design.md §4).

This module imports Triton at the top, so nothing imports it until the Triton path actually runs
(:mod:`asvae_kit.kernels.selection` loads it lazily); ``import asvae_kit`` never does.  Use
the op, ``asvae_kit.kernels.fused_disc_head``, rather than these launchers: they do not validate.

Forward (``_fwd_kernel``), one program per block of ``BLOCK_N`` rows, all ``K`` heads at once:

1. ``l = h[rows] @ weight.T + bias`` with an fp32 accumulator (fp64 for fp64 inputs), looping
   over ``D`` in ``BLOCK_D`` chunks; ``h`` and ``weight`` are read through their strides, never
   copied.
2. ``softplus(l)`` and ``softplus(-l)`` in the stable form ``max(±l, 0) + log1p(exp(-|l|))``
   (log1p written as ``log(u) * x / (u - 1)``, exact to a few ulps where ``1 + x`` rounds).
3. For every segment, the block's masked sums of ``(l, softplus(l), softplus(-l))`` divided by the
   segment size go to a per-block partial buffer ``[num_blocks, S, K, 3]``, which one
   ``sum(dim=0)`` reduces afterwards.

Reduction strategy: per-block partials plus a deterministic reduction, not atomics.  The partial
buffers are tiny next to ``h`` (``num_blocks * S * K * 3`` floats forward, ``programs * K * (D+1)``
backward), so the extra pass costs next to nothing, and the results are bitwise reproducible run
to run, which float atomics are not (their order depends on scheduling).

Backward (``_bwd_kernel``), persistent: ``P = min(num_blocks, 4 * SMs)`` programs, program ``p``
takes row blocks ``p, p + P, ...``.  For each block it recomputes ``l`` (no ``[N, K]`` logits are
saved), forms ``dl = (g0 + g1 * sigmoid(l) - g2 * sigmoid(-l)) / size[segment]``, writes
``grad_h = dl @ weight`` for its rows, and adds ``dl.T @ h`` and ``dl.sum(0)`` into its own slice
of the fp32 partials ``[P, K, D]`` and ``[P, K]`` (owned by one program, so no atomics and no
races); ``sum(dim=0)`` over ``P`` finishes ``grad_weight`` and ``grad_bias``.  Capping ``P`` keeps
that buffer small for large ``N``.

Launch parameters: the op is memory-bound for small ``K`` (it reads ``h`` once forward, twice
backward).  ``BLOCK_N`` is the largest of 64/32/16 that still starts two programs per SM, and
``BLOCK_D`` keeps ``BLOCK_N * BLOCK_K * BLOCK_D`` at 8K (forward) / 4K (backward) elements with 8
warps.  They were chosen by compiling for sm_90 without a GPU (no register spills for ``K <= 4``;
``tests/test_kernels_triton.py::test_kernels_compile_for_sm90`` keeps the GPU code path compiling),
then timed as they are on one H100 (bench/RESULTS.md), never tuned.  Under the interpreter
``BLOCK_N = 64`` and ``BLOCK_D = 256``, fewer and larger steps being what makes it fast.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
import triton
import triton.language as tl

from .selection import MAX_TRITON_HEADS as MAX_HEADS
from .reference import compute_dtype

__all__ = ["forward", "backward", "INTERPRETED", "MAX_HEADS"]

# MAX_HEADS, the largest K the kernels accept (they unroll a loop over the heads), is defined once,
# as selection.MAX_TRITON_HEADS: that module decides before importing this one (and Triton).

# Launch parameters for a GPU, chosen by compiling for sm_90 (untuned; timed on one H100, see
# bench/RESULTS.md): with these, neither kernel spills registers for K <= 4 (about 60-120 registers a thread).
_NUM_WARPS = 8
_FWD_TILE = 8192  # BLOCK_N * BLOCK_K * BLOCK_D elements in flight per forward step
_BWD_TILE = 4096  # the backward holds more per step (grad_h tile, h tile, dl)


@triton.jit
def _block_logits(
    h_ptr, w_ptr, b_ptr, rows, row_mask, D,
    stride_hn, stride_hd, stride_wk, stride_wd, stride_b,
    K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
    ACC: tl.constexpr,
):
    """Logits ``[BLOCK_N, BLOCK_K]`` of the given rows (padding rows and heads hold garbage)."""
    ks = tl.arange(0, BLOCK_K)
    k_mask = ks < K
    # Element-wise products accumulate in a [BLOCK_N, BLOCK_K, BLOCK_D] register tile; a single
    # reduction over D happens after the loop (no cross-thread traffic inside it).
    acc = tl.zeros([BLOCK_N, BLOCK_K, BLOCK_D], dtype=ACC)
    h_rows = h_ptr + rows.to(tl.int64)[:, None] * stride_hn
    w_rows = w_ptr + ks[:, None] * stride_wk
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        d_mask = ds < D
        ds64 = ds.to(tl.int64)
        hb = tl.load(h_rows + ds64[None, :] * stride_hd,
                     mask=row_mask[:, None] & d_mask[None, :], other=0.0).to(ACC)
        wb = tl.load(w_rows + ds64[None, :] * stride_wd,
                     mask=k_mask[:, None] & d_mask[None, :], other=0.0).to(ACC)
        acc += hb[:, None, :] * wb[None, :, :]
    b = tl.load(b_ptr + ks * stride_b, mask=k_mask, other=0.0).to(ACC)
    return tl.sum(acc, axis=2) + b[None, :]


@triton.jit
def _fwd_kernel(
    h_ptr, w_ptr, b_ptr, off_ptr, part_ptr,
    N, D, S,
    stride_hn, stride_hd, stride_wk, stride_wd, stride_b,
    K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
    ACC: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    ks = tl.arange(0, BLOCK_K)
    k_mask = ks < K

    l = _block_logits(h_ptr, w_ptr, b_ptr, rows, row_mask, D,
                      stride_hn, stride_hd, stride_wk, stride_wd, stride_b,
                      K, BLOCK_N, BLOCK_D, BLOCK_K, ACC)

    # softplus(+-l) = max(+-l, 0) + log1p(exp(-|l|)); the comparisons (not tl.maximum) keep NaN.
    x = tl.exp(-tl.abs(l))
    u = 1.0 + x
    d = u - 1.0  # d == 0 exactly when 1 + x rounds to 1; then log1p(x) = x to working precision
    log1p_x = tl.where(d == 0.0, x, tl.log(u) * (x / tl.where(d == 0.0, 1.0, d)))
    sp_pos = tl.where(l > 0.0, l, 0.0) + log1p_x
    sp_neg = tl.where(l < 0.0, -l, 0.0) + log1p_x

    # Per-segment partial means of this block; masking by tl.where so a NaN or inf in another
    # segment's rows (or in padding) never leaks into this segment.
    out = part_ptr + pid * (S * K * 3) + ks * 3
    for s in range(0, S):
        start = tl.load(off_ptr + s)
        end = tl.load(off_ptr + s + 1)
        inv = 1.0 / (end - start).to(ACC)
        sel = (row_mask & (rows >= start) & (rows < end))[:, None] & k_mask[None, :]
        tl.store(out + s * (K * 3) + 0, tl.sum(tl.where(sel, l, 0.0), axis=0) * inv, mask=k_mask)
        tl.store(out + s * (K * 3) + 1, tl.sum(tl.where(sel, sp_pos, 0.0), axis=0) * inv, mask=k_mask)
        tl.store(out + s * (K * 3) + 2, tl.sum(tl.where(sel, sp_neg, 0.0), axis=0) * inv, mask=k_mask)


@triton.jit
def _bwd_kernel(
    h_ptr, w_ptr, b_ptr, off_ptr, g_ptr, gh_ptr, gw_ptr, gb_ptr,
    N, D, S, num_row_blocks,
    stride_hn, stride_hd, stride_wk, stride_wd, stride_b,
    stride_gs, stride_gk, stride_gj, stride_ghn, stride_ghd,
    K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
    ACC: tl.constexpr, COMPUTE_GH: tl.constexpr, COMPUTE_GWB: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    ks = tl.arange(0, BLOCK_K)
    k_mask = ks < K
    gb_acc = tl.zeros([BLOCK_K], dtype=ACC)
    gw_own = gw_ptr + pid.to(tl.int64) * (K * D)  # this program's [K, D] slice of the partials

    for rb in range(pid, num_row_blocks, nprog):
        rows = rb * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = rows < N
        rows64 = rows.to(tl.int64)
        l = _block_logits(h_ptr, w_ptr, b_ptr, rows, row_mask, D,
                          stride_hn, stride_hd, stride_wk, stride_wd, stride_b,
                          K, BLOCK_N, BLOCK_D, BLOCK_K, ACC)

        # Segment of every row (offsets are sorted; padding rows land in S - 1, masked below).
        seg = tl.zeros([BLOCK_N], dtype=tl.int32)
        for s in range(1, S):
            seg += (rows >= tl.load(off_ptr + s)).to(tl.int32)
        size = tl.load(off_ptr + seg + 1) - tl.load(off_ptr + seg)
        inv = 1.0 / size.to(ACC)

        # sigmoid(l) and sigmoid(-l), each accurate in its own tail.
        x = tl.exp(-tl.abs(l))
        r = 1.0 / (1.0 + x)
        sig_pos = tl.where(l >= 0.0, r, x * r)
        sig_neg = tl.where(l >= 0.0, x * r, r)

        valid = row_mask[:, None] & k_mask[None, :]
        g_rows = g_ptr + seg[:, None] * stride_gs + ks[None, :] * stride_gk
        g0 = tl.load(g_rows, mask=valid, other=0.0).to(ACC)
        g1 = tl.load(g_rows + stride_gj, mask=valid, other=0.0).to(ACC)
        g2 = tl.load(g_rows + 2 * stride_gj, mask=valid, other=0.0).to(ACC)
        dl = tl.where(valid, (g0 + g1 * sig_pos - g2 * sig_neg) * inv[:, None], 0.0)
        if COMPUTE_GWB:
            gb_acc += tl.sum(dl, axis=0)

        # "Not this program's first block": its [K, D] slice is initialised by the first block and
        # accumulated into by later ones.  (Broadcast before use: the interpreter cannot AND a
        # scalar predicate with a block mask.)
        later = (tl.zeros([BLOCK_D], dtype=tl.int32) + rb) > pid
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            d_mask = ds < D
            ds64 = ds.to(tl.int64)
            if COMPUTE_GWB:
                hb = tl.load(h_ptr + rows64[:, None] * stride_hn + ds64[None, :] * stride_hd,
                             mask=row_mask[:, None] & d_mask[None, :], other=0.0).to(ACC)
            if COMPUTE_GH:
                gh = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC)
            for k in tl.static_range(K):
                dl_k = tl.sum(tl.where(ks[None, :] == k, dl, 0.0), axis=1)  # column k, [BLOCK_N]
                if COMPUTE_GH:  # grad_h[rows] = dl @ weight
                    w_k = tl.load(w_ptr + k * stride_wk + ds64 * stride_wd, mask=d_mask, other=0.0)
                    gh += dl_k[:, None] * w_k.to(ACC)[None, :]
                if COMPUTE_GWB:  # this program's grad_weight partial += dl.T @ h[rows]
                    ptrs = gw_own + k * D + ds64
                    prev = tl.load(ptrs, mask=d_mask & later, other=0.0)
                    tl.store(ptrs, prev + tl.sum(dl_k[:, None] * hb, axis=0), mask=d_mask)
            if COMPUTE_GH:
                tl.store(gh_ptr + rows64[:, None] * stride_ghn + ds64[None, :] * stride_ghd,
                         gh.to(gh_ptr.dtype.element_ty), mask=row_mask[:, None] & d_mask[None, :])

    if COMPUTE_GWB:
        tl.store(gb_ptr + pid * K + ks, gb_acc, mask=k_mask)


def _interpreted() -> bool:
    return not isinstance(_fwd_kernel, triton.runtime.jit.JITFunction)


#: True when this module was imported under ``TRITON_INTERPRET=1`` (kernels run on CPU tensors in
#: the Triton interpreter).  Triton decides this once, when the kernels are decorated.
INTERPRETED = _interpreted()

_overrides: dict[str, int | None] = {"block_n": None, "block_d": None, "max_programs": None}
_offsets_cache: dict[tuple, torch.Tensor] = {}
_sm_count_cache: dict[int, int] = {}


@contextlib.contextmanager
def config_override(*, block_n: int | None = None, block_d: int | None = None,
                    max_programs: int | None = None) -> Iterator[None]:
    """Force launch parameters (tests use it to cover many blocks, segment crossings and the
    persistent backward loop on small inputs).  Not thread-safe; not part of the public API."""
    saved = dict(_overrides)
    _overrides.update(block_n=block_n, block_d=block_d, max_programs=max_programs)
    try:
        yield
    finally:
        _overrides.update(saved)


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _sm_count_cache:
        _sm_count_cache[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _sm_count_cache[index]


def _offsets(segment_sizes: Sequence[int], device: torch.device) -> torch.Tensor:
    """Row offsets ``[S + 1]`` (int32) on ``device``, cached: one host-to-device copy per layout."""
    key = (tuple(segment_sizes), device)
    off = _offsets_cache.get(key)
    if off is None:
        acc, values = 0, [0]
        for n in segment_sizes:
            acc += n
            values.append(acc)
        if acc >= 2**31:
            raise ValueError(f"the Triton kernels index rows with int32; N={acc} rows is too many")
        off = torch.tensor(values, dtype=torch.int32, device=device)
        if len(_offsets_cache) < 256:  # never evicted: a CUDA graph may read a cached tensor by address
            _offsets_cache[key] = off
    return off


def _config(N: int, D: int, K: int, device: torch.device, tile: int) -> tuple[int, int, int]:
    """``(BLOCK_N, BLOCK_D, BLOCK_K)`` for a problem; ``tile`` bounds BLOCK_N * BLOCK_K * BLOCK_D."""
    block_k = max(2, triton.next_power_of_2(K))
    block_n = _overrides["block_n"]
    if block_n is None:
        if device.type == "cuda":
            # Fill the GPU: prefer big row blocks, but not at the price of idle SMs.
            sms = _sm_count(device)
            block_n = next((b for b in (64, 32) if triton.cdiv(N, b) >= 2 * sms), 16)
        else:
            block_n = 64  # the interpreter: fewer, bigger programs are faster
    block_d = _overrides["block_d"]
    if block_d is None:
        if device.type == "cuda":
            block_d = max(16, tile // (block_n * block_k))
        else:  # the interpreter has no registers to spare, only Python overhead per step
            block_d = 256
        block_d = min(max(16, triton.next_power_of_2(D)), block_d)
    return block_n, block_d, block_k


def _check_heads(K: int) -> None:
    if not 1 <= K <= MAX_HEADS:
        raise ValueError(f"the Triton kernels take 1 to {MAX_HEADS} heads; got K={K}")


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def forward(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
            segment_sizes: Sequence[int]) -> torch.Tensor:
    """The ``[S, K, 3]`` statistics (float32; float64 for float64 inputs)."""
    N, D = h.shape
    K = weight.shape[0]
    S = len(segment_sizes)
    _check_heads(K)
    BLOCK_N, BLOCK_D, BLOCK_K = _config(N, D, K, h.device, _FWD_TILE)
    num_blocks = triton.cdiv(N, BLOCK_N)
    part = torch.empty((num_blocks, S, K, 3), dtype=compute_dtype(h.dtype), device=h.device)
    _fwd_kernel[(num_blocks,)](
        h, weight, bias, _offsets(segment_sizes, h.device), part,
        N, D, S,
        h.stride(0), h.stride(1), weight.stride(0), weight.stride(1), bias.stride(0),
        K=K, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, BLOCK_K=BLOCK_K, ACC=_acc(h.dtype),
        num_warps=_NUM_WARPS, enable_fp_fusion=True,
    )
    return part.sum(dim=0)


def backward(grad_out: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
             segment_sizes: Sequence[int], need_grad_h: bool = True,
             need_grad_weight_bias: bool = True,
             ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients w.r.t. ``(h, weight, bias)``, each in its input's dtype; skipped ones are None."""
    N, D = h.shape
    K = weight.shape[0]
    S = len(segment_sizes)
    _check_heads(K)
    if not (need_grad_h or need_grad_weight_bias):
        return None, None, None
    BLOCK_N, BLOCK_D, BLOCK_K = _config(N, D, K, h.device, _BWD_TILE)
    num_blocks = triton.cdiv(N, BLOCK_N)
    max_programs = _overrides["max_programs"]
    if max_programs is None:
        max_programs = 4 * _sm_count(h.device) if h.device.type == "cuda" else num_blocks
    programs = max(1, min(num_blocks, max_programs))
    acc_dtype = compute_dtype(h.dtype)
    grad_h = torch.empty((N, D), dtype=h.dtype, device=h.device) if need_grad_h else h
    if need_grad_weight_bias:
        gw_part = torch.empty((programs, K, D), dtype=acc_dtype, device=h.device)
        gb_part = torch.empty((programs, K), dtype=acc_dtype, device=h.device)
    else:  # never touched by the kernel
        gw_part = gb_part = torch.empty(0, dtype=acc_dtype, device=h.device)
    _bwd_kernel[(programs,)](
        h, weight, bias, _offsets(segment_sizes, h.device), grad_out, grad_h, gw_part, gb_part,
        N, D, S, num_blocks,
        h.stride(0), h.stride(1), weight.stride(0), weight.stride(1), bias.stride(0),
        grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
        grad_h.stride(0), grad_h.stride(1),
        K=K, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, BLOCK_K=BLOCK_K, ACC=_acc(h.dtype),
        COMPUTE_GH=need_grad_h, COMPUTE_GWB=need_grad_weight_bias,
        num_warps=_NUM_WARPS, enable_fp_fusion=True,
    )
    if not need_grad_weight_bias:
        return grad_h, None, None
    grad_w = gw_part.sum(dim=0).to(weight.dtype)
    grad_b = gb_part.sum(dim=0).to(bias.dtype)
    return (grad_h if need_grad_h else None), grad_w, grad_b
