"""kbench/ops/attention.py: references against independent formulations, inputs, work, validation."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kbench.config import ModelConfig, Workload
from kbench.errors import KbenchError
from kbench.ops.attention import (
    ATTENTION_DECODE,
    ATTENTION_PREFILL,
    attention_decode_reference,
    attention_prefill_reference,
    context_lengths,
    eager_attention,
    sequence_lengths,
)
from kbench.ops.base import Case


def sdpa_math_float64(q, k, v, scale, causal):
    """One sequence through torch's SDPA math path in float64: q [L, heads, d], k/v [S, kv_heads, d]."""
    group = q.shape[1] // k.shape[1]
    q64 = q.double().transpose(0, 1)
    k64 = k.double().repeat_interleave(group, dim=1).transpose(0, 1)
    v64 = v.double().repeat_interleave(group, dim=1).transpose(0, 1)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        out = F.scaled_dot_product_attention(q64, k64, v64, is_causal=causal, scale=scale)
    return out.transpose(0, 1)


def prefill_case(seq_lens, heads, kv_heads, head_dim):
    return Case("attention_prefill", batch=len(seq_lens), seq_lens=list(seq_lens), heads=heads,
                kv_heads=kv_heads, head_dim=head_dim)


def check_prefill_against_sdpa(case, dtype, tol):
    inputs = ATTENTION_PREFILL.make_inputs(case, dtype, "cpu", 0)
    out = attention_prefill_reference(**inputs)
    bounds = inputs["cu_seqlens"].tolist()
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        if end == start:
            continue
        expected = sdpa_math_float64(inputs["q"][start:end], inputs["k"][start:end], inputs["v"][start:end],
                                     inputs["scale"], causal=True)
        torch.testing.assert_close(out[start:end].double(), expected, atol=tol, rtol=tol)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 3e-2), (torch.float16, 4e-3)])
@pytest.mark.parametrize("case", ATTENTION_PREFILL.test_cases, ids=lambda c: c.label)
def test_prefill_matches_sdpa_math_in_float64(case, dtype, tol):
    check_prefill_against_sdpa(case, dtype, tol)


@settings(max_examples=25, deadline=None)
@given(
    head_dim=st.sampled_from([64, 80, 128, 256]),
    kv_heads=st.sampled_from([1, 2, 4]),
    group=st.sampled_from([1, 4, 8]),
    seq_lens=st.lists(st.integers(1, 19), min_size=1, max_size=3),
)
def test_prefill_matches_sdpa_over_shapes(head_dim, kv_heads, group, seq_lens):
    check_prefill_against_sdpa(prefill_case(seq_lens, kv_heads * group, kv_heads, head_dim), torch.float32, 1e-5)


def test_varlen_batch_equals_each_sequence_alone():
    case = prefill_case([5, 1, 12, 7], heads=8, kv_heads=2, head_dim=64)
    inputs = ATTENTION_PREFILL.make_inputs(case, torch.float32, "cpu", 3)
    packed = attention_prefill_reference(**inputs)
    bounds = inputs["cu_seqlens"].tolist()
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        alone = attention_prefill_reference(
            inputs["q"][start:end], inputs["k"][start:end], inputs["v"][start:end],
            torch.tensor([0, end - start], dtype=torch.int32), end - start, inputs["scale"],
        )
        torch.testing.assert_close(packed[start:end], alone, atol=1e-6, rtol=1e-6)


def test_prefill_first_token_attends_only_to_itself():
    case = prefill_case([6, 3], heads=4, kv_heads=4, head_dim=64)
    inputs = ATTENTION_PREFILL.make_inputs(case, torch.float32, "cpu", 0)
    out = attention_prefill_reference(**inputs)
    torch.testing.assert_close(out[0], inputs["v"][0])
    torch.testing.assert_close(out[6], inputs["v"][6])


def decode_case(lengths, heads=8, kv_heads=2, head_dim=64, layout="contiguous", block_size=16):
    return Case("attention_decode", batch=len(lengths), context=max(lengths), context_lens=list(lengths),
                heads=heads, kv_heads=kv_heads, head_dim=head_dim, layout=layout, block_size=block_size)


def sequence_cache(inputs, b, length):
    """Sequence b's K and V rows [length, kv_heads, head_dim], looked up token by token."""
    table = inputs["block_table"]
    if table is None:
        return inputs["k_cache"][b, :length], inputs["v_cache"][b, :length]
    block_size = inputs["k_cache"].shape[1]
    rows = [(table[b, t // block_size].item(), t % block_size) for t in range(length)]
    return (torch.stack([inputs["k_cache"][blk, r] for blk, r in rows]),
            torch.stack([inputs["v_cache"][blk, r] for blk, r in rows]))


@pytest.mark.parametrize("layout", ["contiguous", "paged"])
def test_decode_matches_last_row_of_prefill(layout):
    case = decode_case([9, 1, 30], layout=layout, block_size=8)
    inputs = ATTENTION_DECODE.make_inputs(case, torch.float32, "cpu", 5)
    out = attention_decode_reference(**inputs)
    for b, length in enumerate(context_lengths(case)):
        keys, values = sequence_cache(inputs, b, length)
        # The same sequence prefilled with the new token's query in its last row.
        q = torch.cat([torch.zeros(length - 1, *inputs["q"].shape[1:]), inputs["q"][b][None]])
        prefill = attention_prefill_reference(q, keys, values, torch.tensor([0, length], dtype=torch.int32),
                                              length, inputs["scale"])
        torch.testing.assert_close(out[b], prefill[-1], atol=1e-6, rtol=1e-6)
        expected = sdpa_math_float64(inputs["q"][b][None], keys, values, inputs["scale"], causal=False)[0]
        torch.testing.assert_close(out[b].double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "paged"])
def test_decode_over_the_masked_capacity_equals_attending_each_sequence_alone(dtype, layout, monkeypatch):
    # the reference attends every sequence over the whole capacity with the rows past each length
    # masked; HF's eager attention of each sequence alone (its exact length, no mask) is the
    # independent formulation, garbage past the lengths included (huge keys, NaN values)
    case = decode_case([1, 17, 40, 9], heads=8, kv_heads=2, head_dim=64, layout=layout, block_size=8)
    inputs = ATTENTION_DECODE.make_inputs(case, dtype, "cpu", 3)
    lengths = context_lengths(case)
    if layout == "contiguous":
        for b, length in enumerate(lengths):
            inputs["k_cache"][b, length:] = 1e4
            inputs["v_cache"][b, length:] = float("nan")
    expected = torch.stack([
        eager_attention(inputs["q"][b][:, None], *(c.transpose(0, 1) for c in sequence_cache(inputs, b, length)),
                        inputs["scale"], causal=False)[:, 0]
        for b, length in enumerate(lengths)])

    def no_host_reads(*args, **kwargs):
        raise AssertionError("the decode reference read a device value back to the host")

    monkeypatch.setattr(torch.Tensor, "tolist", no_host_reads)
    monkeypatch.setattr(torch.Tensor, "item", no_host_reads)
    out = attention_decode_reference(**inputs)
    monkeypatch.undo()
    assert torch.isfinite(out).all()
    if dtype == torch.float32:
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    else:  # a rounding of the padded sums at most: one bf16 step
        torch.testing.assert_close(out, expected, atol=1e-2, rtol=1e-2)
    assert ATTENTION_DECODE.reference_cuda_graphs  # nothing in it stops a graph capture


def test_decode_chunks_the_batch_without_changing_the_result_beyond_rounding(monkeypatch):
    import kbench.ops.attention as attention

    case = decode_case([3, 20, 11, 1, 7], heads=4, kv_heads=4, head_dim=32)
    inputs = ATTENTION_DECODE.make_inputs(case, torch.float32, "cpu", 4)
    whole = attention_decode_reference(**inputs)
    monkeypatch.setattr(attention, "_SCORE_BYTES_PER_CHUNK", 1)  # one sequence a chunk
    # equal up to float32 rounding: a batched matmul's blocking depends on the batch it is given
    torch.testing.assert_close(attention_decode_reference(**inputs), whole)


def test_paged_equals_contiguous_for_the_same_logical_cache():
    case = decode_case([13, 40, 1], layout="contiguous", kv_heads=1, heads=4, head_dim=80)
    contiguous = ATTENTION_DECODE.make_inputs(case, torch.float32, "cpu", 2)
    block_size, batch, capacity = 8, 3, contiguous["k_cache"].shape[1]
    max_blocks = -(-capacity // block_size)
    # Lay the same cache out in blocks, in a scrambled order.
    order = torch.randperm(batch * max_blocks, generator=torch.Generator().manual_seed(0))
    block_table = order.view(batch, max_blocks).to(torch.int32)
    padded = max_blocks * block_size

    def to_blocks(cache):
        cache = F.pad(cache, (0, 0, 0, 0, 0, padded - capacity))
        blocks = torch.empty(batch * max_blocks, block_size, *cache.shape[2:])
        blocks[block_table.flatten().long()] = cache.reshape(batch * max_blocks, block_size, *cache.shape[2:])
        return blocks

    paged = contiguous | {"k_cache": to_blocks(contiguous["k_cache"]), "v_cache": to_blocks(contiguous["v_cache"]),
                          "block_table": block_table}
    ATTENTION_DECODE.validate(paged)
    torch.testing.assert_close(attention_decode_reference(**paged), attention_decode_reference(**contiguous))


def test_decode_ignores_cache_rows_past_the_sequence_length():
    case = decode_case([4, 7])
    inputs = ATTENTION_DECODE.make_inputs(case, torch.float32, "cpu", 0)
    out = attention_decode_reference(**inputs)
    inputs["k_cache"][0, 4:] = 1e4
    inputs["v_cache"][0, 4:] = float("nan")
    torch.testing.assert_close(attention_decode_reference(**inputs), out)


def test_paged_inputs_use_a_shuffled_block_table():
    case = Case("attention_decode", batch=4, context=64, heads=4, kv_heads=4, head_dim=64, layout="paged",
                block_size=8)
    inputs = ATTENTION_DECODE.make_inputs(case, torch.float16, "cpu", 0)
    table = inputs["block_table"]
    assert table.dtype == torch.int32 and table.shape == (4, 8)
    assert sorted(table.flatten().tolist()) == list(range(32))
    assert table.flatten().tolist() != list(range(32))
    assert inputs["k_cache"].shape == (32, 8, 4, 64)


def test_random_decode_lengths_are_deterministic_and_end_at_context():
    case = Case("attention_decode", batch=6, context=100, heads=4, kv_heads=4, head_dim=64, random_lengths=True)
    lengths = context_lengths(case)
    assert lengths == context_lengths(case) and lengths[-1] == 100
    assert all(1 <= n <= 100 for n in lengths) and len(set(lengths)) > 1
    inputs = ATTENTION_DECODE.make_inputs(case, torch.float32, "cpu", 0)
    assert inputs["cache_seqlens"].tolist() == lengths


def test_flops_count_only_the_causal_half():
    case = Case("attention_prefill", batch=2, seq_len=4, heads=2, kv_heads=1, head_dim=8)
    # per sequence 4+3+2+1 = 10 query-key pairs, each 2*head_dim for QK and 2*head_dim for PV
    assert ATTENTION_PREFILL.flops(case) == 2 * 2 * 10 * 4 * 8
    uneven = prefill_case([1, 3], heads=1, kv_heads=1, head_dim=8)
    assert ATTENTION_PREFILL.flops(uneven) == (1 + 6) * 4 * 8


def test_bytes_count_qkv_out_and_only_the_cache_rows_read():
    prefill = Case("attention_prefill", batch=2, seq_len=4, heads=4, kv_heads=2, head_dim=8)
    assert ATTENTION_PREFILL.bytes(prefill, torch.bfloat16) == 8 * (4 + 2 + 2 + 4) * 8 * 2
    decode = decode_case([3, 5], heads=4, kv_heads=2, head_dim=8)
    kv = 2 * (3 + 5) * 2 * 8 * 2
    q_out = 2 * 2 * 4 * 8 * 2
    assert ATTENTION_DECODE.bytes(decode, torch.bfloat16) == kv + q_out + 4 * 2
    assert ATTENTION_DECODE.flops(decode) == 4 * 4 * 8 * (3 + 5)


def test_cases_follow_the_model_and_workload():
    model = ModelConfig("m", vocab=32000, hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8,
                        head_dim=128)
    workload = Workload(batch=(1, 8), prompt_len=(128, 512), decode_steps=32, kv_layout="paged", block_size=64)
    prefill = ATTENTION_PREFILL.cases_for(model, workload)
    assert {(c["batch"], c["seq_len"]) for c in prefill} == {(1, 128), (1, 512), (8, 128), (8, 512)}
    assert all(c.op == "attention_prefill" and c["kv_heads"] == 8 for c in prefill)
    decode = ATTENTION_DECODE.cases_for(model, workload)
    assert {(c["batch"], c["context"]) for c in decode} == {(1, 160), (1, 544), (8, 160), (8, 544)}
    assert all(c["layout"] == "paged" and c["block_size"] == 64 for c in decode)
    assert sequence_lengths(prefill[0]) == [prefill[0]["seq_len"]] * prefill[0]["batch"]


def _prefill_inputs(**changes):
    inputs = ATTENTION_PREFILL.make_inputs(prefill_case([3, 5], 4, 2, 64), torch.float16, "cpu", 0)
    return inputs | changes


def _decode_inputs(layout="paged", **changes):
    inputs = ATTENTION_DECODE.make_inputs(decode_case([3, 20], layout=layout, block_size=8), torch.float16, "cpu", 0)
    return inputs | changes


@pytest.mark.parametrize(("changes", "message"), [
    ({"k": torch.zeros(8, 3, 64, dtype=torch.float16), "v": torch.zeros(8, 3, 64, dtype=torch.float16)},
     "multiple of kv_heads"),
    ({"k": torch.zeros(8, 2, 80, dtype=torch.float16)}, "k has shape"),
    ({"cu_seqlens": torch.tensor([0, 3, 8])}, "int32"),
    ({"cu_seqlens": torch.tensor([0, 5, 3, 8], dtype=torch.int32)}, "prefix sum"),
    ({"cu_seqlens": torch.tensor([0, 3, 7], dtype=torch.int32)}, "prefix sum"),
    ({"max_seqlen": 4}, "max_seqlen"),
])
def test_bad_prefill_inputs_raise_kbench_error(changes, message):
    with pytest.raises(KbenchError, match=message):
        ATTENTION_PREFILL.validate(_prefill_inputs(**changes))


@pytest.mark.parametrize(("layout", "changes", "message"), [
    ("paged", {"block_table": torch.zeros(3, 3, dtype=torch.int32)}, "block_table has shape"),
    ("paged", {"block_table": torch.zeros(2, 3)}, "int32"),
    ("paged", {"block_table": torch.full((2, 3), 99, dtype=torch.int32)}, "outside"),
    ("paged", {"cache_seqlens": torch.tensor([3, 25], dtype=torch.int32)}, "capacity"),
    ("contiguous", {"q": torch.zeros(2, 8, 80, dtype=torch.float16)}, "head_dim"),
    ("contiguous", {"q": torch.zeros(2, 7, 64, dtype=torch.float16)}, "multiple of kv_heads"),
    ("contiguous", {"cache_seqlens": torch.tensor([3, 20])}, "int32"),
    ("contiguous", {"k_cache": torch.zeros(3, 20, 2, 64, dtype=torch.float16),
                    "v_cache": torch.zeros(3, 20, 2, 64, dtype=torch.float16)}, "contiguous k_cache has batch"),
])
def test_bad_decode_inputs_raise_kbench_error(layout, changes, message):
    with pytest.raises(KbenchError, match=message):
        ATTENTION_DECODE.validate(_decode_inputs(layout, **changes))


def test_valid_inputs_pass_validation():
    ATTENTION_PREFILL.validate(_prefill_inputs())
    ATTENTION_DECODE.validate(_decode_inputs("paged"))
    ATTENTION_DECODE.validate(_decode_inputs("contiguous"))


@settings(max_examples=20, deadline=None)
@given(
    head_dim=st.sampled_from([64, 80, 128, 256]),
    kv_heads=st.sampled_from([1, 2]),
    group=st.sampled_from([1, 4, 8]),
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=3),
    layout=st.sampled_from(["contiguous", "paged"]),
    block_size=st.sampled_from([1, 8, 16]),
)
def test_decode_matches_sdpa_over_shapes(head_dim, kv_heads, group, lengths, layout, block_size):
    case = decode_case(lengths, heads=kv_heads * group, kv_heads=kv_heads, head_dim=head_dim, layout=layout,
                       block_size=block_size)
    inputs = ATTENTION_DECODE.make_inputs(case, torch.float32, "cpu", 1)
    ATTENTION_DECODE.validate(inputs)
    out = attention_decode_reference(**inputs)
    for b, length in enumerate(lengths):
        keys, values = sequence_cache(inputs, b, length)
        expected = sdpa_math_float64(inputs["q"][b][None], keys, values, inputs["scale"], causal=False)[0]
        torch.testing.assert_close(out[b].double(), expected, atol=1e-5, rtol=1e-5)
