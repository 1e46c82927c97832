"""The kbench plugin of backend 'liger': Liger-Kernel's RMSNorm, add+RMSNorm, RoPE and SwiGLU."""

from __future__ import annotations

import importlib.metadata
import importlib.util

import torch

import kbench
from kbench_liger import adapters

BACKEND = "liger"
# Liger's launcher refuses a row wider than this (one program holds one row).
MAX_ROW = 65536


def liger_version() -> str | None:
    try:
        return importlib.metadata.version("liger-kernel")
    except importlib.metadata.PackageNotFoundError:
        return None


def available() -> str | None:
    """Why liger cannot run in this process: liger_kernel missing, or no CUDA device."""
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger_kernel is not installed (pip install liger-kernel)"
    if not torch.cuda.is_available():
        return "no CUDA device (Liger-Kernel's Triton kernels run on GPUs only)"
    return None


def _needs_cuda(device: torch.device) -> str | None:
    return None if device.type == "cuda" else f"liger runs on CUDA tensors, not {device.type}"


def norm_supports(case, dtype, device):
    if case["hidden"] > MAX_ROW:
        return f"hidden={case['hidden']} > {MAX_ROW}, the widest row Liger launches"
    return _needs_cuda(device)


def swiglu_supports(case, dtype, device):
    if case["intermediate"] > MAX_ROW:
        return f"intermediate={case['intermediate']} > {MAX_ROW}, the widest row Liger launches"
    return _needs_cuda(device)


def rope_supports(case, dtype, device):
    if case.get("style", "half") != "half":
        return "Liger rotates half-split pairs (HF rotate_half) only, not interleaved (Meta) pairs"
    return _needs_cuda(device)


@kbench.hookimpl
def register_backends(register):
    version = liger_version()
    common = {"available": available, "version": version}
    register("rmsnorm", BACKEND, adapters.rmsnorm, supports=norm_supports,
             description="liger_kernel.ops.rms_norm (casting mode llama)", **common)
    register("add_rmsnorm", BACKEND, adapters.add_rmsnorm, supports=norm_supports,
             description="liger_kernel.ops.fused_add_rms_norm (casting mode llama)", **common)
    register("rope", BACKEND, adapters.rope, supports=rope_supports,
             description="liger_kernel.ops.rope; cos/sin built per call from positions", **common)
    register("swiglu", BACKEND, adapters.swiglu, supports=swiglu_supports,
             description="liger_kernel.ops.swiglu", **common)
