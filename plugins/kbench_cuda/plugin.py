"""``cuda`` backend: hand-written CUDA C++ kernels (csrc/*.cu) as torch custom ops.

The kernels are compiled on first use with torch.utils.cpp_extension (see ``build.py``) and
called through ``torch.ops.kbench_cuda.*``, so they run under CUDA graphs and torch.compile.
Where no GPU, no nvcc or no ninja is present, or the build fails, every op of this backend is
listed as unavailable with that reason (the compiler's message for a failed build).

Ops: rmsnorm, add_rmsnorm, rope, swiglu, ffn (cuBLAS GEMMs around swiglu), linear (decode: at
most 8 tokens), sample, topk, attention_decode (no attention_prefill: choose another backend
for it). No call synchronises with the host or allocates a size that depends on data.
"""

from __future__ import annotations

import functools

import torch

import kbench
from kbench.ops import BUILTIN_OPS
from kbench.ops.base import FLOAT_DTYPES, Case, dtype_name
from kbench_cuda import build, kernels

BACKEND = "cuda"
# rmsnorm holds a row in registers: at most 8 accesses of 16 bytes for each of 1024 threads
# (rows not a multiple of 16 bytes go one element per access).
NORM_MAX_ACCESSES = 8 * 1024
TOPK_MAX_K = 2048
DECODE_HEAD_DIMS = (64, 80, 128)
DECODE_MAX_GROUP = 8
# linear is a skinny-batch kernel: the tokens' rows of x live in one block's shared memory.
LINEAR_MAX_TOKENS = 8


@functools.cache
def available() -> str | None:
    """Why the kernels cannot run here, or None once they are built and loaded."""
    reason = build.load()
    if reason is None:
        kernels.register_fakes()
    return reason


def _common_reason(dtype: torch.dtype, device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"CUDA kernels run on CUDA devices, not {device.type}"
    if dtype not in FLOAT_DTYPES:
        return f"dtype {dtype_name(dtype)} not supported (float32, bfloat16, float16)"
    return None


def supports_any(case: Case, dtype: torch.dtype, device: torch.device) -> str | None:
    return _common_reason(dtype, device)


def supports_ffn(case: Case, dtype: torch.dtype, device: torch.device) -> str | None:
    if case.get("bias"):
        return "no bias terms (mlp_bias)"
    return _common_reason(dtype, device)


def supports_norm(case: Case, dtype: torch.dtype, device: torch.device) -> str | None:
    hidden = case["hidden"]
    per_access = 16 // dtype.itemsize if hidden % (16 // dtype.itemsize) == 0 else 1
    if hidden > NORM_MAX_ACCESSES * per_access:
        return f"hidden {hidden} does not fit one block's registers (at most {NORM_MAX_ACCESSES * per_access})"
    return _common_reason(dtype, device)


def supports_topk(case: Case, dtype: torch.dtype, device: torch.device) -> str | None:
    if case["k"] > TOPK_MAX_K:
        return f"k {case['k']} > {TOPK_MAX_K}"
    return _common_reason(dtype, device)


def supports_attention_decode(case: Case, dtype: torch.dtype, device: torch.device) -> str | None:
    head_dim, group = case["head_dim"], case["heads"] // case["kv_heads"]
    if head_dim not in DECODE_HEAD_DIMS:
        return f"head_dim {head_dim} not supported ({', '.join(map(str, DECODE_HEAD_DIMS))})"
    if group > DECODE_MAX_GROUP:
        return f"{group} query heads per kv head > {DECODE_MAX_GROUP}"
    return _common_reason(dtype, device)


@functools.cache
def _shared_memory_bytes(index: int) -> int:
    """The most shared memory one block may opt in to on CUDA device ``index``."""
    return torch.cuda.get_device_properties(index).shared_memory_per_block_optin


def supports_linear(case: Case, dtype: torch.dtype, device: torch.device) -> str | None:
    tokens, in_features = case["tokens"], case["in_features"]
    if tokens > LINEAR_MAX_TOKENS:
        return f"tokens {tokens} > {LINEAR_MAX_TOKENS}: a skinny-batch kernel for decode"
    reason = _common_reason(dtype, device)
    if reason or not torch.cuda.is_available():
        return reason
    x_bytes = tokens * in_features * dtype.itemsize
    limit = _shared_memory_bytes(torch.cuda.current_device() if device.index is None else device.index)
    if x_bytes > limit:
        return f"x ({tokens} x {in_features} {dtype_name(dtype)}: {x_bytes} bytes) exceeds a block's shared memory ({limit})"
    return None


IMPLEMENTATIONS = {
    "rmsnorm": (kernels.rmsnorm, supports_norm),
    "add_rmsnorm": (kernels.add_rmsnorm, supports_norm),
    "rope": (kernels.rope, supports_any),
    "swiglu": (kernels.swiglu, supports_any),
    "ffn": (kernels.ffn, supports_ffn),
    "linear": (kernels.linear, supports_linear),
    "sample": (kernels.sample, supports_any),
    "topk": (kernels.topk, supports_topk),
    "attention_decode": (kernels.attention_decode, supports_attention_decode),
}


@kbench.hookimpl
def register_backends(register):
    defined = {op.name for op in BUILTIN_OPS}
    for name, (fn, supports) in IMPLEMENTATIONS.items():
        if name in defined:
            register(name, BACKEND, fn, supports=supports, available=available, version=kbench.__version__,
                     description="CUDA C++ kernels, JIT-built with torch.utils.cpp_extension")
