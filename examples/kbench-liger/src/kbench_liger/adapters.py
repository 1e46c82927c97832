"""Liger-Kernel's forward functions adapted to kbench's op contracts (``kbench.ops``).

Each adapter takes exactly the op's keyword arguments and returns what the op returns.
Liger is imported on first call, so this module imports without it.
"""

from __future__ import annotations

import torch

# Liger's casting mode matching Hugging Face LlamaRMSNorm: rsqrt in float32, weight product in x.dtype.
LLAMA_CASTING = "llama"


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [tokens, hidden], weight: [hidden] -> [tokens, hidden]."""
    from liger_kernel.ops.rms_norm import rms_norm_forward

    out, *_ = rms_norm_forward(x.contiguous(), weight, eps, 0.0, LLAMA_CASTING, None)
    return out


def add_rmsnorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
    """x, residual: [tokens, hidden] -> (rmsnorm(x + residual), x + residual)."""
    from liger_kernel.ops.fused_add_rms_norm import fused_add_rms_norm_forward

    out, new_residual, *_ = fused_add_rms_norm_forward(x.contiguous(), residual.contiguous(), weight, eps, 0.0,
                                                       LLAMA_CASTING)
    return out, new_residual


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gate, up: [tokens, intermediate] -> silu(gate) * up."""
    from liger_kernel.ops.swiglu import swiglu_forward

    _, _, out = swiglu_forward(gate.contiguous(), up.contiguous())
    return out


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype):
    """HF's rotary cos/sin rows for ``positions``: ``[tokens, head_dim]`` each, in ``dtype``.

    Angles in float32 (``positions * inv_freq``), duplicated over both halves, then cast,
    exactly as ``LlamaRotaryEmbedding`` builds them.
    """
    angles = positions.to(torch.float32)[:, None] * inv_freq.to(torch.float32)[None, :]
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, style: str):
    """q: [tokens, heads, head_dim], k: [tokens, kv_heads, head_dim] -> rotated (q, k), half style.

    Liger wants ``[batch, heads, seq, head_dim]``; ``x.unsqueeze(0).transpose(1, 2)`` is that
    view of kbench's packed layout (one batch of ``tokens`` rows, no copy), and cos/sin rows
    are per token, so each packed token gets its own position. Liger rotates its input in
    place and returns it in its own layout, turned back here.
    """
    from liger_kernel.ops.rope import rope_forward

    if style != "half":
        raise ValueError(f"liger rotates half-split pairs only, not style {style!r}")
    cos, sin = rope_cos_sin(positions, inv_freq, q.dtype)
    q_out, k_out, *_ = rope_forward(q.unsqueeze(0).transpose(1, 2), k.unsqueeze(0).transpose(1, 2), cos, sin)
    return q_out.transpose(1, 2).squeeze(0), k_out.transpose(1, 2).squeeze(0)
