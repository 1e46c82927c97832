"""The KV-cache write (``kbench.ops.kv_cache``): k and v stored at their slots in one launch.

One program per (token, row block): it reads the token's slot once and copies a block of the
token's ``kv_heads * head_dim`` key values and the same block of its values, so a decode step
writes both caches of a layer with one launch, where the reference scatter needs one per
cache (or one per layer only when k, v and the caches are views of one buffer each). The
cache is seen as rows of ``kv_heads * head_dim`` elements, contiguous and paged alike: the
slot mapping already holds the block table.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024  # elements of a row a program copies: a 32 x 128 head row in 4 programs


@triton.jit
def _kv_write_kernel(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, row, stride_k, stride_v,
                     BLOCK: tl.constexpr):
    token = tl.program_id(0)
    offsets = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < row
    slot = tl.load(slot_ptr + token).to(tl.int64)
    key = tl.load(k_ptr + token * stride_k + offsets, mask=mask)
    value = tl.load(v_ptr + token * stride_v + offsets, mask=mask)
    tl.store(k_cache_ptr + slot * row + offsets, key, mask=mask)
    tl.store(v_cache_ptr + slot * row + offsets, value, mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t: [tokens, kv_heads, head_dim]`` with each token's row dense (a copy only if it is not)."""
    return t if t.stride(2) == 1 and t.stride(1) == t.shape[2] else t.contiguous()


def kv_write(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("triton kv_write: the caches must be contiguous (rows of kv_heads * head_dim)")
    k, v = _rows(k), _rows(v)
    tokens, row = k.shape[0], k.shape[1] * k.shape[2]
    if tokens:
        grid = (tokens, triton.cdiv(row, BLOCK))
        _kv_write_kernel[grid](k, v, k_cache, v_cache, slot_mapping, row, k.stride(0), v.stride(0), BLOCK=BLOCK)
    return k_cache, v_cache
