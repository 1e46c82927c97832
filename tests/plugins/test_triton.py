"""The ``triton`` backend beyond the conformance cases: in-place writes, paged caches with
shuffled block tables, split counts, sampling fallbacks, ties, odd sizes, config exposure.

Runs on the CPU through ``TRITON_INTERPRET=1`` (set by tests/conftest.py) with small shapes.
"""

import itertools

import pytest
import torch

pytest.importorskip("triton")

from kbench_triton import ffn as triton_ffn  # noqa: E402
from kbench_triton import plugin  # noqa: E402
from kbench_triton import rope as triton_rope  # noqa: E402
from kbench_triton.attention_decode import attention_decode  # noqa: E402
from kbench_triton.attention_prefill import attention_prefill  # noqa: E402
from kbench_triton.common import semaphores  # noqa: E402
from kbench_triton.ffn import swiglu  # noqa: E402
from kbench_triton.gemv import linear as gemv_linear  # noqa: E402
from kbench_triton.norm import rmsnorm  # noqa: E402
from kbench_triton.rope import rope  # noqa: E402
from kbench_triton.sampling import CANDIDATES, sample, topk  # noqa: E402

from kbench.ops.attention import attention_decode_reference, attention_prefill_reference  # noqa: E402
from kbench.ops.base import Case  # noqa: E402
from kbench.ops.norm import rmsnorm_reference  # noqa: E402
from kbench.ops.rope import rope_reference  # noqa: E402
from kbench.ops.sampling import sample_reference, topk_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _randn(*shape, dtype=torch.float32, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(device=DEVICE, dtype=dtype)


@pytest.mark.parametrize("style", ["half", "interleaved"])
def test_rope_rotates_q_and_k_in_place(style):
    q, k = _randn(5, 4, 32), _randn(5, 2, 32, seed=1)
    positions = torch.tensor([0, 3, 7, 1000, 40000], device=DEVICE)
    inv_freq = (1.0 / 10000 ** (torch.arange(0, 32, 2).float() / 32)).to(DEVICE)
    expected_q, expected_k = rope_reference(q.clone(), k.clone(), positions, inv_freq, style)
    out_q, out_k = rope(q, k, positions, inv_freq, style)
    assert out_q.data_ptr() == q.data_ptr() and out_k.data_ptr() == k.data_ptr()
    torch.testing.assert_close(q, expected_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k, expected_k, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tokens", [3, 40, 1100])  # below FEW_TOKENS head tiles go to separate programs
def test_rope_covers_every_head_when_programs_split_the_heads(tokens):
    # 6 q + 3 k heads: at 3 tokens in one-tile programs of 2 heads, k 2 sits alone in the fifth
    # tile; at 40 tokens in tiles of 8, the first straddles q 0-5 and k 0-1 and the second holds
    # k 2 alone; at 1100 tokens one program walks them all
    from kbench_triton.rope import FEW_TOKENS, MID_TILE_HEADS, TINY_TOKENS, _config

    assert (tokens >= FEW_TOKENS) == (tokens == 1100), "the cases sit on either side of FEW_TOKENS"
    if tokens == 40:
        assert TINY_TOKENS <= tokens < 128 and _config(tokens, 6, 3, 8)[0] == MID_TILE_HEADS == 8
    q, k = _randn(tokens, 6, 16), _randn(tokens, 3, 16, seed=1)
    positions = torch.arange(tokens, device=DEVICE) * 37
    inv_freq = (1.0 / 10000 ** (torch.arange(0, 16, 2).float() / 16)).to(DEVICE)
    expected_q, expected_k = rope_reference(q.clone(), k.clone(), positions, inv_freq, "half")
    rope(q, k, positions, inv_freq, "half")
    torch.testing.assert_close(q, expected_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k, expected_k, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("style", ["half", "interleaved"])
@pytest.mark.parametrize("path", ["rows", "beyond int32"])
def test_rope_rows_straddle_q_and_k_in_views_of_their_own_strides(monkeypatch, path, style):
    # 5 q + 3 k heads in 2-row tiles: the third tile holds q 4 and k 0. q is a view into a fused
    # qkv buffer (v must stay as it was), k a view with other strides
    if path == "beyond int32":  # offsets past int32 take _rope_kernel's 64-bit head loop
        monkeypatch.setattr(triton_rope, "_offsets_fit_int32", lambda q, k: False)
    tokens, heads, kv_heads, head_dim = 3, 5, 3, 16
    qkv = _randn(tokens, heads + 2 * kv_heads, head_dim)
    v_before = qkv[:, heads + kv_heads:].clone()
    q = qkv[:, :heads]
    k = _randn(tokens, kv_heads, 2 * head_dim, seed=1)[..., :head_dim]
    positions = torch.tensor([3, 900, 17], device=DEVICE)
    inv_freq = (1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)).to(DEVICE)
    expected_q, expected_k = rope_reference(q.clone(), k.clone(), positions, inv_freq, style)
    rope(q, k, positions, inv_freq, style)
    torch.testing.assert_close(q, expected_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k, expected_k, atol=1e-5, rtol=1e-5)
    assert torch.equal(qkv[:, heads + kv_heads:], v_before)


def test_rope_offsets_fit_int32_only_below_two_to_the_31():
    q = torch.empty(4, 2, 8)
    assert triton_rope._offsets_fit_int32(q, q)
    huge = torch.empty_strided((4, 2, 8), (2**30, 8, 1), device="meta")  # token 3 starts at 3 * 2^30
    assert not triton_rope._offsets_fit_int32(huge, q)
    assert not triton_rope._offsets_fit_int32(q, huge)


def test_rope_keeps_the_norm_of_each_pair():
    q, k = _randn(3, 3, 16), _randn(3, 1, 16, seed=2)
    before = q.unflatten(-1, (2, 8)).pow(2).sum(-2)
    rope(q, k, torch.tensor([5, 6, 7], device=DEVICE), torch.rand(8, device=DEVICE), "half")
    torch.testing.assert_close(q.unflatten(-1, (2, 8)).pow(2).sum(-2), before, atol=1e-4, rtol=1e-5)


def test_rmsnorm_odd_hidden_matches_reference():
    x, weight = _randn(3, 1000), _randn(1000, seed=1)
    torch.testing.assert_close(rmsnorm(x, weight, 1e-6), rmsnorm_reference(x, weight, 1e-6), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["rows", "flat"])
def test_swiglu_reads_strided_halves_of_a_fused_projection(monkeypatch, layout):
    # blocks of 256 over rows of 300: the flat layout's blocks straddle rows, the rows layout
    # leaves a partly idle block at the end of each row
    monkeypatch.setattr(triton_ffn, "_swiglu_config", lambda tokens, intermediate: (layout == "flat", 256, 2))
    gate_up = _randn(4, 2 * 300, scale=2.0)
    gate, up = gate_up[:, :300], gate_up[:, 300:]
    expected = torch.nn.functional.silu(gate.double()) * up.double()
    torch.testing.assert_close(swiglu(gate, up).double(), expected, atol=1e-5, rtol=1e-5)


def test_prefill_uneven_lengths_and_gqa_match_reference():
    lengths = [1, 45, 20]
    cu_seqlens = torch.tensor([0, *itertools.accumulate(lengths)], device=DEVICE, dtype=torch.int32)
    tokens = sum(lengths)
    q, k, v = _randn(tokens, 6, 96), _randn(tokens, 2, 96, seed=1), _randn(tokens, 2, 96, seed=2)
    out = attention_prefill(q, k, v, cu_seqlens, max(lengths), 96 ** -0.5)
    expected = attention_prefill_reference(q, k, v, cu_seqlens, max(lengths), 96 ** -0.5)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.gpu
def test_early_scheduled_merge_reads_the_partials_of_its_own_call_under_graph_replay():
    # on Hopper the merge is launched with programmatic dependent launch, before the split pass
    # ends: each of a graph's calls reads another cache (the partials differ call to call), so a
    # merge that did not wait for its own split pass would mix in the previous call's
    from kbench_triton import attention_decode as decode_module

    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs sm_90")
    assert decode_module._pdl(torch.device(DEVICE))
    q = _randn(1, 32, 128, dtype=torch.bfloat16)
    # the two caches' values centre on +1 and -1: their outputs lie ~2 apart
    caches = [(_randn(1, 8192, 32, 128, dtype=torch.bfloat16, seed=2 * i + 1),
               _randn(1, 8192, 32, 128, dtype=torch.bfloat16, scale=0.5, seed=2 * i + 2) + (1 - 2 * i))
              for i in range(2)]
    seqlens = torch.tensor([8192], device=DEVICE, dtype=torch.int32)
    expected = [attention_decode_reference(q, k, v, seqlens, None, 0.088) for k, v in caches]
    for (k, v), want in zip(caches, expected, strict=True):
        torch.testing.assert_close(attention_decode(q, k, v, seqlens, None, 0.088, splits=16), want,
                                   atol=3e-2, rtol=2e-2)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = [attention_decode(q, *caches[i % 2], seqlens, None, 0.088, splits=16) for i in range(8)]
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        for i, out in enumerate(outs):
            torch.testing.assert_close(out, expected[i % 2], atol=3e-2, rtol=2e-2)


def _decode_inputs(batch=3, heads=4, kv_heads=2, head_dim=32, capacity=48, lengths=(5, 48, 17)):
    q = _randn(batch, heads, head_dim)
    k_cache, v_cache = _randn(batch, capacity, kv_heads, head_dim, seed=1), _randn(batch, capacity, kv_heads, head_dim, seed=2)
    seqlens = torch.tensor(lengths, device=DEVICE, dtype=torch.int32)
    return q, k_cache, v_cache, seqlens


@pytest.mark.parametrize("splits", [1, 2, 5, 16])
def test_decode_agrees_for_every_split_count(splits):
    # 16 splits of a 5-token sequence leave most splits empty: they must weigh nothing
    q, k_cache, v_cache, seqlens = _decode_inputs()
    expected = attention_decode_reference(q, k_cache, v_cache, seqlens, None, 0.2)
    out = attention_decode(q, k_cache, v_cache, seqlens, None, 0.2, splits=splits)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("splits", [1, 3, 16])
def test_decode_ignores_whatever_the_cache_holds_past_each_sequence(splits):
    # NaN and inf past the lengths (5, 48, 17 of 48) must not reach the output (a kernel that
    # reads ahead of the length, as e5e4d53 did, must mask what it read there)
    q, k_cache, v_cache, seqlens = _decode_inputs()
    expected = attention_decode_reference(q, k_cache, v_cache, seqlens, None, 0.2)
    for b, length in enumerate(seqlens.tolist()):
        k_cache[b, length:] = float("inf")
        v_cache[b, length:] = float("nan")
    out = attention_decode(q, k_cache, v_cache, seqlens, None, 0.2, splits=splits)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)


def test_paged_decode_with_shuffled_block_table_matches_contiguous_cache():
    q, k_cache, v_cache, seqlens = _decode_inputs()
    batch, capacity, kv_heads, head_dim = k_cache.shape
    block_size = 8
    blocks_per_seq = capacity // block_size
    block_table = torch.randperm(batch * blocks_per_seq, generator=torch.Generator().manual_seed(3))
    block_table = block_table.to(device=DEVICE, dtype=torch.int32).view(batch, blocks_per_seq)
    paged_k = torch.empty(batch * blocks_per_seq, block_size, kv_heads, head_dim, device=DEVICE)
    paged_v = torch.empty_like(paged_k)
    for b in range(batch):
        for j in range(blocks_per_seq):
            rows = slice(j * block_size, (j + 1) * block_size)
            paged_k[block_table[b, j]] = k_cache[b, rows]
            paged_v[block_table[b, j]] = v_cache[b, rows]
    expected = attention_decode_reference(q, k_cache, v_cache, seqlens, None, 0.2)
    for splits in (1, 3):
        out = attention_decode(q, paged_k, paged_v, seqlens, block_table, 0.2, splits=splits)
        torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)


def test_topk_orders_ties_by_ascending_index():
    logits = torch.randint(0, 4, (3, 700), generator=torch.Generator().manual_seed(0)).to(DEVICE, torch.bfloat16)
    values, indices = topk(logits, 37)
    expected_values, expected_indices = topk_reference(logits, 37)
    assert torch.equal(indices, expected_indices) and torch.equal(values, expected_values)


@pytest.mark.parametrize(("vocab", "k", "block"), [(1500, 37, 128), (1000, 1, None), (777, 64, 128), (300, 256, None),
                                                 (5000, 50, None)])
def test_filter_topk_matches_the_sort(vocab, k, block):
    """Ties spanning chunks (bf16 of 7 values), plain scores, -inf entries; k = 1, k past a power
    of two, k = all the groups' half, k = 256; many chunks (a small block), a row of one chunk,
    vocab no multiple of the block; rows strided within a wider tensor."""
    g = torch.Generator().manual_seed(vocab)
    wide = torch.randint(-3, 4, (3, vocab + 5), generator=g).to(DEVICE, torch.bfloat16)
    wide[1] = torch.randn(vocab + 5, generator=g).to(DEVICE, torch.bfloat16)
    wide[2] = torch.randn(vocab + 5, generator=g).to(DEVICE, torch.bfloat16)
    wide[2, torch.randperm(vocab, generator=g)[: vocab // 2]] = float("-inf")
    logits = wide[:, :vocab]
    values, indices = topk(logits, k, block=block)
    expected_values, expected_indices = topk_reference(logits, k)
    assert torch.equal(indices, expected_indices) and torch.equal(values, expected_values)


def _filter_candidates(logits: torch.Tensor, k: int) -> torch.Tensor:
    """How many scores of each row pass the filter's threshold: the k-th largest of the maxima of
    groups index % 2 * next_pow2(k) (written out again here, from the design, not the kernel)."""
    groups = 2 * max(2, 1 << (k - 1).bit_length())
    padded = torch.nn.functional.pad(logits.float(), (0, -logits.shape[1] % groups), value=float("-inf"))
    maxima = padded.view(logits.shape[0], -1, groups).amax(1)
    return (logits.float() >= maxima.topk(k, dim=1).values[:, -1:]).sum(1)


def test_filter_topk_rows_past_the_candidate_slots_take_the_radix_select():
    # k 5: 16 groups, 16 slots for the first top-k, 256 in all. Rows: plain scores (a few
    # candidates), large scores in only 4 of the 16 groups (the threshold is the largest small
    # score: 26 candidates among 100 finite scores, and 501 past the slots), all equal (2000
    # candidates, the answer indices 0-4), ascending (5 candidates)
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(5, 2000, generator=g)
    columns = torch.arange(2000)
    in_four_groups = columns % 16 < 4
    logits[1, 100:] = float("-inf")
    logits[1:3] = torch.where(in_four_groups, logits[1:3] + 100, logits[1:3] - 100)
    logits[3] = 1.5
    logits[4] = columns.float()
    logits = logits.to(DEVICE)
    counts = _filter_candidates(logits, 5).tolist()
    assert counts[0] <= 16 and 16 < counts[1] <= 32 and counts[2] > 256 and counts[3] > 256, counts
    expected_values, expected_indices = topk_reference(logits, 5)
    for _ in range(2):  # the second call sees the counters the first one left
        values, indices = topk(logits, 5)
        assert torch.equal(indices, expected_indices) and torch.equal(values, expected_values)
    assert not semaphores("topk", 5, logits.device).any()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_filter_topk_matches_the_sort_at_vocab_scale_under_graph_replay(dtype):
    # 64 rows of 128256 as the bench draws them (bf16 ties among them), an all-equal row and one
    # whose large scores sit in 4 of the 128 groups (both past the candidate slots), each launch
    # of a graph of three calls giving the eager answer; the arrival counters end at zero
    g = torch.Generator().manual_seed(64)
    logits = torch.randn(64, 128256, generator=g) * 3
    logits[1] = 0.25
    logits[2] = torch.where(torch.arange(128256) % 128 < 4, logits[2] + 100, logits[2] - 100)
    logits = logits.to(DEVICE, dtype)
    expected_values, expected_indices = topk_reference(logits, 50)
    values, indices = topk(logits, 50)
    assert torch.equal(indices, expected_indices) and torch.equal(values, expected_values)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = [topk(logits, 50) for _ in range(3)]
    for _ in range(4):
        graph.replay()
        torch.cuda.synchronize()
        for values, indices in outs:
            assert torch.equal(indices, expected_indices) and torch.equal(values, expected_values)
    assert not semaphores("topk", 64, logits.device).any()


def test_sample_top_k_takes_the_kth_logit_from_the_filter_topk():
    logits = _randn(2, 700, scale=3.0).to(torch.bfloat16)
    logits[1, ::7] = logits[1, 3]  # ties at many ranks
    uniforms = torch.tensor([0.1, 0.95], device=DEVICE)
    for temperature, top_k, top_p in ((0.7, 50, 1.0), (1.3, 5, 0.8), (0.5, 256, 0.95)):
        expected = sample_reference(logits, uniforms, temperature, top_k, top_p)
        got = sample(logits, uniforms, temperature, top_k, top_p)
        assert torch.equal(got, expected), (temperature, top_k)


@pytest.mark.parametrize(("k", "path"), [(5, "GROUPS="), (256, "GROUPS="), (300, "BLOCK=")])
def test_topk_filters_up_to_filter_max_k_and_radix_selects_past_it(k, path):
    from kbench_triton.common import chosen_configs
    from kbench_triton.sampling import FILTER_MAX_K

    assert FILTER_MAX_K == 256
    logits = _randn(2, 400)
    values, indices = topk(logits, k)
    expected = topk_reference(logits, k)
    assert torch.equal(indices, expected[1]) and torch.equal(values, expected[0])
    assert chosen_configs()["topk"][f"400,{k}"].startswith(path)


def test_sample_top_p_wider_than_the_candidates_takes_the_bisection_path():
    # a flat distribution: top-p 0.99 keeps nearly all 3000 tokens, more than CANDIDATES
    logits = _randn(2, 3000, scale=0.1)
    uniforms = torch.tensor([0.3, 0.9], device=DEVICE)
    kept = (torch.softmax(logits, -1) > 0).sum(-1)
    assert (kept > CANDIDATES).all()
    assert torch.equal(sample(logits, uniforms, 1.0, 0, 0.99), sample_reference(logits, uniforms, 1.0, 0, 0.99))


def test_sample_top_k_ties_past_the_scratch_row_take_the_bisection_path():
    # 5 distinct values over 3000 tokens: the top-k threshold ties with ~600 tokens (> scratch)
    logits = torch.randint(0, 5, (2, 3000), generator=torch.Generator().manual_seed(1)).float().to(DEVICE)
    # every kept token is one of the n tied maxima, with p = 1/n: a draw u * total that lands on
    # a step of the CDF (u = 0.25 with n = 596 is exactly 149 steps) goes either way with the
    # order of float32 additions (the GPU reference's cumsum and the kernel disagreed there), so
    # each row's uniform sits in the middle of a step
    tied = (logits == logits.max(dim=-1, keepdim=True).values).sum(dim=-1).double()
    uniforms = ((torch.tensor([0.25, 0.75], device=DEVICE) * tied).floor() + 0.5) / tied
    for top_p in (1.0, 0.5):
        expected = sample_reference(logits, uniforms.float(), 0.7, 10, top_p)
        assert torch.equal(sample(logits, uniforms.float(), 0.7, 10, top_p), expected)


def test_sample_draws_each_token_at_its_cdf_boundaries():
    # u just below and above a CDF step picks the tokens on either side of it
    logits = torch.log(torch.tensor([[0.25, 0.25, 0.5]], device=DEVICE))
    probs = torch.softmax(logits, -1)
    for u, token in ((0.0, 0), (0.2499, 0), (0.2501, 1), (0.4999, 1), (0.5001, 2), (0.9999, 2)):
        assert sample(logits, torch.tensor([u], device=DEVICE), 1.0, 0, 1.0).item() == token, (u, probs)


def test_supports_names_what_cannot_run(monkeypatch):
    assert plugin.available() is None
    wide = Case("attention_decode", batch=1, heads=4, kv_heads=4, head_dim=512)
    assert "head_dim 512" in plugin.supports_attention(wide, torch.bfloat16, torch.device(DEVICE))
    assert "k 2000" in plugin.supports_sampling(Case("topk", batch=1, vocab=4000, k=2000), torch.float32,
                                                  torch.device(DEVICE))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reason = plugin.supports_elementwise(Case("rmsnorm", tokens=1, hidden=8), torch.float32, torch.device("cpu"))
    assert reason == "no CUDA device (set TRITON_INTERPRET=1 to run on the CPU interpreter)"


def test_tuned_configs_name_the_config_of_each_launch():
    rmsnorm(_randn(2, 64), _randn(64), 1e-5)
    attention_decode(*_decode_inputs(), None, 0.2)
    configs = plugin.tuned_configs()
    assert configs["rmsnorm"]["64,float32"] == "BLOCK=64 num_warps=1"
    assert any("NUM_SPLITS" in text for text in configs["attention_decode_splits"].values())
    assert all(isinstance(text, str) for by_key in configs.values() for text in by_key.values())


@pytest.mark.parametrize(("block_m", "k"), [(1, 4096), (16, 4096), (1, 11008), (16, 64)])
def test_skinny_gemm_tuning_keeps_one_tile_family_per_row_block(block_m, k):
    from kbench_triton.gemv import MIN_BLOCK_N, _configs, _prune

    kept = _prune(_configs(), {"k": k}, BLOCK_M=block_m)
    tiles = {(c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]) for c in kept}
    assert kept and all(-(-k // c.kwargs["BLOCK_K"]) >= c.kwargs["SPLIT_K"] for c in kept)
    if block_m == 1:
        assert all(bk > 128 for _, bk in tiles) and {bn for bn, _ in tiles} == {MIN_BLOCK_N, 32}
    else:
        assert all(bn > MIN_BLOCK_N for bn, _ in tiles) and (k < 128 or 128 in {bk for _, bk in tiles})
    if k >= 4096:  # every split of K stays a choice where K has room for it
        assert {c.kwargs["SPLIT_K"] for c in kept} == {1, 2, 4}


@pytest.mark.parametrize("split_k", [1, 2, 3, 4])
@pytest.mark.parametrize("rows", [1, 8])
def test_skinny_gemm_split_k_sums_every_split_once(split_k, rows):
    from kbench_triton.gemv import linear, swiglu_linear

    from kbench.ops.ffn import swiglu_reference

    # K = 72 is three interpreter BLOCK_K steps: split 4 leaves one split without any K
    x, w = _randn(rows, 72), _randn(80, 72, scale=72 ** -0.5, seed=1)
    for _ in range(2):  # a second call finds the counters reset by the first
        torch.testing.assert_close(linear(x, w, split_k=split_k).double(), x.double() @ w.double().T,
                                   atol=1e-5, rtol=1e-5)
        gate, up = (x @ w.T).chunk(2, dim=-1)
        torch.testing.assert_close(swiglu_linear(x, w, split_k=split_k), swiglu_reference(gate, up),
                                   atol=1e-5, rtol=1e-5)
    assert not semaphores("skinny_gemm", 1, x.device).any()


@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_skinny_gemms_match_cublas_and_the_reference_ffn(rows, dtype):
    from kbench_triton.ffn import ffn
    from kbench_triton.gemv import linear, swiglu_linear

    from kbench.ops.ffn import ffn_reference, swiglu_reference

    hidden, intermediate = 72, 40  # odd multiples: masked K and N tails
    x = _randn(rows, hidden, dtype=dtype)
    w_gate_up = _randn(2 * intermediate, hidden, dtype=dtype, scale=hidden ** -0.5, seed=1)
    w_down = _randn(hidden, intermediate, dtype=dtype, scale=intermediate ** -0.5, seed=2)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    expected = x.double() @ w_gate_up.double().T
    torch.testing.assert_close(linear(x, w_gate_up).double(), expected, **tol)
    gate, up = (x.float() @ w_gate_up.float().T).to(dtype).chunk(2, dim=-1)
    torch.testing.assert_close(swiglu_linear(x, w_gate_up), swiglu_reference(gate, up), **tol)
    torch.testing.assert_close(ffn(x, w_gate_up, w_down), ffn_reference(x, w_gate_up, w_down), **tol)


@pytest.mark.parametrize("path", ["skinny", "cublas"])
def test_ffn_down_takes_the_recorded_path_and_both_agree(monkeypatch, path):
    from kbench_triton import ffn as ffn_module
    from kbench_triton.common import chosen_configs

    from kbench.ops.ffn import ffn_reference

    monkeypatch.setattr(ffn_module, "_DOWN_PATHS", {})
    monkeypatch.setattr(ffn_module, "_choose_down_path", lambda h, w: path)
    calls = []
    monkeypatch.setattr(ffn_module.gemv, "linear", lambda *a, **kw: calls.append("skinny") or gemv_linear(*a, **kw))
    x = _randn(2, 72)
    w_gate_up, w_down = _randn(80, 72, scale=72 ** -0.5, seed=1), _randn(72, 40, scale=40 ** -0.5, seed=2)
    torch.testing.assert_close(ffn_module.ffn(x, w_gate_up, w_down), ffn_reference(x, w_gate_up, w_down),
                               atol=1e-5, rtol=1e-5)
    assert calls == (["skinny"] if path == "skinny" else [])
    assert chosen_configs()["ffn_down"]["8,(72, 40),float32"] == f"path={path}"


def test_weight_streaming_timing_cycles_through_copies_of_the_weight(monkeypatch):
    # on a CPU kbench's measure falls back to perf_counter; the copies and the per-call division
    # are the same code the GPU path runs
    from kbench_triton import ffn as ffn_module

    monkeypatch.setattr(ffn_module, "TIMING_BYTES", 3 * 64 * 4)
    w = _randn(8, 8)
    seen = set()
    us = ffn_module.weight_streaming_us(lambda c: seen.add(c.data_ptr()), w)
    assert us > 0 and len(seen) == 3 and w.data_ptr() in seen


def test_skinny_gemm_refuses_too_many_rows():
    from kbench_triton.gemv import MAX_ROWS, linear

    with pytest.raises(ValueError, match="at most"):
        linear(_randn(MAX_ROWS + 1, 16), _randn(16, 16))


@pytest.mark.gpu
def test_last_arriving_programs_finish_the_work_under_graph_replay():
    # the split-K GEMM leaves its counters at zero after every launch, so a graph replaying it
    # (beside the split-KV decode and its merge) many times keeps giving the eager result
    from kbench_triton import ffn as ffn_module
    from kbench_triton.gemv import linear

    h = _randn(1, 11008, dtype=torch.bfloat16)
    w = _randn(4096, 11008, dtype=torch.bfloat16, scale=11008 ** -0.5, seed=1)
    assert ffn_module._choose_down_path(h, w) in ("skinny", "cublas")
    q, k_cache, v_cache, seqlens = _decode_inputs()
    expected_attention = attention_decode_reference(q, k_cache, v_cache, seqlens, None, 0.2)
    expected_linear = (h.float() @ w.float().T).to(torch.bfloat16)
    linear(h, w, split_k=4)
    attention_decode(q, k_cache, v_cache, seqlens, None, 0.2, splits=5)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = [(linear(h, w, split_k=4), attention_decode(q, k_cache, v_cache, seqlens, None, 0.2, splits=5))
                for _ in range(3)]
    for _ in range(4):
        graph.replay()
        torch.cuda.synchronize()
        for out_linear, out_attention in outs:
            torch.testing.assert_close(out_linear, expected_linear, atol=2e-2, rtol=2e-2)
            torch.testing.assert_close(out_attention, expected_attention, atol=2e-5, rtol=1e-4)
    assert not semaphores("skinny_gemm", 1, q.device).any()


def test_decode_splits_keep_about_one_program_per_sm(monkeypatch):
    # the counts measured best on an H100's 132 SMs (docs/kernels.md): at most one program per SM
    from kbench_triton import attention_decode as decode_module

    monkeypatch.setattr(decode_module, "interpreting", lambda: False)
    monkeypatch.setattr(decode_module, "_sm_count", lambda index: 132)
    cuda = torch.device("cuda", 0)
    assert decode_module.num_splits(1, 8, 2048, cuda) == 16  # GQA-8, batch 1
    assert decode_module.num_splits(1, 32, 2048, cuda) == 4  # MHA, batch 1
    assert decode_module.num_splits(8, 32, 512, cuda) == 1  # MHA, batch 8: no merge pass
    assert decode_module.num_splits(8, 8, 2048, cuda) == 1  # 64 programs: two splits would not pay
    assert decode_module.num_splits(4, 8, 2048, cuda) == 4  # 32 programs: a quarter of the SMs
    assert decode_module.num_splits(64, 8, 8192, cuda) == 1
    assert decode_module.num_splits(1, 8, 512, cuda) == 4  # at least 128 keys a split
