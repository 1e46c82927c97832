"""The model and workload a spec describes: frozen dataclasses, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding settings, named as in Hugging Face's ``rope_scaling`` (``kbench.ops.rope``);
    ``style``: ``half`` (HF rotate_half) or ``interleaved`` (Meta's pairs). For ``dynamic``,
    ``original_max_position`` is HF's ``max_position_embeddings``; ``attention_factor`` None
    means YaRN's ``0.1 ln(factor) + 1``."""

    theta: float = 10000.0
    style: str = "half"
    scaling: str = "none"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 2048
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True
    attention_factor: float | None = None


@dataclass(frozen=True)
class ModelConfig:
    """LLaMA shapes: ``heads % kv_heads == 0``; ``head_dim`` need not be ``hidden / heads``.

    ``max_seq_len`` is the range of positions the model was trained for (HF's
    ``max_position_embeddings``): runs may go past it, as transformers allows, and say so.
    ``attention_bias``: q, k, v and o projections have biases; ``mlp_bias``: gate, up, down.
    """

    name: str
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    rope: RopeConfig = field(default_factory=RopeConfig)
    norm_eps: float = 1e-5
    max_seq_len: int = 4096
    tie_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False


@dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 means greedy; top_k 0 and top_p 1.0 mean off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0


@dataclass(frozen=True)
class Workload:
    """What to run: every batch size with every prompt length, then ``decode_steps`` tokens."""

    batch: tuple[int, ...] = (1,)
    prompt_len: tuple[int, ...] = (128,)
    decode_steps: int = 32
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    kv_layout: str = "contiguous"
    block_size: int = 256

    @property
    def prefill_tokens(self) -> list[int]:
        """Token counts a prefill runs: batch * prompt_len for every pair, sorted."""
        return sorted({b * p for b in self.batch for p in self.prompt_len})

    @property
    def decode_contexts(self) -> list[tuple[int, int]]:
        """(batch, context length at the last decode step) pairs."""
        return sorted({(b, p + self.decode_steps) for b in self.batch for p in self.prompt_len})


@dataclass(frozen=True)
class WeightsSpec:
    """``random`` (seeded HF-like init) or ``hf`` (a folder with config.json and safetensors)."""

    kind: str = "random"
    seed: int = 0
    path: str | None = None


@dataclass(frozen=True)
class BenchConfig:
    """How long to time, in ms (as Triton's do_bench); ``max_op_cases``: at most this many cases
    per op (evenly spaced, ends kept), None for all."""

    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    cuda_graphs: bool = False
    flush_l2: bool = True
    max_op_cases: int | None = None
