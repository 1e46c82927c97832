"""Skinny GEMMs for decode: ``x @ w.T`` with a few rows of ``x``, bound by reading ``w``.

A decode step multiplies 1 to a few dozen token rows by every weight matrix, so its time is
the time to stream the weights once. ``linear`` is that product; ``swiglu_linear`` reads the
gate and up row blocks of a fused ``[2 * intermediate, hidden]`` projection in the same
program and writes ``silu(gate) * up`` directly, so the ``[tokens, 2 * intermediate]``
intermediate never goes through memory.

Each program owns ``BLOCK_N`` output columns and walks the whole of K, so nothing needs a
second pass or atomics and results are deterministic. One row of ``x`` (batch 1) takes a
multiply-and-reduce path; more rows go through ``tl.dot`` with the rows padded to 16.
Rounding follows the reference: the projection is rounded to the dtype before the
activation, silu is computed in float32 and rounded, then the product is rounded.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kbench_triton.common import TunedKernel, dot, dot_flags, semaphores

# Up to this many rows of x (decode) the skinny kernels are used (see docs/kernels.md).
MAX_ROWS = 8


@triton.jit
def _accumulate(acc, x, w_ptrs, w_mask, ONE_ROW: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    w = tl.load(w_ptrs, mask=w_mask, other=0.0)
    if ONE_ROW:
        return acc + tl.sum(w.to(tl.float32) * x.to(tl.float32), axis=1)[None, :]
    return acc + dot(x, tl.trans(w), IEEE, UPCAST)


@triton.jit
def _skinny_kernel(x_ptr, w_ptr, out_ptr, partial_ptr, counter_ptr, rows, n, k, half_n, stride_x, stride_w,
                   stride_out, GATED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    ONE_ROW: tl.constexpr = BLOCK_M == 1
    PLANES: tl.constexpr = 2 if GATED else 1
    block_n = tl.program_id(0)
    split = tl.program_id(1)
    # this program's share of K: whole BLOCK_K steps, the last split takes the remainder
    per_split = tl.cdiv(tl.cdiv(k, BLOCK_K), SPLIT_K) * BLOCK_K
    k_start = split * per_split
    k_end = tl.minimum(k_start + per_split, k)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = block_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m, mask_n = offs_m < rows, offs_n < n
    x_ptrs = x_ptr + offs_m[:, None] * stride_x + k_start + offs_k[None, :]
    w_ptrs = w_ptr + offs_n[:, None].to(tl.int64) * stride_w + k_start + offs_k[None, :]
    up_ptrs = w_ptrs + half_n * stride_w
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for start in range(k_start, k_end, BLOCK_K):
        mask_k = offs_k < k_end - start
        x = tl.load(x_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w_mask = mask_n[:, None] & mask_k[None, :]
        acc = _accumulate(acc, x, w_ptrs, w_mask, ONE_ROW, IEEE, UPCAST)
        if GATED:
            acc_up = _accumulate(acc_up, x, up_ptrs, w_mask, ONE_ROW, IEEE, UPCAST)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
        up_ptrs += BLOCK_K
    out_mask = mask_m[:, None] & mask_n[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * stride_out + offs_n[None, :]
    if SPLIT_K == 1:
        _finish(acc, acc_up, out_ptrs, out_mask, GATED)
    else:
        # every split stores its float32 partial; the last split of this column block to
        # arrive adds them up in split order (deterministic) and finishes the block
        tile = offs_m[:, None] * n + offs_n[None, :]
        plane = rows * n
        tl.store(partial_ptr + split * PLANES * plane + tile, acc, mask=out_mask)
        if GATED:
            tl.store(partial_ptr + (split * PLANES + 1) * plane + tile, acc_up, mask=out_mask)
        tl.debug_barrier()  # the whole program's stores happen before its arrival is counted
        arrived = tl.atomic_add(counter_ptr + block_n, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s in tl.static_range(SPLIT_K):
                acc += tl.load(partial_ptr + s * PLANES * plane + tile, mask=out_mask, other=0.0,
                               cache_modifier=".cg")
                if GATED:
                    acc_up += tl.load(partial_ptr + (s * PLANES + 1) * plane + tile, mask=out_mask, other=0.0,
                                      cache_modifier=".cg")
            _finish(acc, acc_up, out_ptrs, out_mask, GATED)
            tl.atomic_xchg(counter_ptr + block_n, 0, sem="relaxed", scope="gpu")  # ready for the next launch


@triton.jit
def _finish(acc, acc_up, out_ptrs, out_mask, GATED: tl.constexpr):
    """Round the float32 sums to the output dtype (after the activation when GATED) and store."""
    dtype = out_ptrs.dtype.element_ty
    if GATED:
        gate = acc.to(dtype).to(tl.float32)
        silu = (gate / (1.0 + tl.exp(-gate))).to(dtype)
        result = (silu.to(tl.float32) * acc_up.to(dtype).to(tl.float32)).to(dtype)
    else:
        result = acc.to(dtype)
    tl.store(out_ptrs, result, mask=out_mask)


SPLITS = (1, 2, 4)
MIN_BLOCK_N = 16


def _configs() -> list[triton.Config]:
    # one row took (32, 512) and 8 rows (32, 128) at 4 warps, so the space stays around those;
    # compiling each config is most of the tuning time
    return [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split}, num_warps=4, num_stages=stages)
            for bn in (MIN_BLOCK_N, 32) for bk in (128, 256, 512) for stages in (3, 4) for split in SPLITS]


def _prune(configs, named_args, **kwargs):
    """Drop splits of K finer than one BLOCK_K step each, and the tiles a row block never won on
    an H100 over llama2-7b's five projections, autotuned four times: a 128-wide K step for one
    row, 16 columns for a block of rows (each config compiled costs a tuning more than timing it)."""
    args = {**named_args, **kwargs}
    k, one_row = args["k"], args["BLOCK_M"] == 1
    return [c for c in configs if triton.cdiv(k, c.kwargs["BLOCK_K"]) >= c.kwargs["SPLIT_K"]
            and not (one_row and c.kwargs["BLOCK_K"] == 128) and not (not one_row and c.kwargs["BLOCK_N"] == MIN_BLOCK_N)]


_SKINNY = TunedKernel("skinny_gemm", _skinny_kernel, _configs(), key=["n", "k", "GATED", "BLOCK_M"],
                      interpreter_config=triton.Config({"BLOCK_N": 16, "BLOCK_K": 32, "SPLIT_K": 1}),
                      prune=_prune)


def _launch(x: torch.Tensor, w: torch.Tensor, n: int, gated: bool, split_k: int | None = None) -> torch.Tensor:
    rows, k = x.shape
    if rows > MAX_ROWS:
        raise ValueError(f"skinny GEMM takes at most {MAX_ROWS} rows of x, got {rows}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    if w.stride(-1) != 1:
        w = w.contiguous()
    out = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    if rows == 0:
        return out
    block_m = 1 if rows == 1 else 16
    # float32 partials of every split (tuning may pick up to max(SPLITS)); counters per column block
    most = split_k or max(SPLITS)
    partial = torch.empty((most, 2 if gated else 1, rows, n), dtype=torch.float32, device=x.device)
    counters = semaphores("skinny_gemm", triton.cdiv(n, MIN_BLOCK_N), x.device)
    args = (x, w, out, partial, counters, rows, n, k, n, x.stride(0), w.stride(0), out.stride(0))
    flags = dict(GATED=gated, BLOCK_M=block_m, **dot_flags(x.dtype))
    if split_k is None:
        _SKINNY[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])](*args, **flags)
    else:  # a fixed split (tests cover every reduction path with it)
        config = _SKINNY.interpreter_config.kwargs | {"SPLIT_K": split_k}
        _skinny_kernel[(triton.cdiv(n, config["BLOCK_N"]), split_k)](*args, **flags, **config)
    return out


def linear(x: torch.Tensor, w: torch.Tensor, split_k: int | None = None) -> torch.Tensor:
    """``x @ w.T`` for x ``[rows <= MAX_ROWS, k]`` and w ``[n, k]``; ``split_k`` fixes the
    split of K (default: tuned)."""
    return _launch(x, w, w.shape[0], gated=False, split_k=split_k)


def swiglu_linear(x: torch.Tensor, w_gate_up: torch.Tensor, split_k: int | None = None) -> torch.Tensor:
    """``silu(x @ gate.T) * (x @ up.T)`` where gate and up are the halves of ``w_gate_up``."""
    return _launch(x, w_gate_up, w_gate_up.shape[0] // 2, gated=True, split_k=split_k)
