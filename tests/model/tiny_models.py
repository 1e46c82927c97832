"""Tiny specs and Hugging Face checkpoints for the model tests, written by the tests themselves."""

from pathlib import Path

import pytest
import yaml

TINY_MODEL = {"vocab": 96, "hidden": 64, "intermediate": 80, "layers": 2, "heads": 4, "kv_heads": 2,
              "head_dim": 16, "max_seq_len": 64, "norm_eps": 1.0e-6}


def build_pipeline(spec, registry, weights, backends=None):
    """The pipeline for ``spec`` with ``backends`` (family or op -> backend) chosen on top, through the plan."""
    from kbench.model import build_pipeline as build
    from kbench.plan import resolve_plan
    from kbench.spec import Overrides, apply_overrides

    return build(resolve_plan(apply_overrides(spec, Overrides(backends=backends or {})), registry), weights)


def write_spec(folder: Path, name: str = "spec.yaml", **sections) -> Path:
    """A tiny fp32 CPU spec with ``sections`` replacing the defaults (model=None drops the section)."""
    data = {"name": "tiny", "model": dict(TINY_MODEL), "weights": {"kind": "random", "seed": 0},
            "dtype": "float32", "device": "cpu",
            "workload": {"batch": [2], "prompt_len": [8], "decode_steps": 6}}
    for key, value in sections.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def save_hf_checkpoint(folder: Path, *, shard: bool, rope_scaling=None, rope_theta=10000.0, seed=0,
                       legacy_rope: bool = False, safetensors: bool = True, **config):
    """A randomly initialised LlamaForCausalLM saved by transformers itself (sharded or one file).

    Norm weights are perturbed away from ones and biases away from zero, so a loader that
    drops them is caught. ``config`` overrides the tiny shapes (transformers' names).
    ``legacy_rope`` rewrites config.json in the 4.x form (``rope_theta`` + ``rope_scaling``);
    ``safetensors=False`` saves ``pytorch_model*.bin`` shards.
    """
    transformers = pytest.importorskip("transformers")
    import json

    import torch

    torch.manual_seed(seed)
    m = TINY_MODEL
    fields = dict(
        vocab_size=m["vocab"], hidden_size=m["hidden"], intermediate_size=m["intermediate"],
        num_hidden_layers=m["layers"], num_attention_heads=m["heads"], num_key_value_heads=m["kv_heads"],
        head_dim=m["head_dim"], max_position_embeddings=m["max_seq_len"], rms_norm_eps=m["norm_eps"],
        rope_theta=rope_theta, rope_scaling=rope_scaling) | config
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                param.add_(0.1 * torch.randn_like(param))
    if safetensors:
        model.save_pretrained(folder, max_shard_size="40KB" if shard else "1GB")
    else:
        _save_bin(model, folder, shard)
    if legacy_rope:
        path = folder / "config.json"
        saved = json.loads(path.read_text())
        params = dict(saved.pop("rope_parameters"))
        saved["rope_theta"] = params.pop("rope_theta")
        saved["rope_scaling"] = None if params.get("rope_type") == "default" else params
        path.write_text(json.dumps(saved))
    return model


def _save_bin(model, folder: Path, shard: bool) -> None:
    """pytorch_model.bin, or shards with pytorch_model.bin.index.json, as transformers 4.x wrote them."""
    import json

    import torch

    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    state = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    if not shard:
        torch.save(state, folder / "pytorch_model.bin")
        return
    names = sorted(state)
    parts = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    for i, part in enumerate(parts):
        file = f"pytorch_model-{i + 1:05d}-of-{len(parts):05d}.bin"
        torch.save({k: state[k] for k in part}, folder / file)
        weight_map |= dict.fromkeys(part, file)
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
