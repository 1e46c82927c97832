"""The op-contract callables of the ``cuda`` backend over ``torch.ops.kbench_cuda``.

Each function takes exactly the keyword arguments of its op (kbench/ops/*.py) and calls the
custom op that ``build.load()`` registered. ``register_fakes()`` gives every op a shape-only
implementation, so torch.compile can trace through them without running a kernel.
"""

from __future__ import annotations

import torch


def _ops():
    # Calls go to each op's `.default` overload: it skips the overload-packet resolution,
    # about a microsecond of the launch overhead that decode-sized calls are made of.
    return torch.ops.kbench_cuda


def rmsnorm(x, weight, eps):
    return _ops().rmsnorm.default(x, weight, eps)


def add_rmsnorm(x, residual, weight, eps):
    # residual must be contiguous: the kernel writes x + residual into it.
    out = _ops().add_rmsnorm.default(x, residual, weight, eps)
    return out, residual


def rope(q, k, positions, inv_freq, style):
    _ops().rope.default(q, k, positions, inv_freq, style == "interleaved")
    return q, k


def swiglu(gate, up):
    return _ops().swiglu.default(gate, up)


def ffn(x, w_gate_up, w_down):
    """down(silu(gate(x)) * up(x)): cuBLAS GEMMs around the CUDA swiglu kernel.

    gate and up come from two GEMMs on the contiguous row blocks of ``w_gate_up`` rather than
    one GEMM and two strided halves, which the kernel would have to copy first.
    """
    intermediate = w_gate_up.shape[0] // 2
    gate = torch.nn.functional.linear(x, w_gate_up[:intermediate])
    up = torch.nn.functional.linear(x, w_gate_up[intermediate:])
    return torch.nn.functional.linear(swiglu(gate, up), w_down)


def linear(x, weight, bias=None):
    return _ops().linear.default(x, weight, bias)


def sample(logits, uniforms, temperature, top_k, top_p):
    return _ops().sample.default(logits, uniforms, float(temperature), int(top_k), float(top_p))


def topk(logits, k):
    return _ops().topk.default(logits, int(k))


def attention_decode(q, k_cache, v_cache, cache_seqlens, block_table, scale):
    return _ops().attention_decode.default(q, k_cache, v_cache, cache_seqlens, block_table, float(scale))


def register_fakes() -> None:
    """Shape-only implementations of every kbench_cuda op, for torch.compile's tracing."""
    register = torch.library.register_fake

    @register("kbench_cuda::rmsnorm")
    def _(x, weight, eps):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @register("kbench_cuda::add_rmsnorm")
    def _(x, residual, weight, eps):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @register("kbench_cuda::rope")
    def _(q, k, positions, inv_freq, interleaved):
        return None

    @register("kbench_cuda::swiglu")
    def _(gate, up):
        return torch.empty_like(gate, memory_format=torch.contiguous_format)

    @register("kbench_cuda::linear")
    def _(x, weight, bias=None):
        return x.new_empty((x.shape[0], weight.shape[0]))

    @register("kbench_cuda::sample")
    def _(logits, uniforms, temperature, top_k, top_p):
        return logits.new_empty((logits.shape[0],), dtype=torch.int64)

    @register("kbench_cuda::topk")
    def _(logits, k):
        return logits.new_empty((logits.shape[0], k)), logits.new_empty((logits.shape[0], k), dtype=torch.int64)

    @register("kbench_cuda::attention_decode")
    def _(q, k_cache, v_cache, cache_seqlens, block_table, scale):
        return torch.empty_like(q, memory_format=torch.contiguous_format)
