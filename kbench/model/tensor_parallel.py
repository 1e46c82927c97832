"""Megatron-style tensor parallelism over ``ranks`` processes, as Meta's LLaMA code shards it.

Rank ``r`` of ``N`` holds (``Shard``)::

    wqkv       q rows of heads [r*heads/N, (r+1)*heads/N), k and v rows of its kv heads   column-parallel
    wo         the columns of its q heads, then all_reduce                                row-parallel
    w_gate_up  gate and up rows [r*intermediate/N, (r+1)*intermediate/N)                   column-parallel
    w_down     the columns of those rows, then all_reduce                                  row-parallel
    embedding  vocab rows [r*vocab/N, (r+1)*vocab/N): look up, zero the others', all_reduce
    lm_head    the same vocab rows: local logits, all_gather over the vocab
    norms      whole on every rank

With ``kv_heads >= N`` a rank holds ``kv_heads / N`` kv heads; with ``kv_heads < N`` (GQA, e.g.
8 kv heads at 16 ranks) every kv head is replicated on ``N / kv_heads`` ranks, each rank holding
the one its q heads attend with. A rank's pipeline is the single-GPU one over ``Shard.model``,
the per-rank shapes, with ``TensorParallel`` joining the ranks (``Pipeline(parallel=...)``).

Weights are made per rank: random ones are drawn in the same order and chunks as
``random_weights`` with only the rank's rows kept (never the whole model in memory), and a
Hugging Face checkpoint is read slice by slice (``safetensors`` ``get_slice``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from kbench.config import ModelConfig
from kbench.errors import KbenchError
from kbench.model.weights import INIT_STD, LayerWeights, Weights, _Checkpoint, random_norm_weight

Span = tuple[int, int]  # [start, stop) rows or columns of a full weight


def check_tensor_parallel(model: ModelConfig, ranks: int, where: str = "--tp") -> None:
    """KbenchError naming the shape that ``ranks`` does not divide, and the rank counts that do."""
    if ranks < 1:
        raise KbenchError(f"{where} {ranks}: the rank count must be at least 1.", "Use --tp 1, 2, 4 or 8.")
    divisible = [n for n in (1, 2, 4, 8, 16) if _problem(model, n) is None]
    problem = _problem(model, ranks)
    if problem:
        raise KbenchError(f"{where} {ranks}: {problem}.",
                          f"Rank counts that shard this model: {', '.join(map(str, divisible))}.")


def _problem(model: ModelConfig, ranks: int) -> str | None:
    if ranks > 1 and (model.attention_bias or model.mlp_bias):
        return "the model has bias terms (attention_bias / mlp_bias), which are not sharded over ranks"
    if model.heads % ranks:
        return f"{ranks} ranks do not divide the {model.heads} attention heads"
    if model.kv_heads % ranks and ranks % model.kv_heads:
        return f"the {model.kv_heads} kv heads neither split over nor replicate onto {ranks} ranks"
    if model.intermediate % ranks:
        return f"{ranks} ranks do not divide the intermediate size {model.intermediate}"
    if model.vocab % ranks:
        return f"{ranks} ranks do not divide the vocabulary of {model.vocab}"
    return None


@dataclass(frozen=True)
class Shard:
    """What rank ``rank`` of ``ranks`` holds of ``full`` (see the module docstring)."""

    full: ModelConfig
    rank: int
    ranks: int

    @property
    def heads(self) -> Span:
        per = self.full.heads // self.ranks
        return self.rank * per, (self.rank + 1) * per

    @property
    def kv_heads(self) -> Span:
        if self.full.kv_heads >= self.ranks:
            per = self.full.kv_heads // self.ranks
            return self.rank * per, (self.rank + 1) * per
        group = self.full.heads // self.full.kv_heads  # q heads per kv head
        first = self.heads[0] // group
        return first, first + 1

    @property
    def intermediate(self) -> Span:
        per = self.full.intermediate // self.ranks
        return self.rank * per, (self.rank + 1) * per

    @property
    def vocab(self) -> Span:
        per = self.full.vocab // self.ranks
        return self.rank * per, (self.rank + 1) * per

    @property
    def model(self) -> ModelConfig:
        """The per-rank shapes the rank's pipeline runs (vocab and hidden stay whole)."""
        m = self.full
        return dataclasses.replace(m, heads=m.heads // self.ranks, kv_heads=_width(self.kv_heads),
                                   intermediate=m.intermediate // self.ranks)

    def qkv_rows(self) -> list[Span]:
        """Rows of the fused ``wqkv`` (q, k, v blocks) this rank holds."""
        m, d = self.full, self.full.head_dim
        (q0, q1), (k0, k1) = self.heads, self.kv_heads
        k_base, v_base = m.heads * d, (m.heads + m.kv_heads) * d
        return [(q0 * d, q1 * d), (k_base + k0 * d, k_base + k1 * d), (v_base + k0 * d, v_base + k1 * d)]

    def gate_up_rows(self) -> list[Span]:
        i0, i1 = self.intermediate
        return [(i0, i1), (self.full.intermediate + i0, self.full.intermediate + i1)]


def _width(span: Span) -> int:
    return span[1] - span[0]


def _take(full: torch.Tensor, rows: list[Span] | None = None, cols: Span | None = None) -> torch.Tensor:
    """The rows ``rows`` (concatenated) and columns ``cols`` of ``full``, as a new tensor."""
    parts = [full[a:b] for a, b in rows] if rows else [full]
    if cols:
        parts = [part[:, cols[0]:cols[1]] for part in parts]
    return torch.cat(parts).contiguous() if len(parts) > 1 else parts[0].clone()


def layer_spans(shard: Shard) -> dict[str, tuple[list[Span] | None, Span | None]]:
    """(rows, columns) of each layer weight a rank keeps; None keeps them all."""
    d = shard.full.head_dim
    heads = shard.heads
    return {"attn_norm": (None, None), "wqkv": (shard.qkv_rows(), None), "wo": (None, (heads[0] * d, heads[1] * d)),
            "ffn_norm": (None, None), "w_gate_up": (shard.gate_up_rows(), None), "w_down": (None, shard.intermediate)}


def shard_weights(weights: Weights, shard: Shard) -> Weights:
    """The rank's part of whole weights (for tests and small models; big ones load per rank)."""
    spans = layer_spans(shard)
    layers = [LayerWeights(**{name: _take(getattr(layer, name), *spans[name]) for name in spans})
              for layer in weights.layers]
    embedding = _take(weights.embedding, [shard.vocab])
    tied = weights.lm_head.data_ptr() == weights.embedding.data_ptr()
    lm_head = embedding if tied else _take(weights.lm_head, [shard.vocab])
    return Weights(shard.model, embedding, layers, weights.norm.clone(), lm_head,
                   f"{weights.source} rank {shard.rank}/{shard.ranks}")


def random_shard_weights(shard: Shard, dtype: torch.dtype, device: str | torch.device, seed: int) -> Weights:
    """``shard_weights(random_weights(...), shard)`` without drawing more than 4096 rows at once:
    the same generator, order and chunks as ``random_weights``, keeping the rank's rows only."""
    device = torch.device(device)
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    m = shard.full

    def normal(shape: tuple[int, int], rows: list[Span] | None = None, cols: Span | None = None) -> torch.Tensor:
        rows = rows or [(0, shape[0])]
        cols = cols or (0, shape[1])
        out = torch.empty((sum(map(_width, rows)), _width(cols)), dtype=dtype, device=device)
        for start in range(0, shape[0], 4096):
            stop = min(start + 4096, shape[0])
            chunk = torch.randn((stop - start, shape[1]), generator=g, device=device, dtype=torch.float32)
            offset = 0
            for a, b in rows:
                lo, hi = max(a, start), min(b, stop)
                if lo < hi:
                    out[offset + lo - a:offset + hi - a] = chunk[lo - start:hi - start, cols[0]:cols[1]].mul(INIT_STD)
                offset += b - a
        return out

    def norm_weight(n: int) -> torch.Tensor:  # replicated on every rank
        return random_norm_weight(n, g, dtype, device)

    spans = layer_spans(shard)
    shapes = {"wqkv": ((m.heads + 2 * m.kv_heads) * m.head_dim, m.hidden), "wo": (m.hidden, m.heads * m.head_dim),
              "w_gate_up": (2 * m.intermediate, m.hidden), "w_down": (m.hidden, m.intermediate)}
    embedding = normal((m.vocab, m.hidden), [shard.vocab])
    layers = []
    for _ in range(m.layers):
        # random_weights' draw order: attn_norm, wqkv, wo, ffn_norm, w_gate_up, w_down
        attn_norm = norm_weight(m.hidden)
        drawn = {name: normal(shapes[name], *spans[name]) for name in ("wqkv", "wo")}
        ffn_norm = norm_weight(m.hidden)
        drawn |= {name: normal(shapes[name], *spans[name]) for name in ("w_gate_up", "w_down")}
        layers.append(LayerWeights(attn_norm=attn_norm, ffn_norm=ffn_norm, **drawn))
    lm_head = embedding if m.tie_embeddings else normal((m.vocab, m.hidden), [shard.vocab])
    return Weights(shard.model, embedding, layers, norm_weight(m.hidden), lm_head,
                   f"random(seed={seed}) rank {shard.rank}/{shard.ranks}")


def load_hf_shard(folder: Path, shard: Shard, dtype: torch.dtype, device: str | torch.device) -> Weights:
    """The rank's part of the first ``layers`` layers of a HF LLaMA checkpoint, read slice by slice."""
    ckpt, m, d = _Checkpoint(folder), shard.full, shard.full.head_dim

    def get(name: str, shape: tuple[int, int] | tuple[int], rows: Span | None = None, cols: Span | None = None):
        return _read_slice(ckpt, name, shape, rows, cols).to(device=device, dtype=dtype)

    (h0, h1), (k0, k1), (i0, i1) = shard.heads, shard.kv_heads, shard.intermediate
    layers = []
    for i in range(m.layers):
        p = f"model.layers.{i}."
        kv_shape = (m.kv_heads * d, m.hidden)
        layers.append(LayerWeights(
            attn_norm=get(p + "input_layernorm.weight", (m.hidden,)),
            wqkv=torch.cat([get(p + "self_attn.q_proj.weight", (m.heads * d, m.hidden), (h0 * d, h1 * d)),
                            get(p + "self_attn.k_proj.weight", kv_shape, (k0 * d, k1 * d)),
                            get(p + "self_attn.v_proj.weight", kv_shape, (k0 * d, k1 * d))]),
            wo=get(p + "self_attn.o_proj.weight", (m.hidden, m.heads * d), None, (h0 * d, h1 * d)),
            ffn_norm=get(p + "post_attention_layernorm.weight", (m.hidden,)),
            w_gate_up=torch.cat([get(p + "mlp.gate_proj.weight", (m.intermediate, m.hidden), (i0, i1)),
                                 get(p + "mlp.up_proj.weight", (m.intermediate, m.hidden), (i0, i1))]),
            w_down=get(p + "mlp.down_proj.weight", (m.hidden, m.intermediate), None, (i0, i1)),
        ))
    embedding = get("model.embed_tokens.weight", (m.vocab, m.hidden), shard.vocab)
    if m.tie_embeddings or not ckpt.has("lm_head.weight"):
        lm_head = embedding
    else:
        lm_head = get("lm_head.weight", (m.vocab, m.hidden), shard.vocab)
    return Weights(shard.model, embedding, layers, get("model.norm.weight", (m.hidden,)), lm_head,
                   f"{folder} rank {shard.rank}/{shard.ranks}")


def _read_slice(ckpt: _Checkpoint, name: str, shape: tuple[int, ...], rows: Span | None, cols: Span | None):
    file = ckpt.weight_map.get(name)
    if file is None:
        raise KbenchError(f"checkpoint {str(ckpt.folder)!r} has no tensor {name!r}.",
                          "The checkpoint is incomplete or not a LlamaForCausalLM; re-export it.")
    view = ckpt.opened(file).get_slice(name)
    if tuple(view.get_shape()) != shape:
        raise KbenchError(f"{ckpt.folder / file}: {name} has shape {list(view.get_shape())}, expected {list(shape)}.",
                          "The model section does not match the checkpoint: remove it so config.json is used.")
    r0, r1 = rows or (0, shape[0])
    if len(shape) == 1:
        return view[r0:r1]
    c0, c1 = cols or (0, shape[1])
    return view[r0:r1, c0:c1]


def load_shard_weights(spec, shard: Shard) -> Weights:
    """The spec's weights for one rank (``load_weights`` for a rank of a tensor-parallel run)."""
    if spec.weights.kind == "random":
        return random_shard_weights(shard, spec.dtype, spec.device, spec.weights.seed)
    return load_hf_shard(Path(spec.weights.path), shard, spec.dtype, spec.device)


# --------------------------------------------------------------------------------------
# Joining the ranks inside a step
# --------------------------------------------------------------------------------------


class SingleRank:
    """The hooks of a one-rank pipeline: no collectives."""

    ranks = 1

    def __init__(self, fn: dict | None = None):
        self.fn = fn or {}

    def bind(self, fn: dict) -> SingleRank:
        """These hooks calling ``fn``: op name -> the pipeline's chosen (possibly traced) callable."""
        return SingleRank(fn)

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def embed(self, tokens: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return self.fn["embedding"](ids=tokens, weight=table)

    def logits(self, h: torch.Tensor, lm_head: torch.Tensor) -> torch.Tensor:
        return self.fn["linear[lm_head]"](x=h, weight=lm_head)


class TensorParallel:
    """The hooks of one rank: ``reduce`` after o and down (the plan's ``all_reduce``), the
    vocabulary-parallel embedding and the all-gathered LM head."""

    def __init__(self, shard: Shard, fn: dict | None = None):
        self.shard, self.ranks, self.fn = shard, shard.ranks, fn or {}

    def bind(self, fn: dict) -> TensorParallel:
        """The same rank calling ``fn``: op name -> the pipeline's chosen (possibly traced) callable."""
        return TensorParallel(self.shard, fn)

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn["all_reduce"](x=x, inplace=True)

    def embed(self, tokens: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        start, stop = self.shard.vocab
        outside = (tokens < start) | (tokens >= stop)
        rows = self.fn["embedding"](ids=(tokens - start).masked_fill(outside, 0), weight=table)
        return self.reduce(rows.masked_fill(outside[:, None], 0))

    def logits(self, h: torch.Tensor, lm_head: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        local = self.fn["linear[lm_head]"](x=h, weight=lm_head)
        parts = [torch.empty_like(local) for _ in range(self.ranks)]
        dist.all_gather(parts, local)
        return torch.cat(parts, dim=-1)


SINGLE_RANK = SingleRank()


def rank_count(model) -> int:
    """How many ranks run ``model``'s step together: its pipeline's ``parallel.ranks``, 1 for a
    model without one (a baseline)."""
    parallel = getattr(model, "parallel", None)
    return parallel.ranks if parallel is not None else 1


def model_weight_bytes(model: ModelConfig, dtype: torch.dtype) -> int:
    """Bytes of the whole model's weights (every rank's together, norms once)."""
    m = model
    per_layer = ((m.heads + 2 * m.kv_heads) * m.head_dim * m.hidden + m.hidden * m.heads * m.head_dim
                 + 3 * m.hidden * m.intermediate + 2 * m.hidden)
    tables = m.vocab * m.hidden * (1 if m.tie_embeddings else 2)
    return (m.layers * per_layer + tables + m.hidden) * dtype.itemsize
