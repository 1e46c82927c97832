"""The reference pipeline on checkpoints transformers builds (every rope type in both config
forms, biases, a free head_dim, .bin and Meta's layout) against transformers' own
LlamaForCausalLM generating greedily: logits within float32 rounding and the same tokens,
with prompts longer than max_position_embeddings."""

import json

import pytest
import torch
from tiny_models import TINY_MODEL, build_pipeline, save_hf_checkpoint, write_spec

from kbench.errors import KbenchError
from kbench.model import load_weights
from kbench.spec import load_spec

transformers = pytest.importorskip("transformers")

TOL = {"atol": 3e-5, "rtol": 1e-4}
MAX_POSITIONS = 24  # max_position_embeddings of these checkpoints; prompts are longer
PROMPT_LEN, STEPS = 30, 16
ROPES = {
    "default": {},
    "linear": {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    # transformers ignores original_max_position_embeddings for dynamic: so must kbench
    "dynamic": {"rope_scaling": {"rope_type": "dynamic", "factor": 4.0, "original_max_position_embeddings": 8}},
    "llama3": {"rope_theta": 500000.0, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8}},
    "yarn": {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 6}},
    "yarn-attention-factor": {"rope_scaling": {"rope_type": "yarn", "factor": 3.0, "beta_fast": 16.0,
                                               "beta_slow": 2.0, "attention_factor": 1.3,
                                               "original_max_position_embeddings": 8}},
}


def hf_greedy(hf, prompts: torch.Tensor, steps: int) -> torch.Tensor:
    """Logits ``[steps + 1, batch, vocab]`` after the prompts and each greedy token, from
    transformers alone (its own cache and per-forward rope)."""
    with torch.no_grad():
        out = hf(input_ids=prompts, use_cache=True)
        logits, cache = [out.logits[:, -1]], out.past_key_values
        for _ in range(steps):
            out = hf(input_ids=logits[-1].argmax(-1)[:, None], past_key_values=cache, use_cache=True)
            logits.append(out.logits[:, -1])
            cache = out.past_key_values
    return torch.stack(logits)


def assert_matches_transformers(pipeline, hf, vocab: int, seed: int = 0):
    prompts = torch.randint(0, vocab, (2, PROMPT_LEN), generator=torch.Generator().manual_seed(seed))
    expected = hf_greedy(hf, prompts, STEPS)
    logits = pipeline.prefill(list(prompts))
    for step in range(STEPS + 1):
        torch.testing.assert_close(logits, expected[step], **TOL, msg=lambda m, s=step: f"step {s}: {m}")
        token = logits.argmax(-1)
        assert torch.equal(token, expected[step].argmax(-1)), f"greedy tokens differ at step {step}"
        if step < STEPS:
            logits = pipeline.decode_step(token)


def pipeline_on(tmp_path, registry, kind="hf"):
    spec = load_spec(write_spec(tmp_path, model=None, weights={"kind": kind, "path": "ckpt"},
                                workload={"batch": [2], "prompt_len": [PROMPT_LEN], "decode_steps": STEPS}))
    return build_pipeline(spec, registry, load_weights(spec)), spec


@pytest.mark.parametrize("legacy", [False, True], ids=["rope_parameters", "rope_scaling"])
@pytest.mark.parametrize("rope", list(ROPES))
def test_every_rope_type_matches_transformers_past_max_positions(tmp_path, registry, rope, legacy):
    hf = save_hf_checkpoint(tmp_path / "ckpt", shard=False, legacy_rope=legacy,
                            max_position_embeddings=MAX_POSITIONS, **ROPES[rope])
    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert ("rope_scaling" in saved) == legacy
    pipeline, spec = pipeline_on(tmp_path, registry)
    assert spec.model.max_seq_len == MAX_POSITIONS < PROMPT_LEN
    assert_matches_transformers(pipeline, hf, TINY_MODEL["vocab"])


@pytest.mark.parametrize(("attention_bias", "mlp_bias"), [(True, False), (False, True), (True, True)])
def test_biases_match_transformers(tmp_path, registry, attention_bias, mlp_bias):
    hf = save_hf_checkpoint(tmp_path / "ckpt", shard=True, attention_bias=attention_bias, mlp_bias=mlp_bias,
                            max_position_embeddings=MAX_POSITIONS)
    pipeline, spec = pipeline_on(tmp_path, registry)
    assert (spec.model.attention_bias, spec.model.mlp_bias) == (attention_bias, mlp_bias)
    assert_matches_transformers(pipeline, hf, TINY_MODEL["vocab"])


def test_attention_biases_go_through_the_linear_contract(tmp_path):
    """The q/k/v and o biases reach the ``linear`` backend: one that drops them fails its check
    at the model's own cases, and one that refuses them is never handed a biased call."""
    import torch.nn.functional as F

    from kbench.bench.check import check_implementation
    from kbench.errors import KbenchError
    from kbench.plugins import build_registry
    from kbench.registry import Implementation

    save_hf_checkpoint(tmp_path / "ckpt", shard=False, attention_bias=True, max_position_embeddings=MAX_POSITIONS)
    registry = build_registry()
    registry.add_implementation(Implementation(op="linear", backend="dropping", plugin="test",
                                               fn=lambda x, weight, bias=None: F.linear(x, weight)))
    registry.add_implementation(Implementation(op="linear", backend="refusing", plugin="test",
                                               fn=lambda x, weight: F.linear(x, weight),
                                               supports=lambda case, dtype, device: "no bias" if case.get("bias") else None))
    spec = load_spec(write_spec(tmp_path, model=None, weights={"kind": "hf", "path": "ckpt"}))
    cases = registry.ops["linear"].cases_for(spec.model, spec.workload)
    biased = [c for c in cases if c.get("bias")]
    assert {c["proj"] for c in biased} == {"qkv", "o"} and all(not c.get("bias") for c in cases if c["proj"] == "lm_head")
    check = check_implementation(registry, "linear", "dropping", biased[0], torch.float32, "cpu")
    assert not check.ok
    with pytest.raises(KbenchError, match="no bias"):
        build_pipeline(spec, registry, load_weights(spec), backends={"linear": "refusing"})


def test_head_dim_independent_of_hidden_matches_transformers(tmp_path, registry):
    hf = save_hf_checkpoint(tmp_path / "ckpt", shard=False, head_dim=24, attention_bias=True,
                            max_position_embeddings=MAX_POSITIONS,
                            rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    pipeline, spec = pipeline_on(tmp_path, registry)
    assert spec.model.heads * spec.model.head_dim != spec.model.hidden
    assert_matches_transformers(pipeline, hf, TINY_MODEL["vocab"])


@pytest.mark.parametrize("shard", [False, True])
def test_pytorch_model_bin_checkpoints_match_transformers(tmp_path, registry, shard):
    hf = save_hf_checkpoint(tmp_path / "ckpt", shard=shard, safetensors=False, tie_word_embeddings=shard,
                            max_position_embeddings=MAX_POSITIONS)
    assert not list((tmp_path / "ckpt").glob("*.safetensors"))
    pipeline, _ = pipeline_on(tmp_path, registry)
    assert_matches_transformers(pipeline, hf, TINY_MODEL["vocab"])


def test_a_tensor_that_does_not_match_the_config_is_named(tmp_path):
    save_hf_checkpoint(tmp_path / "ckpt", shard=False)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config | {"intermediate_size": 72}))
    spec = load_spec(write_spec(tmp_path, model=None, weights={"kind": "hf", "path": "ckpt"}))
    with pytest.raises(KbenchError, match=r"model.layers.0.mlp.gate_proj.weight has shape \[80, 64\].*\[72, 64\]"):
        load_weights(spec)


def test_generate_makes_room_and_a_long_prompt_grows_the_cache(tmp_path, registry):
    spec = load_spec(write_spec(tmp_path, workload={"batch": [1], "prompt_len": [4], "decode_steps": 2}))
    pipeline = build_pipeline(spec, registry, load_weights(spec))
    pipeline.reset(1, 8)
    prompt = torch.arange(70) % TINY_MODEL["vocab"]  # past max_seq_len 64 and the cache of 8
    tokens = pipeline.generate([prompt], steps=20)
    assert tokens.shape == (1, 20) and pipeline.cache.capacity >= 89
    pipeline.reset(1, 8)
    pipeline.prefill([prompt[:8]])
    with pytest.raises(KbenchError, match="decode_step past the KV cache: a sequence already holds 8 tokens"):
        pipeline.decode_step(torch.tensor([1]))


def half_to_interleaved(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo HF's q/k row permutation (Meta pairs (2i, 2i+1) from HF's (i, i + head_dim/2))."""
    rows, hidden = w.shape
    return w.view(heads, 2, rows // heads // 2, hidden).transpose(1, 2).reshape(rows, hidden)


def save_as_meta(hf, folder, ranks: int) -> None:
    """Meta's layout from a HF LlamaForCausalLM, split over ``ranks`` as fairscale's layers do:
    column-parallel by rows, row-parallel by columns, the embedding by the model dimension."""
    c = hf.config
    state = hf.state_dict()
    meta = {"tok_embeddings.weight": (state["model.embed_tokens.weight"], 1), "norm.weight": (state["model.norm.weight"], None),
            "output.weight": (state["lm_head.weight"], 0)}
    names = {"self_attn.o_proj": ("attention.wo", 1), "mlp.gate_proj": ("feed_forward.w1", 0),
             "mlp.down_proj": ("feed_forward.w2", 1), "mlp.up_proj": ("feed_forward.w3", 0),
             "input_layernorm": ("attention_norm", None), "post_attention_layernorm": ("ffn_norm", None)}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        meta[f"layers.{i}.attention.wq.weight"] = (half_to_interleaved(state[p + "self_attn.q_proj.weight"],
                                                                       c.num_attention_heads), 0)
        meta[f"layers.{i}.attention.wk.weight"] = (half_to_interleaved(state[p + "self_attn.k_proj.weight"],
                                                                       c.num_key_value_heads), 0)
        meta[f"layers.{i}.attention.wv.weight"] = (state[p + "self_attn.v_proj.weight"], 0)
        for hf_name, (meta_name, dim) in names.items():
            meta[f"layers.{i}.{meta_name}.weight"] = (state[p + hf_name + ".weight"], dim)
    folder.mkdir()
    for rank in range(ranks):
        shard = {name: (t if dim is None else t.chunk(ranks, dim=dim)[rank]).clone() for name, (t, dim) in meta.items()}
        torch.save(shard, folder / f"consolidated.{rank:02d}.pth")
    # FeedForward: int(2 * 4 * 64 / 3) = 170, * 0.47 = 79, rounded up to a multiple of 16 = 80
    (folder / "params.json").write_text(json.dumps({
        "dim": c.hidden_size, "n_layers": c.num_hidden_layers, "n_heads": c.num_attention_heads,
        "n_kv_heads": c.num_key_value_heads, "vocab_size": -1, "multiple_of": 16, "ffn_dim_multiplier": 0.47,
        "norm_eps": c.rms_norm_eps, "rope_theta": c.rope_parameters["rope_theta"]}))


@pytest.mark.parametrize("ranks", [1, 2])
def test_meta_consolidated_shards_give_the_logits_of_the_hf_checkpoint(tmp_path, registry, ranks):
    hf = save_hf_checkpoint(tmp_path / "hf", shard=False, max_position_embeddings=MAX_POSITIONS)
    save_as_meta(hf, tmp_path / "ckpt", ranks)
    pipeline, spec = pipeline_on(tmp_path, registry, kind="meta")
    assert spec.model.rope.style == "interleaved"
    assert (spec.model.intermediate, spec.model.vocab) == (TINY_MODEL["intermediate"], TINY_MODEL["vocab"])
    assert_matches_transformers(pipeline, hf, TINY_MODEL["vocab"])
