"""``triton`` backend: Triton kernels for every op of the core.

Kernels live beside this file, one module per family (``norm``, ``rope``, ``ffn``,
``attention_prefill``, ``attention_decode``, ``sampling``); they are imported on first call,
so this plugin loads (and says why it cannot run) where Triton is missing. Without a CUDA
device the kernels run on Triton's CPU interpreter when ``TRITON_INTERPRET=1``.

No kernel synchronises with the host or allocates a data-dependent size, so decode steps
can be captured in a CUDA graph once the autotuned kernels have been warmed up at the shape.
``tuned_configs()`` returns the config each kernel ran with, for the run record.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch

import kbench
from kbench.ops import BUILTIN_OPS
from kbench.ops.base import FLOAT_DTYPES, Case, dtype_name

BACKEND = "triton"
MAX_HEAD_DIM = 256
MIN_HEAD_DIM = 16  # tl.dot needs at least 16 along the reduction
MAX_TOPK = 1024


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def available() -> str | None:
    """Why the Triton kernels cannot run in this process at all, or None."""
    if importlib.util.find_spec("triton") is None:
        return "triton not installed (pip install triton)"
    return None


def _interpreting() -> bool:
    from kbench_triton.common import interpreting

    return interpreting()


def _device_reason(device: torch.device) -> str | None:
    if device.type == "cuda":
        return None if torch.cuda.is_available() or _interpreting() else "no CUDA device"
    if device.type == "cpu":
        if _interpreting():
            return None
        return "no CUDA device (set TRITON_INTERPRET=1 to run on the CPU interpreter)"
    return f"Triton kernels run on CUDA devices, not {device.type}"


def _dtype_reason(dtype: torch.dtype) -> str | None:
    if dtype not in FLOAT_DTYPES:
        return f"dtype {dtype_name(dtype)} not supported (float32, bfloat16, float16)"
    return None


def _common_reason(dtype: torch.dtype, device: torch.device) -> str | None:
    return _device_reason(device) or _dtype_reason(dtype)


def supports_elementwise(case: Case, dtype: torch.dtype, device: torch.device) -> str | None:
    return _common_reason(dtype, device)


def supports_ffn(case: Case, dtype: torch.dtype, device: torch.device) -> str | None:
    if case.get("bias"):
        return "no bias terms (mlp_bias)"
    return _common_reason(dtype, device)


def supports_linear(case: Case, dtype: torch.dtype, device: torch.device) -> str | None:
    if case.get("bias"):
        return "no bias terms (attention_bias)"
    return _common_reason(dtype, device)


def supports_rope(case: Case, dtype: torch.dtype, device: torch.device) -> str | None:
    head_dim = case.get("head_dim", 0)
    if head_dim % 2:
        return f"head_dim {head_dim} is odd"
    return _common_reason(dtype, device)


def _attention_reason(case: Case) -> str | None:
    head_dim = case.get("head_dim", 128)
    if not MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM:
        return f"head_dim {head_dim} outside [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}]"
    heads, kv_heads = case.get("heads", 1), case.get("kv_heads", case.get("heads", 1))
    if kv_heads <= 0 or heads % kv_heads:
        return f"heads {heads} not a multiple of kv_heads {kv_heads}"
    return None


def supports_attention(case: Case, dtype: torch.dtype, device: torch.device) -> str | None:
    return _common_reason(dtype, device) or _attention_reason(case)


def supports_sampling(case: Case, dtype: torch.dtype, device: torch.device) -> str | None:
    k = case.get("k", case.get("top_k", 0)) or 0
    if k > MAX_TOPK:
        return f"k {k} above {MAX_TOPK} (the top-k kernel keeps its candidates in registers)"
    return _common_reason(dtype, device)


def _lazy(module: str, function: str):
    """A callable that imports ``kbench_triton.<module>`` on first use (Triton is optional)."""

    def call(**inputs):
        return getattr(importlib.import_module(f"kbench_triton.{module}"), function)(**inputs)

    call.__name__ = f"triton_{function}"
    return call


# op -> (module, function, supports, description)
KERNELS = {
    "rmsnorm": ("norm", "rmsnorm", supports_elementwise, "one row per program, fp32 reduction"),
    "add_rmsnorm": ("norm", "add_rmsnorm", supports_elementwise, "residual add fused, new residual in place"),
    "rope": ("rope", "rope", supports_rope, "q and k in one launch, in place, precise sin/cos"),
    "swiglu": ("ffn", "swiglu", supports_elementwise, "silu(gate) * up, strided rows"),
    "ffn": ("ffn", "ffn", supports_ffn,
            "up to 8 tokens: skinny split-K Triton GEMMs, swiglu fused into gate/up, down timed against "
            "cuBLAS; else cuBLAS GEMMs around the Triton swiglu"),
    "linear": ("ffn", "linear", supports_linear,
               "up to 8 rows: the skinny split-K GEMM or cuBLAS, whichever a CUDA-graph timing finds faster "
               "for the shape; else cuBLAS"),
    "kv_write": ("kv_cache", "kv_write", supports_elementwise,
                 "k and v in one launch, a program per token and row block; contiguous or paged"),
    "attention_prefill": ("attention_prefill", "attention_prefill", supports_attention,
                          "FlashAttention-2 tiling, causal varlen, GQA by head index"),
    "attention_decode": ("attention_decode", "attention_decode", supports_attention,
                         "split-KV flash-decoding and a merge, one KV head per query group, paged or contiguous"),
    "sample": ("sampling", "sample", supports_sampling,
               "threshold search, no vocabulary sort; top-k's threshold from the filter top-k"),
    "topk": ("sampling", "topk", supports_sampling,
             "filter: scores >= the k-th largest of 2k group maxima, then a top-k of those; radix select "
             "past k 256 or when too many pass"),
}


def tuned_configs() -> dict[str, dict[str, str]]:
    """kernel -> shape key -> config (autotuned on a GPU, heuristic otherwise) used so far."""
    if available():
        return {}
    from kbench_triton.common import chosen_configs

    return chosen_configs()


@kbench.hookimpl
def record_details():
    configs = tuned_configs()
    return {"tuned_configs": configs} if configs else None


@kbench.hookimpl
def register_backends(register):
    known_ops = {op.name for op in BUILTIN_OPS}
    version = _triton_version()
    for op, (module, function, supports, description) in KERNELS.items():
        if op in known_ops:
            register(op, BACKEND, _lazy(module, function), supports=supports, available=available,
                     version=version, description=description)
