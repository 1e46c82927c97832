"""RMSNorm and fused residual-add RMSNorm: one program per row, the row held in registers.

Numerics follow ``kbench.ops.norm`` exactly: the residual sum is rounded to the input dtype,
the mean of squares and ``rsqrt`` are float32, the normalised row is rounded to the dtype
before the weight product (as HF does), and the product is rounded again.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kbench_triton.common import launch_config


@triton.jit
def _rmsnorm_kernel(
    x_ptr, residual_ptr, weight_ptr, out_ptr,
    stride_x, stride_residual, stride_out,
    hidden, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    # the weight is loaded with the row, not after the reduction: past its barrier the load
    # would be one more memory round trip, which is most of a call at few rows
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0)
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + row * stride_residual + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + residual.to(tl.float32)).to(x.dtype)
        # new residual = x + residual, written in place
        tl.store(residual_ptr + row * stride_residual + cols, x, mask=mask)
    x32 = x.to(tl.float32)
    rstd = tl.math.rsqrt(tl.sum(x32 * x32, axis=0) / hidden + eps)
    normed = (x32 * rstd).to(x.dtype)
    out = (weight.to(tl.float32) * normed.to(tl.float32)).to(x.dtype)
    tl.store(out_ptr + row * stride_out + cols, out, mask=mask)


def _row_config(hidden: int, itemsize: int) -> tuple[int, int]:
    """BLOCK covering the row, 8 warps for a 4096-wide bf16 row (1 KiB of it per warp; 4 and 16
    warps were within half a percent, see docs/kernels.md)."""
    block = triton.next_power_of_2(hidden)
    num_warps = max(1, min(16, block * itemsize // 1024))
    return block, num_warps


def _launch(x, residual, weight, eps):
    x = x if x.stride(-1) == 1 else x.contiguous()
    tokens, hidden = x.shape
    out = torch.empty_like(x)
    block, num_warps = _row_config(hidden, x.element_size())
    launch_config("rmsnorm", (hidden, x.dtype), BLOCK=block, num_warps=num_warps)
    if tokens:
        _rmsnorm_kernel[(tokens,)](
            x, residual if residual is not None else x, weight, out,
            x.stride(0), residual.stride(0) if residual is not None else 0, out.stride(0),
            hidden, eps, HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=num_warps,
        )
    return out


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [tokens, hidden], weight: [hidden] -> [tokens, hidden] in x.dtype."""
    return _launch(x, None, weight, eps)


def add_rmsnorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
    """(rmsnorm(x + residual), x + residual); the new residual is written into ``residual``."""
    if residual.stride(-1) != 1:
        new_residual = residual.contiguous()
        out = _launch(x, new_residual, weight, eps)
        residual.copy_(new_residual)
        return out, residual
    return _launch(x, residual, weight, eps), residual
