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


def save_hf_checkpoint(folder: Path, *, shard: bool, rope_scaling=None, rope_theta=10000.0, seed=0, **config):
    """A randomly initialised LlamaForCausalLM saved by transformers itself (sharded or one file).

    Norm weights are perturbed away from ones so a loader that drops them is caught.
    """
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(seed)
    m = TINY_MODEL
    hf_config = transformers.LlamaConfig(
        vocab_size=m["vocab"], hidden_size=m["hidden"], intermediate_size=m["intermediate"],
        num_hidden_layers=m["layers"], num_attention_heads=m["heads"], num_key_value_heads=m["kv_heads"],
        head_dim=m["head_dim"], max_position_embeddings=m["max_seq_len"], rms_norm_eps=m["norm_eps"],
        rope_theta=rope_theta, rope_scaling=rope_scaling, **config)
    model = transformers.LlamaForCausalLM(hf_config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(folder, max_shard_size="40KB" if shard else "1GB")
    return model
