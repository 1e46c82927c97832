"""SwiGLU ``silu(gate) * up`` and the whole MLP with the activation as one fused kernel.

``swiglu`` follows ``kbench.ops.ffn``: silu computed in float32 and rounded to the dtype (as
torch's ``F.silu`` on a bf16 tensor), then the product rounded again. ``ffn`` runs the two
GEMMs through cuBLAS (``F.linear``) and reads gate and up straight out of the fused
``[tokens, 2 * intermediate]`` projection, so the split never copies. With at most
``gemv.MAX_ROWS`` tokens (decode) the gate/up product is the skinny kernel of
``kbench_triton.gemv`` with the activation fused into it, and the down product goes to cuBLAS
or the skinny split-K kernel, whichever a CUDA-graph timing finds faster for the shape on the
first call (the choice is recorded as ``ffn_down`` in the run record): the two are close, and
which one wins depends on the shape and the GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kbench.bench.timing import measure
from kbench_triton import gemv
from kbench_triton.common import interpreting, launch_config


@triton.jit
def _swiglu_at(gate_ptr, up_ptr, out_ptr, row, col, mask, stride_gate, stride_up, stride_out):
    """out[row, col] = silu(gate) * up, rounded to the dtype after the SiLU and after the product."""
    gate = tl.load(gate_ptr + row * stride_gate + col, mask=mask, other=0.0)
    up = tl.load(up_ptr + row * stride_up + col, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    silu = (g / (1.0 + tl.exp(-g))).to(gate.dtype)
    out = (silu.to(tl.float32) * up.to(tl.float32)).to(gate.dtype)
    tl.store(out_ptr + row * stride_out + col, out, mask=mask)


@triton.jit
def _swiglu_kernel(gate_ptr, up_ptr, out_ptr, stride_gate, stride_up, stride_out, intermediate,
                   BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    _swiglu_at(gate_ptr, up_ptr, out_ptr, row, cols, cols < intermediate, stride_gate, stride_up, stride_out)


@triton.jit
def _swiglu_flat_kernel(gate_ptr, up_ptr, out_ptr, stride_gate, stride_up, stride_out, intermediate, total,
                        BLOCK: tl.constexpr, WIDE: tl.constexpr):
    """The tensor as one flat range of tokens x intermediate elements, as torch.compile lays a
    pointwise kernel out: no partly idle block at the end of every row."""
    start = tl.program_id(0)
    if WIDE:
        start = start.to(tl.int64)
    offs = start * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    _swiglu_at(gate_ptr, up_ptr, out_ptr, offs // intermediate, offs % intermediate, mask,
               stride_gate, stride_up, stride_out)


# from this many elements the flat layout: row blocks leave a partly idle block at the end of
# each row, which costs at many tokens; below, row blocks are faster (see docs/kernels.md)
FLAT_FROM_ELEMENTS = 1 << 22


def _swiglu_config(tokens: int, intermediate: int) -> tuple[bool, int, int]:
    """(FLAT, BLOCK, num_warps): flat 2048-element blocks for large tensors, else 1024-wide
    blocks along each row (wider ones leave too few programs to stream one token's row)."""
    if tokens * intermediate >= FLAT_FROM_ELEMENTS:
        return True, 2048, 8
    return False, min(triton.next_power_of_2(intermediate), 1024), 4


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gate, up: [tokens, intermediate] (rows may be strided) -> [tokens, intermediate]."""
    if gate.stride(-1) != 1:
        gate = gate.contiguous()
    if up.stride(-1) != 1:
        up = up.contiguous()
    tokens, intermediate = gate.shape
    out = torch.empty((tokens, intermediate), dtype=gate.dtype, device=gate.device)
    flat, block, num_warps = _swiglu_config(tokens, intermediate)
    launch_config("swiglu", (tokens, intermediate, gate.dtype), FLAT=flat, BLOCK=block, num_warps=num_warps)
    if tokens and flat:
        total = tokens * intermediate
        _swiglu_flat_kernel[(triton.cdiv(total, block),)](
            gate, up, out, gate.stride(0), up.stride(0), out.stride(0), intermediate, total,
            BLOCK=block, WIDE=max(total, tokens * max(gate.stride(0), up.stride(0))) >= 2**31,
            num_warps=num_warps)
    elif tokens:
        grid = (tokens, triton.cdiv(intermediate, block))
        _swiglu_kernel[grid](gate, up, out, gate.stride(0), up.stride(0), out.stride(0), intermediate,
                             BLOCK=block, num_warps=num_warps)
    return out


# (rows bucket, w_down shape, dtype) -> "skinny" or "cublas", chosen once per shape by timing
_DOWN_PATHS: dict[tuple, str] = {}
# copies of a weight that a timing cycles through, so that it reads the weights from memory as a
# decode step does (llama2-7b's 90 MB w_down would otherwise sit partly in the 50 MB L2)
TIMING_BYTES = 256 * 2**20


def weight_streaming_us(call: Callable[[torch.Tensor], object], w: torch.Tensor) -> float:
    """µs per ``call(w)`` under CUDA-graph replay (no launch overhead, as in a captured decode
    step), cycling through copies of ``w`` of ``TIMING_BYTES`` in all."""
    copies = [w] + [w.clone() for _ in range(triton.cdiv(TIMING_BYTES, w.nbytes) - 1)]
    timing = measure(lambda: [call(c) for c in copies], device=w.device, cuda_graph=True, graph_calls=3,
                     warmup_ms=5.0, rep_ms=20.0)
    return timing.median_us / len(copies)


def _choose_down_path(h: torch.Tensor, w_down: torch.Tensor) -> str:
    """The faster of cuBLAS and the skinny split-K kernel for ``h @ w_down.T`` on this GPU.
    cuBLAS where no timing is possible: on the interpreter or a CPU."""
    if interpreting() or h.device.type != "cuda":
        return "cublas"
    gemv.linear(h, w_down)  # autotune the skinny kernel before timing it
    skinny = weight_streaming_us(lambda w: gemv.linear(h, w), w_down)
    cublas = weight_streaming_us(lambda w: F.linear(h, w), w_down)
    return "skinny" if skinny < cublas else "cublas"


def _down(h: torch.Tensor, w_down: torch.Tensor, kernel: str = "ffn_down") -> torch.Tensor:
    """``h @ w_down.T`` for a few rows: the path chosen for this shape (recorded in the run as
    ``kernel``)."""
    key = (1 if h.shape[0] == 1 else gemv.MAX_ROWS, tuple(w_down.shape), h.dtype)
    path = _DOWN_PATHS.get(key)
    if path is None and h.is_cuda and (torch.cuda.is_current_stream_capturing() or torch.cuda.get_sync_debug_mode()):
        # no timing inside a capture or a host-sync check (the pipeline's warm-up step): cuBLAS
        # this once, and the next plain call chooses
        return F.linear(h, w_down)
    if path is None:
        path = _DOWN_PATHS[key] = _choose_down_path(h, w_down)
        launch_config(kernel, key, path=path)
    return gemv.linear(h, w_down) if path == "skinny" else F.linear(h, w_down)


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The ``linear`` op: for a few rows the skinny kernel or cuBLAS, whichever is faster for
    the shape (the skinny kernel on the interpreter, so conformance runs it); cuBLAS above."""
    if x.shape[0] > gemv.MAX_ROWS:
        return F.linear(x, weight)
    if interpreting():
        return gemv.linear(x, weight)
    return _down(x, weight, kernel="linear")


def ffn(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """down(silu(gate(x)) * up(x)): cuBLAS GEMMs around the Triton activation, or the skinny
    decode kernels for a few tokens."""
    if x.shape[0] <= gemv.MAX_ROWS and x.dim() == 2:
        return _down(gemv.swiglu_linear(x, w_gate_up), w_down)
    intermediate = w_gate_up.shape[0] // 2
    gate_up = F.linear(x, w_gate_up)
    return F.linear(swiglu(gate_up[:, :intermediate], gate_up[:, intermediate:]), w_down)
