"""Rotary embedding of q and k in one launch, written in place.

From ``FEW_TOKENS`` tokens up, one program per token: it computes the token's angles
``position * inv_freq`` once (float32, precise libdevice sin/cos, since angles reach tens of
thousands of radians) and rotates every q head and every k head with them. Below, each program
takes one tile of a token's heads, loads it, and computes the angles while the loads are in
flight. Every scaling variant arrives through ``inv_freq``.

Numerics follow ``kbench.ops.rope``: ``half`` rounds cos/sin and each product to the dtype
as HF does in the input dtype; ``interleaved`` works in float32 and rounds once. Both kernels
launch with ``enable_fp_fusion=False``: with fusion LLVM turned a rounded product and the sum
after it into one bf16 fma, which skips the product's rounding (a fifth of random bf16 outputs
then differ from HF's by an ulp).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from kbench_triton.common import interpreting, launch_config

# below this many tokens one program a token cannot fill the GPU, so a token's heads are spread
# over several programs (tiles were still faster at 512 tokens; see docs/kernels.md)
FEW_TOKENS = 1024
SMALL_TILE_HEADS = 4  # heads of a tile from 128 tokens (at 1 warp)
# heads of a tile from TINY_TOKENS to 128 tokens, at MID_TILE_WARPS (4 pairs a thread): the
# fastest of the tile shapes tried there
MID_TILE_HEADS = 8
MID_TILE_WARPS = 4
TINY_TOKENS = 32


@triton.jit
def _tile(base_ptr, stride_head, stride_dim, head_start, head_hi,
          HALF: tl.constexpr, INTERLEAVED: tl.constexpr, BLOCK_HEADS: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """Pointers to the two halves of each rotated pair of heads [head_start, head_hi), and the mask."""
    pair = tl.arange(0, BLOCK_HALF)
    heads = head_start + tl.arange(0, BLOCK_HEADS)
    mask = (heads[:, None] < head_hi) & (pair[None, :] < HALF)
    rows = base_ptr + heads[:, None] * stride_head
    if INTERLEAVED:
        first_ptr = rows + (2 * pair[None, :]) * stride_dim
        second_ptr = first_ptr + stride_dim
    else:
        first_ptr = rows + pair[None, :] * stride_dim
        second_ptr = first_ptr + HALF * stride_dim
    return first_ptr, second_ptr, mask


@triton.jit
def _rotate_store(first_ptr, second_ptr, mask, x1, x2, cos, sin, INTERLEAVED: tl.constexpr):
    dtype = x1.dtype
    a = x1.to(tl.float32)
    b = x2.to(tl.float32)
    if INTERLEAVED:
        out1 = (a * cos - b * sin).to(dtype)
        out2 = (a * sin + b * cos).to(dtype)
    else:
        # HF: x * cos + rotate_half(x) * sin, every op rounded to the dtype
        out1 = ((a * cos).to(dtype).to(tl.float32) + (-b * sin).to(dtype).to(tl.float32)).to(dtype)
        out2 = ((b * cos).to(dtype).to(tl.float32) + (a * sin).to(dtype).to(tl.float32)).to(dtype)
    tl.store(first_ptr, out1, mask=mask)
    tl.store(second_ptr, out2, mask=mask)


@triton.jit
def _rotate_heads(base_ptr, stride_head, stride_dim, head_lo, head_hi, cos, sin,
                  HALF: tl.constexpr, INTERLEAVED: tl.constexpr,
                  BLOCK_HEADS: tl.constexpr, BLOCK_HALF: tl.constexpr):
    for head_start in range(head_lo, head_hi, BLOCK_HEADS):
        first_ptr, second_ptr, mask = _tile(base_ptr, stride_head, stride_dim, head_start, head_hi,
                                            HALF, INTERLEAVED, BLOCK_HEADS, BLOCK_HALF)
        x1 = tl.load(first_ptr, mask=mask, other=0.0)
        x2 = tl.load(second_ptr, mask=mask, other=0.0)
        _rotate_store(first_ptr, second_ptr, mask, x1, x2, cos, sin, INTERLEAVED)


@triton.jit
def _angles(positions_ptr, inv_freq_ptr, token, dtype, HALF: tl.constexpr, INTERLEAVED: tl.constexpr,
            PRECISE_TRIG: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """cos and sin of the token's angles, [1, BLOCK_HALF] float32 (rounded to the dtype for half)."""
    pair = tl.arange(0, BLOCK_HALF)
    position = tl.load(positions_ptr + token).to(tl.float32)
    inv_freq = tl.load(inv_freq_ptr + pair, mask=pair < HALF, other=0.0)
    angles = position * inv_freq
    if PRECISE_TRIG:
        cos = libdevice.cos(angles)
        sin = libdevice.sin(angles)
    else:
        cos = tl.cos(angles)
        sin = tl.sin(angles)
    if not INTERLEAVED:
        cos = cos.to(dtype).to(tl.float32)
        sin = sin.to(dtype).to(tl.float32)
    return cos[None, :], sin[None, :]


@triton.jit
def _rope_kernel(q_ptr, k_ptr, positions_ptr, inv_freq_ptr,
                 stride_qt, stride_qh, stride_qd, stride_kt, stride_kh, stride_kd,
                 heads, kv_heads, heads_per_program,
                 HALF: tl.constexpr, INTERLEAVED: tl.constexpr, PRECISE_TRIG: tl.constexpr,
                 BLOCK_HEADS: tl.constexpr, BLOCK_HALF: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    # this program's share of the q heads followed by the k heads (all of them at one program
    # per token)
    first = tl.program_id(1) * heads_per_program
    last = first + heads_per_program
    q_base = q_ptr + token * stride_qt
    k_base = k_ptr + token * stride_kt
    q_lo, q_hi = tl.minimum(first, heads), tl.minimum(last, heads)
    k_lo, k_hi = tl.minimum(tl.maximum(first - heads, 0), kv_heads), tl.minimum(tl.maximum(last - heads, 0), kv_heads)
    cos, sin = _angles(positions_ptr, inv_freq_ptr, token, q_ptr.dtype.element_ty, HALF, INTERLEAVED, PRECISE_TRIG,
                       BLOCK_HALF)
    _rotate_heads(q_base, stride_qh, stride_qd, q_lo, q_hi, cos, sin, HALF, INTERLEAVED, BLOCK_HEADS, BLOCK_HALF)
    _rotate_heads(k_base, stride_kh, stride_kd, k_lo, k_hi, cos, sin, HALF, INTERLEAVED, BLOCK_HEADS, BLOCK_HALF)


@triton.jit
def _rope_rows_kernel(q_ptr, k_ptr, positions_ptr, inv_freq_ptr,
                      stride_qt, stride_qh, stride_qd, stride_kt, stride_kh, stride_kd,
                      heads, kv_heads,
                      HALF: tl.constexpr, INTERLEAVED: tl.constexpr, PRECISE_TRIG: tl.constexpr,
                      BLOCK_HEADS: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """One tile of BLOCK_HEADS rows of the token's q heads followed by its k heads, each row's
    address selected between q and k (32-bit offsets: the host checks they fit). Its loads go out
    before the angles are computed, so the trigonometry runs while they are in flight. One load a
    half, where a masked tile of each tensor would load one all or mostly masked off."""
    token = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_HEADS + tl.arange(0, BLOCK_HEADS)
    is_q = rows < heads
    q_rows = q_ptr + (token * stride_qt + rows * stride_qh)
    k_rows = k_ptr + (token * stride_kt + (rows - heads) * stride_kh)
    row_ptr = tl.where(is_q, q_rows, k_rows)[:, None]
    pair = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (rows[:, None] < heads + kv_heads) & (pair < HALF)
    stride_d = tl.where(is_q, stride_qd, stride_kd)[:, None]
    if INTERLEAVED:
        first_ptr = row_ptr + (2 * pair) * stride_d
        second_ptr = first_ptr + stride_d
    else:
        first_ptr = row_ptr + pair * stride_d
        second_ptr = first_ptr + HALF * stride_d
    x1 = tl.load(first_ptr, mask=mask, other=0.0)
    x2 = tl.load(second_ptr, mask=mask, other=0.0)
    cos, sin = _angles(positions_ptr, inv_freq_ptr, token, q_ptr.dtype.element_ty, HALF, INTERLEAVED, PRECISE_TRIG,
                       BLOCK_HALF)
    _rotate_store(first_ptr, second_ptr, mask, x1, x2, cos, sin, INTERLEAVED)


def _offsets_fit_int32(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether every element offset of q and k (and each row's offset taken in the other tensor's
    strides, as the rows kernel computes both before selecting) fits an int32."""
    tokens, heads, head_dim = q.shape
    rows = heads + k.shape[1]
    strides = [*q.stride(), *k.stride()]
    if min(strides) < 0:
        return False
    furthest = (tokens - 1) * max(q.stride(0), k.stride(0)) + rows * max(q.stride(1), k.stride(1))
    return furthest + head_dim * max(q.stride(2), k.stride(2)) < 2**31


def _config(tokens: int, heads: int, kv_heads: int, block_half: int) -> tuple[int, int, int]:
    """(BLOCK_HEADS, heads per program, num_warps) for a launch."""
    # 1K-element half-tiles (16 heads x 64 pairs) at 8 warps: at the copy limit with 32 or 8 k
    # heads, where 32-head tiles were slower with 8 (see docs/kernels.md)
    block_heads = max(1, min(triton.next_power_of_2(max(heads, kv_heads)), 1024 // block_half))
    if tokens >= FEW_TOKENS:
        return block_heads, heads + kv_heads, 4 if block_heads * block_half < 1024 else 8
    # a few tokens (decode) cannot fill the GPU one program per token: then each program takes
    # one tile of heads (and computes the token's angles again, cheap beside the parallelism);
    # small tiles, the fastest measured at each token range (see docs/kernels.md)
    if tokens < TINY_TOKENS:
        return 2, 2, 4
    if tokens >= 128:
        return SMALL_TILE_HEADS, SMALL_TILE_HEADS, 1
    return MID_TILE_HEADS, MID_TILE_HEADS, MID_TILE_WARPS


def rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, style: str):
    """Rotate q ``[tokens, heads, head_dim]`` and k ``[tokens, kv_heads, head_dim]`` in place."""
    if style not in ("half", "interleaved"):
        raise ValueError(f"unknown rope style {style!r}")
    tokens, heads, head_dim = q.shape
    kv_heads = k.shape[1]
    half = head_dim // 2
    block_half = triton.next_power_of_2(half)
    block_heads, per_program, num_warps = _config(tokens, heads, kv_heads, block_half)
    all_heads = heads + kv_heads
    launch_config("rope", (tokens, heads, kv_heads, head_dim, style), BLOCK_HEADS=block_heads,
                  num_warps=num_warps)
    if not tokens:
        return q, k
    grid = (tokens, triton.cdiv(all_heads, per_program))
    args = (q, k, positions, inv_freq.to(torch.float32), *q.stride(), *k.stride(), heads, kv_heads)
    constants = dict(
        HALF=half, INTERLEAVED=style == "interleaved",
        # the interpreter has no libdevice; its tl.cos is numpy's, which is precise
        PRECISE_TRIG=not interpreting(),
        BLOCK_HEADS=block_heads, BLOCK_HALF=block_half, num_warps=num_warps, enable_fp_fusion=False,
    )
    if per_program <= block_heads and _offsets_fit_int32(q, k):
        _rope_rows_kernel[grid](*args, **constants)
    else:
        _rope_kernel[grid](*args, per_program, **constants)
    return q, k
