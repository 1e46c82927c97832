"""A checkpoint's config read into kbench's model fields, no weights loaded: Hugging Face
(config.json with safetensors or pytorch_model*.bin) or Meta's (params.json with
consolidated.NN.pth, one per model-parallel rank)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from kbench.config import RopeConfig
from kbench.errors import KbenchError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
BIN_INDEX_FILE = "pytorch_model.bin.index.json"
BIN_SINGLE_FILE = "pytorch_model.bin"
META_PARAMS = "params.json"


def hf_weight_files(folder: Path) -> tuple[str, str]:
    """(index file, single file) of the HF checkpoint in ``folder``: safetensors, else .bin."""
    if (folder / INDEX_FILE).is_file() or (folder / SINGLE_FILE).is_file():
        return INDEX_FILE, SINGLE_FILE
    if (folder / BIN_INDEX_FILE).is_file() or (folder / BIN_SINGLE_FILE).is_file():
        return BIN_INDEX_FILE, BIN_SINGLE_FILE
    return INDEX_FILE, SINGLE_FILE


def meta_shards(folder: Path) -> list[Path]:
    """Meta's ``consolidated.NN.pth`` files, in rank order."""
    return sorted(folder.glob("consolidated.*.pth"))


def check_meta_folder(folder: Path) -> str | None:
    """Why ``folder`` is not a usable Meta checkpoint (params.json, consolidated.NN.pth), or None."""
    if not folder.is_dir():
        return f"checkpoint folder {str(folder)!r} does not exist."
    if not (folder / META_PARAMS).is_file():
        return f"{str(folder / META_PARAMS)!r} is missing."
    shards = meta_shards(folder)
    if not shards:
        return f"no consolidated.NN.pth files in {str(folder)!r}."
    ranks = [p.name.split(".")[1] for p in shards]
    if ranks != [f"{i:02d}" for i in range(len(shards))]:
        return f"{str(folder)!r} has shards {', '.join(p.name for p in shards)}; ranks 00..{len(shards) - 1:02d} are expected."
    return None


def check_checkpoint_folder(folder: Path) -> str | None:
    """Why ``folder`` is not a usable HF checkpoint (missing config or shards), or None."""
    if not folder.is_dir():
        return f"checkpoint folder {str(folder)!r} does not exist."
    if not (folder / "config.json").is_file():
        hint = " It holds params.json: a Meta checkpoint, use weights.kind: meta." if (folder / META_PARAMS).is_file() else ""
        return f"{str(folder / 'config.json')!r} is missing.{hint}"
    index_file, single_file = hf_weight_files(folder)
    index = folder / index_file
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as error:
            return f"{str(index)!r} is not a safetensors index ({type(error).__name__}: {error})."
        missing = sorted({f for f in weight_map.values() if not (folder / f).is_file()})
        if missing:
            return f"{str(index)!r} names shard files that are missing: {', '.join(missing)}."
        return None
    if not (folder / single_file).is_file():
        found = sorted(p.name for p in [*folder.glob("*.safetensors"), *folder.glob("*.bin")])
        extra = f" (found {', '.join(found)} but no index)" if found else ""
        return f"no {SINGLE_FILE}, {INDEX_FILE}, {BIN_SINGLE_FILE} or {BIN_INDEX_FILE} in {str(folder)!r}{extra}."
    return None


HF_ROPE_TYPES = {"default": "none", "linear": "linear", "dynamic": "dynamic", "llama3": "llama3", "yarn": "yarn"}


def _yarn_attention_factor(params: dict, factor: float) -> float | None:
    """YaRN's cos/sin factor as transformers infers it: explicit, from mscale / mscale_all_dim, or None
    (then ``0.1 ln(factor) + 1``)."""
    if params.get("attention_factor") is not None:
        return float(params["attention_factor"])
    mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        def get_mscale(m: float) -> float:
            return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0
        return get_mscale(float(mscale)) / get_mscale(float(mscale_all_dim))
    return None


def _rope_from_hf(config: dict, where: str) -> RopeConfig:
    """RopeConfig from transformers 5 ``rope_parameters`` or 4.x ``rope_theta``/``rope_scaling``,
    with transformers' defaults and precedences (``rope_scaling`` first; the dynamic threshold is
    ``max_position_embeddings``; llama3 and yarn read ``original_max_position_embeddings`` from
    the top level, then the rope dict, then ``max_position_embeddings``)."""
    params = dict(config.get("rope_scaling") or config.get("rope_parameters") or {})
    params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    scaling = HF_ROPE_TYPES.get(kind)
    if scaling is None:
        raise KbenchError(f"{where}: rope type {kind!r} is not supported.",
                          f"Supported: {', '.join(HF_ROPE_TYPES)}.")
    partial = params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        raise KbenchError(f"{where}: partial_rotary_factor {partial} rotates part of each head; LLaMA rotates all of it.",
                          "Use a checkpoint without partial_rotary_factor (or 1.0).")
    max_positions = int(config.get("max_position_embeddings", 4096))
    if scaling == "dynamic":
        original = max_positions  # transformers' dynamic NTK ignores original_max_position_embeddings
    else:
        original = int(config.get("original_max_position_embeddings")
                       or params.get("original_max_position_embeddings") or max_positions)
    factor = params.get("factor")
    if factor is None:
        factor = max_positions / original if scaling == "yarn" else 1.0
    factor = float(factor)
    default = RopeConfig()
    return RopeConfig(
        theta=float(params["rope_theta"]),
        style="half",  # HF checkpoints store q/k permuted for rotate_half
        scaling=scaling,
        factor=factor,
        low_freq_factor=float(params.get("low_freq_factor", default.low_freq_factor)),
        high_freq_factor=float(params.get("high_freq_factor", default.high_freq_factor)),
        original_max_position=original,
        beta_fast=float(params.get("beta_fast") or default.beta_fast),
        beta_slow=float(params.get("beta_slow") or default.beta_slow),
        truncate=bool(params.get("truncate", True)),
        attention_factor=_yarn_attention_factor(params, factor) if scaling == "yarn" else None,
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
            "attention_bias": bool(config.get("attention_bias", False)),
            "mlp_bias": bool(config.get("mlp_bias", False)),
        }
    except KeyError as error:
        raise KbenchError(f"{path}: key {error.args[0]!r} is missing.", "A LLaMA config.json has it; re-export the checkpoint.") from None
    except (TypeError, ValueError) as error:
        raise KbenchError(f"{path}: a shape field is not a number ({error}).", "Fix config.json.") from None


def _meta_intermediate(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """The FeedForward hidden size Meta's model.py derives from ``dim``."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def _meta_vocab(folder: Path, dim: int) -> int:
    """vocab from the first shard's embedding (LLaMA 1/2 params.json say vocab_size: -1): split
    over the model dimension (LLaMA 2's ParallelEmbedding) or over the vocabulary (Llama 3's)."""
    import torch

    shards = meta_shards(folder)
    rows, columns = torch.load(shards[0], map_location="cpu", weights_only=True, mmap=True)["tok_embeddings.weight"].shape
    return int(rows) * len(shards) if columns == dim and len(shards) > 1 else int(rows)


def model_fields_from_meta_params(folder: Path) -> dict[str, Any]:
    """ModelConfig fields from Meta's params.json (interleaved rope: the weights are not permuted).

    ``use_scaled_rope`` is Llama 3.1's scaling (factor 8, frequency factors 1 and 4 over 8192
    positions). params.json holds no trained length: ``max_seq_len`` is 131072 with scaled
    rope, 8192 with theta 500000 (Llama 3), else 4096 (Llama 2).
    """
    path = folder / META_PARAMS
    try:
        params = json.loads(path.read_text())
        dim, heads = int(params["dim"]), int(params["n_heads"])
        theta = float(params.get("rope_theta", 10000.0))
        scaled = bool(params.get("use_scaled_rope", False))
        rope = RopeConfig(theta=theta, style="interleaved")
        if scaled:
            rope = RopeConfig(theta=theta, style="interleaved", scaling="llama3",
                              factor=float(params.get("rope_scaling_factor", 8.0)), low_freq_factor=1.0,
                              high_freq_factor=4.0, original_max_position=8192)
        vocab = int(params.get("vocab_size", -1))
        return {
            "vocab": vocab if vocab > 0 else _meta_vocab(folder, dim),
            "hidden": dim,
            "intermediate": _meta_intermediate(dim, int(params.get("multiple_of", 256)),
                                               params.get("ffn_dim_multiplier")),
            "layers": int(params["n_layers"]),
            "heads": heads,
            "kv_heads": int(params.get("n_kv_heads") or heads),
            "head_dim": dim // heads,
            "rope": rope,
            "norm_eps": float(params.get("norm_eps", 1e-5)),
            "max_seq_len": int(params.get("max_seq_len") or (131072 if scaled else 8192 if theta >= 500000 else 4096)),
            "tie_embeddings": False,
        }
    except KeyError as error:
        raise KbenchError(f"{path}: key {error.args[0]!r} is missing.", "Meta's params.json has it; re-download it.") from None
    except (OSError, TypeError, ValueError) as error:
        raise KbenchError(f"{path}: cannot read Meta's params ({error}).", "Fix params.json.") from None
