"""Sampling and top-k without sorting the vocabulary.

``topk`` for k <= ``FILTER_MAX_K``: a threshold filter, then a top-k of the few survivors.
Split a row into G = 2 * k_pad groups by index mod G (k_pad: k's power of two). The G group
maxima are G distinct scores, so the k-th largest of them, t, is at most the row's k-th largest
score: every top-k score is >= t, and at least k scores are. For exchangeable scores t lies
close to the k-th largest (20000 iid rows of 32000 at k 50: 55 scores >= t on average, at most
83), whatever the vocab. Three launches, sizes from host values only:
1. one program per chunk of a row: its group maxima of order-preserving int32 keys; the row's
   last chunk to finish (an arrival counter) ranks the row's maxima for t and zeroes the row's
   candidate count;
2. one program per chunk again (the row now in L2): the scores with key >= t, packed in one
   int64 (key << 32 | inverted index: larger for a larger value and, among equal values, a
   smaller index), go to the row's CAP candidate slots at positions from an atomic count;
3. one program per row: the best k_pad of the candidates (``tl.topk``, a bitonic top-k over
   2 * k_pad slots, or CAP when more came), or, when more than CAP came (rows built against
   the filter: huge ties, scores that only a few groups hold), the radix select below for
   that row. Either way values descend and equal values come by ascending index.
For larger k: the k-th largest key by the radix select below, then one pass that compacts the
k winners into a scratch row, and a sort of those k.

Order statistics elsewhere come from a radix select, one program per row walking the
vocabulary in ``BLOCK``-wide steps (the row stays in L2 between passes), on an
order-preserving 32-bit key of each float: four passes, each a 256-bin ``tl.histogram`` of
one byte among the elements that match the bytes found so far.

``sample`` follows ``kbench.ops.sampling`` step by step (with top-k up to ``FILTER_MAX_K``, the
largest and the k-th largest logit come from ``topk``: dividing by a positive temperature keeps
the order):
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
size or synchronises with the host. The filter's arrival counters are one zeroed buffer per
device that every call leaves at zero (``common.semaphores``): calls on one stream share it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from kbench_triton.common import interpreting, launch_config, semaphores

# Candidates kept for top-p alone; a top-p set larger than this takes the bisection path.
CANDIDATES = 1024
NUM_BINS = 256
# The filter top-k: k up to FILTER_MAX_K. Its passes step FILTER_BLOCK scores at a time (16 a
# thread at 8 warps: one step holds a 4096-score chunk in flight at once); a row's chunks *
# groups maxima stay within MAXIMA_MAX (one program ranks them), RANK_MAX of the ranking's
# comparisons at a time. CAP candidate slots a row (at least MIN_CAP, else 8 * K_PAD: iid rows
# of 32000 at k 50 gave at most 83 candidates in 20000); the selection, one program a row
# with SELECT_WARPS, steps SELECT_BLOCK scores at a time when the candidates overflow.
FILTER_MAX_K = 256
FILTER_BLOCK = 4096
MAXIMA_MAX = 8192
RANK_MAX = 8192
MIN_CAP = 256
SELECT_WARPS = 4
SELECT_BLOCK = 2048


@triton.jit
def _exp(x, PRECISE: tl.constexpr):
    if PRECISE:
        return libdevice.exp(x)  # expf, as torch's softmax
    return tl.exp(x)


@triton.jit
def _signed_key(x):
    """float32 -> int32 whose signed order is the float order (-0.0 folded into +0.0)."""
    bits = (x + 0.0).to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _ordered_key(x):
    """float32 -> uint32 whose unsigned order is the float order: ``_signed_key`` shifted by 2**31."""
    return _signed_key(x).to(tl.uint32, bitcast=True) ^ 0x80000000


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
def _packed(signed_key, offs):
    """(``_signed_key``, index) as one int64: ordered by value, then by ascending index."""
    return signed_key.to(tl.int64) * 4294967296 + (4294967295 - offs.to(tl.int64))


@triton.jit
def _store_best(packed, row_ptr, values_ptr, indices_ptr, k, N: tl.constexpr):
    """Store the first k of ``packed`` ([N], ``_packed`` pairs, best first) as values and indices."""
    slots = tl.arange(0, N)
    index = 4294967295 - (packed & 4294967295)
    keep = slots < k
    tl.store(values_ptr + slots, tl.load(row_ptr + index, mask=keep, other=0.0), mask=keep)
    tl.store(indices_ptr + slots, index, mask=keep)


@triton.jit
def _radix_topk(row_ptr, values_ptr, indices_ptr, scratch_ptr, vocab, k, K_PAD: tl.constexpr, BLOCK: tl.constexpr):
    """Top-k of one row by the radix select: the k-th largest key, one pass that compacts the k
    winners (ties at the k-th key by ascending index) into ``scratch_ptr`` ([K_PAD] int64), a sort."""
    kth, equal_needed = _nth_largest_key(row_ptr, vocab, k, 1.0, False, BLOCK)
    taken = 0
    equal_seen = 0
    for start in range(0, vocab, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < vocab
        signed_key = _signed_key(_load_scores(row_ptr, offs, mask, 1.0, False))
        key = signed_key.to(tl.uint32, bitcast=True) ^ 0x80000000
        equal = mask & (key == kth)
        equal_rank = equal_seen + tl.cumsum(equal.to(tl.int32), 0) - 1
        chosen = mask & ((key > kth) | (equal & (equal_rank < equal_needed)))
        position = taken + tl.cumsum(chosen.to(tl.int32), 0) - 1
        tl.store(scratch_ptr + position, _packed(signed_key, offs), mask=chosen)
        taken += tl.sum(chosen.to(tl.int32), 0)
        equal_seen += tl.sum(equal.to(tl.int32), 0)
    tl.debug_barrier()
    slots = tl.arange(0, K_PAD)
    packed = tl.load(scratch_ptr + slots, mask=slots < k, other=-9223372036854775807 - 1)
    _store_best(tl.sort(packed, descending=True), row_ptr, values_ptr, indices_ptr, k, K_PAD)


@triton.jit
def _topk_kernel(logits_ptr, values_ptr, indices_ptr, scratch_ptr, stride_row, vocab, k,
                 K_PAD: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    _radix_topk(logits_ptr + row * stride_row, values_ptr + row * k, indices_ptr + row * k,
                scratch_ptr + row * K_PAD, vocab, k, K_PAD, BLOCK)


@triton.jit
def _kth_largest_maximum(maxima_ptr, chunks, k, GROUPS: tl.constexpr, CHUNKS_PAD: tl.constexpr,
                         STEP: tl.constexpr):
    """The k-th largest of a row's group maxima (``maxima_ptr``: [chunks, GROUPS] per-chunk maxima),
    counted with multiplicity: the largest maximum that at least k maxima are >= to."""
    lowest = tl.full([], -2147483648, tl.int32)
    chunk = tl.arange(0, CHUNKS_PAD)
    every = tl.load(maxima_ptr + chunk[:, None] * GROUPS + tl.arange(0, GROUPS)[None, :],
                    mask=chunk[:, None] < chunks, other=lowest, cache_modifier=".cg")
    every = tl.max(every, 0)
    kth = lowest
    for first in range(0, GROUPS, STEP):
        # the same maxima, STEP of them along the other axis, each against all GROUPS
        some = tl.load(maxima_ptr + chunk[None, :] * GROUPS + first + tl.arange(0, STEP)[:, None],
                       mask=chunk[None, :] < chunks, other=lowest, cache_modifier=".cg")
        some = tl.max(some, 1)
        at_least = tl.sum((every[None, :] >= some[:, None]).to(tl.int32), 1)
        kth = tl.maximum(kth, tl.max(tl.where(at_least >= k, some, lowest), 0))
    return kth


@triton.jit
def _threshold_kernel(logits_ptr, maxima_ptr, arrivals_ptr, thresholds_ptr, counts_ptr, stride_row, vocab,
                      chunks, k, GROUPS: tl.constexpr, CHUNKS_PAD: tl.constexpr, STEP: tl.constexpr,
                      CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    """Filter pass one: the key maximum of each group (index % GROUPS) within one chunk of one row;
    the row's last chunk to arrive turns them into the row's threshold and zeroes its count."""
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    row_ptr = logits_ptr + row * stride_row
    # a [BLOCK // GROUPS, GROUPS] tile of consecutive scores: column j holds indices = j mod GROUPS
    lanes = tl.arange(0, BLOCK // GROUPS)[:, None] * GROUPS + tl.arange(0, GROUPS)[None, :]
    best = tl.full([GROUPS], -2147483648, tl.int32)
    for start in range(chunk * CHUNK, chunk * CHUNK + CHUNK, BLOCK):
        offs = start + lanes
        key = _signed_key(_load_scores(row_ptr, offs, offs < vocab, 1.0, False))
        best = tl.maximum(best, tl.max(key, 0))
    maxima_row = maxima_ptr + row * chunks * GROUPS
    tl.store(maxima_row + chunk * GROUPS + tl.arange(0, GROUPS), best)
    tl.debug_barrier()  # the whole program's stores happen before its arrival is counted
    arrived = tl.atomic_add(arrivals_ptr + row, 1, sem="acq_rel", scope="gpu")
    if arrived == chunks - 1:
        tl.store(thresholds_ptr + row, _kth_largest_maximum(maxima_row, chunks, k, GROUPS, CHUNKS_PAD, STEP))
        tl.store(counts_ptr + row, 0)
        tl.atomic_xchg(arrivals_ptr + row, 0, sem="relaxed", scope="gpu")  # ready for the next launch


@triton.jit
def _candidates_kernel(logits_ptr, thresholds_ptr, counts_ptr, candidates_ptr, stride_row, vocab,
                       CAP: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    """Filter pass two: append the chunk's scores with key >= the row's threshold, packed, to the
    row's CAP candidate slots (counted past CAP, stored within it)."""
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    row_ptr = logits_ptr + row * stride_row
    threshold = tl.load(thresholds_ptr + row)
    for start in range(chunk * CHUNK, chunk * CHUNK + CHUNK, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < vocab
        key = _signed_key(_load_scores(row_ptr, offs, mask, 1.0, False))
        chosen = mask & (key >= threshold)
        found = tl.sum(chosen.to(tl.int32), 0)
        if found > 0:
            first = tl.atomic_add(counts_ptr + row, found, sem="relaxed", scope="gpu")
            position = first + tl.cumsum(chosen.to(tl.int32), 0) - 1
            tl.store(candidates_ptr + row * CAP + position, _packed(key, offs), mask=chosen & (position < CAP))


@triton.jit
def _best_candidates(row_ptr, values_ptr, indices_ptr, candidates_ptr, count, k,
                     K_PAD: tl.constexpr, SLOTS: tl.constexpr):
    slots = tl.arange(0, SLOTS)
    packed = tl.load(candidates_ptr + slots, mask=slots < count, other=-9223372036854775807 - 1)
    _store_best(tl.topk(packed, K_PAD), row_ptr, values_ptr, indices_ptr, k, K_PAD)


@triton.jit
def _select_kernel(logits_ptr, values_ptr, indices_ptr, counts_ptr, candidates_ptr, stride_row, vocab, k,
                   K_PAD: tl.constexpr, CAP: tl.constexpr, BLOCK: tl.constexpr):
    """The row's top k among its candidates (a bitonic top-k of the fewest slots that hold them),
    or, when they overflowed CAP, by the radix select over the whole row."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    values_row = values_ptr + row * k
    indices_row = indices_ptr + row * k
    candidates_row = candidates_ptr + row * CAP
    count = tl.load(counts_ptr + row)
    if count <= 2 * K_PAD:
        _best_candidates(row_ptr, values_row, indices_row, candidates_row, count, k, K_PAD, 2 * K_PAD)
    elif count <= CAP:
        _best_candidates(row_ptr, values_row, indices_row, candidates_row, count, k, K_PAD, CAP)
    else:
        _radix_topk(row_ptr, values_row, indices_row, candidates_row, vocab, k, K_PAD, BLOCK)


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


def _filter_shape(vocab: int, k_pad: int, block: int | None) -> tuple[int, int, int, int]:
    """(groups, block, chunk, chunks) of the filter: 2 * k_pad groups (the k-th largest of more
    group maxima lies closer to the row's k-th largest: 55 candidates on average at k 50 of iid scores),
    steps of ``block`` scores, and chunks as narrow as keep a row's chunks * groups maxima
    within MAXIMA_MAX for the one program that ranks them."""
    groups = 2 * k_pad
    block = max(groups, block or min(FILTER_BLOCK, triton.next_power_of_2(vocab)))
    chunk = max(block, triton.next_power_of_2(triton.cdiv(vocab * groups, MAXIMA_MAX)))
    return groups, block, chunk, triton.cdiv(vocab, chunk)


def _filtered(k: int) -> bool:
    """Whether ``topk`` (and ``sample``'s k-th logit) take the filter path: k <= FILTER_MAX_K and a
    Triton with ``tl.topk`` (>= 3.4); else the radix select."""
    return k <= FILTER_MAX_K and hasattr(tl, "topk")


def topk(logits: torch.Tensor, k: int, block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """logits: [batch, vocab] -> (values [batch, k] in logits.dtype, indices [batch, k] int64).

    ``block`` (a power of two) sets the filter's step width, at least its group count: tests use
    a small one to get many chunks out of a short row.
    """
    logits = logits if logits.stride(-1) == 1 else logits.contiguous()
    batch, vocab = logits.shape
    device = logits.device
    values = torch.empty((batch, k), dtype=logits.dtype, device=device)
    indices = torch.empty((batch, k), dtype=torch.int64, device=device)
    k_pad = max(2, triton.next_power_of_2(k))
    if _filtered(k):
        groups, block, chunk, chunks = _filter_shape(vocab, k_pad, block)
        cap = max(MIN_CAP, 8 * k_pad)
        warps = max(1, min(8, block // 512))
        launch_config("topk", (vocab, k), GROUPS=groups, BLOCK=block, CHUNK=chunk, CAP=cap, num_warps=warps)
        maxima = torch.empty((batch, chunks, groups), dtype=torch.int32, device=device)
        thresholds = torch.empty((batch,), dtype=torch.int32, device=device)
        counts = torch.empty((batch,), dtype=torch.int32, device=device)
        candidates = torch.empty((batch, cap), dtype=torch.int64, device=device)
        if batch:
            _threshold_kernel[(batch, chunks)](
                logits, maxima, semaphores("topk", batch, device), thresholds, counts, logits.stride(0), vocab,
                chunks, k, GROUPS=groups, CHUNKS_PAD=triton.next_power_of_2(chunks),
                STEP=max(1, min(groups, RANK_MAX // groups)), CHUNK=chunk, BLOCK=block, num_warps=warps)
            _candidates_kernel[(batch, chunks)](logits, thresholds, counts, candidates, logits.stride(0), vocab,
                                                CAP=cap, CHUNK=chunk, BLOCK=block, num_warps=warps)
            _select_kernel[(batch,)](logits, values, indices, counts, candidates, logits.stride(0), vocab, k,
                                     K_PAD=k_pad, CAP=cap, BLOCK=min(SELECT_BLOCK, triton.next_power_of_2(vocab)),
                                     num_warps=SELECT_WARPS)
        return values, indices
    scratch = torch.empty((batch, k_pad), dtype=torch.int64, device=device)
    block = _block(vocab)
    launch_config("topk", (vocab, k), BLOCK=block, num_warps=NUM_WARPS)
    if batch:
        _topk_kernel[(batch,)](logits, values, indices, scratch, logits.stride(0), vocab, k,
                               K_PAD=k_pad, BLOCK=block, num_warps=NUM_WARPS)
    return values, indices


def sample(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float, top_k: int,
           top_p: float) -> torch.Tensor:
    """logits: [batch, vocab], uniforms: [batch] -> tokens [batch] int64 (see the module docstring)."""
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
    kth_given = use_topk and _filtered(top_k)
    # the row's top-k values, best first: its max and k-th largest logit (else an unread pointer)
    top = topk(logits, top_k)[0] if kth_given else scratch_s
    launch_config("sample", (vocab, top_k, top_p < 1.0), BLOCK=block, CAP=cap, num_warps=NUM_WARPS)
    _sample_kernel[(batch,)](
        logits, uniforms, tokens, scratch_s, scratch_index, top, logits.stride(0), vocab,
        float(temperature), float(top_p), candidates, top.stride(0),
        USE_TOPK=use_topk, KTH_GIVEN=kth_given, USE_TOPP=use_topp, CAP=cap, PRECISE=not interpreting(), BLOCK=block, num_warps=NUM_WARPS,
    )
    return tokens
