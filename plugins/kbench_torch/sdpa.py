"""SDPA backends for attention: ``torch.nn.functional.scaled_dot_product_attention``.

``sdpa`` lets torch pick the kernel; ``sdpa-flash``, ``sdpa-cudnn``, ``sdpa-efficient`` and
``sdpa-math`` pin one with ``torch.nn.attention.sdpa_kernel``, so a timing row names the kernel
that produced it.

Prefill (packed varlen ``q: [tokens, heads, head_dim]``):

- every sequence of the batch the same length (``tokens == batch * max_seqlen``, known on the
  host without reading ``cu_seqlens``): one dense call on the packed tensors viewed as
  ``[batch, heads, seq_len, head_dim]`` (no copy) with ``is_causal=True``;
- uneven lengths: the sequences are gathered into ``[batch, max_seqlen]`` slots on the device and
  run with a boolean mask (causal and key-in-sequence), then scattered back; no host sync.
  CUDA's flash kernel takes no mask, so ``sdpa-flash`` loops over the sequences instead (prefill
  with uneven lengths, and decode over each sequence's cache length), which
  reads the lengths on the host (a sync): it is registered with ``cuda_graphs=False``.

Decode: the cache as ``[batch, capacity, kv_heads, head_dim]`` (the paged layout is gathered into
that first, a copy of every block of the batch), and a boolean mask ``position < cache_seqlens``.

GQA/MQA pass ``enable_gqa=True`` (torch >= 2.5), which shares KV heads without copying them;
``sdpa-efficient`` (whose kernel refuses ``enable_gqa``) and older torch get the KV heads
repeated, a copy that its timings include.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from kbench.ops.attention import context_lengths, logical_cache, sequence_lengths

try:
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:  # torch < 2.3
    SDPBackend = sdpa_kernel = None

HAS_ENABLE_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)
# torch's memory-efficient kernel rejects enable_gqa (seen on torch 2.11): it gets repeated KV heads.
_EFFICIENT = SDPBackend.EFFICIENT_ATTENTION if SDPBackend is not None else None
CUDA_ONLY = {"sdpa-efficient", "sdpa-cudnn"}


def _kernels() -> dict[str, object]:
    """Backend name -> the SDPBackend it pins (None: torch chooses); torch < 2.3 gets ``sdpa`` only."""
    if SDPBackend is None:
        return {"sdpa": None}
    return {
        "sdpa": None,
        "sdpa-flash": SDPBackend.FLASH_ATTENTION,
        "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
        "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
        "sdpa-math": SDPBackend.MATH,
    }


def _sdpa(kernel, q, k, v, **kwargs) -> torch.Tensor:
    """SDPA on ``[batch, heads, seq, head_dim]`` views, GQA handled, optionally pinned to ``kernel``."""
    group = q.shape[1] // k.shape[1]
    if group > 1:
        if HAS_ENABLE_GQA and kernel != _EFFICIENT:
            kwargs["enable_gqa"] = True
        else:
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    if kernel is None:
        return F.scaled_dot_product_attention(q, k, v, **kwargs)
    with sdpa_kernel(kernel):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)


def _takes_mask(kernel, device: torch.device) -> bool:
    return not (SDPBackend is not None and kernel == SDPBackend.FLASH_ATTENTION and device.type == "cuda")


# -- prefill --------------------------------------------------------------------------------


def _prefill_dense(kernel, q, k, v, batch, scale):
    """Every sequence the same length: [tokens, h, d] viewed as [batch, h, seq_len, d]."""
    tokens, heads, head_dim = q.shape
    seq_len = tokens // batch

    def view(x):
        return x.view(batch, seq_len, x.shape[1], head_dim).transpose(1, 2)

    out = _sdpa(kernel, view(q), view(k), view(v), is_causal=True, scale=scale)
    return out.transpose(1, 2).reshape(tokens, heads, head_dim)


def _prefill_padded(kernel, q, k, v, cu_seqlens, max_seqlen, scale):
    """Uneven lengths without a host sync: gather into [batch, max_seqlen] slots, mask, scatter back."""
    tokens = q.shape[0]
    starts, ends = cu_seqlens[:-1].long(), cu_seqlens[1:].long()
    position = torch.arange(max_seqlen, device=q.device)
    slots = (starts[:, None] + position).clamp(max=tokens - 1)           # [batch, max_seqlen]
    in_sequence = position[None, :] < (ends - starts)[:, None]            # [batch, max_seqlen]
    causal = position[None, :] <= position[:, None]                       # [query, key]
    # Padding query rows keep key 0, so no row is fully masked (their output is dropped).
    mask = (causal[None] & in_sequence[:, None, :])[:, None]              # [batch, 1, query, key]

    def gather(x):
        return x[slots].transpose(1, 2)                                   # [batch, h, max_seqlen, d]

    out = _sdpa(kernel, gather(q), gather(k), gather(v), attn_mask=mask, scale=scale).transpose(1, 2)
    token = torch.arange(tokens, device=q.device)
    sequence = torch.searchsorted(cu_seqlens[1:].long(), token, right=True)
    return out[sequence, token - starts[sequence]]


def _prefill_per_sequence(kernel, q, k, v, cu_seqlens, scale):
    """One dense causal call per sequence; reads cu_seqlens on the host (a sync)."""
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        if end > start:
            out[start:end] = _prefill_dense(kernel, q[start:end], k[start:end], v[start:end], 1, scale)
    return out


def prefill_fn(kernel):
    def attention_prefill(q, k, v, cu_seqlens, max_seqlen, scale):
        batch = cu_seqlens.numel() - 1
        if q.shape[0] == batch * max_seqlen:
            return _prefill_dense(kernel, q, k, v, batch, scale)
        if _takes_mask(kernel, q.device):
            return _prefill_padded(kernel, q, k, v, cu_seqlens, max_seqlen, scale)
        return _prefill_per_sequence(kernel, q, k, v, cu_seqlens, scale)

    return attention_prefill


# -- decode ---------------------------------------------------------------------------------


def _decode_per_sequence(kernel, q, keys, values, cache_seqlens, scale):
    """One unmasked call per sequence over its own cache length; reads the lengths on the host (a sync)."""
    out = torch.empty_like(q)
    for b, length in enumerate(cache_seqlens.tolist()):
        out[b] = _sdpa(kernel, q[b:b + 1, :, None], keys[b:b + 1, :, :length], values[b:b + 1, :, :length],
                       scale=scale)[0, :, 0]
    return out


def decode_fn(kernel):
    def attention_decode(q, k_cache, v_cache, cache_seqlens, block_table, scale):
        keys = logical_cache(k_cache, block_table).transpose(1, 2)      # [batch, kv_heads, capacity, d]
        values = logical_cache(v_cache, block_table).transpose(1, 2)
        if not _takes_mask(kernel, q.device):
            return _decode_per_sequence(kernel, q, keys, values, cache_seqlens, scale)
        position = torch.arange(keys.shape[2], device=q.device)
        mask = (position[None, :] < cache_seqlens[:, None])[:, None, None, :]
        out = _sdpa(kernel, q[:, :, None], keys, values, attn_mask=mask, scale=scale)
        return out[:, :, 0]

    return attention_decode


# -- what each kernel can run ---------------------------------------------------------------


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _cudnn_version() -> int:
    return (torch.backends.cudnn.version() or 0) if torch.backends.cudnn.is_available() else 0


def _key_len(case) -> int:
    if case.op == "attention_prefill":
        return max(sequence_lengths(case))
    lengths = context_lengths(case)
    if case.get("layout", "contiguous") == "paged":
        return -(-max(lengths) // case["block_size"]) * case["block_size"]
    return max(lengths)


def supports_fn(name: str, kernel):
    """supports(case, dtype, device) for one SDPA backend: torch's own dispatch rules, stated up front."""

    def supports(case, dtype, device):
        head_dim = case["head_dim"]
        if device.type != "cuda":
            if name in CUDA_ONLY:
                return f"torch's {name.removeprefix('sdpa-')} SDPA kernel needs a CUDA device"
            return None
        major, minor = _capability(device.index or 0)
        sm = f"sm_{major}{minor}"
        if name == "sdpa-flash":
            if not torch.backends.cuda.is_flash_attention_available():
                return "this torch build has no flash attention kernel"
            if dtype == torch.float32:
                return "torch's flash kernel takes float16/bfloat16 only"
            if major < 8:
                return f"torch's flash kernel needs sm_80 or newer, this GPU is {sm}"
            if head_dim > 256:
                return f"torch's flash kernel takes head_dim <= 256, got {head_dim}"
        elif name == "sdpa-efficient":
            alignment = 4 if dtype == torch.float32 else 8
            if head_dim % alignment:
                return f"torch's memory-efficient kernel needs head_dim divisible by {alignment} in {dtype}"
            if dtype == torch.bfloat16 and major < 8:
                return f"torch's memory-efficient kernel needs sm_80 or newer for bfloat16, this GPU is {sm}"
        elif name == "sdpa-cudnn":
            version = _cudnn_version()
            if version < 90000:
                return f"torch's cuDNN attention needs cuDNN >= 9.0 (found {version or 'none'})"
            if dtype == torch.float32:
                return "torch's cuDNN attention takes float16/bfloat16 only"
            if not (8, 0) <= (major, minor) <= (12, 1):
                return f"torch's cuDNN attention supports sm_80 to sm_121, this GPU is {sm}"
            limit = 256 if major in (9, 10) and version > 92200 else 128
            if head_dim % 8 or head_dim > limit:
                return f"torch's cuDNN attention needs head_dim a multiple of 8 and <= {limit} on {sm}, got {head_dim}"
            if _key_len(case) == 1:
                return "torch's cuDNN attention rejects a key length of 1"
        return None

    return supports


def available_fn(name: str):
    """available() for one SDPA backend: the CUDA-only kernels need a GPU in this process."""

    def available():
        if name in CUDA_ONLY and not torch.cuda.is_available():
            return f"torch's {name.removeprefix('sdpa-')} SDPA kernel needs a CUDA device and none is visible"
        if name == "sdpa-cudnn" and not torch.backends.cudnn.is_available():
            return "this torch build has no cuDNN"
        return None

    return available


def register_all(register):
    version = torch.__version__
    for name, kernel in _kernels().items():
        what = "torch chooses the kernel" if kernel is None else f"pinned to {kernel.name}"
        register("attention_prefill", name, prefill_fn(kernel), supports=supports_fn(name, kernel),
                 available=available_fn(name), cuda_graphs=name != "sdpa-flash", version=version,
                 description=f"F.scaled_dot_product_attention, {what}")
        register("attention_decode", name, decode_fn(kernel), supports=supports_fn(name, kernel),
                 available=available_fn(name), version=version,
                 description=f"F.scaled_dot_product_attention with a length mask, {what}")
