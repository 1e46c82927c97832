"""Decode attention over a KV cache: split-KV "flash-decoding" plus a reduction pass.

Pass 1, grid ``(num_splits, kv_heads, batch)``: a program takes one kv head of one sequence
and one contiguous slice of its ``cache_seqlens[b]`` tokens (the slice length is computed on
the device from the length, so every split gets an even share), and attends the whole query
group of that kv head at once (a ``[BLOCK_G, head_dim]`` tile, padded to 16 rows for
``tl.dot``): each K/V row is read once per group, never once per query head. It writes the
split's normalised output ``acc / l`` and its log-sum-exp (base 2) in float32.

Pass 2, grid ``(heads, batch)``: merges the splits by their log-sum-exp. With one split
(large batches) pass 1 writes the output itself and pass 2 is skipped.

``num_splits`` depends only on host-known shapes (batch, kv heads, cache capacity, SM count),
and the partial buffers are sized from them, so a step can be captured in a CUDA graph.
Paged caches look up ``block_table`` per key row, so any block size works.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

try:  # grid dependency control (triton >= 3.5): no-ops on a launch without launch_pdl
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - older triton
    gdc_launch_dependents = gdc_wait = None

from kbench_triton.common import TunedKernel, dot, dot_flags, interpreting, launch_config

LOG2E = 1.4426950408889634
MAX_SPLITS = 64
MIN_TOKENS_PER_SPLIT = 128
MIN_SPLITS = 3
# Splits give at most one program per SM: more cost more in the merge than they gain. From half
# the SMs on, the programs already draw most of the bandwidth and a split's merge launch and
# partial writes cost more than the other half of the SMs gives, so a call splits only where that
# makes MIN_SPLITS or more (see docs/kernels.md).


@triton.jit
def _split_kernel(q_ptr, k_ptr, v_ptr, seqlens_ptr, block_table_ptr, partial_out_ptr, partial_lse_ptr, out_ptr,
                  qk_scale, stride_qb, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
                  stride_table, stride_ob, stride_oh, capacity_bucket,
                  NUM_SPLITS: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr,
                  IEEE: tl.constexpr, UPCAST: tl.constexpr, PDL: tl.constexpr, BLOCK_N: tl.constexpr):
    if PDL:
        # the merge pass may be scheduled now: it waits (gdc_wait) for this grid's writes
        gdc_launch_dependents()
    split = tl.program_id(0)
    kv_head = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    seq_len = tl.load(seqlens_ptr + batch)
    per_split = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * per_split
    end = tl.minimum(start + per_split, seq_len)

    group = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    d_mask = offs_d < HEAD_DIM
    heads = kv_head * GROUP + group
    q_mask = (group < GROUP)[:, None] & d_mask[None, :]
    q = tl.load(q_ptr + batch * stride_qb + heads[:, None] * stride_qh + offs_d[None, :], mask=q_mask, other=0.0)

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    for start_n in range(start, end, BLOCK_N):
        tokens = start_n + offs_n
        n_mask = tokens < end
        if PAGED:
            block = tl.load(block_table_ptr + batch * stride_table + tokens // PAGE_SIZE, mask=n_mask, other=0)
            k_rows = block.to(tl.int64) * stride_kb + (tokens % PAGE_SIZE) * stride_kt
            v_rows = block.to(tl.int64) * stride_vb + (tokens % PAGE_SIZE) * stride_vt
        else:
            k_rows = batch * stride_kb + tokens * stride_kt
            v_rows = batch * stride_vb + tokens * stride_vt
        k = tl.load(k_ptr + k_rows[None, :] + kv_head * stride_kh + offs_d[:, None],
                    mask=d_mask[:, None] & n_mask[None, :], other=0.0)
        s = dot(q, k, IEEE, UPCAST) * qk_scale
        s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + v_rows[:, None] + kv_head * stride_vh + offs_d[None, :],
                    mask=n_mask[:, None] & d_mask[None, :], other=0.0)
        acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, IEEE, UPCAST)
        m_i = m_new

    if NUM_SPLITS == 1:
        # one split holds the whole sequence: normalise and write the output, no merge pass
        tl.store(out_ptr + batch * stride_ob + heads[:, None] * stride_oh + offs_d[None, :],
                 (acc / l_i[:, None]).to(out_ptr.dtype.element_ty), mask=q_mask)
        return
    # an empty split (sequence shorter than its start) leaves l_i = 0: weight zero in the merge
    has_keys = l_i > 0
    out = tl.where(has_keys[:, None], acc / tl.where(has_keys, l_i, 1.0)[:, None], 0.0)
    lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
    row = (batch * tl.num_programs(1) * GROUP + heads) * NUM_SPLITS + split
    tl.store(partial_out_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], out, mask=q_mask)
    tl.store(partial_lse_ptr + row, lse, mask=group < GROUP)


@triton.jit
def _merge_kernel(partial_out_ptr, partial_lse_ptr, out_ptr, stride_ob, stride_oh,
                  NUM_SPLITS: tl.constexpr, BLOCK_SPLITS: tl.constexpr,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr):
    head = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    splits = tl.arange(0, BLOCK_SPLITS)
    offs_d = tl.arange(0, BLOCK_D)
    row = (batch * tl.num_programs(0) + head) * NUM_SPLITS
    if PDL:
        # launched before the split pass ended: wait for its partials to be complete and visible
        gdc_wait()
    lse = tl.load(partial_lse_ptr + row + splits, mask=splits < NUM_SPLITS, other=float("-inf"))
    weight = tl.exp2(lse - tl.max(lse, 0))
    mask = (splits < NUM_SPLITS)[:, None] & (offs_d < HEAD_DIM)[None, :]
    partial = tl.load(partial_out_ptr + (row + splits[:, None]) * HEAD_DIM + offs_d[None, :], mask=mask, other=0.0)
    out = tl.sum(partial * weight[:, None], 0) / tl.sum(weight, 0)
    tl.store(out_ptr + batch * stride_ob + head * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty),
             mask=offs_d < HEAD_DIM)


_CONFIGS = [
    triton.Config({"BLOCK_N": n}, num_warps=w, num_stages=s)
    for n, w, s in [(64, 4, 3), (64, 4, 4), (128, 4, 3), (128, 8, 3), (32, 4, 4), (64, 8, 4)]
]
SHORT_CAPACITY = 256


def _prune(configs, named_args, **kwargs):
    """Short caches (tests, first decode steps) take the first config untuned."""
    if {**named_args, **kwargs}["capacity_bucket"] <= SHORT_CAPACITY:
        return configs[:1]
    return configs


SPLIT = TunedKernel(
    "attention_decode_split", _split_kernel, _CONFIGS,
    ["capacity_bucket", "NUM_SPLITS", "GROUP", "HEAD_DIM", "PAGED", "PAGE_SIZE"],
    triton.Config({"BLOCK_N": 16}), _prune,
)


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


# The merge pass launched with programmatic dependent launch (Hopper on): it is scheduled once
# every split program has started, and waits on the device for their results, so its launch
# is hidden behind the split pass instead of following it (see docs/kernels.md).
MERGE_PDL = True


@functools.cache
def _hopper_or_later(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] >= 9


def _pdl(device: torch.device) -> bool:
    return (MERGE_PDL and gdc_wait is not None and device.type == "cuda" and not interpreting()
            and _hopper_or_later(device.index or 0))


def num_splits(batch: int, kv_heads: int, capacity: int, device: torch.device) -> int:
    """Splits per (sequence, kv head): as many as keep the programs within one per SM, >= 128
    keys each; one where that gives fewer than ``MIN_SPLITS``.

    Host shapes only (never the lengths on the device), so the choice is graph-capturable.
    """
    sms = 4 if device.type != "cuda" or interpreting() else _sm_count(device.index or 0)
    wanted = min(sms // (batch * kv_heads), MAX_SPLITS, triton.cdiv(capacity, MIN_TOKENS_PER_SPLIT))
    return wanted if wanted >= MIN_SPLITS else 1


def attention_decode(q, k_cache, v_cache, cache_seqlens, block_table, scale, splits: int | None = None):
    """q: [batch, heads, head_dim] against the cache -> [batch, heads, head_dim].

    ``splits`` overrides the heuristic split count (tests use it to cover every path).
    """
    # the kernels take any other strides, but a head's elements must be adjacent
    q, k_cache, v_cache = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k_cache, v_cache))
    batch, heads, head_dim = q.shape
    kv_heads = k_cache.shape[2]
    paged = block_table is not None
    page_size = k_cache.shape[1] if paged else 1
    capacity = block_table.shape[1] * page_size if paged else k_cache.shape[1]
    splits = splits or num_splits(batch, kv_heads, capacity, q.device)
    group = heads // kv_heads
    block_g = max(16, triton.next_power_of_2(group))
    block_d = max(16, triton.next_power_of_2(head_dim))
    out = torch.empty_like(q)
    if batch == 0:
        return out
    # partial results only exist with several splits (one split writes ``out`` directly)
    partials = splits if splits > 1 else 0
    partial_out = torch.empty((batch, heads, partials, head_dim), dtype=torch.float32, device=q.device)
    partial_lse = torch.empty((batch, heads, partials), dtype=torch.float32, device=q.device)
    launch_config("attention_decode_splits", (batch, kv_heads, capacity), NUM_SPLITS=splits)
    table = block_table if paged else cache_seqlens  # any int32 tensor: unread when not paged
    pdl = splits > 1 and _pdl(q.device)
    SPLIT[lambda meta: (splits, kv_heads, batch)](
        q, k_cache, v_cache, cache_seqlens, table, partial_out, partial_lse, out, scale * LOG2E,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        table.stride(0), out.stride(0), out.stride(1), triton.next_power_of_2(capacity),
        NUM_SPLITS=splits, GROUP=group, BLOCK_G=block_g, HEAD_DIM=head_dim, BLOCK_D=block_d,
        PAGED=paged, PAGE_SIZE=page_size, PDL=pdl, **dot_flags(q.dtype),
    )
    if splits == 1:
        return out
    _merge_kernel[(heads, batch)](
        partial_out, partial_lse, out, out.stride(0), out.stride(1),
        NUM_SPLITS=splits, BLOCK_SPLITS=triton.next_power_of_2(splits), HEAD_DIM=head_dim, BLOCK_D=block_d,
        PDL=pdl, **({"launch_pdl": True} if pdl else {}),
    )
    return out
