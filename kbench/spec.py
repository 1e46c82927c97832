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

``load_spec`` reads and validates the whole file before it returns anything: a mistake is
a ``KbenchError`` that names the file, the line, the key and the fix. Whether the chosen
backends exist and can run the spec's shapes here is ``check_backends``'s job, because it
needs the plugin registry.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from kbench.config import ModelConfig, RopeConfig, SamplingConfig, Workload
from kbench.errors import KbenchError, closest
from kbench.ops import FAMILIES
from kbench.ops.base import Case, dtype_name, parse_dtype

# The ops the LLaMA pipeline calls, per family. A backend chosen for a family must implement
# all of them; other ops of the family (swiglu, topk) are benchmarked where it has them.
PIPELINE_OPS: dict[str, tuple[str, ...]] = {
    "norm": ("rmsnorm", "add_rmsnorm"),
    "rope": ("rope",),
    "attention": ("attention_prefill", "attention_decode"),
    "ffn": ("ffn",),
    "sampling": ("sample",),
}
# op -> family for the ops the pipeline calls; an op name may also be a key of ``backends``.
OP_FAMILY: dict[str, str] = {op: family for family, ops in PIPELINE_OPS.items() for op in ops}


def backend_for(backends: Mapping[str, str], op: str, family: str) -> str:
    """The backend ``op`` runs on: its own entry if the spec names one, else its family's."""
    return backends.get(op) or backends.get(family) or "reference"

ROPE_STYLES = ("half", "interleaved")
ROPE_SCALINGS = ("none", "linear", "dynamic", "llama3")
KV_LAYOUTS = ("contiguous", "paged")
DEVICES = ("cpu", "cuda")
WEIGHT_KINDS = ("random", "hf")


@dataclass(frozen=True)
class WeightsSpec:
    """``random`` (seeded HF-like init) or ``hf`` (a folder with config.json and safetensors)."""

    kind: str = "random"
    seed: int = 0
    path: str | None = None


@dataclass(frozen=True)
class BenchConfig:
    """How long to time: warm-up and repetitions by time (as Triton's do_bench), in ms.

    ``cuda_graphs``: time decode (and decode-shaped ops) by replaying a captured CUDA graph.
    ``flush_l2``: overwrite the L2 cache between repetitions so every call starts cold.
    ``max_op_cases``: at most this many shape cases per op (evenly spaced, smallest and
    largest kept); None keeps every case the workload produces.
    """

    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    cuda_graphs: bool = False
    flush_l2: bool = True
    max_op_cases: int | None = None


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
    """Command-line changes to a spec, applied before validation.

    ``backends`` comes from ``--attention/--norm/--rope/--ffn/--sampling NAME`` and
    ``--backend family=name``; ``layers`` keeps the model's real shapes with fewer layers.
    """

    backends: Mapping[str, str] = field(default_factory=dict)
    dtype: str | None = None
    device: str | None = None
    batch: tuple[int, ...] | None = None
    prompt_len: tuple[int, ...] | None = None
    decode_steps: int | None = None
    layers: int | None = None
    cuda_graphs: bool | None = None

    @classmethod
    def from_cli(cls, *, backend: Iterable[str] = (), batch: str | None = None, prompt_len: str | None = None,
                 **options: Any) -> Overrides:
        """Overrides from raw CLI values: ``backend=("norm=triton",)``, ``batch="1,8,32"``,
        ``attention="flash"``, ``dtype="bf16"``, ``decode_steps=64``, ``layers=2``, ...
        """
        backends: dict[str, str] = {}
        for family in FAMILIES:
            if options.get(family):
                backends[family] = options.pop(family)
            else:
                options.pop(family, None)
        for assignment in backend:
            family, sep, name = assignment.partition("=")
            if not sep or not family.strip() or not name.strip():
                raise KbenchError(f"--backend {assignment!r} is not of the form family=name.",
                                  f"Write e.g. --backend attention=flash or --backend attention_decode=cuda "
                                  f"(families: {', '.join(FAMILIES)}).")
            backends[family.strip()] = name.strip()
        return cls(backends=backends,
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
# Reading YAML with line numbers
# --------------------------------------------------------------------------------------


def _key_lines(node: yaml.Node, prefix: str = "") -> dict[str, int]:
    """'model.heads' -> 1-based line of that key, for every mapping key in the document."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            lines[key] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, key + "."))
    return lines


def _read_yaml(path: Path) -> tuple[dict, dict[str, int]]:
    if not path.is_file():
        hint = ""
        here = Path("model_specs")
        if here.is_dir():
            names = sorted(p.name for p in here.glob("*.yaml"))
            guess = closest(path.name, names)
            hint = f" Did you mean model_specs/{guess}?" if guess else ""
            hint += f" Shipped specs: {', '.join(names)}."
        raise KbenchError(f"Spec file {str(path)!r} does not exist.", f"Pass the path of a YAML spec.{hint}")
    text = path.read_text()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
        if context and context_mark is not None and mark is not None and context_mark.line != mark.line:
            problem += f" ({context} started at line {context_mark.line + 1})"
        raise KbenchError(f"{path}{line}: invalid YAML: {problem}.",
                          "Fix the syntax at that line (indentation, a missing ':' or an unclosed bracket).") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise KbenchError(f"{path}: the spec must be a YAML mapping (model:, weights:, ...), got {type(data).__name__}.",
                          "See model_specs/tiny-llama.yaml for the layout.")
    return data, (_key_lines(node) if node is not None else {})


class _Reader:
    """Validates one spec's sections, naming file, line, key and fix in every error."""

    def __init__(self, path: Path, lines: dict[str, int], origins: dict[str, str]):
        self.path = path
        self.lines = lines
        self.origins = origins  # key -> "--flag" for values set on the command line

    def where(self, key: str) -> str:
        if key in self.origins:
            return f"{self.path} ({self.origins[key]}): {key}"
        parts = key.split(".")
        for end in range(len(parts), 0, -1):  # the nearest key that has a line
            line = self.lines.get(".".join(parts[:end]))
            if line is not None:
                return f"{self.path}:{line}: {key}"
        return f"{self.path}: {key}"

    def error(self, key: str, message: str, fix: str) -> KbenchError:
        return KbenchError(f"{self.where(key)}: {message}", fix)

    def mapping(self, value: Any, key: str, allowed: Iterable[str]) -> dict:
        """``value`` as a dict whose keys are all in ``allowed`` (closest match suggested)."""
        allowed = list(allowed)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(key, f"must be a mapping, got {_describe(value)}.",
                             f"Write it as '{key.rsplit('.', 1)[-1]}:' followed by indented keys ({', '.join(allowed)}).")
        for name in value:
            if str(name) not in allowed:
                full = f"{key}.{name}" if key else str(name)
                guess = closest(str(name), allowed)
                hint = f"Did you mean {guess!r}? " if guess else ""
                raise self.error(full, "unknown key.", f"{hint}Keys allowed here: {', '.join(allowed)}.")
        return dict(value)

    def integer(self, section: dict, name: str, key: str, default: Any = ..., minimum: int = 1) -> int:
        value = self._required(section, name, key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, got {_describe(value)}.", f"Write e.g. {key.rsplit('.', 1)[-1]}: 4096.")
        if value < minimum:
            raise self.error(key, f"must be >= {minimum}, got {value}.", f"Use a value of at least {minimum}.")
        return value

    def number(self, section: dict, name: str, key: str, default: Any = ..., minimum: float | None = None,
               maximum: float | None = None, positive: bool = False) -> float:
        value = self._required(section, name, key, default)
        if isinstance(value, str):
            try:  # YAML 1.1 reads "1e-5" (no dot) as a string
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(key, f"must be a number, got {_describe(value)}.", f"Write e.g. {key.rsplit('.', 1)[-1]}: 1.0e-5.")
        if positive and value <= 0:
            raise self.error(key, f"must be > 0, got {value}.", "Use a positive number.")
        if minimum is not None and value < minimum or maximum is not None and value > maximum:
            raise self.error(key, f"must lie in [{minimum}, {maximum}], got {value}.", "Use a value in that range.")
        return float(value)

    def boolean(self, section: dict, name: str, key: str, default: Any = ...) -> bool:
        value = self._required(section, name, key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {_describe(value)}.", f"Write {key.rsplit('.', 1)[-1]}: true.")
        return value

    def choice(self, section: dict, name: str, key: str, options: Iterable[str], default: Any = ...) -> str:
        value = self._required(section, name, key, default)
        options = list(options)
        if not isinstance(value, str) or value not in options:
            guess = closest(str(value), options)
            hint = f"Did you mean {guess!r}? " if guess else ""
            raise self.error(key, f"{value!r} is not one of {', '.join(options)}.", f"{hint}Use one of: {', '.join(options)}.")
        return value

    def integers(self, section: dict, name: str, key: str, default: Any = ...) -> tuple[int, ...]:
        value = self._required(section, name, key, default)
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
            raise self.error(key, f"must be a positive integer or a list of them, got {_describe(value)}.",
                             f"Write e.g. {key.rsplit('.', 1)[-1]}: [1, 8, 32].")
        return tuple(values)

    def _required(self, section: dict, name: str, key: str, default: Any) -> Any:
        if name in section and section[name] is not None:
            return section[name]
        if default is ...:
            raise self.error(key, "is required.", f"Add '{name}:' to that section.")
        return default


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) < 40 else text[:37] + '...'}"


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


def _read_weights(reader: _Reader, raw: Any, spec_dir: Path) -> WeightsSpec:
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
    from kbench.model.weights import check_checkpoint_folder

    problem = check_checkpoint_folder(folder)
    if problem:
        raise reader.error("weights.path", problem, "Point path at a Hugging Face checkpoint folder "
                           "(config.json plus model.safetensors or model.safetensors.index.json and its shards).")
    return WeightsSpec("hf", seed, str(folder))


def _read_rope(reader: _Reader, raw: Any) -> RopeConfig:
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


def _read_model(reader: _Reader, raw: Any, name: str, derived: dict | None) -> ModelConfig:
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


def _read_backends(reader: _Reader, raw: Any) -> dict[str, str]:
    section = reader.mapping(raw, "backends", (*FAMILIES, *OP_FAMILY))
    backends = {family: "reference" for family in FAMILIES}
    for family, name in section.items():
        if not isinstance(name, str) or not name.strip():
            raise reader.error(f"backends.{family}", f"must be a backend name, got {_describe(name)}.",
                               "Write e.g. 'attention: flash'; `kbench list` shows the backends.")
        backends[family] = name.strip()
    return backends


def _read_workload(reader: _Reader, raw: Any, model: ModelConfig) -> Workload:
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
    longest = max(workload.prompt_len) + workload.decode_steps
    if longest > model.max_seq_len:
        key = "workload.decode_steps" if "workload.decode_steps" in reader.origins else "workload.prompt_len"
        raise reader.error(key,
                           f"the longest prompt ({max(workload.prompt_len)}) plus decode_steps ({workload.decode_steps}) "
                           f"is {longest} tokens, more than model.max_seq_len {model.max_seq_len}.",
                           "Shorten the prompts or decode_steps, or raise model.max_seq_len.")
    return workload


def _read_bench(reader: _Reader, raw: Any) -> BenchConfig:
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


def _apply_overrides(data: dict, overrides: Overrides) -> dict[str, str]:
    """Write ``overrides`` into the raw YAML data; returns key -> flag for error messages."""
    origins: dict[str, str] = {}

    def put(section: str, key: str, value: Any, flag: str) -> None:
        target = data.get(section)
        if not isinstance(target, dict):
            target = data[section] = {}
        target[key] = value
        origins[f"{section}.{key}"] = flag

    for family, name in overrides.backends.items():
        put("backends", family, name, f"--{family}" if family in FAMILIES else f"--backend {family}=")
    for key in ("dtype", "device"):
        value = getattr(overrides, key)
        if value is not None:
            data[key] = str(value)
            origins[key] = f"--{key}"
    if overrides.batch is not None:
        put("workload", "batch", list(overrides.batch), "--batch")
    if overrides.prompt_len is not None:
        put("workload", "prompt_len", list(overrides.prompt_len), "--prompt-len")
    if overrides.decode_steps is not None:
        put("workload", "decode_steps", overrides.decode_steps, "--decode-steps")
    if overrides.cuda_graphs is not None:
        put("bench", "cuda_graphs", overrides.cuda_graphs, "--cuda-graphs")
    return origins


def load_spec(path: str | Path, overrides: Overrides | None = None) -> Spec:
    """Read, validate and override one YAML spec; KbenchError (file, line, key, fix) on any mistake."""
    path = Path(path)
    data, lines = _read_yaml(path)
    overrides = overrides or Overrides()
    origins = _apply_overrides(data, overrides)
    reader = _Reader(path, lines, origins)
    reader.mapping(data, "", TOP_KEYS)

    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise reader.error("name", f"must be a string, got {_describe(name)}.", f"Write e.g. name: {path.stem}.")
    weights = _read_weights(reader, data.get("weights"), path.parent)
    derived = None
    if weights.kind == "hf":
        from kbench.model.weights import model_fields_from_hf_config

        derived = model_fields_from_hf_config(Path(weights.path) / "config.json")
    model = _read_model(reader, data.get("model"), name, derived)
    if overrides.layers is not None:
        if overrides.layers < 1 or overrides.layers > model.layers:
            raise KbenchError(f"{path} (--layers): --layers {overrides.layers} is outside 1..{model.layers}.",
                              f"--layers keeps the model's shapes with fewer layers: use 1 to {model.layers}.")
        model = dataclasses.replace(model, layers=overrides.layers)
        origins["model.layers"] = "--layers"

    try:
        dtype = parse_dtype(data.get("dtype", "bfloat16"))
    except KbenchError as error:
        raise reader.error("dtype", error.message, error.fix or "") from None
    device = reader.choice(data, "device", "device", DEVICES, default="cuda")
    if device == "cpu" and dtype == torch.float16:
        raise reader.error("dtype", "float16 matmuls are not supported well on the CPU.", "Use float32 (or bfloat16) with device: cpu.")

    spec = Spec(
        path=str(path),
        name=name,
        model=model,
        weights=weights,
        dtype=dtype,
        device=device,
        backends=_read_backends(reader, data.get("backends")),
        workload=_read_workload(reader, data.get("workload"), model),
        bench=_read_bench(reader, data.get("bench")),
        origins={**{k: f"{path}:{line}" for k, line in lines.items()}, **origins},
    )
    json.dumps(spec.to_dict())  # the record must be JSON-able; a failure here is a bug
    return spec


# --------------------------------------------------------------------------------------
# Backends and shapes (need the registry)
# --------------------------------------------------------------------------------------


def check_device(spec: Spec) -> None:
    """KbenchError unless the spec's device exists in this process."""
    if spec.device == "cuda" and not torch.cuda.is_available():
        raise KbenchError(f"{spec.where('device')}: 'cuda', but no CUDA device is available here "
                          f"(torch {torch.__version__}).",
                          "Run on a GPU machine, or pass --device cpu --dtype float32.")


def check_backends(spec: Spec, registry) -> None:
    """Every chosen backend implements the pipeline's ops of its family and can run every
    case the spec produces, in the spec's dtype on its device; KbenchError otherwise, with
    the reason and the backends that can. An op-level entry (``attention_decode: cuda``)
    overrides its family's backend for that op only.
    """
    check_device(spec)
    for family in FAMILIES:
        ops = registry.ops_of_family(family)
        if not ops:
            continue
        family_backends = sorted({b for (o, b) in registry.implementations if registry.ops[o].family == family})
        backend = spec.backends.get(family, "reference")
        if backend not in family_backends:
            guess = closest(backend, family_backends)
            hint = f"Did you mean {guess!r}? " if guess else ""
            raise KbenchError(f"{spec.where(f'backends.{family}')}: unknown {family} backend {backend!r}.",
                              f"{hint}{family} backends: {', '.join(family_backends)} (`kbench list` shows why some cannot run).")
        for op in ops:
            own = op.name in spec.backends
            key = f"backends.{op.name}" if own else f"backends.{family}"
            backend = backend_for(spec.backends, op.name, family)
            if (op.name, backend) not in registry.implementations:
                if own or op.name in PIPELINE_OPS.get(family, ()):
                    have = registry.backends(op.name)
                    raise KbenchError(f"{spec.where(key)}: backend {backend!r} has no {op.name}, which the pipeline needs.",
                                      f"Backends with {op.name}: {', '.join(have)}; choose one for this op alone with "
                                      f"'backends: {{{op.name}: NAME}}' or --backend {op.name}=NAME.")
                continue
            if spec.dtype not in op.dtypes:
                raise KbenchError(f"{spec.where('dtype')}: {op.name} does not support {dtype_name(spec.dtype)}.",
                                  f"Use one of: {', '.join(dtype_name(d) for d in op.dtypes)}.")
            for case in op.cases_for(spec.model, spec.workload):
                try:
                    registry.resolve(op.name, backend, case, spec.dtype, spec.device)
                except KbenchError as error:
                    raise KbenchError(f"{spec.where(key)}: {error.message}", error.fix) from None


def _spread(cases: list[Case], limit: int | None) -> list[Case]:
    if limit is None or len(cases) <= limit:
        return cases
    if limit == 1:
        return [cases[-1]]
    picks = sorted({round(i * (len(cases) - 1) / (limit - 1)) for i in range(limit)})
    return [cases[i] for i in picks]


def op_cases(spec: Spec, registry, families: Iterable[str] | None = None) -> dict[str, list[Case]]:
    """The shapes the model runs, per op (``Op.cases_for``), at most ``bench.max_op_cases`` each."""
    wanted = set(families or FAMILIES)
    return {
        op.name: _spread(op.cases_for(spec.model, spec.workload), spec.bench.max_op_cases)
        for op in registry.ops.values()
        if op.family in wanted
    }


def shipped_specs(folder: str | Path | None = None) -> list[Path]:
    """The YAML specs in ``model_specs/`` (next to the package when installed editable)."""
    folder = Path(folder) if folder else Path(__file__).resolve().parent.parent / "model_specs"
    return sorted(folder.glob("*.yaml"))


__all__: list[str] = [
    "BenchConfig", "OP_FAMILY", "Overrides", "PIPELINE_OPS", "backend_for", "Spec", "WeightsSpec", "check_backends", "check_device",
    "load_spec", "op_cases", "parse_int_list", "shipped_specs",
]
