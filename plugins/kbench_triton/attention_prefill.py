"""Causal varlen prefill attention: FlashAttention-2 tiling with an online softmax.

Grid: ``(cdiv(max_seqlen, BLOCK_M), heads, batch)``; the host int ``max_seqlen`` sizes it, so
``cu_seqlens`` is only read on the device (tiles past a sequence's end return at once). The
query-tile axis runs backwards so the longest causal rows start first. Query head ``h`` reads
kv head ``h // group`` straight from k and v: GQA/MQA never repeats KV in memory.

Each program holds a ``[BLOCK_M, head_dim]`` query tile and walks the keys in two loops: the
blocks strictly before the tile's first query need no mask; the diagonal blocks apply the
causal and sequence-end mask. Scores are scaled by ``scale * log2(e)`` so the softmax uses
``exp2``; accumulation is float32, and float32 inputs multiply in IEEE (no TF32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kbench_triton.common import TunedKernel, dot, dot_flags

LOG2E = 1.4426950408889634


@triton.jit
def _attend(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, rows, offs_d, seq_len, qk_scale,
            lo, hi, MASKED: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
            HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_n = tl.arange(0, BLOCK_N)
    d_mask = offs_d < HEAD_DIM
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        n_mask = cols < seq_len
        k = tl.load(k_base + cols[None, :] * stride_kt + offs_d[:, None],
                    mask=d_mask[:, None] & n_mask[None, :], other=0.0)
        s = dot(q, k, IEEE, UPCAST) * qk_scale
        if MASKED:
            s = tl.where((rows[:, None] >= cols[None, :]) & n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + cols[:, None] * stride_vt + offs_d[None, :],
                    mask=n_mask[:, None] & d_mask[None, :], other=0.0)
        acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, IEEE, UPCAST)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _prefill_kernel(q_ptr, k_ptr, v_ptr, out_ptr, cu_seqlens_ptr, qk_scale,
                    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
                    max_seqlen_bucket,
                    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                    IEEE: tl.constexpr, UPCAST: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    tile = tl.num_programs(0) - 1 - tl.program_id(0)
    head = tl.program_id(1)
    seq = tl.program_id(2)
    seq_start = tl.load(cu_seqlens_ptr + seq).to(tl.int64)
    seq_len = (tl.load(cu_seqlens_ptr + seq + 1) - seq_start).to(tl.int32)
    first_row = tile * BLOCK_M
    if first_row >= seq_len:
        return
    kv_head = head // GROUP
    rows = first_row + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_mask = (rows < seq_len)[:, None] & (offs_d < HEAD_DIM)[None, :]
    q = tl.load(q_ptr + (seq_start + rows[:, None]) * stride_qt + head * stride_qh + offs_d[None, :],
                mask=row_mask, other=0.0)
    k_base = k_ptr + seq_start * stride_kt + kv_head * stride_kh
    v_base = v_ptr + seq_start * stride_vt + kv_head * stride_vh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # keys before the tile's first query: visible to every row, and all inside the sequence
    acc, l_i, m_i = _attend(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, rows, offs_d, seq_len,
                            qk_scale, 0, first_row, False, IEEE, UPCAST, HEAD_DIM, BLOCK_N)
    diagonal_end = tl.minimum(first_row + BLOCK_M, seq_len)
    acc, l_i, m_i = _attend(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, rows, offs_d, seq_len,
                            qk_scale, first_row, diagonal_end, True, IEEE, UPCAST, HEAD_DIM, BLOCK_N)
    out = acc / l_i[:, None]
    tl.store(out_ptr + (seq_start + rows[:, None]) * stride_ot + head * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_mask)


def _configs(head_dim_max: int) -> list[triton.Config]:
    # BLOCK_M must be a multiple of BLOCK_N (the unmasked loop ends on a tile boundary).
    shapes = [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (128, 32, 4, 4), (64, 64, 4, 3), (64, 32, 4, 2)]
    if head_dim_max > 128:
        shapes = [(64, 64, 4, 2), (64, 32, 4, 2), (64, 64, 8, 2), (32, 32, 4, 2)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in shapes]


def _prune(configs, named_args, **kwargs):
    """Short sequences (tests, tiny prompts) take the smallest tile untuned: tuning costs more."""
    if {**named_args, **kwargs}["max_seqlen_bucket"] <= SHORT_SEQLEN:
        return configs[-1:]
    return configs


SHORT_SEQLEN = 256
_KEY = ["max_seqlen_bucket", "GROUP", "HEAD_DIM"]
_INTERPRETER_CONFIG = triton.Config({"BLOCK_M": 32, "BLOCK_N": 16})
PREFILL = TunedKernel("attention_prefill", _prefill_kernel, _configs(128), _KEY, _INTERPRETER_CONFIG, _prune)
PREFILL_WIDE = TunedKernel("attention_prefill_d256", _prefill_kernel, _configs(256), _KEY, _INTERPRETER_CONFIG, _prune)


def attention_prefill(q, k, v, cu_seqlens, max_seqlen, scale):
    """q: [tokens, heads, head_dim], k, v: [tokens, kv_heads, head_dim] -> [tokens, heads, head_dim]."""
    # the kernel takes any token and head strides, but a head's elements must be adjacent
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    tokens, heads, head_dim = q.shape
    kv_heads = k.shape[1]
    batch = cu_seqlens.shape[0] - 1
    out = torch.empty_like(q)
    if tokens == 0 or batch == 0 or max_seqlen == 0:
        return out
    block_d = max(16, triton.next_power_of_2(head_dim))
    kernel = PREFILL if block_d <= 128 else PREFILL_WIDE

    def grid(meta):
        return (triton.cdiv(max_seqlen, meta["BLOCK_M"]), heads, batch)

    kernel[grid](
        q, k, v, out, cu_seqlens, scale * LOG2E,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        triton.next_power_of_2(max_seqlen),
        GROUP=heads // kv_heads, HEAD_DIM=head_dim, BLOCK_D=block_d, **dot_flags(q.dtype),
    )
    return out
