"""SwiGLU ``silu(gate) * up`` and the whole MLP with the activation as one fused kernel.

``swiglu`` follows ``kbench.ops.ffn``: silu computed in float32 and rounded to the dtype (as
torch's ``F.silu`` on a bf16 tensor), then the product rounded again. ``ffn`` runs the two
GEMMs through cuBLAS (``F.linear``) and reads gate and up straight out of the fused
``[tokens, 2 * intermediate]`` projection, so the split never copies. With at most
``gemv.MAX_ROWS`` tokens (decode) the gate/up product is the skinny kernel of
``kbench_triton.gemv`` with the activation fused into it, and the down product stays with
cuBLAS: on the H100, llama2-7b's w_down at 1 to 8 rows took 47 us with cuBLAS against 58-61 us
with the skinny kernel (scripts/device/profile_decode.py --gemms).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kbench_triton import gemv
from kbench_triton.common import launch_config


@triton.jit
def _swiglu_kernel(gate_ptr, up_ptr, out_ptr, stride_gate, stride_up, stride_out, intermediate,
                   BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < intermediate
    gate = tl.load(gate_ptr + row * stride_gate + cols, mask=mask, other=0.0)
    up = tl.load(up_ptr + row * stride_up + cols, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    silu = (g / (1.0 + tl.exp(-g))).to(gate.dtype)
    out = (silu.to(tl.float32) * up.to(tl.float32)).to(gate.dtype)
    tl.store(out_ptr + row * stride_out + cols, out, mask=mask)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gate, up: [tokens, intermediate] (rows may be strided) -> [tokens, intermediate]."""
    if gate.stride(-1) != 1:
        gate = gate.contiguous()
    if up.stride(-1) != 1:
        up = up.contiguous()
    tokens, intermediate = gate.shape
    out = torch.empty((tokens, intermediate), dtype=gate.dtype, device=gate.device)
    # 16 KiB of each input per program at 8 warps: 96% of copy at 32768 x 11008 bf16 on H100
    block = min(triton.next_power_of_2(intermediate), 16384 // gate.element_size())
    num_warps = max(1, min(8, block * gate.element_size() // 2048))
    launch_config("swiglu", (intermediate, gate.dtype), BLOCK=block, num_warps=num_warps)
    if tokens:
        grid = (tokens, triton.cdiv(intermediate, block))
        _swiglu_kernel[grid](gate, up, out, gate.stride(0), up.stride(0), out.stride(0), intermediate,
                             BLOCK=block, num_warps=num_warps)
    return out


def ffn(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """down(silu(gate(x)) * up(x)): cuBLAS GEMMs around the Triton activation, or the skinny
    decode kernels for a few tokens."""
    if x.shape[0] <= gemv.MAX_ROWS and x.dim() == 2:
        return F.linear(gemv.swiglu_linear(x, w_gate_up), w_down)
    intermediate = w_gate_up.shape[0] // 2
    gate_up = F.linear(x, w_gate_up)
    return F.linear(swiglu(gate_up[:, :intermediate], gate_up[:, intermediate:]), w_down)
