"""The YAML model spec: schema, defaults, validation and CLI overrides.

A spec says which model to build, from which weights, in which dtype on which device,
with which backend per op family, and what workload to time::

    name: llama3-8b
    model:                       # may be left out when weights is a Hugging Face folder
      vocab: 128256
      hidden: 4096
      intermediate: 14336
      layers: 32
      heads: 32
      kv_heads: 8                # default: heads
      head_dim: 128              # default: hidden // heads
      rope: {theta: 500000, scaling: llama3, factor: 8, low_freq_factor: 1,
             high_freq_factor: 4, original_max_position: 8192}
      norm_eps: 1.0e-5
      max_seq_len: 8192
    weights: {kind: random, seed: 0}     # or {kind: hf, path: ./Llama-3-8B}; or just `random`
    dtype: bfloat16
    device: cuda
    backends: {attention: flash}         # every other family: reference; an op name
                                         # (attention_decode: cuda) overrides its family
    workload:
      batch: [1, 8, 32]
      prompt_len: [128, 1024]
      decode_steps: 64
      sampling: {temperature: 0.0, top_k: 0, top_p: 1.0}
      kv_layout: contiguous              # or paged (with block_size)
      block_size: 256
    bench: {warmup_ms: 25, rep_ms: 100, cuda_graphs: true, flush_l2: true}

``load_spec`` reads and validates the whole file, then applies the command line's
``Overrides`` to the ``Spec`` object; a mistake is a ``KbenchError`` that names the file, the
line (or the flag), the key and the fix. This module knows nothing of the plugin registry:
whether ``backends:`` names real families, ops and backends that can run the spec's shapes
here is ``kbench.plan``'s question.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kbench.checkpoint import check_checkpoint_folder, model_fields_from_hf_config
from kbench.config import BenchConfig, ModelConfig, RopeConfig, SamplingConfig, WeightsSpec, Workload
from kbench.errors import KbenchError, closest
from kbench.ops.base import dtype_name, parse_dtype
from kbench.yaml_reader import Reader, describe, read_yaml

ROPE_STYLES = ("half", "interleaved")
ROPE_SCALINGS = ("none", "linear", "dynamic", "llama3")
KV_LAYOUTS = ("contiguous", "paged")
DEVICES = ("cpu", "cuda")
WEIGHT_KINDS = ("random", "hf")


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


@dataclass(frozen=True)
class Overrides:
    """Command-line changes to a spec, applied to the ``Spec`` object after it is read.

    ``backends`` maps a family or op name to a backend (``--attention flash``,
    ``--backend attention_decode=cuda``); ``backend_flags`` names the flag each came from, for
    error messages. ``layers`` keeps the model's real shapes with fewer layers.
    """

    backends: Mapping[str, str] = field(default_factory=dict)
    dtype: str | None = None
    device: str | None = None
    batch: tuple[int, ...] | None = None
    prompt_len: tuple[int, ...] | None = None
    decode_steps: int | None = None
    layers: int | None = None
    cuda_graphs: bool | None = None
    backend_flags: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_cli(cls, *, backend: Iterable[str] = (), batch: str | None = None, prompt_len: str | None = None,
                 **options: Any) -> Overrides:
        """Overrides from raw CLI values: ``backend=("norm=triton",)``, ``batch="1,8,32"``,
        ``dtype="bf16"``, ``decode_steps=64``, ``layers=2``, ...; any other keyword is a family
        flag (``attention="flash"``; None when the flag was not given).
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        backends: dict[str, str] = {}
        flags: dict[str, str] = {}
        for name in [key for key in options if key not in fields]:
            value = options.pop(name)
            if value:
                backends[name], flags[name] = value, f"--{name.replace('_', '-')}"
        for assignment in backend:
            key, sep, name = assignment.partition("=")
            if not sep or not key.strip() or not name.strip():
                raise KbenchError(f"--backend {assignment!r} is not of the form family=name.",
                                  "Write e.g. --backend attention=flash or --backend attention_decode=cuda "
                                  "(`kbench list` shows the families and ops).")
            backends[key.strip()], flags[key.strip()] = name.strip(), f"--backend {key.strip()}="
        return cls(backends=backends, backend_flags=flags,
                   batch=parse_int_list(batch, "--batch") if batch else None,
                   prompt_len=parse_int_list(prompt_len, "--prompt-len") if prompt_len else None,
                   **{k: v for k, v in options.items() if v is not None})


def parse_int_list(text: str, flag: str) -> tuple[int, ...]:
    """(1, 8, 32) from '1,8,32'; KbenchError naming ``flag`` otherwise."""
    try:
        values = tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise KbenchError(f"{flag} {text!r} is not a comma-separated list of integers.",
                          f"Write e.g. {flag} 1,8,32.") from None
    if not values or any(v < 1 for v in values):
        raise KbenchError(f"{flag} {text!r} must list positive integers.", f"Write e.g. {flag} 1,8,32.")
    return values


# --------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------

TOP_KEYS = ("name", "model", "weights", "dtype", "device", "backends", "workload", "bench")
MODEL_KEYS = ("name", "vocab", "hidden", "intermediate", "layers", "heads", "kv_heads", "head_dim", "rope",
              "norm_eps", "max_seq_len", "tie_embeddings")
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
        raise reader.error("weights.path", "is required with kind: hf (a folder with config.json and *.safetensors).",
                           "Add 'path: /path/to/checkpoint'.")
    folder = Path(path).expanduser()
    if not folder.is_absolute():
        folder = (spec_dir / folder).resolve()
    problem = check_checkpoint_folder(folder)
    if problem:
        raise reader.error("weights.path", problem, "Point path at a Hugging Face checkpoint folder "
                           "(config.json plus model.safetensors or model.safetensors.index.json and its shards).")
    return WeightsSpec("hf", seed, str(folder))


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
    )
    if scaling == "llama3" and rope.high_freq_factor <= rope.low_freq_factor:
        raise reader.error("model.rope.high_freq_factor", "must be greater than low_freq_factor for llama3 scaling.",
                           "Llama 3.1 uses low_freq_factor: 1, high_freq_factor: 4.")
    return rope


def _read_model(reader: Reader, raw: Any, name: str, derived: dict | None) -> ModelConfig:
    """The model section; with HF weights, ``derived`` (from config.json) fills what is missing
    and every key the spec does give must agree with it."""
    section = reader.mapping(raw, "model", MODEL_KEYS)
    if derived is not None:
        for key, value in section.items():
            if key == "rope":
                raise reader.error("model.rope", "is read from the checkpoint's config.json (rope_parameters).",
                                   "Remove model.rope when weights are a Hugging Face checkpoint.")
            want = derived.get(key)
            if key == "name" or want is None:
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
    if heads * head_dim != hidden:
        raise reader.error("model.heads", f"heads * head_dim = {heads} * {head_dim} = {heads * head_dim} != hidden {hidden}.",
                           f"Use head_dim: {hidden // heads} with {heads} heads, or change heads (hidden = heads * head_dim).")
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
    derived = model_fields_from_hf_config(Path(weights.path) / "config.json") if weights.kind == "hf" else None
    model = _read_model(reader, data.get("model"), name, derived)
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


def apply_overrides(spec: Spec, overrides: Overrides) -> Spec:
    """``spec`` with the command line's values in place of the file's, each key's origin the
    flag that set it, and the checks that span sections made again."""
    origins = dict(spec.origins)
    changes: dict[str, Any] = {}
    if overrides.backends:
        changes["backends"] = {**spec.backends, **overrides.backends}
        for key in overrides.backends:
            origins[f"backends.{key}"] = overrides.backend_flags.get(key, f"--backend {key}=")
    if overrides.dtype is not None:
        try:
            changes["dtype"], origins["dtype"] = parse_dtype(overrides.dtype), "--dtype"
        except KbenchError as error:
            raise KbenchError(f"{spec.path} (--dtype): {error.message}", error.fix) from None
    if overrides.device is not None:
        if overrides.device not in DEVICES:
            raise KbenchError(f"--device {overrides.device!r} is not one of {', '.join(DEVICES)}.",
                              f"Use one of: {', '.join(DEVICES)}.")
        changes["device"], origins["device"] = overrides.device, "--device"
    workload = {key: getattr(overrides, key) for key in ("batch", "prompt_len", "decode_steps")
                if getattr(overrides, key) is not None}
    if workload:
        changes["workload"] = dataclasses.replace(spec.workload, **workload)
        origins.update({f"workload.{key}": f"--{key.replace('_', '-')}" for key in workload})
    if overrides.cuda_graphs is not None:
        changes["bench"] = dataclasses.replace(spec.bench, cuda_graphs=overrides.cuda_graphs)
        origins["bench.cuda_graphs"] = "--cuda-graphs"
    if overrides.layers is not None:
        if overrides.layers < 1 or overrides.layers > spec.model.layers:
            raise KbenchError(f"{spec.path} (--layers): --layers {overrides.layers} is outside 1..{spec.model.layers}.",
                              f"--layers keeps the model's shapes with fewer layers: use 1 to {spec.model.layers}.")
        changes["model"] = dataclasses.replace(spec.model, layers=overrides.layers)
        origins["model.layers"] = "--layers"
    spec = dataclasses.replace(spec, **changes, origins=origins)
    check_spans(spec)
    return spec


def check_spans(spec: Spec) -> None:
    """The checks that span sections: the dtype on the device, the workload in the model's length."""
    if spec.device == "cpu" and spec.dtype == torch.float16:
        raise KbenchError(f"{spec.where('dtype')}: float16 matmuls are not supported well on the CPU.",
                          "Use float32 (or bfloat16) with device: cpu.")
    workload, model = spec.workload, spec.model
    longest = max(workload.prompt_len) + workload.decode_steps
    if longest > model.max_seq_len:
        key = "workload.decode_steps" if spec.origins.get("workload.decode_steps", "").startswith("--") \
            else "workload.prompt_len"
        raise KbenchError(f"{spec.where(key)}: the longest prompt ({max(workload.prompt_len)}) plus decode_steps "
                          f"({workload.decode_steps}) is {longest} tokens, more than model.max_seq_len {model.max_seq_len}.",
                          "Shorten the prompts or decode_steps, or raise model.max_seq_len.")


def shipped_specs(folder: str | Path | None = None) -> list[Path]:
    """The YAML specs in ``model_specs/`` (next to the package when installed editable)."""
    folder = Path(folder) if folder else Path(__file__).resolve().parent.parent / "model_specs"
    return sorted(folder.glob("*.yaml"))


__all__: list[str] = [
    "BenchConfig", "Overrides", "Spec", "WeightsSpec", "apply_overrides", "load_spec", "parse_int_list", "shipped_specs",
]
