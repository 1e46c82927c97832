"""The KV-cache write: a step's new keys and values stored at their cache slots.

``kv_write(k, v, k_cache, v_cache, slot_mapping) -> (k_cache, v_cache)``:

- ``k, v: [tokens, kv_heads, head_dim]``: the step's keys (after rope) and values,
- ``k_cache, v_cache``: one layer's cache, ``[batch, capacity, kv_heads, head_dim]``
  (contiguous) or ``[num_blocks, block_size, kv_heads, head_dim]`` (paged), written in place,
- ``slot_mapping: [tokens]`` int64: token ``t`` goes to row ``slot_mapping[t]`` of the cache
  seen as ``[slots, kv_heads, head_dim]`` (``sequence * capacity + position`` when contiguous,
  ``block * block_size + offset`` when paged: the block table is already applied, as in
  vLLM's ``reshape_and_cache``). Slots are distinct.

Returns the two caches; every other slot is left as it was (compared exactly). A backend may
write both caches in one launch; rope stays its own op.

Cases: ``tokens``, ``batch``, ``capacity``, ``kv_heads``, ``head_dim``, ``layout``,
``block_size``; slots are a seeded random choice, so a kernel that ignores the mapping fails.
"""

from __future__ import annotations

import math

import torch

from kbench.ops.base import FLOAT_DTYPES, Case, Op, Tolerance, expect_tensor, generator, randn


def kv_write_reference(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                       slot_mapping: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two scatters; one when k, v and the two caches are each a pair of views at a fixed
    offset in one buffer (the pipeline's fused q|k|v product and its [layers, 2, ...] cache):
    at batch 1 a decode step is made of launches, and this saves one per layer."""
    rows = (-1, *k_cache.shape[2:])
    pair, cache_pair = as_pair(k, v), as_pair(k_cache, v_cache)
    if pair is not None and cache_pair is not None and k_cache.is_contiguous():
        cache_pair.reshape(2, *rows)[:, slot_mapping] = pair
    else:
        k_cache.view(rows)[slot_mapping] = k
        v_cache.view(rows)[slot_mapping] = v
    return k_cache, v_cache


def as_pair(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
    """``[2, *k.shape]`` viewing k then v, when v is k moved by a constant offset; else None."""
    # one storage: the same start address once each offset is taken off (cheap to ask, unlike
    # the storage object; ``_base`` would be cheaper still but is None under inference_mode,
    # where every run decodes, so it silently turned the pair write off there)
    if (k.dtype != v.dtype or k.device != v.device or k.shape != v.shape or k.stride() != v.stride()
            or k.data_ptr() - k.storage_offset() * k.element_size()
            != v.data_ptr() - v.storage_offset() * v.element_size()):
        return None
    offset = v.storage_offset() - k.storage_offset()
    if offset <= 0:
        return None
    return k.as_strided((2, *k.shape), (offset, *k.stride()), k.storage_offset())


def cache_shape(case: Case) -> tuple[int, ...]:
    per_token = (case["kv_heads"], case["head_dim"])
    if case["layout"] == "paged":
        blocks = case["batch"] * math.ceil(case["capacity"] / case["block_size"])
        return (blocks, case["block_size"], *per_token)
    return (case["batch"], case["capacity"], *per_token)


def _make_inputs(case: Case, dtype: torch.dtype, device, seed: int) -> dict:
    g = generator(device, seed)
    shape = (case["tokens"], case["kv_heads"], case["head_dim"])
    slots = math.prod(cache_shape(case)[:2])
    mapping = torch.randperm(slots, generator=g)[: case["tokens"]]
    return {"k": randn(shape, dtype, device, g), "v": randn(shape, dtype, device, g),
            "k_cache": randn(cache_shape(case), dtype, device, g), "v_cache": randn(cache_shape(case), dtype, device, g),
            "slot_mapping": mapping.to(device)}


def _validate(inputs) -> None:
    k = inputs.get("k")
    expect_tensor("k", k, dtype=FLOAT_DTYPES, ndim=3, op="kv_write")
    expect_tensor("v", inputs.get("v"), dtype=k.dtype, shape=tuple(k.shape), op="kv_write")
    cache = inputs.get("k_cache")
    expect_tensor("k_cache", cache, dtype=k.dtype, shape=(None, None, *k.shape[1:]), op="kv_write")
    expect_tensor("v_cache", inputs.get("v_cache"), dtype=k.dtype, shape=tuple(cache.shape), op="kv_write")
    expect_tensor("slot_mapping", inputs.get("slot_mapping"), dtype=torch.int64, shape=(k.shape[0],), op="kv_write")


def _bytes(case: Case, dtype: torch.dtype) -> float:
    # read k and v, write them into the caches, read the mapping
    return 4 * case["tokens"] * case["kv_heads"] * case["head_dim"] * dtype.itemsize + 8 * case["tokens"]


def kv_write_cases(model, workload) -> list[Case]:
    """A prefill of every (batch, prompt_len) and a decode step of every batch size, into a
    cache of the workload's longest context."""
    capacity = max(workload.prompt_len) + workload.decode_steps
    shape = {"kv_heads": model.kv_heads, "head_dim": model.head_dim, "layout": workload.kv_layout,
             "block_size": workload.block_size}
    points = {(b * p, b) for b in workload.batch for p in workload.prompt_len} | {(b, b) for b in workload.batch}
    return [Case("kv_write", tokens=t, batch=b, capacity=capacity, **shape) for t, b in sorted(points)]


KV_WRITE = Op(
    name="kv_write",
    role="the KV-cache write",
    family="kv_cache",
    doc="k, v: [tokens, kv_heads, head_dim], k_cache, v_cache: [.., .., kv_heads, head_dim], "
        "slot_mapping: [tokens] -> (k_cache, v_cache) written in place",
    make_inputs=_make_inputs,
    reference=kv_write_reference,
    flops=lambda case: 0.0,
    bytes=_bytes,
    cases_for=kv_write_cases,
    validate=_validate,
    tolerance=lambda dtype: Tolerance(exact=True),
    inplace=("k_cache", "v_cache"),
    test_cases=(
        Case("kv_write", tokens=1, batch=1, capacity=40, kv_heads=2, head_dim=64, layout="contiguous", block_size=16),
        Case("kv_write", tokens=37, batch=3, capacity=20, kv_heads=1, head_dim=80, layout="paged", block_size=8),
        Case("kv_write", tokens=3, batch=3, capacity=33, kv_heads=4, head_dim=32, layout="paged", block_size=16),
    ),
)

OPS = [KV_WRITE]
