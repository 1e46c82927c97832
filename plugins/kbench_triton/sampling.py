"""Sampling and top-k without sorting the vocabulary.

One program per row walks the vocabulary in ``BLOCK``-wide steps (the row stays in L2 between
passes). Order statistics come from a radix select on an order-preserving 32-bit key of each
float (four passes, each a 256-bin ``tl.histogram`` of one byte among the elements that match
the bytes found so far), so the k-th largest value costs four reads of the row and no sort.

``topk`` (k <= ``CHUNK_MAX_K``; ``TWO_STAGE_ENV=0`` turns it off): two stages over (value key,
index) pairs packed in one int64, larger for a larger value and, among equal values, a smaller index. Stage one splits each row
into chunks, one program per chunk, and keeps the chunk's best ``K_PAD`` (``tl.topk``, a
bitonic top-k that sorts runs of ``K_PAD`` and merges them, never the whole chunk); stage two
takes the best ``K_PAD`` of each row's chunk winners the same way and keeps the first k.
Every program works on a few thousand elements at once, so a batch of rows fills the GPU
instead of leaving one program per row to stream it. Otherwise: the k-th largest key by the radix select below,
then one pass that compacts the k winners into a scratch row, and a sort of those k.

``sample`` follows ``kbench.ops.sampling`` step by step (with top-k on the two-stage path,
the k-th largest logit comes from ``topk``: dividing by a positive temperature keeps the order):
- greedy: one argmax pass (lowest index among equal maxima);
- otherwise ``s = logits / temperature`` (IEEE division, as torch). With top-k or top-p, the
  candidates are the tokens with ``s >= `` the n-th largest ``s`` (n = top_k, or ``CANDIDATES``
  for top-p alone), compacted in index order into a scratch row. Top-k keeps exactly them;
  top-p finds its threshold among them in registers (below), and is accepted when a
  candidate falls below the threshold (so no token outside could be kept). Otherwise (a flat distribution whose top-p set is larger than the candidates, or ties that
  overflow the scratch row) the same search runs with one pass over the row per step.
- the top-p threshold is the smallest probability y (found by bisection on its bits) whose
  strictly-more-probable mass is < top_p: exactly the last kept probability of the sorted
  definition, with the mass summed in a different order (a flip needs a boundary within
  float32 rounding of top_p).
- the draw: ``x = u * total``, the first index whose running sum of kept probabilities exceeds
  x, clamped to the last kept token. The total is the scan's own last value, so the clamp
  is consistent with the scan.

Scratch rows are sized from host values (batch, top_k), so no call allocates a data-dependent
size or synchronises with the host.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from kbench_triton.common import interpreting, launch_config

# Candidates kept for top-p alone; a top-p set larger than this takes the bisection path.
CANDIDATES = 1024
NUM_BINS = 256
# The two-stage top-k: k up to this; chunks of at least MIN_CHUNK scores, and as many as keep
# a row's chunk winners (chunks * K_PAD) within MERGE_MAX for the one-program merge.
CHUNK_MAX_K = 256
MIN_CHUNK = 2048
MERGE_MAX = 2048


@triton.jit
def _exp(x, PRECISE: tl.constexpr):
    if PRECISE:
        return libdevice.exp(x)  # expf, as torch's softmax
    return tl.exp(x)


@triton.jit
def _ordered_key(x):
    """float32 -> uint32 whose unsigned order is the float order (-0.0 folded into +0.0)."""
    bits = (x + 0.0).to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return ordered.to(tl.uint32, bitcast=True) ^ 0x80000000


@triton.jit
def _load_scores(row_ptr, offs, mask, temperature, SCALE: tl.constexpr):
    x = tl.load(row_ptr + offs, mask=mask, other=float("-inf")).to(tl.float32)
    if SCALE:
        x = tl.math.div_rn(x, temperature)
    return x


@triton.jit
def _nth_largest_key(row_ptr, vocab, n, temperature, SCALE: tl.constexpr, BLOCK: tl.constexpr):
    """(key of the n-th largest score counted with multiplicity, how many equal to it it takes).

    Radix select, most significant byte first: each pass histograms the next byte of the
    keys that share the bytes chosen so far (the others are sent to bins >= 256 and ignored).
    """
    bins = tl.arange(0, 2 * 256)
    prefix = tl.full([], 0, tl.uint32)
    remaining = n
    for step in tl.static_range(4):
        shift = 24 - 8 * step
        hist = tl.zeros([2 * 256], dtype=tl.int32)
        for start in range(0, vocab, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < vocab
            key = _ordered_key(_load_scores(row_ptr, offs, mask, temperature, SCALE))
            digit = ((key >> shift) & 255).to(tl.int32)
            match = mask
            if step > 0:
                match = match & ((key >> (shift + 8)) == prefix)
            hist += tl.histogram(tl.where(match, digit, digit + 256), 2 * 256)
        hist = tl.where(bins < 256, hist, 0)
        at_least = tl.sum(hist, 0) - tl.cumsum(hist, 0) + hist  # keys whose byte >= bin
        chosen = tl.max(tl.where((at_least >= remaining) & (bins < 256), bins, 0), 0)
        remaining -= tl.sum(tl.where(bins > chosen, hist, 0), 0)
        prefix = (prefix << 8) | chosen.to(tl.uint32)
    return prefix, remaining


@triton.jit
def _greedy_kernel(logits_ptr, out_ptr, stride_row, vocab, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    best_value = float("-inf")
    best_index = 0
    for start in range(0, vocab, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(row_ptr + offs, mask=offs < vocab, other=float("-inf")).to(tl.float32)
        value, index = tl.max(x, 0, return_indices=True, return_indices_tie_break_left=True)
        if value > best_value:  # strictly: an equal maximum later in the row loses
            best_value = value
            best_index = start + index
    tl.store(out_ptr + row, best_index.to(tl.int64))


@triton.jit
def _topk_kernel(logits_ptr, values_ptr, indices_ptr, scratch_ptr, stride_row, vocab, k,
                 K_PAD: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    kth, equal_needed = _nth_largest_key(row_ptr, vocab, k, 1.0, False, BLOCK)
    taken = 0
    equal_seen = 0
    for start in range(0, vocab, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < vocab
        key = _ordered_key(_load_scores(row_ptr, offs, mask, 1.0, False))
        equal = mask & (key == kth)
        equal_rank = equal_seen + tl.cumsum(equal.to(tl.int32), 0) - 1
        chosen = mask & ((key > kth) | (equal & (equal_rank < equal_needed)))
        position = taken + tl.cumsum(chosen.to(tl.int32), 0) - 1
        packed = _packed(key, offs)
        tl.store(scratch_ptr + row * K_PAD + position, packed, mask=chosen)
        taken += tl.sum(chosen.to(tl.int32), 0)
        equal_seen += tl.sum(equal.to(tl.int32), 0)
    tl.debug_barrier()
    slots = tl.arange(0, K_PAD)
    packed = tl.load(scratch_ptr + row * K_PAD + slots, mask=slots < k, other=-9223372036854775807 - 1)
    packed = tl.sort(packed, descending=True)
    index = 4294967295 - (packed & 4294967295)
    values = tl.load(row_ptr + index, mask=slots < k, other=0.0)
    tl.store(values_ptr + row * k + slots, values, mask=slots < k)
    tl.store(indices_ptr + row * k + slots, index, mask=slots < k)


@triton.jit
def _packed(key, offs):
    """(key, index) as one int64: ordered by value, then by ascending index."""
    signed_key = (key ^ 0x80000000).to(tl.int32, bitcast=True).to(tl.int64)
    return signed_key * 4294967296 + (4294967295 - offs.to(tl.int64))


@triton.jit
def _topk_chunk_kernel(logits_ptr, scratch_ptr, stride_row, vocab, chunks,
                       K_PAD: tl.constexpr, CHUNK: tl.constexpr):
    """Stage one: the best K_PAD (key, index) pairs of one chunk of one row, best first."""
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    slots = tl.arange(0, CHUNK)
    offs = chunk * CHUNK + slots
    mask = offs < vocab
    key = _ordered_key(_load_scores(logits_ptr + row * stride_row, offs, mask, 1.0, False))
    packed = tl.where(mask, _packed(key, offs), -9223372036854775807 - 1)
    best = tl.topk(packed, K_PAD)  # bitonic top-k: sorts runs of K_PAD, not the whole chunk
    tl.store(scratch_ptr + (row * chunks + chunk) * K_PAD + tl.arange(0, K_PAD), best)


@triton.jit
def _topk_merge_kernel(logits_ptr, scratch_ptr, values_ptr, indices_ptr, stride_row, k, candidates,
                       K_PAD: tl.constexpr, MERGE: tl.constexpr):
    """Stage two: the best k of a row's chunk winners, sorted, with their values."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, MERGE)
    packed = tl.load(scratch_ptr + row * candidates + offs, mask=offs < candidates,
                     other=-9223372036854775807 - 1)
    packed = tl.topk(packed, K_PAD)
    slots = tl.arange(0, K_PAD)
    index = 4294967295 - (packed & 4294967295)
    keep = slots < k
    values = tl.load(logits_ptr + row * stride_row + index, mask=keep, other=0.0)
    tl.store(values_ptr + row * k + slots, values, mask=keep)
    tl.store(indices_ptr + row * k + slots, index, mask=keep)


@triton.jit
def _probabilities(row_ptr, offs, mask, temperature, row_max, denominator, kth,
                   USE_TOPK: tl.constexpr, PRECISE: tl.constexpr):
    """p of each token of a block after top-k (0 where dropped): exp(s - max) / denominator."""
    s = _load_scores(row_ptr, offs, mask, temperature, True)
    keep = mask
    if USE_TOPK:
        keep = keep & (_ordered_key(s) >= kth)
    return tl.where(keep, _exp(s - row_max, PRECISE) / denominator, 0.0)


@triton.jit
def _sample_kernel(logits_ptr, uniforms_ptr, out_ptr, scratch_s_ptr, scratch_index_ptr, top_ptr,
                   stride_row, vocab, temperature, top_p, candidates, stride_top,
                   USE_TOPK: tl.constexpr, KTH_GIVEN: tl.constexpr, USE_TOPP: tl.constexpr, CAP: tl.constexpr,
                   PRECISE: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    x_fraction = tl.load(uniforms_ptr + row)
    big = 2147483647

    # cut: key of the candidates' threshold score; kth: the top-k threshold (0 keeps every key)
    cut = tl.full([], 0, tl.uint32)
    if KTH_GIVEN:
        # the largest and the k-th largest logit (top_ptr: the row's top-k values, best first),
        # scaled as every score is: division by a positive temperature, correctly rounded, keeps
        # the order, so these are the largest and the k-th largest score, and no pass over the
        # row is needed for either
        top_row = top_ptr + row * stride_top
        row_max = tl.math.div_rn(tl.load(top_row).to(tl.float32), temperature)
        cut = _ordered_key(tl.math.div_rn(tl.load(top_row + candidates - 1).to(tl.float32), temperature))
    else:
        row_max = float("-inf")
        for start in range(0, vocab, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            row_max = tl.maximum(row_max, tl.max(_load_scores(row_ptr, offs, offs < vocab, temperature, True), 0))
    if not KTH_GIVEN and (USE_TOPK or USE_TOPP):
        cut, _ = _nth_largest_key(row_ptr, vocab, candidates, temperature, True, BLOCK)
    kth = tl.full([], 0, tl.uint32)
    if USE_TOPK:
        kth = cut

    # the softmax denominator over the top-k survivors (only top-p needs p normalised: the draw
    # is scale-free), and the candidates compacted in index order
    denominator = 1.0
    found = 0
    if USE_TOPK or USE_TOPP:
        partial = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, vocab, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < vocab
            s = _load_scores(row_ptr, offs, mask, temperature, True)
            chosen = mask & (_ordered_key(s) >= cut)
            if USE_TOPP:
                if USE_TOPK:
                    partial += tl.where(chosen, _exp(s - row_max, PRECISE), 0.0)
                else:
                    partial += _exp(s - row_max, PRECISE)  # exp(-inf) = 0 past the vocab
            position = found + tl.cumsum(chosen.to(tl.int32), 0) - 1
            store = chosen & (position < CAP)
            tl.store(scratch_s_ptr + row * CAP + position, s, mask=store)
            tl.store(scratch_index_ptr + row * CAP + position, offs, mask=store)
            found += tl.sum(chosen.to(tl.int32), 0)
        if USE_TOPP:
            denominator = tl.sum(partial, 0)

    token = tl.full([], big, tl.int32)
    done = tl.zeros([], dtype=tl.int32)
    if USE_TOPK or USE_TOPP:
        if found <= CAP:
            tl.debug_barrier()
            slots = tl.arange(0, CAP)
            valid = slots < found
            s = tl.load(scratch_s_ptr + row * CAP + slots, mask=valid, other=float("-inf"))
            index = tl.load(scratch_index_ptr + row * CAP + slots, mask=valid, other=big)
            p = tl.where(valid, _exp(s - row_max, PRECISE) / denominator, 0.0)
            keep = valid
            done = tl.full([], 1, tl.int32)
            if USE_TOPP:
                # the same threshold search as below, on the candidates held in registers
                lo = tl.zeros([], dtype=tl.int32)
                hi = tl.full([], 0x3F800000, tl.int32)
                while lo < hi:
                    mid = (lo + hi) // 2
                    y = mid.to(tl.int32).to(tl.float32, bitcast=True)
                    if tl.sum(tl.where(p > y, p, 0.0), 0) < top_p:
                        hi = mid
                    else:
                        lo = mid + 1
                threshold = lo.to(tl.int32).to(tl.float32, bitcast=True)
                keep = valid & (p >= threshold)
                if not USE_TOPK:
                    # a candidate below the threshold proves no token outside could be kept
                    done = (tl.sum((valid & (p < threshold)).to(tl.int32), 0) > 0).to(tl.int32)
            weights = tl.where(keep, p, 0.0)
            running = tl.cumsum(weights, 0)
            total = tl.max(running, 0)
            first_above = tl.min(tl.where(valid & (running > x_fraction * total), index, big), 0)
            first_full = tl.min(tl.where(valid & (running >= total), index, big), 0)
            token = tl.minimum(first_above, first_full)

    if done == 0:
        threshold = 0.0
        if USE_TOPP:
            # smallest probability bit pattern y with (mass of p > y) < top_p: an element's p
            lo = tl.zeros([], dtype=tl.int32)
            hi = tl.full([], 0x3F800000, tl.int32)  # 1.0: nothing is more probable, mass 0 < top_p
            while lo < hi:
                mid = (lo + hi) // 2
                y = mid.to(tl.int32).to(tl.float32, bitcast=True)
                mass = tl.zeros([BLOCK], dtype=tl.float32)
                for start in range(0, vocab, BLOCK):
                    offs = start + tl.arange(0, BLOCK)
                    p = _probabilities(row_ptr, offs, offs < vocab, temperature, row_max, denominator, kth,
                                       USE_TOPK, PRECISE)
                    mass += tl.where(p > y, p, 0.0)
                if tl.sum(mass, 0) < top_p:
                    hi = mid
                else:
                    lo = mid + 1
            threshold = lo.to(tl.int32).to(tl.float32, bitcast=True)
        # two identical scans: the first only for the total, so the clamp sees the same sums
        total = 0.0
        for start in range(0, vocab, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            p = _probabilities(row_ptr, offs, offs < vocab, temperature, row_max, denominator, kth, USE_TOPK, PRECISE)
            total = tl.max(total + tl.cumsum(tl.where(p >= threshold, p, 0.0), 0), 0)
        carry = 0.0
        first_above = big
        first_full = big
        for start in range(0, vocab, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < vocab
            p = _probabilities(row_ptr, offs, mask, temperature, row_max, denominator, kth, USE_TOPK, PRECISE)
            running = carry + tl.cumsum(tl.where(p >= threshold, p, 0.0), 0)
            first_above = tl.minimum(first_above, tl.min(tl.where(mask & (running > x_fraction * total), offs, big), 0))
            first_full = tl.minimum(first_full, tl.min(tl.where(mask & (running >= total), offs, big), 0))
            carry = tl.max(running, 0)
        token = tl.minimum(first_above, first_full)
    tl.store(out_ptr + row, token.to(tl.int64))


# One program streams a whole row, latency-bound: wide steps keep more bytes in flight.
NUM_WARPS = 16


def _block(vocab: int) -> int:
    # 8192 scores per step: 16 per thread at 16 warps
    return min(8192, triton.next_power_of_2(vocab))


def _chunking(vocab: int, k_pad: int) -> tuple[int, int]:
    """(chunk, chunks) of the two-stage top-k: chunks >= MIN_CHUNK wide, at most MERGE_MAX winners."""
    chunk = max(MIN_CHUNK, triton.next_power_of_2(triton.cdiv(vocab * k_pad, MERGE_MAX)))
    return chunk, triton.cdiv(vocab, chunk)


# The two-stage path is the default for topk and sample's k-th logit since the H100 measured
# it (notes/triton.md, v5); KBENCH_TRITON_TWO_STAGE_TOPK=0 goes back to the radix select.
TWO_STAGE_ENV = "KBENCH_TRITON_TWO_STAGE_TOPK"


def _two_stage(k: int, two_stage: bool | None) -> bool:
    """Whether ``topk`` (and ``sample``'s k-th logit) take the two-stage path: when asked, or by
    default on a GPU unless ``TWO_STAGE_ENV`` is 0; only for k <= CHUNK_MAX_K and a Triton with
    ``tl.topk``. On the CPU interpreter ``tl.topk`` of one 2048-score chunk takes about 2 s, so
    there the default is the radix select (``TWO_STAGE_ENV=1`` asks for the two stages) and
    tests run the two-stage path on small shapes."""
    if two_stage is None:
        two_stage = os.environ.get(TWO_STAGE_ENV, "0" if interpreting() else "1") != "0"
    return two_stage and k <= CHUNK_MAX_K and hasattr(tl, "topk")  # tl.topk: Triton >= 3.4


def topk(logits: torch.Tensor, k: int, chunk: int | None = None,
         two_stage: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """logits: [batch, vocab] -> (values [batch, k] in logits.dtype, indices [batch, k] int64).

    ``chunk`` (a power of two >= k's) sets the stage-one chunk width and implies the two-stage
    path; ``two_stage`` chooses the path (see ``_two_stage``).
    """
    logits = logits if logits.stride(-1) == 1 else logits.contiguous()
    batch, vocab = logits.shape
    values = torch.empty((batch, k), dtype=logits.dtype, device=logits.device)
    indices = torch.empty((batch, k), dtype=torch.int64, device=logits.device)
    k_pad = max(2, triton.next_power_of_2(k))
    if _two_stage(k, True if chunk is not None else two_stage):
        width, chunks = _chunking(vocab, k_pad) if chunk is None else (chunk, triton.cdiv(vocab, chunk))
        merge = max(2, triton.next_power_of_2(chunks * k_pad))
        scratch = torch.empty((batch, chunks * k_pad), dtype=torch.int64, device=logits.device)
        launch_config("topk", (vocab, k), CHUNK=width, MERGE=merge, num_warps=8)
        if batch:
            _topk_chunk_kernel[(batch, chunks)](logits, scratch, logits.stride(0), vocab, chunks,
                                                K_PAD=k_pad, CHUNK=width, num_warps=8)
            _topk_merge_kernel[(batch,)](logits, scratch, values, indices, logits.stride(0), k, chunks * k_pad,
                                         K_PAD=k_pad, MERGE=merge, num_warps=8)
        return values, indices
    scratch = torch.empty((batch, k_pad), dtype=torch.int64, device=logits.device)
    block = _block(vocab)
    launch_config("topk", (vocab, k), BLOCK=block, num_warps=NUM_WARPS)
    if batch:
        _topk_kernel[(batch,)](logits, values, indices, scratch, logits.stride(0), vocab, k,
                               K_PAD=k_pad, BLOCK=block, num_warps=NUM_WARPS)
    return values, indices


def sample(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float, top_k: int, top_p: float,
           two_stage: bool | None = None) -> torch.Tensor:
    """logits: [batch, vocab], uniforms: [batch] -> tokens [batch] int64 (see the module docstring).

    With top-k, ``two_stage`` chooses how the k-th largest logit is found (see ``_two_stage``).
    """
    logits = logits if logits.stride(-1) == 1 else logits.contiguous()
    batch, vocab = logits.shape
    tokens = torch.empty((batch,), dtype=torch.int64, device=logits.device)
    block = _block(vocab)
    if batch == 0:
        return tokens
    if temperature == 0:
        launch_config("sample_greedy", (vocab,), BLOCK=block, num_warps=NUM_WARPS)
        _greedy_kernel[(batch,)](logits, tokens, logits.stride(0), vocab, BLOCK=block, num_warps=NUM_WARPS)
        return tokens
    use_topk = 0 < top_k < vocab
    use_topp = top_p < 1.0
    candidates = top_k if use_topk else min(CANDIDATES, vocab)
    cap = max(256, 2 * triton.next_power_of_2(candidates))
    scratch_s = torch.empty((batch, cap), dtype=torch.float32, device=logits.device)
    scratch_index = torch.empty((batch, cap), dtype=torch.int32, device=logits.device)
    kth_given = use_topk and _two_stage(top_k, two_stage)
    # the row's top-k values, best first: its max and k-th largest logit (else an unread pointer)
    top = topk(logits, top_k, two_stage=True)[0] if kth_given else scratch_s
    launch_config("sample", (vocab, top_k, top_p < 1.0), BLOCK=block, CAP=cap, num_warps=NUM_WARPS)
    _sample_kernel[(batch,)](
        logits, uniforms, tokens, scratch_s, scratch_index, top, logits.stride(0), vocab,
        float(temperature), float(top_p), candidates, top.stride(0),
        USE_TOPK=use_topk, KTH_GIVEN=kth_given, USE_TOPP=use_topp, CAP=cap, PRECISE=not interpreting(), BLOCK=block, num_warps=NUM_WARPS,
    )
    return tokens
