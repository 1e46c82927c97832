import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats

from kbench.config import ModelConfig, SamplingConfig, Workload
from kbench.errors import KbenchError
from kbench.ops.base import Case
from kbench.ops.sampling import SAMPLE, TOPK, sample_reference, topk_reference, truncated_probs

# --- independent float64 formulations (numpy), written from the contract's words ---


def scaled_float64(logits, temperature):
    # The contract divides in float32; everything after that is float64 here.
    return (logits.float() / temperature).double().numpy()


def top_k_mask_by_sort(scaled, top_k):
    """Keep tokens whose value is >= the k-th largest (sort descending, read position k-1)."""
    if top_k == 0 or top_k >= scaled.shape[-1]:
        return np.ones_like(scaled, dtype=bool)
    kth = -np.sort(-scaled, axis=-1)[:, top_k - 1 : top_k]
    return scaled >= kth


def softmax_float64(scaled, keep):
    z = np.where(keep, scaled, -np.inf)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def mass_strictly_greater(p):
    """For each token t, the sum of p[j] over p[j] > p[t] (ties contribute nothing)."""
    ascending = np.sort(p, axis=-1)
    above = ascending[:, ::-1].cumsum(axis=-1)[:, ::-1]  # above[i] = sum of ascending[i:]
    above = np.concatenate([above[:, 1:], np.zeros_like(above[:, :1])], axis=-1)
    rows = []
    for row_p, row_sorted, row_above in zip(p, ascending, above, strict=True):
        last_equal = np.searchsorted(row_sorted, row_p, side="right") - 1
        rows.append(row_above[last_equal])
    return np.stack(rows)


def top_p_mask_hf(p, top_p):
    """Hugging Face TopPLogitsWarper: sort ascending, drop tokens whose cumulative mass <= 1 - top_p."""
    order = np.argsort(p, axis=-1, kind="stable")
    cumulative = np.take_along_axis(p, order, axis=-1).cumsum(axis=-1)
    drop_sorted = cumulative <= 1 - top_p
    drop_sorted[:, -1] = False
    keep = np.ones_like(p, dtype=bool)
    np.put_along_axis(keep, order, ~drop_sorted, axis=-1)
    return keep


def truncated_float64(logits, temperature, top_k, top_p):
    """(kept-token probabilities renormalised, keep mask, top-p masses) in float64."""
    scaled = scaled_float64(logits, temperature)
    keep = top_k_mask_by_sort(scaled, top_k)
    p = softmax_float64(scaled, keep)
    mass = mass_strictly_greater(p)
    if top_p < 1.0:
        keep &= mass < top_p
    q = np.where(keep, p, 0.0)
    return q / q.sum(axis=-1, keepdims=True), keep, mass


def inverse_cdf_float64(q, uniforms):
    """(tokens, distance of each u from its nearest CDF boundary)."""
    tokens, margins = [], []
    for row, u in zip(q, uniforms.double().numpy(), strict=True):
        cdf = row.cumsum()
        token = min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), len(row) - 1)
        edges = np.concatenate([[0.0], cdf / cdf[-1]])
        tokens.append(token)
        margins.append(np.abs(edges - u).min())
    return np.array(tokens), np.array(margins)


def sample_case(batch, vocab, temperature, top_k=0, top_p=1.0):
    return Case("sample", batch=batch, vocab=vocab, temperature=temperature, top_k=top_k, top_p=top_p)


# --- greedy ---


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_greedy_is_argmax_with_lowest_index_on_ties(dtype):
    g = torch.Generator().manual_seed(0)
    # small integers: many rows have their maximum more than once
    logits = torch.randint(0, 6, (64, 33), generator=g).to(dtype)
    uniforms = torch.rand(64, generator=g)
    tokens = sample_reference(logits, uniforms, 0.0, 5, 0.5)
    expected = np.argmax(logits.float().numpy(), axis=-1)  # numpy returns the first maximum
    assert tokens.dtype == torch.int64
    np.testing.assert_array_equal(tokens.numpy(), expected)


# --- truncation masks ---


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(1.0, 20, 1.0), (0.7, 0, 0.9), (1.3, 50, 0.95), (1.0, 1, 0.5)])
def test_kept_tokens_match_sort_based_top_k_and_hf_top_p(temperature, top_k, top_p):
    logits = torch.randn(6, 1000, generator=torch.Generator().manual_seed(1)) * 3
    scaled = scaled_float64(logits, temperature)
    keep = top_k_mask_by_sort(scaled, top_k)
    if top_p < 1.0:
        keep &= top_p_mask_hf(softmax_float64(scaled, keep), top_p)
    kept = truncated_probs(logits, temperature, top_k, top_p) > 0
    np.testing.assert_array_equal(kept.numpy(), keep)


def test_top_k_keeps_every_token_tied_at_the_threshold():
    logits = torch.tensor([[5.0, 3.0, 4.0, 3.0, 1.0, 3.0]])
    kept = truncated_probs(logits, 1.0, 3, 1.0) > 0  # the 3rd largest is 3.0, held by three tokens
    assert kept.tolist() == [[True, True, True, True, False, True]]


def test_top_p_keeps_tied_tokens_together_and_always_keeps_the_max():
    # p = [0.4, 0.2, 0.2, 0.2]: mass above each 0.2 is 0.4 < 0.5, so all three stay
    logits = torch.log(torch.tensor([[0.2, 0.4, 0.2, 0.2]]))
    assert (truncated_probs(logits, 1.0, 0, 0.5) > 0).tolist() == [[True, True, True, True]]
    assert (truncated_probs(logits, 1.0, 0, 0.3) > 0).tolist() == [[False, True, False, False]]
    assert (truncated_probs(logits, 1.0, 0, 1e-9) > 0).sum().item() == 1


def test_top_p_drops_a_token_whose_mass_above_equals_top_p():
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0]])
    top_p = torch.softmax(logits, dim=-1).max().item()  # the float32 mass above the second token
    assert (truncated_probs(logits, 1.0, 0, top_p) > 0).tolist() == [[True, False, False, False]]


# --- draws with given uniforms ---


def test_a_draw_on_a_boundary_takes_the_next_token():
    # p = 1/4 each (exact in float32): u * total == cdf[i] must pick i + 1 ("cdf > u * total")
    uniforms = torch.tensor([0.0, 0.25, 0.5, 0.75, 0.9999999])
    tokens = sample_reference(torch.zeros(5, 4), uniforms, 1.0, 0, 1.0)
    assert tokens.tolist() == [0, 1, 2, 3, 3]


def test_a_zero_uniform_takes_the_first_kept_token():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0]])
    assert sample_reference(logits, torch.zeros(1), 1.0, 2, 1.0).tolist() == [1]


def test_a_draw_past_the_total_takes_the_last_kept_token_not_a_dropped_one():
    # u = 1 is outside the contract; it stands in for a u * total that rounds up to the total
    logits = torch.tensor([[0.0, 5.0, 4.0, 1.0]])
    assert sample_reference(logits, torch.ones(1), 1.0, 2, 1.0).tolist() == [2]


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(1.0, 0, 1.0), (0.6, 0, 1.0), (1.0, 40, 1.0), (0.8, 0, 0.9), (1.2, 50, 0.95)])
def test_draws_match_float64_inverse_cdf_away_from_boundaries(temperature, top_k, top_p):
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(400, 257, generator=g) * 3).to(torch.bfloat16)
    uniforms = torch.rand(400, generator=g)
    q, _, _ = truncated_float64(logits, temperature, top_k, top_p)
    expected, margins = inverse_cdf_float64(q, uniforms)
    clear = margins > 1e-5
    assert clear.mean() > 0.95
    tokens = sample_reference(logits, uniforms, temperature, top_k, top_p).numpy()
    np.testing.assert_array_equal(tokens[clear], expected[clear])
    assert (q[np.arange(400), tokens] > 0).all()


def test_made_inputs_agree_with_float64_sampler_at_llama_vocab():
    # make_inputs keeps uniforms off the CDF boundaries, so float64 math and the float32
    # reference agree on every token, not just on most of them.
    inputs = SAMPLE.make_inputs(sample_case(48, 32000, 1.0), torch.bfloat16, "cpu", 0)
    q, _, _ = truncated_float64(inputs["logits"], 1.0, 0, 1.0)
    expected, margins = inverse_cdf_float64(q, inputs["uniforms"])
    assert margins.min() > 1e-6
    np.testing.assert_array_equal(sample_reference(**inputs).numpy(), expected)


def test_half_precision_logits_sample_like_their_float32_values():
    inputs = SAMPLE.make_inputs(sample_case(8, 4099, 0.8, 50, 0.9), torch.bfloat16, "cpu", 3)
    as_float32 = inputs | {"logits": inputs["logits"].float()}
    torch.testing.assert_close(sample_reference(**inputs), sample_reference(**as_float32))


# --- distribution ---

DRAWS = 20000
ALPHA = 1e-3


def goodness_of_fit_pvalue(tokens, probs):
    """Chi-square p-value of the token counts against ``probs`` (0 if a zero-probability token is drawn)."""
    counts = np.bincount(tokens, minlength=len(probs))
    support = probs > 0
    if counts[~support].any():
        return 0.0
    expected = probs[support] * len(tokens)
    assert expected.min() >= 5, "chi-square needs at least 5 expected draws per bin"
    return stats.chisquare(counts[support], expected).pvalue


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(0.7, 0, 1.0), (1.3, 6, 1.0), (1.0, 0, 0.8), (0.9, 7, 0.85)])
def test_draws_follow_the_truncated_softmax(temperature, top_k, top_p):
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(1, 10, generator=g)
    uniforms = torch.rand(DRAWS, generator=g)
    q, keep, _ = truncated_float64(logits, temperature, top_k, top_p)
    assert 1 < keep.sum() < 10 or (top_k, top_p) == (0, 1.0)
    rows = logits.expand(DRAWS, -1)
    tokens = sample_reference(rows, uniforms, temperature, top_k, top_p).numpy()
    assert goodness_of_fit_pvalue(tokens, q[0]) > ALPHA
    # the same check rejects a sampler that ignores the temperature
    wrong = sample_reference(rows, uniforms, 1.0 if temperature != 1.0 else 0.5, top_k, top_p).numpy()
    assert goodness_of_fit_pvalue(wrong, q[0]) < ALPHA


# --- hypothesis over shapes and settings ---


@given(
    batch=st.integers(1, 6),
    vocab=st.sampled_from([1, 2, 7, 64, 257, 1000, 1023]),
    temperature=st.sampled_from([0.5, 1.0, 1.7]),
    top_k=st.integers(0, 1100),
    top_p=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_sample_matches_independent_formulation(batch, vocab, temperature, top_k, top_p, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, vocab, generator=g) * 3
    uniforms = torch.rand(batch, generator=g)
    q, keep, mass = truncated_float64(logits, temperature, top_k, top_p)
    # a token whose mass is within rounding of top_p may go either way in float32
    assume(top_p == 1.0 or np.abs(mass - top_p).min() > 1e-5)
    np.testing.assert_array_equal((truncated_probs(logits, temperature, top_k, top_p) > 0).numpy(), keep)
    expected, margins = inverse_cdf_float64(q, uniforms)
    tokens = sample_reference(logits, uniforms, temperature, top_k, top_p).numpy()
    clear = margins > 1e-5
    np.testing.assert_array_equal(tokens[clear], expected[clear])
    assert keep[np.arange(batch), tokens].all()


# --- topk ---


def topk_by_stable_argsort(logits, k):
    order = np.argsort(-logits.float().numpy(), axis=-1, kind="stable")[:, :k]
    return np.take_along_axis(logits.float().numpy(), order, axis=-1), order


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("ties", [False, True])
def test_topk_is_sorted_descending_with_ascending_index_on_ties(dtype, ties):
    g = torch.Generator().manual_seed(5)
    logits = torch.randint(0, 8, (5, 999), generator=g).float() if ties else torch.randn(5, 999, generator=g) * 3
    logits = logits.to(dtype)
    values, indices = topk_reference(logits, 100)
    expected_values, expected_indices = topk_by_stable_argsort(logits, 100)
    assert values.dtype == dtype and indices.dtype == torch.int64
    np.testing.assert_array_equal(indices.numpy(), expected_indices)
    np.testing.assert_array_equal(values.float().numpy(), expected_values)


def test_topk_breaks_ties_of_bfloat16_logits_at_llama_vocab():
    inputs = TOPK.make_inputs(Case("topk", batch=4, vocab=32000, k=50), torch.bfloat16, "cpu", 0)
    values, indices = topk_reference(**inputs)
    assert (values[:, 1:] == values[:, :-1]).any(), "bfloat16 logits of this size should tie"
    np.testing.assert_array_equal(indices.numpy(), topk_by_stable_argsort(inputs["logits"], 50)[1])


@given(batch=st.integers(1, 5), vocab=st.integers(1, 300), data=st.data())
@settings(max_examples=30, deadline=None)
def test_topk_matches_stable_argsort(batch, vocab, data):
    k = data.draw(st.integers(1, vocab))
    g = torch.Generator().manual_seed(vocab)
    logits = torch.randint(-4, 4, (batch, vocab), generator=g).to(torch.bfloat16) / 2
    values, indices = topk_reference(logits, k)
    expected_values, expected_indices = topk_by_stable_argsort(logits, k)
    np.testing.assert_array_equal(indices.numpy(), expected_indices)
    np.testing.assert_array_equal(values.float().numpy(), expected_values)


# --- contract: validation, cases, cost model ---


def _sample_inputs(**changes):
    return SAMPLE.make_inputs(sample_case(2, 100, 1.0, 5, 0.9), torch.float32, "cpu", 0) | changes


@pytest.mark.parametrize(
    "changes",
    [
        {"uniforms": torch.rand(2, dtype=torch.float64)},
        {"uniforms": torch.rand(3)},
        {"logits": torch.randn(100)},
        {"logits": torch.randint(0, 5, (2, 100))},
        {"temperature": -0.5},
        {"temperature": float("nan")},
        {"top_k": -1},
        {"top_k": 2.5},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_p": True},
    ],
    ids=lambda changes: ",".join(changes),
)
def test_sample_rejects_bad_inputs(changes):
    with pytest.raises(KbenchError):
        SAMPLE.validate(_sample_inputs(**changes))


@pytest.mark.parametrize("k", [0, -1, 101, 3.0])
def test_topk_rejects_bad_k(k):
    with pytest.raises(KbenchError):
        TOPK.validate({"logits": torch.randn(2, 100), "k": k})


def test_made_inputs_pass_validation():
    for op in (SAMPLE, TOPK):
        for case in op.test_cases:
            op.validate(op.make_inputs(case, torch.bfloat16, "cpu", 0))


def test_cases_follow_the_workload_sampling_config():
    model = ModelConfig("m", vocab=32000, hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32, head_dim=128)
    workload = Workload(batch=(8, 1, 8), sampling=SamplingConfig(temperature=0.7, top_k=0, top_p=0.9))
    cases = SAMPLE.cases_for(model, workload)
    assert [c["batch"] for c in cases] == [1, 8]
    assert all((c["vocab"], c["temperature"], c["top_k"], c["top_p"]) == (32000, 0.7, 0, 0.9) for c in cases)
    assert [c["k"] for c in TOPK.cases_for(model, workload)] == [50, 50]
    with_top_k = Workload(batch=(4,), sampling=SamplingConfig(temperature=1.0, top_k=20))
    assert TOPK.cases_for(model, with_top_k)[0]["k"] == 20


def test_bytes_count_logits_once_plus_outputs():
    case = sample_case(4, 32000, 1.0)
    assert SAMPLE.bytes(case, torch.bfloat16) == 4 * 32000 * 2 + 4 * (4 + 8)
    assert TOPK.bytes(Case("topk", batch=4, vocab=32000, k=50), torch.float32) == 4 * 32000 * 4 + 4 * 50 * (4 + 8)
    assert 0 < SAMPLE.flops(case) <= 10 * 4 * 32000


def test_sample_tolerance_is_exact_for_a_decode_batch():
    tolerance = SAMPLE.tolerance(torch.bfloat16)
    ref = torch.arange(64)
    assert SAMPLE.compare(ref.clone(), ref, tolerance).ok
    assert not SAMPLE.compare(ref.clone().index_fill_(0, torch.tensor([3]), 7), ref, tolerance).ok
