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

from kbench_triton.common import TunedKernel, dot, dot_flags

# Up to this many rows of x the skinny kernels beat cuBLAS on the H100 (see notes/triton.md).
MAX_ROWS = 8


@triton.jit
def _accumulate(acc, x, w_ptrs, w_mask, ONE_ROW: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    w = tl.load(w_ptrs, mask=w_mask, other=0.0)
    if ONE_ROW:
        return acc + tl.sum(w.to(tl.float32) * x.to(tl.float32), axis=1)[None, :]
    return acc + dot(x, tl.trans(w), IEEE, UPCAST)


@triton.jit
def _skinny_kernel(x_ptr, w_ptr, out_ptr, rows, n, k, half_n, stride_x, stride_w, stride_out,
                   GATED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   IEEE: tl.constexpr, UPCAST: tl.constexpr):
    ONE_ROW: tl.constexpr = BLOCK_M == 1
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m, mask_n = offs_m < rows, offs_n < n
    x_ptrs = x_ptr + offs_m[:, None] * stride_x + offs_k[None, :]
    w_ptrs = w_ptr + offs_n[:, None].to(tl.int64) * stride_w + offs_k[None, :]
    up_ptrs = w_ptrs + half_n * stride_w
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for start in range(0, k, BLOCK_K):
        mask_k = offs_k < k - start
        x = tl.load(x_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w_mask = mask_n[:, None] & mask_k[None, :]
        acc = _accumulate(acc, x, w_ptrs, w_mask, ONE_ROW, IEEE, UPCAST)
        if GATED:
            acc_up = _accumulate(acc_up, x, up_ptrs, w_mask, ONE_ROW, IEEE, UPCAST)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
        up_ptrs += BLOCK_K
    dtype = out_ptr.dtype.element_ty
    if GATED:
        gate = acc.to(dtype).to(tl.float32)
        silu = (gate / (1.0 + tl.exp(-gate))).to(dtype)
        result = (silu.to(tl.float32) * acc_up.to(dtype).to(tl.float32)).to(dtype)
    else:
        result = acc.to(dtype)
    out_ptrs = out_ptr + offs_m[:, None] * stride_out + offs_n[None, :]
    tl.store(out_ptrs, result, mask=mask_m[:, None] & mask_n[None, :])


def _configs() -> list[triton.Config]:
    return [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)
            for bn in (16, 32, 64) for bk in (128, 256, 512) for warps in (4, 8) for stages in (3, 4)
            if bn * bk <= 16384]


_SKINNY = TunedKernel("skinny_gemm", _skinny_kernel, _configs(), key=["n", "k", "GATED", "BLOCK_M"],
                      interpreter_config=triton.Config({"BLOCK_N": 16, "BLOCK_K": 32}))


def _launch(x: torch.Tensor, w: torch.Tensor, n: int, gated: bool) -> torch.Tensor:
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
    _SKINNY[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](
        x, w, out, rows, n, k, n, x.stride(0), w.stride(0), out.stride(0),
        GATED=gated, BLOCK_M=block_m, **dot_flags(x.dtype))
    return out


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w.T`` for x ``[rows <= MAX_ROWS, k]`` and w ``[n, k]``."""
    return _launch(x, w, w.shape[0], gated=False)


def swiglu_linear(x: torch.Tensor, w_gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(x @ gate.T) * (x @ up.T)`` where gate and up are the halves of ``w_gate_up``."""
    return _launch(x, w_gate_up, w_gate_up.shape[0] // 2, gated=True)
