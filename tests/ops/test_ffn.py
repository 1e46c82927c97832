import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kbench.config import ModelConfig, Workload
from kbench.errors import KbenchError
from kbench.ops.base import Case
from kbench.ops.ffn import FFN, SWIGLU, ffn_reference, swiglu_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def swiglu_float64(gate, up):
    gate64 = gate.double()
    return gate64 * torch.sigmoid(gate64) * up.double()


def ffn_float64(x, w_gate_up, w_down, b_gate_up=None, b_down=None):
    """Three separate matmuls as LlamaMLP writes them: gate_proj, up_proj, down_proj (+ biases)."""
    intermediate = w_down.shape[1]
    w_gate, w_up = w_gate_up[:intermediate].double(), w_gate_up[intermediate:].double()
    x64 = x.double()
    gate, up = x64 @ w_gate.T, x64 @ w_up.T
    if b_gate_up is not None:
        gate, up = gate + b_gate_up[:intermediate].double(), up + b_gate_up[intermediate:].double()
    out = swiglu_float64(gate, up) @ w_down.double().T
    return out if b_down is None else out + b_down.double()


def assert_within(out, expected, tolerance):
    torch.testing.assert_close(out.double(), expected, atol=tolerance.atol, rtol=tolerance.rtol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", SWIGLU.test_cases, ids=lambda case: case.label)
def test_swiglu_matches_float64_silu_times_up(dtype, case):
    inputs = SWIGLU.make_inputs(case, dtype, "cpu", 0)
    out = swiglu_reference(**inputs)
    assert out.dtype == dtype and out.shape == inputs["gate"].shape
    assert_within(out, swiglu_float64(**inputs), SWIGLU.tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [*FFN.test_cases, Case("ffn", tokens=5, hidden=512, intermediate=1376)],
                         ids=lambda case: case.label)
def test_ffn_matches_float64_three_matmul_mlp(dtype, case):
    inputs = FFN.make_inputs(case, dtype, "cpu", 0)
    out = ffn_reference(**inputs)
    assert out.dtype == dtype and out.shape == (case["tokens"], case["hidden"])
    assert_within(out, ffn_float64(**inputs), FFN.tolerance(dtype))


def test_ffn_outputs_are_order_one_at_model_sizes():
    inputs = FFN.make_inputs(Case("ffn", tokens=8, hidden=1024, intermediate=2816), torch.float32, "cpu", 0)
    std = ffn_reference(**inputs).std().item()
    assert 0.2 < std < 2.0


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ffn_equals_hugging_face_llama_mlp_with_the_same_weights(dtype, bias):
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaMLP

    case = Case("ffn", tokens=9, hidden=128, intermediate=344, **({"bias": True} if bias else {}))
    inputs = FFN.make_inputs(case, dtype, "cpu", 0)
    config = transformers.LlamaConfig(hidden_size=128, intermediate_size=344, hidden_act="silu", mlp_bias=bias)
    mlp = LlamaMLP(config).to(dtype)
    with torch.no_grad():
        mlp.gate_proj.weight.copy_(inputs["w_gate_up"][:344])
        mlp.up_proj.weight.copy_(inputs["w_gate_up"][344:])
        mlp.down_proj.weight.copy_(inputs["w_down"])
        if bias:
            mlp.gate_proj.bias.copy_(inputs["b_gate_up"][:344])
            mlp.up_proj.bias.copy_(inputs["b_gate_up"][344:])
            mlp.down_proj.bias.copy_(inputs["b_down"])
        expected = mlp(inputs["x"])
    # one fused gate/up GEMM may sum in another order than two separate ones
    tolerance = FFN.tolerance(dtype)
    torch.testing.assert_close(ffn_reference(**inputs), expected, atol=tolerance.atol, rtol=tolerance.rtol)


def test_ffn_splits_w_gate_up_into_gate_rows_then_up_rows():
    inputs = FFN.make_inputs(Case("ffn", tokens=3, hidden=16, intermediate=24), torch.float32, "cpu", 0)
    swapped = torch.cat((inputs["w_gate_up"][24:], inputs["w_gate_up"][:24]))
    assert not torch.allclose(ffn_reference(inputs["x"], swapped, inputs["w_down"]), ffn_reference(**inputs))


@given(tokens=st.integers(1, 16), hidden=st.integers(1, 12).map(lambda n: 8 * n), intermediate=st.integers(1, 200),
       seed=st.integers(0, 2**16))
@settings(max_examples=30, deadline=None)
def test_ffn_matches_float64_for_any_small_size(tokens, hidden, intermediate, seed):
    case = Case("ffn", tokens=tokens, hidden=hidden, intermediate=intermediate)
    inputs = FFN.make_inputs(case, torch.float32, "cpu", seed)
    FFN.validate(inputs)
    assert_within(ffn_reference(**inputs), ffn_float64(**inputs), FFN.tolerance(torch.float32))


@given(tokens=st.integers(1, 40), intermediate=st.integers(1, 300), seed=st.integers(0, 2**16))
@settings(max_examples=30, deadline=None)
def test_swiglu_matches_float64_for_any_small_size(tokens, intermediate, seed):
    inputs = SWIGLU.make_inputs(Case("swiglu", tokens=tokens, intermediate=intermediate), torch.bfloat16, "cpu", seed)
    SWIGLU.validate(inputs)
    assert_within(swiglu_reference(**inputs), swiglu_float64(**inputs), SWIGLU.tolerance(torch.bfloat16))


def test_cases_for_cover_prefill_token_counts_and_decode_batches():
    model = ModelConfig("llama2-7b", vocab=32000, hidden=4096, intermediate=11008, layers=32, heads=32,
                        kv_heads=32, head_dim=128)
    workload = Workload(batch=(1, 4), prompt_len=(128, 512))
    expected_tokens = [1, 4, 128, 512, 2048]
    ffn_cases = FFN.cases_for(model, workload)
    assert [c["tokens"] for c in ffn_cases] == expected_tokens
    assert all((c.op, c["hidden"], c["intermediate"]) == ("ffn", 4096, 11008) for c in ffn_cases)
    swiglu_cases = SWIGLU.cases_for(model, workload)
    assert [c["tokens"] for c in swiglu_cases] == expected_tokens
    assert all((c.op, c["intermediate"]) == ("swiglu", 11008) for c in swiglu_cases)


def test_flops_and_bytes():
    case = Case("ffn", tokens=2, hidden=8, intermediate=16)
    assert FFN.flops(case) == 2 * 2 * 8 * 3 * 16 + 4 * 2 * 16
    assert FFN.bytes(case, torch.bfloat16) == (3 * 8 * 16 + 2 * 2 * 8) * 2
    assert SWIGLU.bytes(Case("swiglu", tokens=2, intermediate=16), torch.float32) == 3 * 2 * 16 * 4


def ffn_inputs():
    return FFN.make_inputs(Case("ffn", tokens=3, hidden=16, intermediate=24), torch.float32, "cpu", 0)


@pytest.mark.parametrize(("change", "message"), [
    ({"x": torch.randn(3, 16, dtype=torch.float64)}, "x has dtype float64"),
    ({"x": torch.randn(3, 17)}, "w_gate_up has shape"),
    ({"w_gate_up": torch.randn(47, 16)}, "rows"),
    ({"w_down": torch.randn(24, 16)}, "w_down has shape"),
    ({"w_down": torch.randn(16, 24, dtype=torch.bfloat16)}, "w_down has dtype bfloat16"),
    ({"x": torch.randn(1, 3, 16)}, "x must have 2 dimensions"),
])
def test_ffn_bad_inputs_raise_kbench_error(change, message):
    with pytest.raises(KbenchError, match=message):
        FFN.validate(ffn_inputs() | change)


@pytest.mark.parametrize(("gate", "up", "message"), [
    (torch.randn(3, 8), torch.randn(3, 9), "up has shape"),
    (torch.randn(3, 8), torch.randn(3, 8, dtype=torch.float16), "up has dtype float16"),
    (torch.randint(0, 3, (3, 8)), torch.randn(3, 8), "gate has dtype int64"),
])
def test_swiglu_bad_inputs_raise_kbench_error(gate, up, message):
    with pytest.raises(KbenchError, match=message):
        SWIGLU.validate({"gate": gate, "up": up})
