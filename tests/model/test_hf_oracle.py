"""The pipeline (reference backends, fp32) against Hugging Face transformers' LlamaForCausalLM:
an oracle nobody here wrote. Also checks kbench/model/hf_baseline.py against the pipeline."""

import pytest
import torch
from tiny_models import TINY_MODEL, build_pipeline, save_hf_checkpoint, write_spec

from kbench.model import load_weights, random_prompts
from kbench.spec import load_spec

transformers = pytest.importorskip("transformers")

TOL = {"atol": 2e-5, "rtol": 1e-4}
ROPES = {
    "default": {},
    "llama3": {"rope_theta": 500000.0, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8}},
    "linear": {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
}


def _hf_greedy(hf, prompt: torch.Tensor, steps: int):
    """Logits after the prompt and after each greedy token, from transformers alone."""
    with torch.no_grad():
        out = hf(input_ids=prompt[None], use_cache=True)
        logits, cache = [out.logits[0, -1]], out.past_key_values
        for _ in range(steps):
            token = logits[-1].argmax()[None, None]
            out = hf(input_ids=token, past_key_values=cache, use_cache=True)
            logits.append(out.logits[0, -1])
            cache = out.past_key_values
    return torch.stack(logits)


@pytest.mark.parametrize("rope", list(ROPES))
def test_pipeline_logits_match_transformers(tmp_path, registry, rope):
    hf = save_hf_checkpoint(tmp_path / "ckpt", shard=True, **ROPES[rope]).eval()
    spec = load_spec(write_spec(tmp_path, model=None, weights={"kind": "hf", "path": "ckpt"},
                                workload={"batch": [3], "prompt_len": [12], "decode_steps": 8}))
    pipeline = build_pipeline(spec, registry, load_weights(spec))
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, TINY_MODEL["vocab"], (n,), generator=g) for n in (6, 12, 1)]
    steps = 5
    expected = torch.stack([_hf_greedy(hf, p, steps) for p in prompts], dim=1)  # [steps + 1, batch, vocab]

    logits = pipeline.prefill(prompts)
    torch.testing.assert_close(logits, expected[0], **TOL)
    for step in range(1, steps + 1):
        token = logits.argmax(-1)
        assert torch.equal(token, expected[step - 1].argmax(-1)), f"greedy tokens differ at step {step}"
        logits = pipeline.decode_step(token)
        torch.testing.assert_close(logits, expected[step], **TOL)


@pytest.mark.parametrize(("style", "tie"), [("half", False), ("interleaved", True)])
def test_hf_baseline_matches_the_pipeline(tmp_path, registry, style, tie):
    model = dict(TINY_MODEL, rope={"style": style}, tie_embeddings=tie)
    spec = load_spec(write_spec(tmp_path, model=model, workload={"batch": [2], "prompt_len": [7], "decode_steps": 4}))
    weights = load_weights(spec)
    from kbench.model import HFBaseline

    baseline = HFBaseline(spec, weights)
    assert baseline.attention == "sdpa"
    pipeline = build_pipeline(spec, registry, weights)
    prompts = random_prompts(spec.model.vocab, 2, 7, seed=4)
    for run in range(2):  # the second run reuses the reset static cache
        ours, theirs = pipeline.prefill(prompts), baseline.prefill(prompts)
        torch.testing.assert_close(theirs, ours, **TOL)
        for _ in range(4):
            token = ours.argmax(-1)
            ours, theirs = pipeline.decode_step(token), baseline.decode_step(token)
            torch.testing.assert_close(theirs, ours, **TOL, msg=lambda m, r=run: f"run {r}: {m}")
