"""FlashAttention 2, 3 and 4 behind kbench's attention contract.

- FA2: package ``flash_attn`` (``pip install flash-attn``): ``flash_attn_varlen_func`` and
  ``flash_attn_with_kvcache`` (``block_table``, ``cache_seqlens``); sm_80+, paged blocks of a
  multiple of 256 tokens.
- FA3: package ``flash_attn_interface``, built from the ``hopper/`` folder of
  Dao-AILab/flash-attention: the same two functions (``page_table`` instead of ``block_table``,
  any page size); sm_90 only.
- FA4: package ``flash_attn.cute`` (``pip install flash-attn-4``, CuTe DSL, compiled on first
  use per kernel variant): ``flash_attn_varlen_func`` with ``cu_seqlens_q/k`` for prefill, and
  for decode the same function with a ``[batch, 1, heads, head_dim]`` query, ``seqused_k`` and,
  paged, ``page_table``; sm_90 and sm_100 families (its sm_80/sm_120 paths take no paged KV).

Every call passes lengths already on the device and sizes known on the host, so none reads
``cu_seqlens`` or ``cache_seqlens`` back (no host sync) and all can be captured in a CUDA graph
once warmed up (FA4 must have compiled its kernel before the capture).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass

import torch

HALF_DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class FlashKernel:
    """One FlashAttention generation: how to import it, where it runs, how to call it."""

    backend: str                      # kbench backend name, e.g. "flash-fa4"
    label: str                        # short name used in messages, e.g. "FA4"
    module: str                       # module to import
    distributions: tuple[str, ...]    # pip distribution names, for the version
    install_hint: str
    functions: tuple[str, ...]        # what the module must provide
    prefill: Callable[..., torch.Tensor]
    decode: Callable[..., torch.Tensor]
    sm_ok: Callable[[int], bool]      # compute capability major -> runs here?
    sm_needed: str
    head_dim_reason: Callable[[int, int], str | None]   # (head_dim, sm major) -> reason
    page_size_reason: Callable[[int, int, int], str | None]  # (block_size, head_dim, sm major) -> reason

    def api(self):
        return importlib.import_module(self.module)

    def version(self) -> str | None:
        """'flash-attn-4 4.0.0b36' from the installed distribution (no import), or None."""
        for name in self.distributions:
            try:
                return f"{name} {importlib.metadata.version(name)}"
            except importlib.metadata.PackageNotFoundError:
                continue
        return None

    def unavailable(self) -> str | None:
        """Why this generation cannot run in this process at all, or None."""
        try:
            api = self.api()
        except ModuleNotFoundError as error:
            return f"{self.module} ({self.label}) is not installed ({error}); {self.install_hint}"
        except Exception as error:  # a broken build (ABI mismatch, missing CUDA library) must not crash a run
            return f"{self.module} ({self.label}) failed to import: {type(error).__name__}: {error}"
        missing = [name for name in self.functions if not hasattr(api, name)]
        if missing:
            # e.g. FA4's wheel makes `flash_attn` a namespace package holding only `cute`.
            return f"{self.module} ({self.label}) is not installed (the module has no {', '.join(missing)}); " \
                   f"{self.install_hint}"
        if not torch.cuda.is_available():
            return f"{self.label} needs a CUDA device and none is visible"
        major, minor = _capability(torch.cuda.current_device())
        if not self.sm_ok(major):
            return f"{self.label} needs {self.sm_needed}; this GPU is sm_{major}{minor}"
        return None

    def reason(self, op: str, dtype: torch.dtype, head_dim: int, device: torch.device,
               block_size: int | None) -> str | None:
        """Why this generation cannot run one call of ``op``, or None (availability checked separately)."""
        if device.type != "cuda":
            return f"{self.label} runs on CUDA tensors only, not {device.type}"
        if dtype not in HALF_DTYPES:
            return f"{self.label} takes float16/bfloat16 only, not {str(dtype).removeprefix('torch.')}"
        major, _ = _capability(device.index if device.index is not None else torch.cuda.current_device())
        reason = self.head_dim_reason(head_dim, major)
        if reason:
            return f"{self.label}: {reason}"
        if op == "attention_decode" and block_size is not None:
            reason = self.page_size_reason(block_size, head_dim, major)
            if reason:
                return f"{self.label}: {reason}"
        return None


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _first(result) -> torch.Tensor:
    """FA3/FA4 return (out, lse) on some versions and out on others."""
    return result[0] if isinstance(result, (tuple, list)) else result


# -- FA2 ------------------------------------------------------------------------------------


def _fa2_prefill(q, k, v, cu_seqlens, max_seqlen, scale):
    api = FA2.api()
    return api.flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                      dropout_p=0.0, softmax_scale=scale, causal=True)


def _fa2_decode(q, k_cache, v_cache, cache_seqlens, block_table, scale):
    api = FA2.api()
    out = api.flash_attn_with_kvcache(q[:, None], k_cache, v_cache, cache_seqlens=cache_seqlens,
                                      block_table=block_table, softmax_scale=scale, causal=False)
    return out[:, 0]


def _fa2_head_dim(head_dim: int, major: int) -> str | None:
    if head_dim > 256:
        return f"head_dim must be <= 256, got {head_dim}"
    return None


def _fa2_page_size(block_size: int, head_dim: int, major: int) -> str | None:
    if block_size % 256:
        return f"paged KV needs block_size a multiple of 256, got {block_size}"
    return None


# -- FA3 ------------------------------------------------------------------------------------


def _fa3_prefill(q, k, v, cu_seqlens, max_seqlen, scale):
    api = FA3.api()
    return _first(api.flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                             softmax_scale=scale, causal=True))


def _fa3_decode(q, k_cache, v_cache, cache_seqlens, block_table, scale):
    api = FA3.api()
    out = api.flash_attn_with_kvcache(q[:, None], k_cache, v_cache, cache_seqlens=cache_seqlens,
                                      page_table=block_table, softmax_scale=scale, causal=False)
    return _first(out)[:, 0]


def _fa3_head_dim(head_dim: int, major: int) -> str | None:
    if head_dim > 256 or head_dim % 8:
        return f"head_dim must be a multiple of 8 and <= 256, got {head_dim}"
    return None


# -- FA4 ------------------------------------------------------------------------------------


def equal_lengths(q: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> int | None:
    """The batch size when every packed sequence has ``max_seqlen`` tokens, else None.

    Host shapes only: no sequence is longer than ``max_seqlen``, so ``tokens == batch *
    max_seqlen`` holds exactly when all are that long.
    """
    batch = cu_seqlens.shape[0] - 1
    return batch if batch > 0 and max_seqlen > 0 and q.shape[0] == batch * max_seqlen else None


def _fa4_prefill(q, k, v, cu_seqlens, max_seqlen, scale):
    api = FA4.api()
    batch = equal_lengths(q, cu_seqlens, max_seqlen)
    if batch is not None:
        # a padded-free batch of equal prompts is a dense [batch, seq, heads, dim] batch: FA4's
        # fixed-length kernel schedules it without the varlen bookkeeping
        dense = (t.view(batch, max_seqlen, *t.shape[1:]) for t in (q, k, v))
        return _first(api.flash_attn_func(*dense, softmax_scale=scale, causal=True)).view(q.shape)
    return _first(api.flash_attn_varlen_func(q, k, v, cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens,
                                             max_seqlen_q=max_seqlen, max_seqlen_k=max_seqlen,
                                             softmax_scale=scale, causal=True))


def _fa4_decode(q, k_cache, v_cache, cache_seqlens, block_table, scale):
    api = FA4.api()
    # A [batch, 1, heads, head_dim] query against a batched (or paged) cache, cut at seqused_k.
    out = api.flash_attn_varlen_func(q[:, None], k_cache, v_cache, seqused_k=cache_seqlens,
                                     page_table=block_table, softmax_scale=scale, causal=False)
    return _first(out)[:, 0]


def _fa4_head_dim(head_dim: int, major: int) -> str | None:
    if head_dim % 8:
        return f"head_dim must be a multiple of 8, got {head_dim}"
    if major == 9 and not 8 <= head_dim <= 256:
        return f"head_dim must lie in [8, 256] on sm_90, got {head_dim}"
    if major in (10, 11) and not (8 <= head_dim <= 128 or head_dim == 256):
        return f"head_dim must lie in [8, 128] or be 256 on sm_100, got {head_dim}"
    return None


# Paged decode head dims checked against the reference on sm_90 (FA4 4.0.0b36): 64 and 128
# pass; 80 and 96 return wrong outputs (see docs/kernels.md). Others are unverified, so refused.
FA4_SM90_PAGED_HEAD_DIMS = (64, 128)


def _fa4_page_size(block_size: int, head_dim: int, major: int) -> str | None:
    if major in (8, 12):
        return f"paged KV is not supported on sm_{major}x"
    if major == 9 and head_dim not in FA4_SM90_PAGED_HEAD_DIMS:
        return (f"paged KV with head_dim {head_dim} gives wrong results on sm_90 (verified correct: "
                f"{', '.join(map(str, FA4_SM90_PAGED_HEAD_DIMS))}); use the contiguous layout or another backend")
    return None


def _no_page_limit(block_size: int, head_dim: int, major: int) -> str | None:
    return None


FA2 = FlashKernel(
    backend="flash-fa2", label="FA2", module="flash_attn", distributions=("flash-attn", "flash_attn"),
    install_hint="install it with `pip install flash-attn --no-build-isolation`",
    functions=("flash_attn_varlen_func", "flash_attn_with_kvcache"),
    prefill=_fa2_prefill, decode=_fa2_decode, sm_ok=lambda major: major >= 8, sm_needed="sm_80 or newer",
    head_dim_reason=_fa2_head_dim, page_size_reason=_fa2_page_size,
)
FA3 = FlashKernel(
    backend="flash-fa3", label="FA3", module="flash_attn_interface",
    distributions=("flash-attn-3", "flash_attn_3", "flashattn-hopper"),
    install_hint="build it from the hopper/ folder of Dao-AILab/flash-attention "
                 "(`cd hopper && python setup.py install`)",
    functions=("flash_attn_varlen_func", "flash_attn_with_kvcache"),
    prefill=_fa3_prefill, decode=_fa3_decode, sm_ok=lambda major: major == 9, sm_needed="sm_90 (Hopper)",
    head_dim_reason=_fa3_head_dim, page_size_reason=_no_page_limit,
)
FA4 = FlashKernel(
    backend="flash-fa4", label="FA4", module="flash_attn.cute", distributions=("flash-attn-4", "fa4"),
    install_hint="install it with `pip install flash-attn-4` (`flash-attn-4[cu13]` for CUDA 13)",
    functions=("flash_attn_varlen_func",),
    prefill=_fa4_prefill, decode=_fa4_decode, sm_ok=lambda major: major in (9, 10, 11),
    sm_needed="sm_90 or sm_100 (Hopper, Blackwell)",
    head_dim_reason=_fa4_head_dim, page_size_reason=_fa4_page_size,
)
KERNELS = (FA2, FA3, FA4)


def preference(major: int) -> tuple[FlashKernel, ...]:
    """Which generation ``flash`` tries first on a GPU of this major compute capability."""
    if major == 9:
        return (FA3, FA4, FA2)
    if major >= 10:
        return (FA4, FA2)
    return (FA2,)


@functools.cache
def _available(kernel: FlashKernel) -> str | None:
    return kernel.unavailable()


def choose(op: str, dtype: torch.dtype, head_dim: int, device: torch.device,
           block_size: int | None) -> tuple[FlashKernel | None, str | None]:
    """The generation ``flash`` runs one call with, or None and why no generation can."""
    if not torch.cuda.is_available():
        return None, "no CUDA device is visible"
    index = device.index if device.index is not None else torch.cuda.current_device()
    reasons = []
    for kernel in preference(_capability(index)[0]):
        reason = _available(kernel) or kernel.reason(op, dtype, head_dim, device, block_size)
        if reason is None:
            return kernel, None
        reasons.append(reason)
    return None, "; ".join(reasons)
