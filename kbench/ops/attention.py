"""Attention: ``attention_prefill`` (causal, packed varlen) and ``attention_decode`` (KV cache).

Math (Hugging Face ``eager_attention_forward`` of ``LlamaAttention``), per sequence and head::

    k, v = repeat_kv(k, heads // kv_heads), repeat_kv(v, ...)   # query head h reads kv head h // group
    scores = (q @ k^T) * scale                                  # in q.dtype
    scores = scores masked to -inf where key position > query position (causal)
    probs = softmax(scores.float(), dim=-1).to(q.dtype)         # fp32 softmax, as HF
    out = probs @ v                                             # in q.dtype

``scale`` is ``head_dim ** -0.5``; ``kv_heads`` is ``heads`` (MHA), a divisor of it (GQA) or 1 (MQA).

``attention_prefill(q, k, v, cu_seqlens, max_seqlen, scale) -> out``

- ``q: [tokens, heads, head_dim]``, ``k, v: [tokens, kv_heads, head_dim]``: the sequences of a
  batch packed one after another (no padding);
- ``cu_seqlens: [batch + 1]`` int32, prefix sums of the sequence lengths (``cu_seqlens[0] == 0``,
  ``cu_seqlens[-1] == tokens``), on q's device; ``max_seqlen: int``, the longest sequence, known
  on the host so that no implementation needs to read ``cu_seqlens`` back (a host sync);
- causal within each sequence, no attention across sequences;
- ``out: [tokens, heads, head_dim]`` in q.dtype.

``attention_decode(q, k_cache, v_cache, cache_seqlens, block_table, scale) -> out``

- ``q: [batch, heads, head_dim]``: one new token per sequence, whose K/V are already in the cache
  (so it attends to every cached token of its sequence, itself included: no mask within);
- contiguous layout: ``k_cache, v_cache: [batch, max_seq_len, kv_heads, head_dim]``,
  ``block_table=None``; sequence b's tokens are ``k_cache[b, :cache_seqlens[b]]``;
- paged layout: ``k_cache, v_cache: [num_blocks, block_size, kv_heads, head_dim]``,
  ``block_table: [batch, max_blocks]`` int32; token t of sequence b lives in block
  ``block_table[b, t // block_size]`` at row ``t % block_size``; entries past a sequence's
  last block are valid block ids whose contents must be ignored;
- ``cache_seqlens: [batch]`` int32, ``1 <= cache_seqlens[b] <= capacity``: tokens in the cache
  for each sequence, the new one included. Rows past it hold finite garbage;
- ``out: [batch, heads, head_dim]`` in q.dtype.

Case dimensions: ``batch``, ``heads``, ``kv_heads``, ``head_dim``; prefill ``seq_len`` or
``seq_lens``; decode ``context`` (longest cache length) with ``context_lens`` or
``random_lengths=True`` (seeded by the case, the last at ``context``), ``layout``, ``block_size``.
An optional ``scale`` overrides ``head_dim ** -0.5``.

FLOPs: ``4 * heads * head_dim * sum(L * (L + 1) / 2)`` (prefill), ``* sum(L)`` (decode); bytes: q, out, K/V rows.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Mapping

import torch

from kbench.errors import KbenchError
from kbench.ops.base import FLOAT_DTYPES, Case, Op, Tolerance, expect_tensor, generator, randn

LAYOUTS = ("contiguous", "paged")
# The reference materialises [heads, L, L] scores; chunking heads keeps that under ~1 GiB in fp32.
_SCORE_BYTES_PER_CHUNK = 1 << 30


# -- reference ------------------------------------------------------------------------------


def repeat_kv(x: torch.Tensor, group: int) -> torch.Tensor:
    """[..., kv_heads, seq_len, head_dim] -> [..., kv_heads * group, seq_len, head_dim] (HF ``repeat_kv``:
    query head h reads kv head h // group)."""
    if group == 1:
        return x
    *lead, kv_heads, seq_len, head_dim = x.shape
    return x.unsqueeze(-3).expand(*lead, kv_heads, group, seq_len, head_dim).reshape(
        *lead, kv_heads * group, seq_len, head_dim)


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool) -> torch.Tensor:
    """One sequence, HF eager numerics: q ``[heads, q_len, head_dim]``, k/v ``[kv_heads, k_len, head_dim]``
    -> ``[heads, q_len, head_dim]``; causal queries are the last ``q_len`` of the ``k_len`` positions."""
    heads, q_len, _ = q.shape
    k_len = k.shape[1]
    group = heads // k.shape[0]
    k, v = repeat_kv(k, group), repeat_kv(v, group)
    mask = None
    if causal and q_len > 1:
        query_pos = torch.arange(k_len - q_len, k_len, device=q.device)[:, None]
        mask = torch.arange(k_len, device=q.device)[None, :] > query_pos
    out = torch.empty_like(q)
    chunk = max(1, _SCORE_BYTES_PER_CHUNK // max(1, 4 * q_len * k_len))
    for h in range(0, heads, chunk):
        out[h:h + chunk] = _attend(q[h:h + chunk], k[h:h + chunk], v[h:h + chunk], scale, mask)
    return out


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, hidden: torch.Tensor | None
            ) -> torch.Tensor:
    """``softmax(q k^T * scale) v`` over matching leading dims with HF eager's rounding: scores
    in q's dtype, the softmax in float32 rounded back; ``hidden`` (broadcast to the scores)
    marks the keys a query does not see."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if hidden is not None:
        scores = scores.masked_fill(hidden, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v)


def attention_prefill_reference(q, k, v, cu_seqlens, max_seqlen, scale):
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in itertools.pairwise(bounds):
        if end > start:
            seq = eager_attention(q[start:end].transpose(0, 1), k[start:end].transpose(0, 1),
                                  v[start:end].transpose(0, 1), scale, causal=True)
            out[start:end] = seq.transpose(0, 1)
    return out


def logical_cache(cache: torch.Tensor, block_table: torch.Tensor | None) -> torch.Tensor:
    """The cache as ``[batch, capacity, kv_heads, head_dim]``: a view when contiguous, gathered when paged."""
    if block_table is None:
        return cache
    batch, max_blocks = block_table.shape
    blocks = cache[block_table.long()]  # [batch, max_blocks, block_size, kv_heads, head_dim]
    return blocks.reshape(batch, max_blocks * cache.shape[1], *cache.shape[2:])


def attention_decode_reference(q, k_cache, v_cache, cache_seqlens, block_table, scale):
    """Every sequence at once over the cache's whole capacity, the keys past each length masked
    to -inf as HF's eager attention masks a padded batch (and their values zeroed, so garbage
    there is never multiplied in). Nothing is read back to the host, so a decode step of the
    reference is captured in a CUDA graph like any other; batch chunks keep the expanded keys and
    values under ``_SCORE_BYTES_PER_CHUNK``."""
    keys, values = logical_cache(k_cache, block_table), logical_cache(v_cache, block_table)
    batch, heads, head_dim = q.shape
    capacity = keys.shape[1]
    group = heads // keys.shape[2]
    visible = torch.arange(capacity, device=q.device)[None, :] < cache_seqlens[:, None]  # [batch, capacity]
    out = torch.empty_like(q)
    chunk = max(1, _SCORE_BYTES_PER_CHUNK // max(1, 2 * heads * capacity * head_dim * keys.element_size()))
    for start in range(0, batch, chunk):
        rows = slice(start, start + chunk)
        mask = visible[rows]
        k = repeat_kv(keys[rows].transpose(1, 2), group)  # [chunk, heads, capacity, head_dim]
        v = repeat_kv(values[rows].masked_fill(~mask[:, :, None, None], 0).transpose(1, 2), group)
        out[rows] = _attend(q[rows][:, :, None, :], k, v, scale, ~mask[:, None, None, :])[:, :, 0]
    return out


# -- case dimensions ------------------------------------------------------------------------


def sequence_lengths(case: Case) -> list[int]:
    """Prefill lengths of a case: ``seq_lens`` if given, else ``seq_len`` repeated ``batch`` times."""
    if case.get("seq_lens") is not None:
        return [int(n) for n in case["seq_lens"]]
    return [int(case["seq_len"])] * int(case["batch"])


def context_lengths(case: Case) -> list[int]:
    """Decode cache lengths of a case: ``context_lens``, random in ``[1, context]``, or ``context``."""
    if case.get("context_lens") is not None:
        return [int(n) for n in case["context_lens"]]
    batch, context = int(case["batch"]), int(case["context"])
    if not case.get("random_lengths", False):
        return [context] * batch
    # Seeded by the case, so flops() and bytes() see the lengths make_inputs builds.
    rng = random.Random(f"{batch}:{context}:{case.get('heads')}:{case.get('head_dim')}")
    return [rng.randint(1, context) for _ in range(batch - 1)] + [context]


def default_scale(case: Case) -> float:
    return float(case.get("scale", case["head_dim"] ** -0.5))


def _blocks(length: int, block_size: int) -> int:
    return -(-length // block_size)


# -- inputs ---------------------------------------------------------------------------------


def _make_prefill(case: Case, dtype: torch.dtype, device, seed: int) -> dict:
    g = generator(device, seed)
    lengths = sequence_lengths(case)
    tokens, heads, kv_heads, head_dim = sum(lengths), case["heads"], case["kv_heads"], case["head_dim"]
    cu_seqlens = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    return {
        "q": randn((tokens, heads, head_dim), dtype, device, g),
        "k": randn((tokens, kv_heads, head_dim), dtype, device, g),
        "v": randn((tokens, kv_heads, head_dim), dtype, device, g),
        "cu_seqlens": cu_seqlens.to(device),
        "max_seqlen": max(lengths, default=0),
        "scale": default_scale(case),
    }



def _make_decode(case: Case, dtype: torch.dtype, device, seed: int) -> dict:
    g = generator(device, seed)
    lengths = context_lengths(case)
    batch, heads, kv_heads, head_dim = len(lengths), case["heads"], case["kv_heads"], case["head_dim"]
    layout = case.get("layout", "contiguous")
    inputs = {"q": randn((batch, heads, head_dim), dtype, device, g)}
    if layout == "contiguous":
        shape = (batch, max(lengths), kv_heads, head_dim)
        block_table = None
    elif layout == "paged":
        block_size = case["block_size"]
        max_blocks = _blocks(max(lengths), block_size)
        used = [_blocks(n, block_size) for n in lengths]
        # Blocks handed out in a shuffled order, as an allocator that has run a while would.
        order = torch.randperm(sum(used), generator=g).tolist()
        table = torch.zeros((batch, max_blocks), dtype=torch.int32)
        for b, count in enumerate(used):
            table[b, :count] = torch.tensor(order[:count], dtype=torch.int32)
            order = order[count:]
        shape = (sum(used), block_size, kv_heads, head_dim)
        block_table = table.to(device)
    else:
        raise KbenchError(f"attention_decode: unknown layout {layout!r}.", f"Use one of: {', '.join(LAYOUTS)}.")
    inputs["k_cache"] = randn(shape, dtype, device, g)
    inputs["v_cache"] = randn(shape, dtype, device, g)
    inputs["cache_seqlens"] = torch.tensor(lengths, dtype=torch.int32).to(device)
    inputs["block_table"] = block_table
    inputs["scale"] = default_scale(case)
    return inputs


def _hard_prefill(case: Case, dtype: torch.dtype, device, seed: int) -> dict[str, dict]:
    """Length-1 sequences packed between the case's, whose boundaries they must not cross."""
    lengths = sequence_lengths(case)
    packed = [lengths[0], 1, *lengths[1:], 1]
    hard = case.replace(batch=len(packed), seq_lens=packed)
    return {"length-1 sequences in a packed batch": _make_prefill(hard, dtype, device, seed)}


def _hard_decode(case: Case, dtype: torch.dtype, device, seed: int) -> dict[str, dict]:
    """Lengths 1, k * block_size + 1 (one row in the last block) and the case's longest in one
    batch; the finite garbage past each length catches a kernel that reads past it."""
    block_size, context = int(case["block_size"]), int(case["context"])
    partial = max(1, (context - 1) // block_size) * block_size + 1
    cycle = (1, partial, max(context, partial))
    lengths = [cycle[b % len(cycle)] for b in range(max(int(case["batch"]), 2))]
    hard = case.replace(batch=len(lengths), context=max(lengths), context_lens=lengths)
    return {"lengths 1 and k * block_size + 1 in one batch": _make_decode(hard, dtype, device, seed)}


# -- validation -----------------------------------------------------------------------------


def _check_heads(op: str, heads: int, kv_heads: int) -> None:
    if kv_heads == 0 or heads % kv_heads:
        raise KbenchError(f"{op}: heads ({heads}) must be a multiple of kv_heads ({kv_heads}).",
                          "Use kv_heads dividing heads (MHA: equal, GQA: a divisor, MQA: 1).")


def _validate_prefill(inputs: Mapping) -> None:
    op = "attention_prefill"
    q = inputs.get("q")
    expect_tensor("q", q, dtype=FLOAT_DTYPES, ndim=3, op=op)
    tokens, heads, head_dim = q.shape
    k = inputs.get("k")
    expect_tensor("k", k, dtype=q.dtype, ndim=3, op=op)
    if k.shape[0] != tokens or k.shape[2] != head_dim:
        raise KbenchError(f"{op}: k has shape {list(k.shape)}; expected [{tokens}, kv_heads, {head_dim}] to match q.")
    expect_tensor("v", inputs.get("v"), dtype=q.dtype, shape=tuple(k.shape), op=op)
    _check_heads(op, heads, k.shape[1])
    cu_seqlens = inputs.get("cu_seqlens")
    expect_tensor("cu_seqlens", cu_seqlens, dtype=torch.int32, ndim=1, op=op)
    if cu_seqlens.numel() < 2:
        raise KbenchError(f"{op}: cu_seqlens must have batch + 1 >= 2 entries, got {cu_seqlens.numel()}.")
    # Reads cu_seqlens back to the host (a sync): validate outside timed regions.
    bounds = cu_seqlens.tolist()
    lengths = [end - start for start, end in itertools.pairwise(bounds)]
    if bounds[0] != 0 or min(lengths) < 0 or bounds[-1] != tokens:
        raise KbenchError(f"{op}: cu_seqlens {bounds[:8]}{'...' if len(bounds) > 8 else ''} is not a prefix sum "
                          f"from 0 to tokens={tokens}.",
                          "cu_seqlens must start at 0, never decrease, and end at q.shape[0].")
    max_seqlen = inputs.get("max_seqlen")
    if not isinstance(max_seqlen, int) or max_seqlen < max(lengths):
        raise KbenchError(f"{op}: max_seqlen={max_seqlen!r} must be a Python int >= the longest sequence ({max(lengths)}).")


def _validate_decode(inputs: Mapping) -> None:
    op = "attention_decode"
    q = inputs.get("q")
    expect_tensor("q", q, dtype=FLOAT_DTYPES, ndim=3, op=op)
    batch, heads, head_dim = q.shape
    k_cache = inputs.get("k_cache")
    expect_tensor("k_cache", k_cache, dtype=q.dtype, ndim=4, op=op)
    expect_tensor("v_cache", inputs.get("v_cache"), dtype=q.dtype, shape=tuple(k_cache.shape), op=op)
    if k_cache.shape[3] != head_dim:
        raise KbenchError(f"{op}: k_cache head_dim is {k_cache.shape[3]} but q's is {head_dim}.")
    _check_heads(op, heads, k_cache.shape[2])
    cache_seqlens = inputs.get("cache_seqlens")
    expect_tensor("cache_seqlens", cache_seqlens, dtype=torch.int32, shape=(batch,), op=op)
    block_table = inputs.get("block_table")
    if block_table is None:
        if k_cache.shape[0] != batch:
            raise KbenchError(f"{op}: contiguous k_cache has batch {k_cache.shape[0]}, q has {batch}.",
                              "Pass block_table for a paged cache [num_blocks, block_size, kv_heads, head_dim].")
        capacity = k_cache.shape[1]
    else:
        expect_tensor("block_table", block_table, dtype=torch.int32, ndim=2, op=op)
        if block_table.shape[0] != batch:
            raise KbenchError(f"{op}: block_table has shape {list(block_table.shape)}, expected [{batch}, max_blocks].")
        capacity = block_table.shape[1] * k_cache.shape[1]
        if block_table.numel() and (block_table.min().item() < 0 or block_table.max().item() >= k_cache.shape[0]):
            raise KbenchError(f"{op}: block_table holds ids outside [0, num_blocks={k_cache.shape[0]}).")
    lengths = cache_seqlens.tolist()
    if min(lengths) < 1 or max(lengths) > capacity:
        raise KbenchError(f"{op}: cache_seqlens must lie in [1, {capacity}] (the cache capacity), got "
                          f"min {min(lengths)} max {max(lengths)}.")


# -- work and tolerance ---------------------------------------------------------------------


def _flops_prefill(case: Case) -> float:
    return 4.0 * case["heads"] * case["head_dim"] * sum(n * (n + 1) / 2 for n in sequence_lengths(case))


def _bytes_prefill(case: Case, dtype: torch.dtype) -> float:
    tokens = sum(sequence_lengths(case))
    return (2 * case["heads"] + 2 * case["kv_heads"]) * case["head_dim"] * tokens * dtype.itemsize


def _flops_decode(case: Case) -> float:
    return 4.0 * case["heads"] * case["head_dim"] * sum(context_lengths(case))


def _bytes_decode(case: Case, dtype: torch.dtype) -> float:
    lengths = context_lengths(case)
    kv_bytes = 2 * case["kv_heads"] * case["head_dim"] * sum(lengths) * dtype.itemsize
    q_out_bytes = 2 * len(lengths) * case["heads"] * case["head_dim"] * dtype.itemsize
    return kv_bytes + q_out_bytes + 4 * len(lengths)


def attention_tolerance(dtype: torch.dtype) -> Tolerance:
    """A few ulps of the output plus the reference's own rounding of P (kernels keep it in fp32)."""
    if dtype == torch.float32:
        return Tolerance(atol=2e-5, rtol=1e-4)
    if dtype == torch.float16:
        return Tolerance(atol=4e-3, rtol=4e-3)
    return Tolerance(atol=3e-2, rtol=2e-2)


# -- cases ----------------------------------------------------------------------------------


def prefill_cases(model, workload) -> list[Case]:
    """One case per (batch, prompt_len) of the workload, every sequence at prompt_len."""
    return [
        Case("attention_prefill", batch=b, seq_len=p, heads=model.heads, kv_heads=model.kv_heads,
             head_dim=model.head_dim)
        for b in sorted(set(workload.batch)) for p in sorted(set(workload.prompt_len))
    ]


def decode_cases(model, workload) -> list[Case]:
    """One case per (batch, context at the last decode step), in the workload's cache layout."""
    return [
        Case("attention_decode", batch=b, context=c, heads=model.heads, kv_heads=model.kv_heads,
             head_dim=model.head_dim, layout=workload.kv_layout, block_size=workload.block_size)
        for b, c in workload.decode_contexts
    ]


_prefill = functools.partial(Case, "attention_prefill")
_decode = functools.partial(Case, "attention_decode")


ATTENTION_PREFILL = Op(
    reference_cuda_graphs=False,  # the reference loops over cu_seqlens.tolist()
    name="attention_prefill",
    role="causal attention over the packed prompts",
    family="attention",
    doc="q: [tokens, heads, head_dim], k, v: [tokens, kv_heads, head_dim], cu_seqlens: [batch + 1] -> "
        "[tokens, heads, head_dim] (causal per sequence)",
    make_inputs=_make_prefill,
    reference=attention_prefill_reference,
    flops=_flops_prefill,
    bytes=_bytes_prefill,
    cases_for=prefill_cases,
    validate=_validate_prefill,
    tolerance=attention_tolerance,
    hard_inputs=_hard_prefill,
    test_cases=(
        _prefill(batch=1, seq_len=1, heads=4, kv_heads=4, head_dim=64),
        _prefill(batch=2, seq_len=17, heads=8, kv_heads=2, head_dim=64),
        _prefill(batch=3, seq_lens=[1, 33, 8], heads=4, kv_heads=1, head_dim=80),
        _prefill(batch=2, seq_lens=[40, 23], heads=8, kv_heads=8, head_dim=128),
    ),
)

ATTENTION_DECODE = Op(
    cold=("k_cache", "v_cache"),
    name="attention_decode",
    role="one new token per sequence against the KV cache",
    family="attention",
    doc="q: [batch, heads, head_dim], k_cache, v_cache: [batch, max_seq_len, kv_heads, head_dim] or "
        "[num_blocks, block_size, kv_heads, head_dim] + block_table, cache_seqlens: [batch] -> [batch, heads, head_dim]",
    make_inputs=_make_decode,
    reference=attention_decode_reference,
    flops=_flops_decode,
    bytes=_bytes_decode,
    cases_for=decode_cases,
    validate=_validate_decode,
    tolerance=attention_tolerance,
    hard_inputs=_hard_decode,
    test_cases=(
        _decode(batch=1, context=1, heads=4, kv_heads=4, head_dim=64, layout="contiguous", block_size=16),
        _decode(batch=3, context=37, heads=8, kv_heads=2, head_dim=64, layout="contiguous", block_size=16,
                random_lengths=True),
        _decode(batch=3, context=45, heads=4, kv_heads=1, head_dim=80, layout="paged", block_size=16,
                context_lens=[1, 45, 17]),
        _decode(batch=2, context=70, heads=8, kv_heads=8, head_dim=128, layout="paged", block_size=32,
                random_lengths=True),
    ),
)

OPS = [ATTENTION_PREFILL, ATTENTION_DECODE]

