"""A Hugging Face checkpoint's config.json read into kbench's model fields, no weights loaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kbench.config import RopeConfig
from kbench.errors import KbenchError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def check_checkpoint_folder(folder: Path) -> str | None:
    """Why ``folder`` is not a usable HF checkpoint (missing config or shards), or None."""
    if not folder.is_dir():
        return f"checkpoint folder {str(folder)!r} does not exist."
    if not (folder / "config.json").is_file():
        return f"{str(folder / 'config.json')!r} is missing."
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as error:
            return f"{str(index)!r} is not a safetensors index ({type(error).__name__}: {error})."
        missing = sorted({f for f in weight_map.values() if not (folder / f).is_file()})
        if missing:
            return f"{str(index)!r} names shard files that are missing: {', '.join(missing)}."
        return None
    if not (folder / SINGLE_FILE).is_file():
        found = sorted(p.name for p in folder.glob("*.safetensors"))
        extra = f" (found {', '.join(found)} but no {INDEX_FILE})" if found else ""
        return f"no {SINGLE_FILE} or {INDEX_FILE} in {str(folder)!r}{extra}."
    return None


def _rope_from_hf(config: dict, where: str) -> RopeConfig:
    """RopeConfig from transformers 5 ``rope_parameters`` or 4.x ``rope_theta``/``rope_scaling``."""
    params = dict(config.get("rope_parameters") or {})
    if not params:
        params = dict(config.get("rope_scaling") or {})
        params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    scaling = {"default": "none", "linear": "linear", "dynamic": "dynamic", "llama3": "llama3"}.get(kind)
    if scaling is None:
        raise KbenchError(f"{where}: rope type {kind!r} is not supported.", "Supported: default, linear, dynamic, llama3.")
    default = RopeConfig()
    return RopeConfig(
        theta=float(params.get("rope_theta", default.theta)),
        style="half",  # HF checkpoints store q/k permuted for rotate_half
        scaling=scaling,
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", default.low_freq_factor)),
        high_freq_factor=float(params.get("high_freq_factor", default.high_freq_factor)),
        original_max_position=int(params.get("original_max_position_embeddings",
                                             config.get("max_position_embeddings", default.original_max_position))),
    )


def model_fields_from_hf_config(path: Path) -> dict[str, Any]:
    """ModelConfig fields (as a dict, rope as RopeConfig) from a HF LLaMA config.json."""
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise KbenchError(f"{path}: cannot read the checkpoint config ({error}).",
                          "Point weights.path at a Hugging Face checkpoint folder.") from None
    if config.get("model_type") not in (None, "llama"):
        raise KbenchError(f"{path}: model_type {config.get('model_type')!r} is not llama.",
                          "kbench builds LLaMA-architecture models only.")
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            raise KbenchError(f"{path}: {flag} is true; the kbench pipeline has no bias terms.",
                              "Use a checkpoint without biases (LLaMA 2/3 have none).")
    if config.get("hidden_act", "silu") != "silu":
        raise KbenchError(f"{path}: hidden_act {config['hidden_act']!r} is not silu.", "The ffn op is SwiGLU.")
    try:
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return {
            "vocab": int(config["vocab_size"]),
            "hidden": hidden,
            "intermediate": int(config["intermediate_size"]),
            "layers": int(config["num_hidden_layers"]),
            "heads": heads,
            "kv_heads": int(config.get("num_key_value_heads") or heads),
            "head_dim": int(config.get("head_dim") or hidden // heads),
            "rope": _rope_from_hf(config, str(path)),
            "norm_eps": float(config.get("rms_norm_eps", 1e-6)),
            "max_seq_len": int(config.get("max_position_embeddings", 4096)),
            "tie_embeddings": bool(config.get("tie_word_embeddings", False)),
        }
    except KeyError as error:
        raise KbenchError(f"{path}: key {error.args[0]!r} is missing.", "A LLaMA config.json has it; re-export the checkpoint.") from None
    except (TypeError, ValueError) as error:
        raise KbenchError(f"{path}: a shape field is not a number ({error}).", "Fix config.json.") from None
