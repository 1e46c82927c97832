"""The steps of `kbench run` that carry judgement: the pipeline check, roofline bytes, FAIL marking."""

from pathlib import Path

import pytest
import torch

from kbench.bench.pipeline_check import teacher_forced_check
from kbench.commands.run import mark_pipeline_failures
from kbench.model import load_weights
from kbench.model.arithmetic import decode_bytes_per_step
from kbench.plan import resolve_plan
from kbench.plugins import get_registry
from kbench.results.rows import ROW_TYPES
from kbench.spec import Overrides, load_spec

TINY = Path(__file__).resolve().parent.parent / "model_specs" / "tiny-llama.yaml"


class ScriptedModel:
    """prefill/decode_step return the next [batch, vocab] logits of a script."""

    def __init__(self, logits: list[list[list[float]]]):
        self.logits = [torch.tensor(step) for step in logits]
        self.fed: list[torch.Tensor] = []

    def prefill(self, prompts):
        self.step = 0
        return self.logits[0]

    def decode_step(self, tokens):
        self.fed.append(tokens)
        self.step += 1
        return self.logits[self.step]


REFERENCE_SCRIPT = [[[1.0, 0.5, 0.0]], [[0.0, 2.0, 1.0]], [[0.2, 0.1, 3.0]]]


def test_identical_pipelines_agree_on_every_token():
    pipeline, reference = ScriptedModel(REFERENCE_SCRIPT), ScriptedModel(REFERENCE_SCRIPT)
    result = teacher_forced_check(pipeline, reference, None, prompts=None, steps=2, dtype=torch.float32)
    assert result["status"] == "PASS" and result["max_abs_err"] == 0.0
    assert result["token_agreement"] == 1.0 and result["tokens_compared"] == 3


def test_both_pipelines_are_fed_the_reference_greedy_tokens():
    wrong = [[[0.0, 0.0, 9.0]]] * 3  # would pick token 2 every step
    pipeline, reference = ScriptedModel(wrong), ScriptedModel(REFERENCE_SCRIPT)
    teacher_forced_check(pipeline, reference, None, prompts=None, steps=2, dtype=torch.float32)
    assert [int(t) for t in pipeline.fed] == [0, 1] == [int(t) for t in reference.fed]


def test_near_tie_flip_is_not_an_error_but_lowers_agreement():
    reference_script = [[[1.0, 0.99995, 0.0]]]
    flipped = [[[0.99995, 1.0, 0.0]]]
    result = teacher_forced_check(ScriptedModel(flipped), ScriptedModel(reference_script), None, None, 0, torch.float32)
    assert result["status"] == "PASS"  # |error| 5e-5 of the largest logit, allowed 1e-3
    assert result["token_agreement"] == 0.0 and result["max_abs_err"] == pytest.approx(5e-5, rel=1e-3)


def test_wrong_logits_fail_with_the_relative_error():
    wrong = [[[1.0, 0.5, 0.0]], [[0.0, 2.0, 1.5]], [[0.2, 0.1, 3.0]]]  # 0.5 off where the top logit is 2
    result = teacher_forced_check(ScriptedModel(wrong), ScriptedModel(REFERENCE_SCRIPT), None, None, 2, torch.float32)
    assert result["status"] == "FAIL"
    assert result["max_abs_err"] == pytest.approx(0.5) and result["max_rel_err"] == pytest.approx(0.25)


ORACLE = [[[10.0, 2.0, 0.0]]]  # float32 oracle; largest logit 10


@pytest.mark.parametrize(("pipeline_logits", "status"), [
    ([[[10.0, 3.5, 0.0]]], "PASS"),   # 0.15 of the largest logit: within 2x the reference's 0.1
    ([[[10.0, 5.0, 0.0]]], "FAIL"),   # 0.3: further from the oracle than rounding explains
])
def test_16_bit_pipeline_is_judged_against_the_reference_own_error(pipeline_logits, status):
    reference_16 = ScriptedModel([[[10.0, 3.0, 0.0]]])  # 0.1 of the largest logit off the oracle
    result = teacher_forced_check(ScriptedModel(pipeline_logits), ScriptedModel(ORACLE), reference_16, None, 0,
                                  torch.bfloat16)
    assert result["status"] == status
    assert result["reference_rel_err"] == pytest.approx(0.1) and result["allowed_rel_err"] == pytest.approx(0.2)


def test_16_bit_check_has_a_floor_when_the_reference_is_exact():
    result = teacher_forced_check(ScriptedModel([[[10.0, 2.03, 0.0]]]), ScriptedModel(ORACLE), ScriptedModel(ORACLE),
                                  None, 0, torch.bfloat16)
    assert result["status"] == "PASS" and result["allowed_rel_err"] == pytest.approx(2.0**-8)


def test_greedy_flip_beyond_the_allowance_fails_even_with_small_logit_error():
    oracle = [[[1.0, 0.994, 0.0, 0.0]]]
    flipped = [[[0.997, 0.9975, 0.0, 0.0]]]  # errors of 0.35% (allowed 0.39%), but token 1 wins a margin of 0.6%
    result = teacher_forced_check(ScriptedModel(flipped), ScriptedModel(oracle), ScriptedModel(oracle), None, 0,
                                  torch.bfloat16)
    assert result["max_rel_err"] < result["allowed_rel_err"]
    assert result["status"] == "FAIL" and "1 greedy tokens differ" in result["note"]


def test_non_finite_logits_fail():
    nan = [[[float("nan"), 0.0, 0.0]]]
    result = teacher_forced_check(ScriptedModel(nan), ScriptedModel([[[1.0, 0.0, 0.0]]]), None, None, 0, torch.float32)
    assert result["status"] == "FAIL" and "non-finite" in result["note"]


def test_decode_bytes_count_weights_but_the_embedding_table_and_the_mean_kv_read():
    spec = load_spec(TINY, Overrides(decode_steps=2))
    weights = load_weights(spec)
    model = spec.model  # vocab 512, hidden 128, intermediate 352, 2 layers, 4 heads, 2 kv heads, head_dim 32
    assert (model.vocab, model.hidden, model.intermediate, model.layers, model.kv_heads, model.head_dim) == (
        512, 128, 352, 2, 2, 32)
    per_layer = 128 + (4 * 32 + 2 * 2 * 32) * 128 + 128 * 128 + 128 + 2 * 352 * 128 + 128 * 352
    weight_bytes = (2 * per_layer + 128 + 512 * 128) * 4  # layers, final norm, lm_head in float32
    kv_bytes = 2 * 2 * 2 * 32 * 4 * 2 * (8 + 1 + 0.5)  # K+V, layers, kv heads, head_dim, fp32, batch 2, mean context
    assert decode_bytes_per_step(spec, weights, batch=2, prompt_len=8) == weight_bytes + kv_bytes


def _row(kind, op, backend, **fields):
    return ROW_TYPES[kind](op=op, backend=backend, **fields)


def test_failing_chosen_backend_fails_the_pipeline_rows_but_not_baselines():
    spec = load_spec(TINY, Overrides(backends={"norm": "triton"}))
    rows = [
        _row("op", "rmsnorm", "triton", status="FAIL"),
        _row("op", "swiglu", "triton", status="FAIL"),
        _row("prefill", "prefill", "pipeline", status="PASS"),
        _row("decode", "decode", "hf", status="PASS"),
    ]
    marked = mark_pipeline_failures(resolve_plan(spec, get_registry(), check_here=False), rows)
    assert [r.status for r in marked] == ["FAIL", "FAIL", "FAIL", "PASS"]
    assert "rmsnorm/triton" in marked[2].note


def test_a_failing_op_outside_the_pipeline_leaves_it_passing():
    spec = load_spec(TINY, Overrides(backends={"ffn": "triton"}))
    rows = [_row("op", "swiglu", "triton", status="FAIL"), _row("prefill", "prefill", "pipeline", status="PASS")]
    assert mark_pipeline_failures(resolve_plan(spec, get_registry(), check_here=False), rows)[1].status == "PASS"


def test_prefill_flops_count_matmuls_causal_attention_and_the_last_position_lm_head():
    from kbench.model.arithmetic import prefill_flops

    spec = load_spec(TINY)
    matmul_weights = 128 * 128 + 2 * (64 * 128) + 128 * 128 + 2 * 352 * 128 + 352 * 128  # q, k, v, o, gate/up, down
    tokens = 2 * 8
    attention = 2 * 4 * (8 * 9 // 2) * (2 * 32 + 2 * 32)  # sequences, heads, causal pairs, QK^T + PV per pair
    expected = 2 * (2 * matmul_weights * tokens + attention) + 2 * 2 * 512 * 128
    assert prefill_flops(spec, batch=2, prompt_len=8) == expected
