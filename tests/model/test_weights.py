"""kbench/model/weights.py: seeded random init and the Hugging Face checkpoint loader."""

import json

import pytest
import torch
from tiny_models import TINY_MODEL, save_hf_checkpoint, write_spec

from kbench.errors import KbenchError
from kbench.model import load_weights
from kbench.spec import Overrides, load_spec


def test_random_weights_are_deterministic_per_seed(tmp_path):
    one = load_weights(load_spec(write_spec(tmp_path, "a.yaml")))
    again = load_weights(load_spec(write_spec(tmp_path, "b.yaml")))
    other = load_weights(load_spec(write_spec(tmp_path, "c.yaml", weights={"kind": "random", "seed": 1})))
    for a, b in zip(one.tensors(), again.tensors(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(one.layers[0].wqkv, other.layers[0].wqkv)


def test_random_weights_follow_hf_init(tmp_path):
    weights = load_weights(load_spec(write_spec(tmp_path)))
    m = TINY_MODEL
    layer = weights.layers[0]
    assert layer.wqkv.shape == ((m["heads"] + 2 * m["kv_heads"]) * m["head_dim"], m["hidden"])
    assert layer.w_gate_up.shape == (2 * m["intermediate"], m["hidden"])
    assert layer.w_down.shape == (m["hidden"], m["intermediate"])
    assert weights.embedding.shape == weights.lm_head.shape == (m["vocab"], m["hidden"])
    # norm weights around one, not HF's ones: a kernel that ignores the weight must show
    for norm in (layer.attn_norm, layer.ffn_norm, weights.norm):
        assert abs(norm.mean().item() - 1.0) < 0.05 and 0.05 < norm.std().item() < 0.15
    linear = torch.cat([t.flatten() for t in (layer.wqkv, layer.wo, layer.w_gate_up, weights.embedding)])
    assert abs(linear.std().item() - 0.02) < 0.002 and abs(linear.mean().item()) < 0.002
    assert weights.nbytes == sum(t.numel() * 4 for t in weights.tensors())


@pytest.mark.parametrize("shard", [False, True], ids=["one-file", "sharded"])
def test_hf_checkpoint_is_fused_for_the_pipeline(tmp_path, shard):
    folder = tmp_path / "ckpt"
    hf = save_hf_checkpoint(folder, shard=shard)
    assert (folder / "model.safetensors.index.json").is_file() == shard
    spec = load_spec(write_spec(tmp_path, model=None, weights={"kind": "hf", "path": "ckpt"}))
    assert spec.model.hidden == TINY_MODEL["hidden"] and spec.model.kv_heads == TINY_MODEL["kv_heads"]
    assert spec.model.rope.style == "half" and spec.model.norm_eps == TINY_MODEL["norm_eps"]
    weights = load_weights(spec)
    state = hf.state_dict()
    for i, layer in enumerate(weights.layers):
        p = f"model.layers.{i}."
        qkv = torch.cat([state[p + f"self_attn.{n}_proj.weight"] for n in "qkv"])
        gate_up = torch.cat([state[p + "mlp.gate_proj.weight"], state[p + "mlp.up_proj.weight"]])
        assert torch.equal(layer.wqkv, qkv) and torch.equal(layer.w_gate_up, gate_up)
        assert torch.equal(layer.wo, state[p + "self_attn.o_proj.weight"])
        assert torch.equal(layer.w_down, state[p + "mlp.down_proj.weight"])
        assert torch.equal(layer.attn_norm, state[p + "input_layernorm.weight"])
        assert torch.equal(layer.ffn_norm, state[p + "post_attention_layernorm.weight"])
    assert torch.equal(weights.embedding, state["model.embed_tokens.weight"])
    assert torch.equal(weights.lm_head, state["lm_head.weight"])
    assert torch.equal(weights.norm, state["model.norm.weight"])


def test_hf_checkpoint_with_fewer_layers(tmp_path):
    save_hf_checkpoint(tmp_path / "ckpt", shard=True)
    spec = load_spec(write_spec(tmp_path, model=None, weights={"kind": "hf", "path": "ckpt"}), Overrides(layers=1))
    assert len(load_weights(spec).layers) == 1 and spec.model.hidden == TINY_MODEL["hidden"]


def test_hf_rope_scaling_is_read_from_config(tmp_path):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
    save_hf_checkpoint(tmp_path / "ckpt", shard=False, rope_scaling=scaling, rope_theta=500000.0)
    rope = load_spec(write_spec(tmp_path, model=None, weights={"kind": "hf", "path": "ckpt"})).model.rope
    assert (rope.scaling, rope.theta, rope.factor, rope.original_max_position) == ("llama3", 500000.0, 8.0, 16)


def test_missing_shard_is_named(tmp_path):
    folder = tmp_path / "ckpt"
    save_hf_checkpoint(folder, shard=True)
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(KbenchError) as info:
        load_spec(write_spec(tmp_path, model=None, weights={"kind": "hf", "path": "ckpt"}))
    assert "weights.path" in info.value.message and shard.name in info.value.message


def test_model_section_must_agree_with_the_checkpoint(tmp_path):
    save_hf_checkpoint(tmp_path / "ckpt", shard=False)
    model = dict(TINY_MODEL, hidden=128, heads=8)
    with pytest.raises(KbenchError) as info:
        load_spec(write_spec(tmp_path, model=model, weights={"kind": "hf", "path": "ckpt"}))
    assert "model.hidden" in info.value.message and "config.json" in info.value.message


def test_checkpoint_without_config_is_named(tmp_path):
    folder = tmp_path / "ckpt"
    save_hf_checkpoint(folder, shard=False)
    (folder / "config.json").unlink()
    with pytest.raises(KbenchError, match="config.json"):
        load_spec(write_spec(tmp_path, model=None, weights={"kind": "hf", "path": "ckpt"}))


def test_checkpoint_missing_a_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "ckpt"
    save_hf_checkpoint(folder, shard=False)
    state = load_file(folder / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, folder / "model.safetensors")
    spec = load_spec(write_spec(tmp_path, model=None, weights={"kind": "hf", "path": "ckpt"}))
    with pytest.raises(KbenchError, match="model.layers.1.mlp.up_proj.weight"):
        load_weights(spec)
    assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] == 2
