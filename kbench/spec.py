"""The YAML model spec: schema, defaults, validation and CLI overrides.

A spec says which model to build, from which weights, in which dtype on which device, with
which backends, and what workload to time (``model_specs/*.yaml`` are complete examples)::

    name: llama3-8b
    model: {vocab: 128256, hidden: 4096, intermediate: 14336, layers: 32, heads: 32, kv_heads: 8,
            rope: {theta: 500000, scaling: llama3, factor: 8}, max_seq_len: 8192}
    weights: {kind: random, seed: 0}     # or {kind: hf, path: DIR}, whose config.json gives model
    dtype: bfloat16
    device: cuda
    backends: {attention: flash, attention_decode: cuda}   # a family, or one op; else reference
    workload: {batch: [1, 8], prompt_len: [128], decode_steps: 64, kv_layout: paged, block_size: 256}
    bench: {warmup_ms: 25, rep_ms: 100, cuda_graphs: true}

``load_spec`` reads and validates the whole file, then applies the command line's
``Overrides`` to the ``Spec`` object; a mistake is a ``KbenchError`` naming the file, the line
(or the flag), the key and the fix. Which families, ops and backends exist is ``kbench.plan``'s
question: this module knows nothing of the plugin registry.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kbench.checkpoint import (
    check_checkpoint_folder,
    check_meta_folder,
    model_fields_from_hf_config,
    model_fields_from_meta_params,
)
from kbench.config import DEVICES, BenchConfig, ModelConfig, RopeConfig, SamplingConfig, WeightsSpec, Workload
from kbench.errors import KbenchError, closest
from kbench.ops.base import dtype_name, parse_dtype
from kbench.overrides import Overrides, apply_overrides, parse_int_list
from kbench.yaml_reader import Reader, describe, read_yaml

ROPE_STYLES = ("half", "interleaved")
ROPE_SCALINGS = ("none", "linear", "dynamic", "llama3", "yarn")
KV_LAYOUTS = ("contiguous", "paged")
WEIGHT_KINDS = ("random", "hf", "meta")


@dataclass(frozen=True)
class Spec:
    """A validated model spec, overrides applied. ``to_dict()`` is what a run record stores."""

    path: str
    name: str
    model: ModelConfig
    weights: WeightsSpec
    dtype: torch.dtype
    device: str
    backends: dict[str, str]
    workload: Workload
    bench: BenchConfig
    # "file:line" or "--flag" for each key, so later checks can say where a value came from.
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def where(self, key: str) -> str:
        """'spec.yaml:12: backends.attention' or 'spec.yaml (--attention): backends.attention'."""
        origin = self.origins.get(key)
        if origin is None:
            return f"{self.path}: {key}"
        if origin.startswith("--"):
            return f"{self.path} ({origin}): {key}"
        return f"{origin}: {key}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "name": self.name,
            "model": dataclasses.asdict(self.model),
            "weights": dataclasses.asdict(self.weights),
            "dtype": dtype_name(self.dtype),
            "device": self.device,
            "backends": dict(self.backends),
            "workload": dataclasses.asdict(self.workload),
            "bench": dataclasses.asdict(self.bench),
        }


# --------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------

TOP_KEYS = ("name", "model", "weights", "dtype", "device", "backends", "workload", "bench")
MODEL_KEYS = ("name", "vocab", "hidden", "intermediate", "layers", "heads", "kv_heads", "head_dim", "rope",
              "norm_eps", "max_seq_len", "tie_embeddings", "attention_bias", "mlp_bias")
ROPE_KEYS = tuple(f.name for f in dataclasses.fields(RopeConfig))
WEIGHTS_KEYS = ("kind", "seed", "path")
WORKLOAD_KEYS = ("batch", "prompt_len", "decode_steps", "sampling", "kv_layout", "block_size")
SAMPLING_KEYS = ("temperature", "top_k", "top_p")
BENCH_KEYS = tuple(f.name for f in dataclasses.fields(BenchConfig))


def _read_weights(reader: Reader, raw: Any, spec_dir: Path) -> WeightsSpec:
    if raw is None or raw == "random":
        return WeightsSpec()
    if isinstance(raw, str):
        raise reader.error("weights", f"{raw!r} is neither 'random' nor a mapping.",
                           "Write 'weights: random', 'weights: {kind: random, seed: 0}' or 'weights: {kind: hf, path: DIR}'.")
    section = reader.mapping(raw, "weights", WEIGHTS_KEYS)
    kind = reader.choice(section, "kind", "weights.kind", WEIGHT_KINDS, default="random")
    seed = reader.integer(section, "seed", "weights.seed", default=0, minimum=0)
    if kind == "random":
        if section.get("path") is not None:
            raise reader.error("weights.path", "is only used with kind: hf.", "Remove path, or set kind: hf.")
        return WeightsSpec("random", seed, None)
    path = section.get("path")
    if not isinstance(path, str) or not path:
        raise reader.error("weights.path", f"is required with kind: {kind} (a checkpoint folder).",
                           "Add 'path: /path/to/checkpoint'.")
    folder = Path(path).expanduser()
    if not folder.is_absolute():
        folder = (spec_dir / folder).resolve()
    if kind == "meta":
        problem = check_meta_folder(folder)
        fix = "Point path at a Meta checkpoint folder (params.json plus consolidated.00.pth ...)."
    else:
        problem = check_checkpoint_folder(folder)
        fix = ("Point path at a Hugging Face checkpoint folder (config.json plus model.safetensors, "
               "model.safetensors.index.json and its shards, or pytorch_model*.bin).")
    if problem:
        raise reader.error("weights.path", problem, fix)
    return WeightsSpec(kind, seed, str(folder))


def _read_rope(reader: Reader, raw: Any) -> RopeConfig:
    section = reader.mapping(raw, "model.rope", ROPE_KEYS)
    default = RopeConfig()
    scaling = reader.choice(section, "scaling", "model.rope.scaling", ROPE_SCALINGS, default=default.scaling)
    rope = RopeConfig(
        theta=reader.number(section, "theta", "model.rope.theta", default.theta, positive=True),
        style=reader.choice(section, "style", "model.rope.style", ROPE_STYLES, default=default.style),
        scaling=scaling,
        factor=reader.number(section, "factor", "model.rope.factor", default.factor, positive=True),
        low_freq_factor=reader.number(section, "low_freq_factor", "model.rope.low_freq_factor",
                                      default.low_freq_factor, positive=True),
        high_freq_factor=reader.number(section, "high_freq_factor", "model.rope.high_freq_factor",
                                       default.high_freq_factor, positive=True),
        original_max_position=reader.integer(section, "original_max_position", "model.rope.original_max_position",
                                             default.original_max_position),
        beta_fast=reader.number(section, "beta_fast", "model.rope.beta_fast", default.beta_fast, positive=True),
        beta_slow=reader.number(section, "beta_slow", "model.rope.beta_slow", default.beta_slow, positive=True),
        truncate=reader.boolean(section, "truncate", "model.rope.truncate", default.truncate),
        attention_factor=None if section.get("attention_factor") is None else
        reader.number(section, "attention_factor", "model.rope.attention_factor", positive=True),
    )
    if scaling == "llama3" and rope.high_freq_factor <= rope.low_freq_factor:
        raise reader.error("model.rope.high_freq_factor", "must be greater than low_freq_factor for llama3 scaling.",
                           "Llama 3.1 uses low_freq_factor: 1, high_freq_factor: 4.")
    return rope


def _read_model(reader: Reader, raw: Any, name: str, derived: dict | None, free_keys: tuple[str, ...] = ()) -> ModelConfig:
    """The model section; with checkpoint weights, ``derived`` (from config.json or params.json)
    fills what is missing and every key the spec does give, except ``free_keys``, must agree with it."""
    section = reader.mapping(raw, "model", MODEL_KEYS)
    if derived is not None:
        for key, value in section.items():
            if key == "rope":
                raise reader.error("model.rope", "is read from the checkpoint's config.json (rope_parameters).",
                                   "Remove model.rope when weights are a Hugging Face checkpoint.")
            want = derived.get(key)
            if key == "name" or want is None or key in free_keys:
                continue
            if value != want:
                raise reader.error(f"model.{key}", f"is {value!r} but the checkpoint's config.json says {want!r}.",
                                   f"Remove model.{key} (it is read from config.json) or set it to {want!r}.")
        section = {**derived, **section}
    elif not section:
        raise reader.error("model", "is required (or use Hugging Face weights, whose config.json gives it).",
                           "Add a model section with vocab, hidden, intermediate, layers, heads; see model_specs/.")
    hidden = reader.integer(section, "hidden", "model.hidden")
    heads = reader.integer(section, "heads", "model.heads")
    kv_heads = reader.integer(section, "kv_heads", "model.kv_heads", default=heads)
    if "head_dim" not in section and hidden % heads:
        raise reader.error("model.heads", f"{heads} heads do not divide hidden {hidden}.",
                           "Choose heads so that hidden = heads * head_dim, or give head_dim.")
    head_dim = reader.integer(section, "head_dim", "model.head_dim", default=hidden // heads)
    if head_dim % 2:
        raise reader.error("model.head_dim", f"must be even for rotary embeddings, got {head_dim}.", "Use an even head_dim.")
    if heads % kv_heads:
        raise reader.error("model.kv_heads", f"{kv_heads} kv heads do not divide {heads} heads.",
                           f"Use a divisor of {heads} (e.g. {_divisors_hint(heads)}): each kv head serves heads // kv_heads query heads.")
    rope = section.get("rope")
    return ModelConfig(
        name=str(section.get("name") or name),
        vocab=reader.integer(section, "vocab", "model.vocab"),
        hidden=hidden,
        intermediate=reader.integer(section, "intermediate", "model.intermediate"),
        layers=reader.integer(section, "layers", "model.layers"),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        rope=rope if isinstance(rope, RopeConfig) else _read_rope(reader, rope),
        norm_eps=reader.number(section, "norm_eps", "model.norm_eps", 1e-5, positive=True),
        max_seq_len=reader.integer(section, "max_seq_len", "model.max_seq_len", 4096),
        tie_embeddings=reader.boolean(section, "tie_embeddings", "model.tie_embeddings", False),
        attention_bias=reader.boolean(section, "attention_bias", "model.attention_bias", False),
        mlp_bias=reader.boolean(section, "mlp_bias", "model.mlp_bias", False),
    )


def _divisors_hint(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def _read_backends(reader: Reader, raw: Any) -> dict[str, str]:
    """Family or op name -> backend, as written; which names exist is the plan's question."""
    section = {} if raw is None else raw
    if not isinstance(section, dict):
        raise reader.error("backends", f"must be a mapping, got {describe(section)}.",
                           "Write e.g. 'backends: {attention: flash, norm: triton}'.")
    backends = {}
    for key, name in section.items():
        if not isinstance(name, str) or not name.strip():
            raise reader.error(f"backends.{key}", f"must be a backend name, got {describe(name)}.",
                               "Write e.g. 'attention: flash'; `kbench list` shows the backends.")
        backends[str(key)] = name.strip()
    return backends


def _read_workload(reader: Reader, raw: Any, model: ModelConfig) -> Workload:
    section = reader.mapping(raw, "workload", WORKLOAD_KEYS)
    default = Workload()
    sampling_raw = reader.mapping(section.get("sampling"), "workload.sampling", SAMPLING_KEYS)
    sampling = SamplingConfig(
        temperature=reader.number(sampling_raw, "temperature", "workload.sampling.temperature", 0.0, minimum=0.0),
        top_k=reader.integer(sampling_raw, "top_k", "workload.sampling.top_k", 0, minimum=0),
        top_p=reader.number(sampling_raw, "top_p", "workload.sampling.top_p", 1.0, minimum=0.0, maximum=1.0),
    )
    if sampling.top_p == 0.0:
        raise reader.error("workload.sampling.top_p", "must be > 0 (1.0 turns top-p off).", "Use a value in (0, 1].")
    if sampling.top_k > model.vocab:
        raise reader.error("workload.sampling.top_k", f"{sampling.top_k} exceeds vocab {model.vocab}.",
                           "Use 0 (off) or a value up to vocab.")
    workload = Workload(
        batch=reader.integers(section, "batch", "workload.batch", default.batch),
        prompt_len=reader.integers(section, "prompt_len", "workload.prompt_len", default.prompt_len),
        decode_steps=reader.integer(section, "decode_steps", "workload.decode_steps", default.decode_steps),
        sampling=sampling,
        kv_layout=reader.choice(section, "kv_layout", "workload.kv_layout", KV_LAYOUTS, default.kv_layout),
        block_size=reader.integer(section, "block_size", "workload.block_size", default.block_size),
    )
    return workload


def _read_bench(reader: Reader, raw: Any) -> BenchConfig:
    section = reader.mapping(raw, "bench", BENCH_KEYS)
    default = BenchConfig()
    max_cases = section.get("max_op_cases")
    return BenchConfig(
        warmup_ms=reader.number(section, "warmup_ms", "bench.warmup_ms", default.warmup_ms, minimum=0.0),
        rep_ms=reader.number(section, "rep_ms", "bench.rep_ms", default.rep_ms, positive=True),
        cuda_graphs=reader.boolean(section, "cuda_graphs", "bench.cuda_graphs", default.cuda_graphs),
        flush_l2=reader.boolean(section, "flush_l2", "bench.flush_l2", default.flush_l2),
        max_op_cases=None if max_cases is None else reader.integer(section, "max_op_cases", "bench.max_op_cases"),
    )


def load_spec(path: str | Path, overrides: Overrides | None = None) -> Spec:
    """Read and validate one YAML spec, then apply ``overrides``; KbenchError (file, line, key,
    fix) on any mistake."""
    path = Path(path)
    data, lines = read_yaml(path, missing_hint=_shipped_hint)
    reader = Reader(path, lines)
    reader.mapping(data, "", TOP_KEYS)

    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise reader.error("name", f"must be a string, got {describe(name)}.", f"Write e.g. name: {path.stem}.")
    weights = _read_weights(reader, data.get("weights"), path.parent)
    derived = None
    if weights.kind == "hf":
        derived = model_fields_from_hf_config(Path(weights.path) / "config.json")
    elif weights.kind == "meta":
        derived = model_fields_from_meta_params(Path(weights.path))
    # Meta's params.json holds no trained length: the spec may give it
    model = _read_model(reader, data.get("model"), name, derived, ("max_seq_len",) if weights.kind == "meta" else ())
    try:
        dtype = parse_dtype(data.get("dtype", "bfloat16"))
    except KbenchError as error:
        raise reader.error("dtype", error.message, error.fix or "") from None
    spec = Spec(
        path=str(path),
        name=name,
        model=model,
        weights=weights,
        dtype=dtype,
        device=reader.choice(data, "device", "device", DEVICES, default="cuda"),
        backends=_read_backends(reader, data.get("backends")),
        workload=_read_workload(reader, data.get("workload"), model),
        bench=_read_bench(reader, data.get("bench")),
        origins={k: f"{path}:{line}" for k, line in lines.items()},
    )
    spec = apply_overrides(spec, overrides or Overrides())
    json.dumps(spec.to_dict())  # the record must be JSON-able; a failure here is a bug
    return spec


def _shipped_hint(path: Path) -> str:
    here = Path("model_specs")
    if not here.is_dir():
        return ""
    names = sorted(p.name for p in here.glob("*.yaml"))
    guess = closest(path.name, names)
    return (f" Did you mean model_specs/{guess}?" if guess else "") + f" Shipped specs: {', '.join(names)}."


def shipped_specs(folder: str | Path | None = None) -> list[Path]:
    """The YAML specs in ``model_specs/`` (next to the package when installed editable)."""
    folder = Path(folder) if folder else Path(__file__).resolve().parent.parent / "model_specs"
    return sorted(folder.glob("*.yaml"))


__all__: list[str] = [
    "BenchConfig", "Overrides", "Spec", "WeightsSpec", "apply_overrides", "load_spec", "parse_int_list", "shipped_specs",
]
