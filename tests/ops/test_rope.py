import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kbench.config import ModelConfig, RopeConfig, Workload
from kbench.errors import KbenchError
from kbench.ops.base import Case
from kbench.ops.rope import ROPE, rope_inv_freq, rope_reference

LLAMA3 = RopeConfig(theta=500000.0, scaling="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position=8192)


def fp32_angles(positions, inv_freq):
    """The contract's angles: position times frequency, one float32 product."""
    return (positions.float()[:, None] * inv_freq.float()[None, :]).double()


def complex_rotation(x, angles, style):
    """Each pair as the complex number a + jb times exp(j angle), in float64.

    The pair is (i, i + head_dim/2) for "half" and (2i, 2i+1) for "interleaved".
    """
    x64 = x.double()
    half = x.shape[-1] // 2
    if style == "half":
        pairs = torch.complex(x64[..., :half], x64[..., half:])
    else:
        pairs = torch.complex(x64[..., 0::2], x64[..., 1::2])
    rotated = pairs * torch.polar(torch.ones_like(angles), angles)[:, None, :]
    if style == "half":
        return torch.cat((rotated.real, rotated.imag), dim=-1)
    return torch.stack((rotated.real, rotated.imag), dim=-1).flatten(-2)


def meta_apply_rotary_emb(x, positions, inv_freq):
    """Meta llama's apply_rotary_emb: complex64 product of the interleaved pairs, cast back."""
    freqs_cis = torch.polar(torch.ones(len(positions), len(inv_freq)), torch.outer(positions.float(), inv_freq))
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * freqs_cis[:, None, :]).flatten(-2).type_as(x)


def interleaved_to_half(x):
    """HF's checkpoint permutation of q/k rows: interleaved pair (2i, 2i+1) -> (i, i + head_dim/2)."""
    return x.unflatten(-1, (-1, 2)).transpose(-1, -2).flatten(-2)


def rope_inputs(tokens=7, heads=4, kv_heads=2, head_dim=64, dtype=torch.float32, seed=0, rope=RopeConfig(),
                max_position=5000):
    g = torch.Generator().manual_seed(seed)
    return {
        "q": torch.randn(tokens, heads, head_dim, generator=g).to(dtype),
        "k": torch.randn(tokens, kv_heads, head_dim, generator=g).to(dtype),
        "positions": torch.randint(0, max_position, (tokens,), generator=g),
        "inv_freq": rope_inv_freq(head_dim, rope, max_position),
        "style": rope.style,
    }


# -- frequencies --------------------------------------------------------------------------------

def hand_inv_freq(head_dim, rope, seq_len):
    """The scaled frequencies one at a time, in float64, from the published formulas."""
    base = rope.theta
    if rope.scaling == "dynamic" and seq_len > rope.original_max_position:
        base = rope.theta * (rope.factor * seq_len / rope.original_max_position - (rope.factor - 1)) ** (
            head_dim / (head_dim - 2))
    expected = []
    for i in range(head_dim // 2):
        freq = 1.0 / base ** (2 * i / head_dim)
        if rope.scaling == "linear":
            freq /= rope.factor
        elif rope.scaling == "llama3":
            wavelen = 2 * math.pi / freq
            if wavelen > rope.original_max_position / rope.low_freq_factor:
                freq /= rope.factor
            elif wavelen >= rope.original_max_position / rope.high_freq_factor:
                smooth = (rope.original_max_position / wavelen - rope.low_freq_factor) / (
                    rope.high_freq_factor - rope.low_freq_factor)
                freq = (1 - smooth) * freq / rope.factor + smooth * freq
        expected.append(freq)
    return torch.tensor(expected, dtype=torch.float64)


@pytest.mark.parametrize(("rope", "seq_len"), [
    (RopeConfig(), 4096),
    (RopeConfig(theta=1e6), 128),
    (RopeConfig(scaling="linear", factor=4.0), 4096),
    (RopeConfig(scaling="dynamic", factor=2.0, original_max_position=2048), 9000),
    (RopeConfig(scaling="dynamic", factor=2.0, original_max_position=2048), 2048),
    (LLAMA3, 131072),
], ids=["none", "theta1e6", "linear", "dynamic-past-original", "dynamic-within-original", "llama3"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_inv_freq_matches_hand_computed_frequencies(rope, seq_len, head_dim):
    inv_freq = rope_inv_freq(head_dim, rope, seq_len)
    assert inv_freq.dtype == torch.float32 and inv_freq.shape == (head_dim // 2,)
    torch.testing.assert_close(inv_freq.double(), hand_inv_freq(head_dim, rope, seq_len), rtol=2e-6, atol=0)


def test_llama3_keeps_high_frequencies_and_divides_low_ones_by_factor():
    plain = rope_inv_freq(128, RopeConfig(theta=500000.0), 8192)
    scaled = rope_inv_freq(128, LLAMA3, 8192)
    wavelen = 2 * math.pi / plain
    assert torch.equal(scaled[wavelen < 2048], plain[wavelen < 2048])
    torch.testing.assert_close(scaled[wavelen > 8192], plain[wavelen > 8192] / 8)
    medium = (wavelen >= 2048) & (wavelen <= 8192)
    assert medium.any()
    assert ((scaled[medium] < plain[medium]) & (scaled[medium] > plain[medium] / 8)).all()


def test_dynamic_grows_the_base_only_past_the_original_length():
    rope = RopeConfig(scaling="dynamic", factor=2.0, original_max_position=2048)
    assert torch.equal(rope_inv_freq(64, rope, 2048), rope_inv_freq(64, RopeConfig(), 2048))
    assert (rope_inv_freq(64, rope, 4096)[1:] < rope_inv_freq(64, rope, 2048)[1:]).all()


def hf_config(head_dim, rope, max_position):
    transformers = pytest.importorskip("transformers")
    params = {"rope_type": "default" if rope.scaling == "none" else rope.scaling, "rope_theta": rope.theta}
    if rope.scaling != "none":
        params["factor"] = rope.factor
    if rope.scaling == "llama3":
        params |= {"low_freq_factor": rope.low_freq_factor, "high_freq_factor": rope.high_freq_factor,
                   "original_max_position_embeddings": rope.original_max_position}
    heads = 4
    common = {"hidden_size": heads * head_dim, "num_attention_heads": heads, "head_dim": head_dim,
              "max_position_embeddings": max_position}
    if "rope_parameters" in transformers.LlamaConfig().to_dict():
        return transformers.LlamaConfig(**common, rope_parameters=params)
    params = {key.replace("rope_type", "type"): value for key, value in params.items() if key != "rope_theta"}
    return transformers.LlamaConfig(**common, rope_theta=rope.theta,
                                    rope_scaling=None if rope.scaling == "none" else params)


@pytest.mark.parametrize(("rope", "seq_len"), [
    (RopeConfig(scaling="linear", factor=4.0), 4096),
    (RopeConfig(scaling="dynamic", factor=2.0, original_max_position=2048), 9000),
    (RopeConfig(scaling="dynamic", factor=2.0, original_max_position=2048), 100),
    (LLAMA3, 8192),
], ids=["linear", "dynamic-past-original", "dynamic-within-original", "llama3"])
@pytest.mark.parametrize("head_dim", [64, 80, 128])
def test_inv_freq_equals_hugging_face_rope_init_functions(rope, seq_len, head_dim):
    config = hf_config(head_dim, rope, max_position=rope.original_max_position)
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    expected, attention_scaling = ROPE_INIT_FUNCTIONS[rope.scaling](config, "cpu", seq_len=seq_len)
    assert attention_scaling == 1.0
    assert torch.equal(rope_inv_freq(head_dim, rope, seq_len), expected.float())


# -- rotation -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rope", [RopeConfig(theta=500000.0), LLAMA3], ids=["none", "llama3"])
def test_half_rope_equals_hugging_face_apply_rotary_pos_emb(dtype, rope):
    pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    inputs = rope_inputs(tokens=9, head_dim=64, dtype=dtype, rope=rope, max_position=8192)
    rotary = LlamaRotaryEmbedding(hf_config(64, rope, max_position=8192))
    cos, sin = rotary(inputs["q"], inputs["positions"][None])
    # HF layout [batch, heads, seq_len, head_dim]
    q_hf, k_hf = apply_rotary_pos_emb(inputs["q"].transpose(0, 1)[None], inputs["k"].transpose(0, 1)[None], cos, sin)
    q_out, k_out = rope_reference(**inputs)
    assert torch.equal(q_out, q_hf[0].transpose(0, 1))
    assert torch.equal(k_out, k_hf[0].transpose(0, 1))


@pytest.mark.parametrize("head_dim", [64, 128])
def test_half_rope_equals_meta_complex_rotation_after_checkpoint_permutation(head_dim):
    inputs = rope_inputs(tokens=11, head_dim=head_dim, dtype=torch.float64, max_position=4096)
    q_meta, k_meta = inputs["q"], inputs["k"]
    q_out, k_out = rope_reference(interleaved_to_half(q_meta), interleaved_to_half(k_meta), inputs["positions"],
                                  inputs["inv_freq"], "half")
    angles = fp32_angles(inputs["positions"], inputs["inv_freq"])
    for out, x in ((q_out, q_meta), (k_out, k_meta)):
        meta = torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2)).contiguous())
                                  * torch.polar(torch.ones_like(angles), angles)[:, None, :]).flatten(-2)
        # cos and sin are float32 in the reference (HF computes them in float32)
        torch.testing.assert_close(out, interleaved_to_half(meta), atol=2e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_interleaved_rope_equals_meta_apply_rotary_emb(dtype):
    inputs = rope_inputs(tokens=13, head_dim=128, dtype=dtype, rope=RopeConfig(style="interleaved"), max_position=4096)
    q_out, k_out = rope_reference(**inputs)
    # complex64 and real float32 arithmetic may round the last bit apart: one unit in the dtype
    one_ulp = torch.finfo(dtype).eps
    for out, x in ((q_out, inputs["q"]), (k_out, inputs["k"])):
        assert out.dtype == dtype
        torch.testing.assert_close(out, meta_apply_rotary_emb(x, inputs["positions"], inputs["inv_freq"]),
                                   atol=1e-6, rtol=one_ulp)


@pytest.mark.parametrize("style", ["half", "interleaved"])
def test_rotation_preserves_the_norm_of_every_pair(style):
    inputs = rope_inputs(tokens=17, head_dim=80, rope=RopeConfig(style=style), max_position=100000)
    for out, x in zip(rope_reference(**inputs), (inputs["q"], inputs["k"]), strict=True):
        if style == "half":
            norms_out, norms_in = out.unflatten(-1, (2, -1)).norm(dim=-2), x.unflatten(-1, (2, -1)).norm(dim=-2)
        else:
            norms_out, norms_in = out.unflatten(-1, (-1, 2)).norm(dim=-1), x.unflatten(-1, (-1, 2)).norm(dim=-1)
        torch.testing.assert_close(norms_out, norms_in, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("style", ["half", "interleaved"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_position_zero_is_the_identity(style, dtype):
    inputs = rope_inputs(tokens=5, dtype=dtype, rope=RopeConfig(style=style, scaling="linear", factor=2.0))
    inputs["positions"] = torch.zeros(5, dtype=torch.int64)
    q_out, k_out = rope_reference(**inputs)
    assert torch.equal(q_out, inputs["q"]) and torch.equal(k_out, inputs["k"])


def test_reference_returns_new_tensors():
    inputs = rope_inputs()
    before = inputs["q"].clone()
    q_out, _ = rope_reference(**inputs)
    assert q_out.data_ptr() != inputs["q"].data_ptr() and torch.equal(inputs["q"], before)


@given(
    head_dim=st.sampled_from([64, 80, 128, 256]),
    tokens=st.integers(1, 40),
    group=st.sampled_from(["mha", "gqa4", "gqa8", "mqa"]),
    style=st.sampled_from(["half", "interleaved"]),
    scaling=st.sampled_from(["none", "linear", "dynamic", "llama3"]),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_rope_matches_complex_rotation_for_any_shape(head_dim, tokens, group, style, scaling, seed):
    kv_heads = {"mha": 8, "gqa4": 2, "gqa8": 1, "mqa": 1}[group]
    heads = {"mha": 8, "gqa4": 8, "gqa8": 8, "mqa": 3}[group]
    rope = RopeConfig(style=style, scaling=scaling, factor=4.0, original_max_position=1024)
    inputs = rope_inputs(tokens, heads, kv_heads, head_dim, seed=seed, rope=rope, max_position=3000)
    angles = fp32_angles(inputs["positions"], inputs["inv_freq"])
    q_out, k_out = rope_reference(**inputs)
    assert q_out.shape == (tokens, heads, head_dim) and k_out.shape == (tokens, kv_heads, head_dim)
    torch.testing.assert_close(q_out.double(), complex_rotation(inputs["q"], angles, style), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(k_out.double(), complex_rotation(inputs["k"], angles, style), atol=2e-5, rtol=1e-5)


# -- contract: inputs, cases, errors ------------------------------------------------------------

def test_prefill_positions_restart_for_every_packed_sequence():
    case = Case("rope", tokens=12, heads=2, kv_heads=1, head_dim=64, phase="prefill", seq_len=4, style="half",
                scaling="none", theta=10000.0)
    inputs = ROPE.make_inputs(case, torch.bfloat16, "cpu", 0)
    assert inputs["positions"].tolist() == [0, 1, 2, 3] * 3
    assert inputs["q"].shape == (12, 2, 64) and inputs["k"].shape == (12, 1, 64)
    assert inputs["q"].dtype == inputs["k"].dtype == torch.bfloat16
    ROPE.validate(inputs)


def test_make_inputs_applies_the_case_scaling():
    case = next(c for c in ROPE.test_cases if c["scaling"] == "llama3")
    inputs = ROPE.make_inputs(case, torch.float32, "cpu", 0)
    assert torch.equal(inputs["inv_freq"], rope_inv_freq(case["head_dim"], LLAMA3, case["seq_len"]))
    assert inputs["style"] == case["style"]


def test_test_cases_cover_styles_scalings_head_dims_and_odd_token_counts():
    cases = ROPE.test_cases
    assert {c["style"] for c in cases} == {"half", "interleaved"}
    assert {c["scaling"] for c in cases} == {"none", "linear", "dynamic", "llama3", "yarn"}
    assert {64, 80} <= {c["head_dim"] for c in cases}
    assert {1, 37} <= {c["tokens"] for c in cases}
    assert any(c["heads"] != c["kv_heads"] for c in cases)


def test_cases_for_cover_prefill_token_counts_and_decode_batches():
    model = ModelConfig("llama3-8b", vocab=128256, hidden=4096, intermediate=14336, layers=32, heads=32,
                        kv_heads=8, head_dim=128, rope=LLAMA3)
    workload = Workload(batch=(1, 8), prompt_len=(128, 1024), decode_steps=16)
    cases = ROPE.cases_for(model, workload)
    prefill = [c for c in cases if c["phase"] == "prefill"]
    decode = [c for c in cases if c["phase"] == "decode"]
    assert [c["tokens"] for c in prefill] == workload.prefill_tokens
    assert all(c["tokens"] % c["seq_len"] == 0 for c in prefill)
    assert [c["tokens"] for c in decode] == [1, 8] and all(c["seq_len"] == 1024 + 16 for c in decode)
    assert all((c["heads"], c["kv_heads"], c["head_dim"]) == (32, 8, 128) for c in cases)
    assert all(c["scaling"] == "llama3" and c["factor"] == 8.0 and c["original_max_position"] == 8192 for c in cases)
    decode_inputs = ROPE.make_inputs(decode[0], torch.float32, "cpu", 0)
    assert 0 <= decode_inputs["positions"].min() and decode_inputs["positions"].max() < decode[0]["seq_len"]


def test_flops_and_bytes_count_q_and_k():
    case = Case("rope", tokens=10, heads=4, kv_heads=2, head_dim=64)
    assert ROPE.flops(case) == 3 * 10 * 6 * 64
    assert ROPE.bytes(case, torch.bfloat16) == 2 * 10 * 6 * 64 * 2 + 8 * 10 + 4 * 32


@pytest.mark.parametrize(("change", "message"), [
    ({"positions": torch.arange(7, dtype=torch.int32)}, "positions has dtype int32"),
    ({"positions": torch.arange(6)}, "positions has shape"),
    ({"k": torch.randn(7, 2, 32)}, "k has shape"),
    ({"k": torch.randn(7, 2, 64, dtype=torch.float64)}, "k has dtype float64"),
    ({"q": torch.randn(7, 4, 63), "k": torch.randn(7, 2, 63)}, "head_dim must be even"),
    ({"inv_freq": torch.ones(32, dtype=torch.float64)}, "inv_freq has dtype float64"),
    ({"style": "halves"}, "Did you mean 'half'"),
])
def test_bad_inputs_raise_kbench_error(change, message):
    inputs = rope_inputs() | change
    with pytest.raises(KbenchError, match=message):
        ROPE.validate(inputs)


@pytest.mark.parametrize(("head_dim", "rope", "message"), [
    (63, RopeConfig(), "even head_dim"),
    (64, RopeConfig(scaling="llama-3"), "Did you mean 'llama3'"),
    (64, RopeConfig(style="interleave"), "Did you mean 'interleaved'"),
    (64, RopeConfig(scaling="linear", factor=0.0), "factor > 0"),
    (64, RopeConfig(scaling="llama3", factor=8.0, low_freq_factor=4.0, high_freq_factor=1.0), "high_freq_factor"),
])
def test_bad_rope_settings_raise_kbench_error(head_dim, rope, message):
    with pytest.raises(KbenchError, match=message):
        rope_inv_freq(head_dim, rope, 4096)


def _hf_rotary(rope_parameters: dict, head_dim: int = 64, max_positions: int = 32):
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = transformers.LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim,
                                      max_position_embeddings=max_positions, rope_parameters=rope_parameters)
    return LlamaRotaryEmbedding(config)


@pytest.mark.parametrize("params", [
    {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 8},
    {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 8.0, "beta_fast": 16.0, "beta_slow": 2.0,
     "truncate": False, "attention_factor": 1.25, "original_max_position_embeddings": 16},
], ids=["yarn", "yarn-untruncated"])
def test_yarn_frequencies_and_attention_factor_are_transformers(params):
    from kbench.ops.rope import rope_attention_factor

    hf = _hf_rotary(dict(params))
    rope = RopeConfig(theta=params["rope_theta"], scaling="yarn", factor=params["factor"],
                      original_max_position=params["original_max_position_embeddings"],
                      beta_fast=params.get("beta_fast", 32.0), beta_slow=params.get("beta_slow", 1.0),
                      truncate=params.get("truncate", True), attention_factor=params.get("attention_factor"))
    torch.testing.assert_close(rope_inv_freq(64, rope, 1), hf.inv_freq, rtol=2e-7, atol=0)
    assert rope_attention_factor(rope) == pytest.approx(hf.attention_scaling)


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_dynamic_frequencies_follow_transformers_forward_by_forward(phase):
    """transformers grows the NTK base per forward from max(position) + 1, never shrinking it
    within a sequence; kbench's device-side formula gives the same inv_freq at every length."""
    from kbench.ops.rope import dynamic_inv_freq

    hf = _hf_rotary({"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0})
    rope = RopeConfig(scaling="dynamic", factor=4.0, original_max_position=32)
    x = torch.zeros(1, 1, 64)
    lengths = [20, 32, 33, 57, 58, 59, 100] if phase == "decode" else [10, 40, 90]
    grown = torch.zeros((), dtype=torch.int64)
    for length in lengths:
        positions = torch.arange(length)[None] if phase == "prefill" else torch.tensor([[length - 1]])
        hf(x, positions)
        torch.maximum(grown, positions.max() + 1, out=grown)
        torch.testing.assert_close(dynamic_inv_freq(64, rope, grown), hf.inv_freq, rtol=0, atol=0)
