"""Hard input sets catch kernels that pass on ordinary inputs: a rope that wraps positions,
an attention_decode that reads a key past the length or skips a length-1 sequence, a prefill
that drops length-1 sequences, a greedy sampler that breaks ties the other way."""

import pytest
import torch

from kbench.bench.check import check_implementation
from kbench.ops.attention import (
    ATTENTION_DECODE,
    ATTENTION_PREFILL,
    attention_decode_reference,
    attention_prefill_reference,
    logical_cache,
)
from kbench.ops.base import Case
from kbench.ops.rope import ROPE, rope_reference
from kbench.ops.sampling import SAMPLE, sample_reference
from kbench.registry import Implementation, Registry


def _check(op, fn, case, dtype=torch.float32):
    registry = Registry()
    registry.add_op(op, "test")
    registry.add_implementation(Implementation(op.name, "suspect", fn, plugin="test"))
    return check_implementation(registry, op.name, "suspect", case, dtype, "cpu")


def _hard_sets(op, case, dtype=torch.float32):
    return op.hard_inputs(case, dtype, torch.device("cpu"), 0)


@pytest.mark.parametrize("op", [ROPE, ATTENTION_PREFILL, ATTENTION_DECODE, SAMPLE])
def test_hard_sets_are_valid_and_the_reference_deterministic(op):
    for case in op.test_cases:
        for dtype in (torch.float32, torch.bfloat16):
            for inputs in _hard_sets(op, case, dtype).values():
                op.validate(inputs)
                first, second = op.reference(**inputs), op.reference(**inputs)
                assert op.compare(first, second, op.tolerance(dtype)).ok


ROPE_CASE = Case("rope", tokens=6, heads=2, kv_heads=1, head_dim=16, phase="prefill", seq_len=6,
                 style="half", scaling="llama3", theta=500000.0, factor=8.0, low_freq_factor=1.0,
                 high_freq_factor=4.0, original_max_position=64)


def test_rope_hard_positions_reach_past_the_trained_range():
    positions = {p for s in _hard_sets(ROPE, ROPE_CASE).values() for p in s["positions"].tolist()}
    assert {0, 64, 65, 100_000} <= positions


def test_a_rope_that_wraps_positions_at_the_trained_range_fails():
    def wrapping(q, k, positions, inv_freq, style):
        return rope_reference(q, k, positions % 64, inv_freq, style)

    assert _check(ROPE, rope_reference, ROPE_CASE).ok
    check = _check(ROPE, wrapping, ROPE_CASE)
    assert not check.ok and ("trained range" in check.detail or "100000" in check.detail)


def test_a_rope_with_int16_positions_fails():
    def narrow(q, k, positions, inv_freq, style):
        return rope_reference(q, k, positions.to(torch.int16).long(), inv_freq, style)

    assert not _check(ROPE, narrow, ROPE_CASE).ok


DECODE_CASES = [
    Case("attention_decode", batch=2, context=40, heads=4, kv_heads=2, head_dim=32, layout="paged", block_size=16),
    Case("attention_decode", batch=3, context=40, heads=4, kv_heads=2, head_dim=32, layout="contiguous", block_size=16),
]


def test_decode_hard_lengths_mix_one_and_a_partial_last_block():
    (inputs,) = _hard_sets(ATTENTION_DECODE, DECODE_CASES[0]).values()
    assert inputs["cache_seqlens"].tolist()[:2] == [1, 2 * 16 + 1]


@pytest.mark.parametrize("case", DECODE_CASES, ids=["paged", "contiguous"])
def test_a_decode_that_reads_one_key_past_the_length_fails(case):
    def one_past(q, k_cache, v_cache, cache_seqlens, block_table, scale):
        capacity = logical_cache(k_cache, block_table).shape[1]
        longer = torch.clamp(cache_seqlens + 1, max=capacity).to(torch.int32)
        return attention_decode_reference(q, k_cache, v_cache, longer, block_table, scale)

    assert _check(ATTENTION_DECODE, attention_decode_reference, case).ok
    assert not _check(ATTENTION_DECODE, one_past, case).ok


def test_a_decode_that_skips_length_one_sequences_fails():
    def skipping(q, k_cache, v_cache, cache_seqlens, block_table, scale):
        out = attention_decode_reference(q, k_cache, v_cache, cache_seqlens, block_table, scale)
        return out.masked_fill((cache_seqlens == 1)[:, None, None], 0.0)

    # the case's own lengths (all 40) never have a length-1 sequence: only the hard set shows it
    assert not _check(ATTENTION_DECODE, skipping, DECODE_CASES[1]).ok


def test_a_prefill_that_drops_length_one_sequences_fails():
    case = Case("attention_prefill", batch=2, seq_len=9, heads=4, kv_heads=2, head_dim=32)

    def dropping(q, k, v, cu_seqlens, max_seqlen, scale):
        out = attention_prefill_reference(q, k, v, cu_seqlens, max_seqlen, scale)
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
        for start, length in zip(cu_seqlens[:-1].tolist(), lengths.tolist(), strict=True):
            if length == 1:
                out[start] = 0.0
        return out

    assert _check(ATTENTION_PREFILL, attention_prefill_reference, case).ok
    assert not _check(ATTENTION_PREFILL, dropping, case).ok


def _last_max_greedy(logits, uniforms, temperature, top_k, top_p):
    if temperature != 0:
        return sample_reference(logits, uniforms, temperature, top_k, top_p)
    flipped = torch.argmax(logits.flip(-1), dim=-1)
    return logits.shape[-1] - 1 - flipped


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_greedy_sampler_that_breaks_ties_the_other_way_fails(dtype):
    case = Case("sample", batch=4, vocab=512, temperature=0.0, top_k=0, top_p=1.0)
    assert _check(SAMPLE, sample_reference, case, dtype).ok
    check = _check(SAMPLE, _last_max_greedy, case, dtype)
    assert not check.ok and "tied" in check.detail


def test_a_sampler_that_overflows_on_extreme_logits_fails():
    case = Case("sample", batch=4, vocab=512, temperature=0.7, top_k=0, top_p=1.0)

    def unshifted(logits, uniforms, temperature, top_k, top_p):
        # softmax without subtracting the max: exp(1e4 / 0.7) is inf, inf / inf is NaN
        p = torch.exp(logits.float() / temperature)
        cdf = torch.cumsum(p / p.sum(-1, keepdim=True), dim=-1)
        return (cdf <= uniforms[:, None] * cdf[:, -1:]).sum(-1).clamp(max=logits.shape[-1] - 1)

    check = _check(SAMPLE, unshifted, case)
    assert not check.ok and "extreme" in check.detail
